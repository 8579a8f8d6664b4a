#!/usr/bin/env node
/**
 * Long fuzz run over every parser that takes outside input:
 * the targets of test/fuzz/targets, each in worker threads under a watchdog
 * (test/fuzz/harness/pool.ts), several targets at once.
 *
 *   npx tsc -p . && node scripts/fuzz/run.mjs [--runs 1000000] [--seed N]
 *       [--targets luks2-json,policy] [--parallel 2] [--slow-ms 100]
 *       [--stuck-ms 5000] [--max-stuck 20] [--runs-for ec2-volume=5000,...] [--json out.json]
 *
 * Prints per target: inputs, typed refusals, accepted, untyped errors (with a
 * shrunk counterexample), hangs (slow: fastest of three runs over --slow-ms;
 * stuck: no return within --stuck-ms, worker killed), invalid inputs accepted.
 * Exit code 1 when any target has a finding.
 *
 * The harness is TypeScript; it runs here through the same transpiling loader
 * the KMS core uses for its HSM worker under vitest (devLoaderUrl in
 * src/kms/hsm/hsm-client.ts), taken from the built dist/.
 */
import { availableParallelism } from 'node:os';
import { existsSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1] : def;
};
const runs = Number(opt('runs', 1_000_000));
const seed = Number(opt('seed', Date.now() % 2 ** 31));
const parallel = Number(opt('parallel', Math.max(1, availableParallelism())));
const slowMs = Number(opt('slow-ms', 100));
const stuckMs = Number(opt('stuck-ms', 5000));
const maxStuck = Number(opt('max-stuck', 20));
const jsonOut = opt('json', undefined);
/** Per-target input counts, for targets that are slow by nature (a CreateVolume writes an image). */
const runsFor = Object.fromEntries(String(opt('runs-for', '')).split(',').filter(Boolean).map((kv) => [kv.split('=')[0], Number(kv.split('=')[1])]));

const hsmClient = join(root, 'dist', 'kms', 'hsm', 'hsm-client.js');
if (!existsSync(hsmClient)) {
  console.error('scripts/fuzz/run.mjs: dist/ is missing; run `npx tsc -p .` first');
  process.exit(2);
}
const { devLoaderUrl } = await import(pathToFileURL(hsmClient).href);
await import(devLoaderUrl());
const { fuzz, formatReport } = await import(pathToFileURL(join(root, 'test', 'fuzz', 'harness', 'pool.ts')).href);
const { TARGET_NAMES } = await import(pathToFileURL(join(root, 'test', 'fuzz', 'targets', 'index.ts')).href);
const targets = opt('targets', TARGET_NAMES.join(',')).split(',').filter(Boolean);
for (const t of targets) if (!TARGET_NAMES.includes(t)) {
  console.error(`unknown target ${t}; known: ${TARGET_NAMES.join(', ')}`);
  process.exit(2);
}

console.log(`fuzz: ${targets.length} targets x ${runs} inputs, seed ${seed}, ${parallel} at a time, slow > ${slowMs} ms, stuck > ${stuckMs} ms (replay: --seed ${seed})`);
const started = Date.now();
const live = new Map();
const ticker = setInterval(() => {
  const s = [...live.entries()].map(([t, r]) => `${t} ${r.inputs}`).join(', ');
  console.log(`[${Math.round((Date.now() - started) / 1000)} s] ${s}`);
}, 30_000);

const reports = [];
const queue = [...targets];
async function lane() {
  for (let t = queue.shift(); t !== undefined; t = queue.shift()) {
    live.set(t, { inputs: 0 });
    const r = await fuzz(t, { seed, runs: runsFor[t] ?? runs, slowMs, stuckMs, maxStuck, chunk: 1000, onDelta: (x) => live.set(t, x) });
    live.delete(t);
    reports.push(r);
    console.log(formatReport(r));
  }
}
await Promise.all(Array.from({ length: Math.min(parallel, targets.length) }, lane));
clearInterval(ticker);

reports.sort((a, b) => targets.indexOf(a.target) - targets.indexOf(b.target));
console.log(`\nsummary (seed ${seed}, ${Math.round((Date.now() - started) / 1000)} s):`);
console.log('target             inputs   refused  accepted  untyped  hangs  invalid-accepted');
for (const r of reports) {
  console.log(`${r.target.padEnd(17)} ${String(r.inputs).padStart(8)} ${String(r.refused).padStart(9)} ${String(r.accepted).padStart(9)} ${String(r.untyped).padStart(8)} ${String(r.slow + r.stuck).padStart(6)} ${String(r.invalid).padStart(17)}`);
}
if (jsonOut) writeFileSync(jsonOut, JSON.stringify({ seed, runs, slowMs, stuckMs, reports }, null, 2));
process.exit(reports.some((r) => r.findings.length > 0) ? 1 : 0);
