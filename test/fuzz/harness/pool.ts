import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { devLoaderUrl } from '../../../src/kms/hsm/hsm-client.js';
import type { ChunkDelta, Finding } from './engine.js';
import { scratchRoot } from './target.js';
import type { WorkerJob } from './worker.js';

/**
 * Main-thread side: runs a target in a worker thread under a watchdog. A
 * parser that never returns (a catastrophic regex, say) cannot stop a
 * synchronous loop from the inside, so the worker beats a shared counter
 * before every input; when the counter stands still for `stuckMs`, the
 * worker is terminated, the input at that position is generated again (it is
 * named by seed, chunk and index) and reported as `stuck`, and a new worker
 * goes on after it.
 */
export interface FuzzOptions {
  seed: number;
  runs: number;
  chunk?: number;
  /** Fastest-of-three time above which an input counts as a hang. */
  slowMs?: number;
  /** No heartbeat for this long: the worker is killed and the input reported as stuck. */
  stuckMs?: number;
  /** Stop the target after this many stuck inputs. */
  maxStuck?: number;
  /** Shrink the first input of each untyped / invalid finding (default true). */
  shrink?: boolean;
  shrinkMs?: number;
  /** Shrink at most this many findings (the first ones found). */
  maxShrink?: number;
  onDelta?: (r: TargetReport) => void;
}

export interface TargetReport {
  target: string;
  seed: number;
  requested: number;
  inputs: number;
  accepted: number;
  refused: number;
  untyped: number;
  invalid: number;
  slow: number;
  stuck: number;
  findings: Finding[];
  /** Why the run ended early, if it did. */
  stopped?: string;
  ms: number;
}

type Msg =
  | { type: 'delta'; delta: ChunkDelta; chunk: number }
  | { type: 'input'; text: string }
  | { type: 'shrunk'; kind: string; key: string; shrunk: string; detail: string }
  | { type: 'done' }
  | { type: 'error'; message: string };

interface Session {
  ended: 'done' | 'stuck' | 'error';
  message?: string;
  chunk: number;
  index: number;
}

function startWorker(job: Omit<WorkerJob, 'progress'>, scratch: string, stuckMs: number, onMsg: (m: Msg) => void): Promise<Session> {
  const progress = new SharedArrayBuffer(12);
  const p = new Int32Array(progress);
  const w = new Worker(new URL('./worker.ts', import.meta.url), {
    workerData: { ...job, progress },
    execArgv: ['--import', devLoaderUrl()],
    env: { ...process.env, EBSD_FUZZ_SCRATCH: scratch },
    resourceLimits: { maxOldGenerationSizeMb: 1024 },
    stdout: false,
    stderr: false,
  });
  return new Promise((resolve) => {
    let settled = false;
    let lastBeat = -1;
    let lastChange = performance.now();
    const finish = (s: Session): void => {
      if (settled) return;
      settled = true;
      clearInterval(dog);
      void w.terminate().then(() => resolve(s), () => resolve(s));
    };
    const dog = setInterval(() => {
      const beat = Atomics.load(p, 2);
      const now = performance.now();
      if (beat !== lastBeat) {
        lastBeat = beat;
        lastChange = now;
      } else if (beat > 0 && now - lastChange > stuckMs) {
        finish({ ended: 'stuck', chunk: Atomics.load(p, 0), index: Atomics.load(p, 1) });
      }
    }, Math.min(100, stuckMs / 4));
    w.on('message', (m: Msg) => {
      if (m.type === 'done') finish({ ended: 'done', chunk: 0, index: 0 });
      else if (m.type === 'error') finish({ ended: 'error', message: m.message, chunk: 0, index: 0 });
      else onMsg(m);
    });
    w.on('error', (e) => finish({ ended: 'error', message: e.stack ?? String(e), chunk: 0, index: 0 }));
    w.on('exit', (code) => finish({ ended: 'error', message: `worker exited with code ${code}`, chunk: 0, index: 0 }));
  });
}

function merge(r: TargetReport, d: ChunkDelta): void {
  r.inputs += d.inputs;
  r.accepted += d.accepted;
  r.refused += d.refused;
  for (const f of d.findings) {
    const have = r.findings.find((x) => x.kind === f.kind && x.key === f.key);
    if (have) have.count += f.count;
    else r.findings.push({ ...f });
    if (f.kind === 'untyped') r.untyped += f.count;
    else if (f.kind === 'invalid') r.invalid += f.count;
    else if (f.kind === 'slow') r.slow += f.count;
  }
}

