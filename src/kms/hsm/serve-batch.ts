/**
 * The HSM worker's side of one batch (protocol.ts): answer each request in
 * order, post the replies, and leave no secret behind on this thread. The
 * replies' byte fields are transferred, not copied (exactBytes, owned): once
 * posted, this thread holds no copy of a plaintext or data key it returned.
 * The requests' plaintexts (Encrypt's, RSA encryption's) were moved to this
 * thread (copies the main thread made and transferred, exactBytes) for the
 * batch only and are wiped after it. Wiping is best effort
 * (src/util/wipe.ts); docs/architecture.md §5.6.
 */
import { EbsdError } from '../../util/errors.js';
import { wipe } from '../../util/wipe.js';
import { exactBytes, type HsmBatch, type HsmReplyBatch, type HsmRequest, type HsmWireError } from './protocol.js';

/** What a batch needs of the engine (hsm/engine.ts). */
export interface BatchEngine {
  beginBatch(): void;
  endBatch(): void;
  handle(r: HsmRequest): unknown;
}

export type PostReply = (m: HsmReplyBatch, transfer: ArrayBuffer[]) => void;

export function toWire(e: unknown): HsmWireError {
  if (e instanceof EbsdError) return { ...(e.awsName ? { awsName: e.awsName } : {}), code: e.code, message: e.message };
  return { awsName: 'KMSInternalException', code: 'KMS_HSM_INTERNAL', message: 'internal HSM error' };
}

/** Answer `b` through `post`; returns the reply as posted (its byte fields then detached). */
export function answerBatch(engine: BatchEngine, b: HsmBatch, post: PostReply): HsmReplyBatch {
  const res: HsmReplyBatch['res'] = new Array(b.reqs.length);
  const transfer: ArrayBuffer[] = [];
  engine.beginBatch(); // unwrapped materials are shared within this batch only, wiped at its end
  try {
    for (let i = 0; i < b.reqs.length; i++) {
      try {
        res[i] = { ok: true, v: exactBytes(engine.handle(b.reqs[i]!) as object, transfer, true) };
      } catch (e) {
        res[i] = { ok: false, e: toWire(e) };
      }
    }
  } finally {
    engine.endBatch();
    for (const r of b.reqs) if (r.op === 'encrypt' || r.op === 'rsaEncrypt') wipe(r.plaintext);
  }
  const reply: HsmReplyBatch = { seq: b.seq, res };
  post(reply, transfer);
  return reply;
}
