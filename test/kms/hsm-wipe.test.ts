/**
 * Key material does not outlive its use at the HSM boundary and at the edge
 * that answers a caller (docs/architecture.md §5.6, §6.5):
 *
 *   - the HSM worker's replies move to the main thread (transferred, not
 *     copied), so the worker keeps no copy of a plaintext or data key it
 *     returned; a pooled original it had to copy is wiped (serve-batch.ts,
 *     protocol.ts exactBytes);
 *   - a request's buffers stay the caller's: neither wiped nor detached;
 *   - the control socket and the KMS listener wipe a response's Plaintext /
 *     PrivateKeyPlaintext once encoded, and the control socket a request's
 *     Plaintext once answered (aws-json.ts).
 *
 * Real components: the HSM engine on a real domain, a real MessageChannel,
 * the real worker thread, the real KMS core.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { openDomain } from '../../src/kms/hsm/domain.js';
import { HsmEngine } from '../../src/kms/hsm/engine.js';
import { answerBatch } from '../../src/kms/hsm/serve-batch.js';
import { exactBytes, type HsmReplyBatch, type KeyHandle } from '../../src/kms/hsm/protocol.js';
import { startHsm, type Hsm } from '../../src/kms/hsm/hsm-client.js';
import { encodeResponse, wipeRequestSecrets } from '../../src/daemon/aws-json.js';
import type { KmsService } from '../../src/kms/kms-core.js';
import { admin, openKms, tempDir } from './helpers.js';
import type { TempDir } from '../helpers/temp-dir.js';

const ARN = 'arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab';
const isZero = (b: Uint8Array): boolean => b.every((x) => x === 0);
/** A small Buffer: a view into Node's shared 8 KiB pool, as Buffer.from makes them. */
const pooled = (bytes: Uint8Array): Buffer => {
  const b = Buffer.from(bytes);
  expect(b.byteLength).toBeLessThan(b.buffer.byteLength);
  return b;
};
/** An exact-size buffer of its own. */
const exact = (bytes: Uint8Array): Uint8Array => new Uint8Array(bytes);

describe('exactBytes', () => {
  it('owned: a pooled field is copied to an exact buffer that moves, and the original is wiped', () => {
    const secret = randomBytes(32);
    const field = pooled(secret);
    const transfer: ArrayBuffer[] = [];
    const o = exactBytes({ plaintext: field as Uint8Array, n: 1 }, transfer, true);
    expect(Buffer.from(o.plaintext).equals(secret)).toBe(true);
    expect(o.plaintext.byteLength).toBe(o.plaintext.buffer.byteLength);
    expect(transfer).toEqual([o.plaintext.buffer]);
    expect(isZero(field)).toBe(true);
  });

  it('owned: an exact field moves as it is', () => {
    const field = exact(randomBytes(48));
    const transfer: ArrayBuffer[] = [];
    const o = exactBytes({ blob: field }, transfer, true);
    expect(o.blob).toBe(field);
    expect(transfer).toEqual([field.buffer]);
  });

  it('not owned (a request): the caller\'s buffers are neither wiped nor listed; a copy of each moves, an exact one\'s too (a clone would leave its bytes in the freed clone buffer)', () => {
    const secret = randomBytes(32);
    const field = pooled(secret);
    const ctxBytes = randomBytes(16);
    const mine = exact(ctxBytes);
    const transfer: ArrayBuffer[] = [];
    const o = exactBytes({ plaintext: field as Uint8Array, ctx: mine }, transfer, false);
    expect(Buffer.from(field).equals(secret)).toBe(true);
    expect(Buffer.from(mine).equals(ctxBytes)).toBe(true);
    expect(o.ctx).not.toBe(mine);
    expect(Buffer.from(o.ctx).equals(ctxBytes)).toBe(true);
    expect(transfer).toEqual([o.plaintext.buffer, o.ctx.buffer]);
    expect(transfer).not.toContain(mine.buffer);
  });
});