/** Fuzz one target in worker threads; resolves with its report (it throws only if the harness itself fails). */
export async function fuzz(target: string, o: FuzzOptions): Promise<TargetReport> {
  const t0 = performance.now();
  const r: TargetReport = { target, seed: o.seed, requested: o.runs, inputs: 0, accepted: 0, refused: 0, untyped: 0, invalid: 0, slow: 0, stuck: 0, findings: [], ms: 0 };
  const scratch = mkdtempSync(join(scratchRoot(), `ebsd-fuzz-${target}-`));
  try {
    await runAll(target, o, r, scratch);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  r.ms = performance.now() - t0;
  return r;
}

async function runAll(target: string, o: FuzzOptions, r: TargetReport, scratch: string): Promise<void> {
  const chunk = o.chunk ?? 500;
  const slowMs = o.slowMs ?? 100;
  const stuckMs = o.stuckMs ?? 5000;
  const maxStuck = o.maxStuck ?? 3;
  const base = { target, seed: o.seed, runs: o.runs, chunk, slowMs };
  let startChunk = 0;
  let skip = 0;
  for (;;) {
    const s = await startWorker({ ...base, mode: 'run', startChunk, skip }, scratch, stuckMs, (m) => {
      if (m.type === 'delta') {
        merge(r, m.delta);
        o.onDelta?.(r);
      }
    });
    if (s.ended === 'done') break;
    if (s.ended === 'error') throw new Error(`fuzz harness failed on ${target}: ${s.message}`);
    let text = '(not regenerated)';
    await startWorker({ ...base, mode: 'describe', startChunk: 0, skip: 0, at: { chunk: s.chunk, index: s.index } }, scratch, stuckMs, (m) => {
      if (m.type === 'input') text = m.text;
    });
    r.stuck++;
    r.inputs++;
    const have = r.findings.find((x) => x.kind === 'stuck');
    if (have) have.count++;
    else r.findings.push({ kind: 'stuck', key: 'stuck', count: 1, example: text, detail: `no return within ${stuckMs} ms; worker terminated`, chunk: s.chunk, index: s.index });
    if (r.stuck >= maxStuck) {
      r.stopped = `stopped after ${r.stuck} stuck inputs`;
      break;
    }
    startChunk = s.chunk;
    skip = s.index + 1;
  }
  const toShrink = r.findings.filter((f) => f.kind === 'untyped' || f.kind === 'invalid').slice(0, o.maxShrink ?? Infinity);
  if ((o.shrink ?? true) && toShrink.length > 0) {
    const shrinkMs = o.shrinkMs ?? 3000;
    await startWorker({ ...base, mode: 'shrink', startChunk: 0, skip: 0, findings: toShrink, shrinkMs }, scratch, shrinkMs + stuckMs, (m) => {
      if (m.type !== 'shrunk') return;
      const f = r.findings.find((x) => x.kind === m.kind && x.key === m.key);
      if (f) {
        f.shrunk = m.shrunk;
        f.shrunkDetail = m.detail;
      }
    });
  }
}

/** Plain-text report of one target, as the tests and scripts/fuzz/run.mjs print it. */
export function formatReport(r: TargetReport): string {
  const lines = [
    `${r.target}: ${r.inputs} inputs (seed ${r.seed}${r.stopped ? `, ${r.stopped}` : ''}), ${r.refused} typed refusals, ${r.accepted} accepted, ` +
      `${r.untyped} untyped errors, ${r.slow + r.stuck} hangs (${r.slow} slow, ${r.stuck} stuck), ${r.invalid} invalid accepted; ${(r.ms / 1000).toFixed(1)} s`,
  ];
  for (const f of r.findings) {
    lines.push(`  [${f.kind}] ${f.key} x${f.count} (first at chunk ${f.chunk} input ${f.index})`);
    lines.push(`      input:  ${f.shrunk ?? f.example}${f.shrunk ? '   (shrunk)' : ''}`);
    const detail = f.shrunk ? f.shrunkDetail : f.detail;
    if (detail) lines.push(`      detail: ${detail.slice(0, 400)}`);
  }
  return lines.join('\n');
}
