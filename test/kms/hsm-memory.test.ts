/**
 * A data key or plaintext that crosses the HSM boundary leaves no copy of itself
 * behind once the edge has wiped what it holds (docs/architecture.md §5.6, §6.5):
 * with the HSM in its worker thread, after GenerateDataKey, Decrypt and Encrypt
 * through the edge's own functions (aws-json.ts: the request decoded, the
 * response encoded, the request's Plaintext wiped), this process's memory
 * (/proc/self/mem, freed memory included; test/helpers/own-memory.ts) holds
 * the secret's bytes nowhere. The base64 text of an answer is not searched:
 * strings cannot be wiped, as §6.5 says. Real KMS core, real worker HSM.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomFillSync } from 'node:crypto';
import type { KmsService } from '../../src/kms/kms-core.js';
import { decodeKmsRequest, encodeResponse, wipeRequestSecrets } from '../../src/daemon/aws-json.js';
import { countInOwnMemory, invert } from '../helpers/own-memory.js';
import { admin, openKms, tempDir } from './helpers.js';
import type { TempDir } from '../helpers/temp-dir.js';

let t: TempDir;
let kms: KmsService;
let keyId = '';

beforeAll(async () => {
  t = tempDir('ebsd-hsm-memory-');
  kms = await openKms(t.dir, { hsmMode: 'worker' });
  keyId = ((await kms.call('CreateKey', {}, admin)) as { KeyMetadata: { KeyId: string } }).KeyMetadata.KeyId;
});
afterAll(async () => {
  await kms.close();
  t.cleanup();
});

describe('worker HSM: no copy of a secret outlives the call', () => {
  it('GenerateDataKey: the data key, once the answer is encoded', async () => {
    const out = (await kms.call('GenerateDataKey', { KeyId: keyId, NumberOfBytes: 32 }, admin)) as { Plaintext: Uint8Array };
    const key = invert(out.Plaintext);
    encodeResponse(out);
    expect(countInOwnMemory(key)).toBe(0);
  }, 60_000);

  it('Decrypt: the plaintext, once the answer is encoded', async () => {
    const gen = (await kms.call('GenerateDataKey', { KeyId: keyId, NumberOfBytes: 48 }, admin)) as { Plaintext: Uint8Array; CiphertextBlob: Uint8Array };
    const key = invert(gen.Plaintext);
    encodeResponse(gen);
    const req = decodeKmsRequest({ CiphertextBlob: Buffer.from(gen.CiphertextBlob).toString('base64') });
    const out = (await kms.call('Decrypt', req, admin)) as { Plaintext: Uint8Array };
    expect(out.Plaintext.length).toBe(48);
    encodeResponse(out);
    wipeRequestSecrets(req);
    expect(countInOwnMemory(key)).toBe(0);
  }, 60_000);

  it.each([48, 4096])('Encrypt: the request\'s plaintext (%i bytes), once answered and wiped', async (n) => {
    const plain = Buffer.allocUnsafeSlow(n);
    randomFillSync(plain);
    const secret = invert(plain);
    const b64 = plain.toString('base64');
    plain.fill(0);
    const req = decodeKmsRequest({ KeyId: keyId, Plaintext: b64 });
    await kms.call('Encrypt', req, admin);
    wipeRequestSecrets(req);
    expect(countInOwnMemory(secret)).toBe(0);
  }, 60_000);
});

describe('the edge: a request refused while it is decoded', () => {
  it('leaves no copy of a Plaintext it had already decoded (a later member refused it)', () => {
    const plain = Buffer.allocUnsafeSlow(48);
    randomFillSync(plain);
    const secret = invert(plain);
    const b64 = plain.toString('base64');
    plain.fill(0);
    // Members are decoded in order: Plaintext first, then Recipient (refused) or a malformed blob.
    expect(() => decodeKmsRequest({ KeyId: keyId, Plaintext: b64, Recipient: { AttestationDocument: 'AAAA' } })).toThrow(/Recipient/);
    expect(() => decodeKmsRequest({ KeyId: keyId, Plaintext: b64, CiphertextBlob: 'not base64!' })).toThrow(/CiphertextBlob must be a base64-encoded blob/);
    expect(countInOwnMemory(secret)).toBe(0);
  }, 60_000);
});