describe('the HSM side of a batch (the engine on a real domain, a real MessageChannel)', () => {
  let t: TempDir;
  let engine: HsmEngine;
  let key: KeyHandle;
  let a: MessagePort;
  let b: MessagePort;

  beforeAll(() => {
    t = tempDir('ebsd-hsm-wipe-');
    engine = new HsmEngine(openDomain(t.dir));
    const hbkId = randomBytes(32);
    const { ekt } = engine.handle({ op: 'generateKey', arn: ARN, hbkId, spec: 'SYMMETRIC_DEFAULT', usage: 'ENCRYPT_DECRYPT' }) as { ekt: Uint8Array };
    key = { arn: ARN, hbkId, ekt, spec: 'SYMMETRIC_DEFAULT', usage: 'ENCRYPT_DECRYPT' };
    ({ port1: a, port2: b } = new MessageChannel());
  });
  afterAll(() => {
    a.close();
    t.cleanup();
  });

  const serve = async (reqs: Parameters<HsmEngine['handle']>[0][]): Promise<{ sent: HsmReplyBatch; got: HsmReplyBatch }> => {
    const got = once(b, 'message') as Promise<[HsmReplyBatch]>;
    const sent = answerBatch(engine, { seq: 1, reqs }, (m, transfer) => a.postMessage(m, transfer));
    return { sent, got: (await got)[0] };
  };

  it('GenerateDataKey and Decrypt: the replies arrive whole, and none of their bytes stays on the HSM side', async () => {
    const ctx = new Uint8Array(4);
    const gen = await serve([{ op: 'generateDataKey', key, bytes: 32, ctx, wantPlaintext: true }]);
    const sentGen = gen.sent.res[0] as { ok: true; v: { blob: Uint8Array; plaintext: Uint8Array } };
    const gotGen = gen.got.res[0] as { ok: true; v: { blob: Uint8Array; plaintext: Uint8Array } };
    expect(gotGen.ok).toBe(true);
    expect(gotGen.v.plaintext.byteLength).toBe(32);
    expect(isZero(gotGen.v.plaintext)).toBe(false);
    // Transferred: detached on the sending side (no bytes left to read there).
    expect(sentGen.v.plaintext.byteLength).toBe(0);
    expect(sentGen.v.blob.byteLength).toBe(0);

    const dataKey = Buffer.from(gotGen.v.plaintext);
    const dec = await serve([{ op: 'decrypt', key, blob: gotGen.v.blob, ctx }]);
    const gotDec = dec.got.res[0] as { ok: true; v: { plaintext: Uint8Array } };
    expect(Buffer.from(gotDec.v.plaintext).equals(dataKey)).toBe(true);
    expect((dec.sent.res[0] as { ok: true; v: { plaintext: Uint8Array } }).v.plaintext.byteLength).toBe(0);
  });

  it('an Encrypt request\'s plaintext (this thread\'s clone) is wiped once the batch is answered', async () => {
    const plaintext = exact(randomBytes(64));
    const kept = Buffer.from(plaintext);
    const enc = await serve([{ op: 'encrypt', key, plaintext, ctx: new Uint8Array(4) }]);
    expect(isZero(plaintext)).toBe(true);
    const blob = (enc.got.res[0] as { ok: true; v: { blob: Uint8Array } }).v.blob;
    const dec = await serve([{ op: 'decrypt', key, blob, ctx: new Uint8Array(4) }]);
    expect(Buffer.from((dec.got.res[0] as { ok: true; v: { plaintext: Uint8Array } }).v.plaintext).equals(kept)).toBe(true);
  });
});

