/**
 * HSM simulator thread. It opens the sealed domain itself, so the domain key
 * and every plaintext HBK live only on this thread's heap. It answers
 * batches of HsmRequest in order (protocol.ts).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { EbsdError } from '../../util/errors.js';
import { openDomain } from './domain.js';
import { HsmEngine } from './engine.js';
import { exactBytes, type HsmBatch, type HsmInit, type HsmReplyBatch, type HsmWireError } from './protocol.js';

const port = parentPort!;
const init = workerData as HsmInit;

function toWire(e: unknown): HsmWireError {
  if (e instanceof EbsdError) return { ...(e.awsName ? { awsName: e.awsName } : {}), code: e.code, message: e.message };
  return { awsName: 'KMSInternalException', code: 'KMS_HSM_INTERNAL', message: 'internal HSM error' };
}

let engine: HsmEngine;
try {
  engine = new HsmEngine(openDomain(init.stateDir, init.passphrase, init.scryptCost ? { scryptCost: init.scryptCost } : {}));
  port.postMessage({ ready: true });
} catch (e) {
  port.postMessage({ ready: false, e: toWire(e) });
  process.exit(0);
}

port.on('message', (b: HsmBatch) => {
  const res: HsmReplyBatch['res'] = new Array(b.reqs.length);
  engine.beginBatch(); // unwrapped materials are shared within this batch only, wiped at its end
  try {
    for (let i = 0; i < b.reqs.length; i++) {
      try {
        res[i] = { ok: true, v: exactBytes(engine.handle(b.reqs[i]!) as object) };
      } catch (e) {
        res[i] = { ok: false, e: toWire(e) };
      }
    }
  } finally {
    engine.endBatch();
  }
  port.postMessage({ seq: b.seq, res } satisfies HsmReplyBatch);
});
