/**
 * A data key or plaintext that crosses the HSM boundary leaves no copy of itself
 * behind once the edge has wiped what it holds (docs/architecture.md §5.6, §6.5):
 * with the HSM in its worker thread, after Decrypt and Encrypt through the
 * edge's own functions (aws-json.ts: the request decoded, the response
 * encoded, the request's Plaintext wiped), this process's memory
 * (/proc/self/mem, freed memory included; test/helpers/own-memory.ts) holds
 * no whole copy of the secret. The base64 text of an answer is not searched:
 * strings cannot be wiped, as §6.5 says. GenerateDataKey's key is drawn from
 * the DRBG in place on the native addon's AES (§6.5), so no copy of it is
 * left. Decrypt's plaintext is opened in place on the addon's AES-GCM (§6.5),
 * so the HSM leaves no copy of it either: searched whole, and from its 33rd
 * byte on, the part that node's Decipher.update left in the buffer it freed
 * (malloc writes its free-list pointers over the first bytes of a freed
 * chunk, so a whole-plaintext search alone missed that copy). Encrypt's
 * plaintext is searched the same two ways; the HSM seals it in place (§6.5).
 * Its one-time key is searched in hsm-seal-memory.test.ts, where the test can
 * know it.
 * Real KMS core, real worker HSM.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomFillSync } from 'node:crypto';
import type { KmsService } from '../../src/kms/kms-core.js';
import { decodeKmsRequest, encodeResponse, wipeRequestSecrets } from '../../src/daemon/aws-json.js';
import { countInOwnMemory, invert } from '../helpers/own-memory.js';
import { nativeAesCtr } from '../../src/kms/hsm/drbg.js';
import { nativeAesGcmDecrypt } from '../../src/kms/hsm/gcm-open.js';
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
  it.each([48, 4096])('Decrypt: the plaintext (%i bytes), once the answer is encoded', async (n) => {
    const plain = Buffer.allocUnsafeSlow(n);
    randomFillSync(plain);
    const secret = invert(plain);
    const enc = decodeKmsRequest({ KeyId: keyId, Plaintext: plain.toString('base64') });
    plain.fill(0);
    const { CiphertextBlob } = (await kms.call('Encrypt', enc, admin)) as { CiphertextBlob: Uint8Array };
    wipeRequestSecrets(enc);
    const req = decodeKmsRequest({ CiphertextBlob: Buffer.from(CiphertextBlob).toString('base64') });
    const out = (await kms.call('Decrypt', req, admin)) as { Plaintext: Uint8Array };
    expect(out.Plaintext.length).toBe(n);
    encodeResponse(out);
    wipeRequestSecrets(req);
    expect(countInOwnMemory(secret)).toBe(0);
    // The HSM side: without the addon, node's Decipher leaves this part behind (§6.5).
    if (nativeAesGcmDecrypt !== null) expect(countInOwnMemory(secret.subarray(32))).toBe(0);
  }, 60_000);

  // Without the addon the DRBG falls back to node's Cipher, which leaves a copy (§6.5).
  it.skipIf(nativeAesCtr === null).each([32, 64])('GenerateDataKey: the data key (%i bytes), once the answer is encoded', async (n) => {
    // The key is drawn from the HSM's DRBG (docs/architecture.md §6.5: generated in place on the
    // addon's libgcrypt, no Cipher.update copy), sealed, handed over and encoded; the test holds only its inverse.
    const req = decodeKmsRequest({ KeyId: keyId, NumberOfBytes: n });
    const out = (await kms.call('GenerateDataKey', req, admin)) as { Plaintext: Uint8Array };
    expect(out.Plaintext.length).toBe(n);
    const secret = invert(out.Plaintext);
    encodeResponse(out);
    expect(countInOwnMemory(secret)).toBe(0);
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
    // And without the head malloc writes over when it frees a chunk (as for Decrypt): the HSM
    // seals in place (gcm-seal.ts), and node's Cipher, the fallback, copies only its output.
    expect(countInOwnMemory(secret.subarray(32))).toBe(0);
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
