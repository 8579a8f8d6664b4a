/**
 * Limits and answers an AWS KMS user relies on, checked against the KMS API reference and the
 * KMS Developer Guide ("Resource quotas"), through the core as the daemon opens it.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KmsService } from '../../src/kms/kms-core.js';
import { admin, awsError, openKms, tempDir } from './helpers.js';

describe('KMS conformance', () => {
  const t = tempDir('ebsd-kms-conf-');
  let kms: KmsService;
  const call = (op: string, req: Record<string, unknown>) => kms.call(op, req, admin) as Promise<any>;
  const newKey = async () => (await call('CreateKey', {})).KeyMetadata.KeyId as string;
  beforeAll(async () => { kms = await openKms(t.dir); });
  afterAll(async () => { await kms.close(); t.cleanup(); });

  it('a KMS key has at most 50 aliases: the 51st, by CreateAlias or UpdateAlias, is LimitExceededException and changes nothing', async () => {
    const k = await newKey();
    const other = await newKey();
    for (let i = 0; i < 50; i++) await call('CreateAlias', { AliasName: `alias/q${String(i).padStart(2, '0')}`, TargetKeyId: k });
    const e = await kms.call('CreateAlias', { AliasName: 'alias/q50', TargetKeyId: k }, admin).catch((x: unknown) => x as Error & { awsName: string });
    expect((e as { awsName: string }).awsName).toBe('LimitExceededException');
    expect((e as Error).message).toContain('at most 50 aliases');
    expect(await awsError(call('DescribeKey', { KeyId: 'alias/q50' }))).toBe('NotFoundException');

    await call('CreateAlias', { AliasName: 'alias/elsewhere', TargetKeyId: other });
    expect(await awsError(call('UpdateAlias', { AliasName: 'alias/elsewhere', TargetKeyId: k }))).toBe('LimitExceededException');
    expect((await call('DescribeKey', { KeyId: 'alias/elsewhere' })).KeyMetadata.KeyId).toBe(other);
    const listed = await call('ListAliases', { KeyId: k, Limit: 100 });
    expect(listed.Aliases).toHaveLength(50);

    // Moving an alias within the quota still works, and a freed slot can be used again.
    await call('UpdateAlias', { AliasName: 'alias/q00', TargetKeyId: k }); // onto its own key: not a 51st
    await call('DeleteAlias', { AliasName: 'alias/q49' });
    await call('UpdateAlias', { AliasName: 'alias/elsewhere', TargetKeyId: k });
    expect((await call('DescribeKey', { KeyId: 'alias/elsewhere' })).KeyMetadata.KeyId).toBe(k);
  });

  it('tag keys beginning with aws: in any case are reserved: TagException from CreateKey, TagResource and UntagResource, and nothing changes', async () => {
    const k = await newKey();
    for (const TagKey of ['aws:x', 'AWS:x', 'Aws:Owner']) {
      expect(await awsError(call('TagResource', { KeyId: k, Tags: [{ TagKey: 'ok', TagValue: '1' }, { TagKey, TagValue: 'v' }] })), TagKey).toBe('TagException');
      expect(await awsError(call('CreateKey', { Tags: [{ TagKey, TagValue: 'v' }] })), TagKey).toBe('TagException');
    }
    expect((await call('ListResourceTags', { KeyId: k })).Tags).toEqual([]);
    await call('TagResource', { KeyId: k, Tags: [{ TagKey: 'awsx', TagValue: 'v' }, { TagKey: 'my:aws:x', TagValue: 'v' }] });
    expect((await call('ListResourceTags', { KeyId: k })).Tags).toHaveLength(2);
    // Nor can such a tag be removed (UntagResource's TagException), and the request removes nothing.
    expect(await awsError(call('UntagResource', { KeyId: k, TagKeys: ['awsx', 'AWS:x'] }))).toBe('TagException');
    expect((await call('ListResourceTags', { KeyId: k })).Tags).toHaveLength(2);
  });

  it('a tag like AWS:x that a key holds from an earlier version (which let callers add it) can still be removed', async () => {
    const k = await newKey();
    await kms.close();
    const file = join(t.dir, 'keys', `${k}.json`);
    const rec = JSON.parse(readFileSync(file, 'utf8')) as { tags: { TagKey: string; TagValue: string }[] };
    rec.tags.push({ TagKey: 'AWS:legacy', TagValue: 'v' });
    writeFileSync(file, JSON.stringify(rec));
    kms = await openKms(t.dir);
    expect((await call('ListResourceTags', { KeyId: k })).Tags).toEqual([{ TagKey: 'AWS:legacy', TagValue: 'v' }]);
    expect(await awsError(call('UntagResource', { KeyId: k, TagKeys: ['AWS:other'] }))).toBe('TagException');
    await call('UntagResource', { KeyId: k, TagKeys: ['AWS:legacy'] });
    expect((await call('ListResourceTags', { KeyId: k })).Tags).toEqual([]);
  });

  describe('asymmetric encryption keys', () => {
    let rsa: string;
    let blob: Uint8Array;
    const alg = 'RSAES_OAEP_SHA_256';
    beforeAll(async () => {
      rsa = (await call('CreateKey', { KeySpec: 'RSA_2048', KeyUsage: 'ENCRYPT_DECRYPT' })).KeyMetadata.KeyId;
      blob = (await call('Encrypt', { KeyId: rsa, Plaintext: Buffer.from('secret'), EncryptionAlgorithm: alg })).CiphertextBlob;
    });

    it('Decrypt naming the key but not its EncryptionAlgorithm is InvalidKeyUsageException (the algorithm), not InvalidCiphertextException', async () => {
      const e = await kms.call('Decrypt', { KeyId: rsa, CiphertextBlob: blob }, admin).catch((x: unknown) => x as Error & { awsName: string });
      expect((e as { awsName: string }).awsName).toBe('InvalidKeyUsageException');
      expect((e as Error).message).toContain('SYMMETRIC_DEFAULT');
      // ReEncrypt names its source the same way.
      const sym = await newKey();
      expect(await awsError(call('ReEncrypt', { CiphertextBlob: blob, SourceKeyId: rsa, DestinationKeyId: sym }))).toBe('InvalidKeyUsageException');
      // Without a KeyId nothing names the key: the blob is not a symmetric ciphertext.
      expect(await awsError(call('Decrypt', { CiphertextBlob: blob }))).toBe('InvalidCiphertextException');
      // A symmetric KeyId does not make an RSA ciphertext one.
      expect(await awsError(call('Decrypt', { KeyId: sym, CiphertextBlob: blob }))).toBe('InvalidCiphertextException');
      // Nor does an AWS managed alias, and looking at the request creates no AWS managed key.
      const keys = (await call('ListKeys', { Limit: 1000 })).Keys.length;
      expect(await awsError(call('Decrypt', { KeyId: 'alias/aws/ebs', CiphertextBlob: blob }))).toBe('InvalidCiphertextException');
      expect((await call('ListKeys', { Limit: 1000 })).Keys).toHaveLength(keys);
      const d = await call('Decrypt', { KeyId: rsa, CiphertextBlob: blob, EncryptionAlgorithm: alg });
      expect(Buffer.from(d.Plaintext).toString()).toBe('secret');
    });

    it('an encryption context with an asymmetric key is refused by Decrypt and ReEncrypt, as by Encrypt, not ignored', async () => {
      const ec = { purpose: 'x' };
      expect(await awsError(call('Encrypt', { KeyId: rsa, Plaintext: Buffer.from('a'), EncryptionAlgorithm: alg, EncryptionContext: ec }))).toBe('ValidationException');
      const e = await kms.call('Decrypt', { KeyId: rsa, CiphertextBlob: blob, EncryptionAlgorithm: alg, EncryptionContext: ec }, admin).catch((x: unknown) => x as Error & { awsName: string });
      expect((e as { awsName: string }).awsName).toBe('ValidationException');
      expect((e as Error).message).toContain('EncryptionContext is not supported with asymmetric KMS keys');
      const sym = await newKey();
      expect(await awsError(call('ReEncrypt', {
        CiphertextBlob: blob, SourceKeyId: rsa, SourceEncryptionAlgorithm: alg, SourceEncryptionContext: ec, DestinationKeyId: sym,
      }))).toBe('ValidationException');
      const symBlob = (await call('Encrypt', { KeyId: sym, Plaintext: Buffer.from('b') })).CiphertextBlob;
      expect(await awsError(call('ReEncrypt', {
        CiphertextBlob: symBlob, DestinationKeyId: rsa, DestinationEncryptionAlgorithm: alg, DestinationEncryptionContext: ec,
      }))).toBe('ValidationException');
      // An empty context binds nothing either way and is accepted.
      const ok = await call('ReEncrypt', { CiphertextBlob: blob, SourceKeyId: rsa, SourceEncryptionAlgorithm: alg, SourceEncryptionContext: {}, DestinationKeyId: sym });
      expect(Buffer.from((await call('Decrypt', { CiphertextBlob: ok.CiphertextBlob })).Plaintext).toString()).toBe('secret');
    });
  });

  it('Decrypt, ReEncrypt and the GenerateDataKey* responses name the key material they used (KeyMaterialId, Source/DestinationKeyMaterialId)', async () => {
    const k = await newKey();
    const first = (await call('DescribeKey', { KeyId: k })).KeyMetadata.CurrentKeyMaterialId as string;
    expect(first).toMatch(/^[0-9a-f]{64}$/);
    const old = (await call('Encrypt', { KeyId: k, Plaintext: Buffer.from('x') })).CiphertextBlob;
    await call('RotateKeyOnDemand', { KeyId: k });
    const current = (await call('DescribeKey', { KeyId: k })).KeyMetadata.CurrentKeyMaterialId as string;
    expect(current).not.toBe(first);

    // Decrypt names the material that decrypted: the old one for an old ciphertext.
    expect((await call('Decrypt', { CiphertextBlob: old })).KeyMaterialId).toBe(first);
    for (const op of ['GenerateDataKey', 'GenerateDataKeyWithoutPlaintext']) {
      const r = await call(op, { KeyId: k, KeySpec: 'AES_256' });
      expect(r.KeyMaterialId, op).toBe(current);
      expect((await call('Decrypt', { CiphertextBlob: r.CiphertextBlob })).KeyMaterialId, op).toBe(current);
    }
    for (const op of ['GenerateDataKeyPair', 'GenerateDataKeyPairWithoutPlaintext']) {
      expect((await call(op, { KeyId: k, KeyPairSpec: 'ECC_NIST_P256' })).KeyMaterialId, op).toBe(current);
    }
    const re = await call('ReEncrypt', { CiphertextBlob: old, DestinationKeyId: k });
    expect(re).toMatchObject({ SourceKeyMaterialId: first, DestinationKeyMaterialId: current });

    // An asymmetric side has no key material id (the members are for symmetric keys only).
    const rsa = (await call('CreateKey', { KeySpec: 'RSA_2048', KeyUsage: 'ENCRYPT_DECRYPT' })).KeyMetadata.KeyId;
    const toRsa = await call('ReEncrypt', { CiphertextBlob: old, DestinationKeyId: rsa, DestinationEncryptionAlgorithm: 'RSAES_OAEP_SHA_256' });
    expect(toRsa.SourceKeyMaterialId).toBe(first);
    expect(toRsa).not.toHaveProperty('DestinationKeyMaterialId');
    const d = await call('Decrypt', { KeyId: rsa, CiphertextBlob: toRsa.CiphertextBlob, EncryptionAlgorithm: 'RSAES_OAEP_SHA_256' });
    expect(Buffer.from(d.Plaintext).toString()).toBe('x');
    expect(d).not.toHaveProperty('KeyMaterialId');
  });
});
