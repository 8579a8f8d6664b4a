#!/usr/bin/env node
// `ebsd audit verify` reads and hashes the whole audit log. How long that takes, and how long the
// daemon's event loop would stop if it ran there: verifyAuditLog on this thread (the main-thread
// stall) against verifyAuditLogOffThread (what the daemon runs), with the longest gap between
// 10 ms timer ticks during the latter. Build first (npx tsc -p .).
//   node scripts/bench/audit-verify.mjs [--events 100000]
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KmsService } from '../../dist/kms/kms-core.js';
import { verifyAuditLog, verifyAuditLogOffThread } from '../../dist/kms/audit/verify.js';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : dflt;
};
const N = Number(arg('events', '100000'));
const root = mkdtempSync(join(tmpdir(), 'ebsd-bench-audit-'));
try {
  const dir = join(root, 'kms');
  const admin = { arn: 'arn:aws:iam::111122223333:root', accountId: '111122223333', type: 'Root', principalId: '111122223333' };
  const kms = await KmsService.open({ stateDir: dir, accountId: '111122223333', region: 'us-east-1' });
  const k = kms && (await kms.call('CreateKey', {}, admin)).KeyMetadata;
  for (let i = 0; i < N; i += 500) await Promise.all(Array.from({ length: Math.min(500, N - i) }, () => kms.call('DescribeKey', { KeyId: k.KeyId }, admin)));
  await kms.sealAudit();
  await kms.close();
  const audit = join(dir, 'audit');
  const bytes = statSync(join(audit, 'events.ndjson')).size;
  let t = process.hrtime.bigint();
  const here = verifyAuditLog(audit);
  const hereMs = Number(process.hrtime.bigint() - t) / 1e6;
  let last = performance.now();
  let gap = 0;
  const tick = setInterval(() => { const now = performance.now(); gap = Math.max(gap, now - last); last = now; }, 10);
  t = process.hrtime.bigint();
  const off = await verifyAuditLogOffThread(audit);
  const offMs = Number(process.hrtime.bigint() - t) / 1e6;
  clearInterval(tick);
  if (!here.ok || !off.ok || here.events !== off.events) throw new Error(`verification disagrees: ${JSON.stringify({ here, off })}`);
  const [load] = (await import('node:os')).loadavg();
  console.log(`${off.events} events, ${(bytes / 2 ** 20).toFixed(1)} MiB, load average ${load.toFixed(1)}`);
  console.log(`verify on the calling thread: ${hereMs.toFixed(0)} ms, all of it a stall of that thread's event loop`);
  console.log(`verify on a worker thread:    ${offMs.toFixed(0)} ms; longest event-loop gap meanwhile ${gap.toFixed(1)} ms (10 ms ticks)`);
} finally {
  rmSync(root, { recursive: true, force: true });
}
