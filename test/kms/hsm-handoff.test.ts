/**
 * The HSM client hands a turn's requests to the worker in chunks of
 * HANDOFF_CHUNK (hsm-client.ts): a turn with several chunks' worth of calls
 * must still answer each call with its own result, in the worker HSM (the
 * default), for calls that succeed and calls that fail mixed together.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HANDOFF_CHUNK } from '../../src/kms/hsm/hsm-client.js';
import type { KmsService } from '../../src/kms/kms-core.js';
import { admin, awsError, openKms, tempDir } from './helpers.js';
import type { TempDir } from '../helpers/temp-dir.js';

describe('HSM hand-off in chunks', () => {
  let t: TempDir;
  let kms: KmsService;
  let keyId: string;
  beforeAll(async () => {
    t = tempDir('ebsd-hsm-handoff-');
    kms = await openKms(t.dir);
    keyId = (await kms.call('CreateKey', {}, admin)).KeyMetadata.KeyId;
  });
  afterAll(async () => {
    await kms.close();
    t.cleanup();
  });

  it(`answers ${HANDOFF_CHUNK * 6 + 5} calls made in one turn each with its own result, failures in between included`, async () => {
    const n = HANDOFF_CHUNK * 6 + 5;
    const plain = Array.from({ length: n }, (_, i) => Buffer.from(`plaintext number ${i}`));
    // One turn: every Encrypt is issued before any answer can arrive.
    const blobs = await Promise.all(plain.map((p, i) => kms.call('Encrypt', { KeyId: keyId, Plaintext: p, EncryptionContext: { i: String(i) } }, admin)));
    // Decrypts in one turn, every third under the wrong context (refused by the HSM's authentication).
    const answers = await Promise.all(blobs.map((b, i) => {
      const call = kms.call('Decrypt', { CiphertextBlob: b.CiphertextBlob, EncryptionContext: { i: String(i % 3 === 2 ? i + 1 : i) } }, admin);
      return i % 3 === 2 ? awsError(call) : call;
    }));
    for (let i = 0; i < n; i++) {
      if (i % 3 === 2) expect(answers[i]).toBe('InvalidCiphertextException');
      else expect(Buffer.from((answers[i] as { Plaintext: Uint8Array }).Plaintext).toString()).toBe(`plaintext number ${i}`);
    }
  });
});
