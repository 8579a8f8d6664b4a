import { describe, it, expect, afterAll } from 'vitest';
import { openKms, admin, tempDir } from './helpers.js';

describe('smoke', () => {
  const t = tempDir();
  afterAll(() => t.cleanup());
  it('creates a key, GDKWP, decrypts', async () => {
    const kms = await openKms(t.dir);
    const { KeyMetadata } = await kms.call('CreateKey', { Description: 'x' }, admin) as { KeyMetadata: { KeyId: string } };
    const ctx = { 'aws:ebs:id': 'vol-1' };
    const g = await kms.call('GenerateDataKey', { KeyId: KeyMetadata.KeyId, NumberOfBytes: 64, EncryptionContext: ctx }, admin);
    const d = await kms.call('Decrypt', { CiphertextBlob: g.CiphertextBlob, EncryptionContext: ctx }, admin);
    expect(Buffer.from(d.Plaintext as Uint8Array).equals(Buffer.from(g.Plaintext as Uint8Array))).toBe(true);
    await kms.close();
  });
});