describe('through the real HSM worker thread', () => {
  let t: TempDir;
  let hsm: Hsm;
  let key: KeyHandle;

  beforeAll(async () => {
    t = tempDir('ebsd-hsm-wipe-worker-');
    hsm = await startHsm({ stateDir: t.dir }, 'worker');
    const hbkId = randomBytes(32);
    key = { arn: ARN, hbkId, ekt: (await hsm.call({ op: 'generateKey', arn: ARN, hbkId, spec: 'SYMMETRIC_DEFAULT', usage: 'ENCRYPT_DECRYPT' })).ekt, spec: 'SYMMETRIC_DEFAULT', usage: 'ENCRYPT_DECRYPT' };
  });
  afterAll(async () => {
    await hsm.close();
    t.cleanup();
  });

  it('the caller\'s request buffers stay the caller\'s (pooled or not); the replies are the caller\'s to wipe', async () => {
    const a = pooled(randomBytes(40));
    const b = exact(randomBytes(40));
    const [ea, eb] = [Buffer.from(a), Buffer.from(b)];
    const ctx = new Uint8Array(4);
    const [ra, rb] = await Promise.all([
      hsm.call({ op: 'encrypt', key, plaintext: a, ctx }),
      hsm.call({ op: 'encrypt', key, plaintext: b, ctx }),
    ]);
    expect(a.equals(ea)).toBe(true);
    expect(Buffer.from(b).equals(eb)).toBe(true);
    const [da, db] = await Promise.all([hsm.call({ op: 'decrypt', key, blob: ra.blob, ctx }), hsm.call({ op: 'decrypt', key, blob: rb.blob, ctx })]);
    expect(Buffer.from(da.plaintext).equals(ea)).toBe(true);
    expect(Buffer.from(db.plaintext).equals(eb)).toBe(true);
    // Each reply field owns its buffer: wiping one touches nothing else.
    expect(da.plaintext.byteLength).toBe(da.plaintext.buffer.byteLength);
  });
});

describe('the edge: a response\'s secrets are wiped once encoded (the real KMS core, worker HSM)', () => {
  let t: TempDir;
  let kms: KmsService;
  let keyId = '';

  beforeAll(async () => {
    t = tempDir('ebsd-hsm-wipe-core-');
    kms = await openKms(t.dir);
    keyId = ((await kms.call('CreateKey', {}, admin)) as { KeyMetadata: { KeyId: string } }).KeyMetadata.KeyId;
  });
  afterAll(async () => {
    await kms.close();
    t.cleanup();
  });

  it('GenerateDataKey: the body carries the Plaintext, and the response\'s buffer is zero after', async () => {
    const out = (await kms.call('GenerateDataKey', { KeyId: keyId, KeySpec: 'AES_256' }, admin)) as { Plaintext: Uint8Array; CiphertextBlob: Uint8Array };
    const plaintext = out.Plaintext;
    const body = encodeResponse(out) as { Plaintext: string; CiphertextBlob: string };
    const sent = Buffer.from(body.Plaintext, 'base64');
    expect(sent.length).toBe(32);
    expect(isZero(sent)).toBe(false);
    expect(isZero(plaintext)).toBe(true);
    // Not a secret: left as it was.
    expect(isZero(out.CiphertextBlob)).toBe(false);
    const back = (await kms.call('Decrypt', { CiphertextBlob: out.CiphertextBlob }, admin)) as { Plaintext: Uint8Array };
    expect(Buffer.from(back.Plaintext).equals(sent)).toBe(true);
  });

  it('GenerateDataKeyPair: PrivateKeyPlaintext is zero after encoding; GenerateRandom: Plaintext too', async () => {
    const pairKey = ((await kms.call('CreateKey', {}, admin)) as { KeyMetadata: { KeyId: string } }).KeyMetadata.KeyId;
    const pair = (await kms.call('GenerateDataKeyPair', { KeyId: pairKey, KeyPairSpec: 'ECC_NIST_P256' }, admin)) as { PrivateKeyPlaintext: Uint8Array; PublicKey: Uint8Array };
    const priv = pair.PrivateKeyPlaintext;
    const body = encodeResponse(pair) as { PrivateKeyPlaintext: string };
    expect(Buffer.from(body.PrivateKeyPlaintext, 'base64').length).toBe(priv.length);
    expect(isZero(priv)).toBe(true);
    expect(isZero(pair.PublicKey)).toBe(false);

    const rnd = (await kms.call('GenerateRandom', { NumberOfBytes: 64 }, admin)) as { Plaintext: Uint8Array };
    const bytes = rnd.Plaintext;
    encodeResponse(rnd);
    expect(isZero(bytes)).toBe(true);
  });

  it('the request\'s Plaintext, decoded by the edge, is the edge\'s to wipe after the call', async () => {
    const req = { KeyId: keyId, Plaintext: pooled(randomBytes(24)) as Uint8Array };
    await kms.call('Encrypt', req, admin);
    wipeRequestSecrets(req);
    expect(isZero(req.Plaintext)).toBe(true);
  });
});
