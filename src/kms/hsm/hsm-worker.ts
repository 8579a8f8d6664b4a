/**
 * HSM simulator thread. It opens the sealed domain itself, so the domain key
 * and every plaintext HBK live only on this thread's heap. It answers
 * batches of HsmRequest in order (protocol.ts, serve-batch.ts).
 */
import { writeFileSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { openDomain } from './domain.js';
import { HsmEngine } from './engine.js';
import { answerBatch, toWire } from './serve-batch.js';
import type { HsmBatch, HsmInit } from './protocol.js';

const port = parentPort!;

// The thread's name in `top -H`, /proc/<pid>/task/*/comm and the benchmarks' per-thread lines.
try { writeFileSync('/proc/thread-self/comm', 'ebsd-hsm'); } catch { /* not Linux, or /proc read-only: unnamed */ }
const init = workerData as HsmInit;

let engine: HsmEngine;
try {
  engine = new HsmEngine(openDomain(init.stateDir, init.passphrase, init.scryptCost ? { scryptCost: init.scryptCost } : {}));
  port.postMessage({ ready: true });
} catch (e) {
  port.postMessage({ ready: false, e: toWire(e) });
  process.exit(0);
} finally {
  // Needed only to open the domain. A string cannot be wiped; this drops the reference.
  delete init.passphrase;
}

port.on('message', (b: HsmBatch) => {
  answerBatch(engine, b, (m, transfer) => port.postMessage(m, transfer));
});
