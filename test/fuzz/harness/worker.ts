import { parentPort, workerData } from 'node:worker_threads';
import { inputAt, runEngine, shrinkFinding, type EngineOptions, type Finding } from './engine.js';
import { loadTarget } from '../targets/index.js';

/**
 * Worker-thread side of the pool: runs one target (mode `run`), names the
 * input at a position (mode `describe`, after a watchdog kill), or shrinks
 * findings (mode `shrink`). `progress` is shared with the watchdog:
 * [chunk, index, beat].
 */
export interface WorkerJob extends EngineOptions {
  mode: 'run' | 'describe' | 'shrink';
  target: string;
  progress: SharedArrayBuffer;
  at?: { chunk: number; index: number };
  findings?: Finding[];
  shrinkMs?: number;
}

const job = workerData as WorkerJob;
const progress = new Int32Array(job.progress);
const port = parentPort!;

async function main(): Promise<void> {
  const t = await loadTarget(job.target);
  if (job.mode === 'describe') {
    port.postMessage({ type: 'input', text: await inputAt(t, job.seed, job.at!.chunk, job.at!.index) });
    return;
  }
  if (job.mode === 'shrink') {
    const ctx = await t.open();
    try {
      for (const f of job.findings ?? []) {
        Atomics.add(progress, 2, 1);
        const r = await shrinkFinding(t, ctx, job.seed, f, job.shrinkMs ?? 5000);
        if (r) port.postMessage({ type: 'shrunk', kind: f.kind, key: f.key, ...r });
      }
    } finally {
      await t.close(ctx);
    }
    return;
  }
  await runEngine(t, job, {
    beat(chunk, index) {
      Atomics.store(progress, 0, chunk);
      Atomics.store(progress, 1, index);
      Atomics.add(progress, 2, 1);
    },
    delta(d, chunk) {
      port.postMessage({ type: 'delta', delta: d, chunk });
    },
  });
}

main().then(
  () => port.postMessage({ type: 'done' }),
  (e: unknown) => port.postMessage({ type: 'error', message: e instanceof Error ? (e.stack ?? e.message) : String(e) }),
);
