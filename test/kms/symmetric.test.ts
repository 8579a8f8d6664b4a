import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { KmsService } from '../../src/kms/kms-core.js';
import { canonicalContext } from '../../src/kms/blob.js';
import { openKms, admin, stranger, tempDir, awsError, storedKeyPolicy } from './helpers.js';

const hex = (u: unknown) => Buffer.from(u as Uint8Array).toString('hex');

describe('symmetric operations', () => {
  const t = tempDir();
  let kms: KmsService;
  let keyId: string;
  let arn: string;
  beforeAll(async () => {
    kms = await openKms(t.dir);
    const r = await kms.call('CreateKey', { Description: 'data', Tags: [{ TagKey: 'app', TagValue: 'x' }] }, admin);
    const md = r.KeyMetadata as Record<string, unknown>;
    keyId = md.KeyId as string;
    arn = md.Arn as string;
  });
  afterAll(async () => { await kms.close(); t.cleanup(); });

  it('CreateKey returns AWS KeyMetadata', async () => {
    const r = await kms.call('DescribeKey', { KeyId: keyId }, admin);
    expect(r.KeyMetadata).toMatchObject({
      KeyId: keyId, Arn: `arn:aws:kms:us-east-1:111122223333:key/${keyId}`, KeyState: 'Enabled', Enabled: true,
      KeySpec: 'SYMMETRIC_DEFAULT', KeyUsage: 'ENCRYPT_DECRYPT', KeyManager: 'CUSTOMER', Origin: 'AWS_KMS',
      EncryptionAlgorithms: ['SYMMETRIC_DEFAULT'], Description: 'data',
    });
  });

  it('Encrypt/Decrypt round trip by id, ARN, alias and alias ARN', async () => {
    await kms.call('CreateAlias', { AliasName: 'alias/app', TargetKeyId: keyId }, admin);
    for (const id of [keyId, arn, 'alias/app', 'arn:aws:kms:us-east-1:111122223333:alias/app']) {
      const e = await kms.call('Encrypt', { KeyId: id, Plaintext: Buffer.from('hello'), EncryptionContext: { a: 'b' } }, admin);
      expect(e.KeyId).toBe(arn);
      const d = await kms.call('Decrypt', { CiphertextBlob: e.CiphertextBlob, EncryptionContext: { a: 'b' }, KeyId: id }, admin);
      expect(Buffer.from(d.Plaintext as Uint8Array).toString()).toBe('hello');
    }
  });

  it('encryption context binds: wrong, missing or shifted context is InvalidCiphertextException', async () => {
    const e = await kms.call('Encrypt', { KeyId: keyId, Plaintext: Buffer.from('x'), EncryptionContext: { ab: 'c' } }, admin);
    expect(await awsError(kms.call('Decrypt', { CiphertextBlob: e.CiphertextBlob, EncryptionContext: { a: 'bc' } }, admin))).toBe('InvalidCiphertextException');
    expect(await awsError(kms.call('Decrypt', { CiphertextBlob: e.CiphertextBlob }, admin))).toBe('InvalidCiphertextException');
    expect(hex(canonicalContext({ ab: 'c' }))).not.toBe(hex(canonicalContext({ a: 'bc' })));
    expect(hex(canonicalContext({ x: '1', y: '2' }))).toBe(hex(canonicalContext({ y: '2', x: '1' })));
  });

  it('canonical context encoding (docs/kms-format.md): one pair (fast path), several pairs, multi-byte UTF-8', () => {
    expect(hex(canonicalContext(undefined))).toBe('00000000');
    expect(hex(canonicalContext({}))).toBe('00000000');
    expect(hex(canonicalContext({ a: 'bc' }))).toBe('00000001' + '00000001' + '61' + '00000002' + '6263');
    expect(hex(canonicalContext({ 'ü': '€' }))).toBe('00000001' + '00000002' + 'c3bc' + '00000003' + 'e282ac');
    expect(hex(canonicalContext({ b: '', a: 'x' }))).toBe('00000002' + '00000001' + '61' + '00000001' + '78' + '00000001' + '62' + '00000000');
    const one = canonicalContext({ 'aws:ebs:id': 'vol-1' });
    expect(one.byteLength).toBe(one.buffer.byteLength); // its own ArrayBuffer: crosses postMessage without a pool copy
  });

  it('a tampered blob is InvalidCiphertextException; a wrong KeyId is IncorrectKeyException', async () => {
    const e = await kms.call('Encrypt', { KeyId: keyId, Plaintext: Buffer.from('x') }, admin);
    const b = Buffer.from(e.CiphertextBlob as Uint8Array);
    b[b.length - 1]! ^= 1;
    expect(await awsError(kms.call('Decrypt', { CiphertextBlob: b }, admin))).toBe('InvalidCiphertextException');
    expect(await awsError(kms.call('Decrypt', { CiphertextBlob: Buffer.from('garbage') }, admin))).toBe('InvalidCiphertextException');
    const other = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
    expect(await awsError(kms.call('Decrypt', { CiphertextBlob: e.CiphertextBlob, KeyId: other.KeyId }, admin))).toBe('IncorrectKeyException');
  });

  it('GenerateDataKey / WithoutPlaintext: shapes and limits', async () => {
    const ctx = { 'aws:ebs:id': 'vol-0123' };
    const g = await kms.call('GenerateDataKey', { KeyId: keyId, KeySpec: 'AES_256', EncryptionContext: ctx }, admin);
    expect((g.Plaintext as Uint8Array).length).toBe(32);
    const g128 = await kms.call('GenerateDataKey', { KeyId: keyId, KeySpec: 'AES_128' }, admin);
    expect((g128.Plaintext as Uint8Array).length).toBe(16);
    const w = await kms.call('GenerateDataKeyWithoutPlaintext', { KeyId: keyId, NumberOfBytes: 64, EncryptionContext: ctx }, admin);
    expect(w.Plaintext).toBeUndefined();
    expect(w.KeyId).toBe(arn);
    const d = await kms.call('Decrypt', { CiphertextBlob: w.CiphertextBlob, EncryptionContext: ctx }, admin);
    expect((d.Plaintext as Uint8Array).length).toBe(64);
    expect(await awsError(kms.call('GenerateDataKey', { KeyId: keyId }, admin))).toBe('ValidationException');
    expect(await awsError(kms.call('GenerateDataKey', { KeyId: keyId, KeySpec: 'AES_256', NumberOfBytes: 32 }, admin))).toBe('ValidationException');
    expect(await awsError(kms.call('GenerateDataKey', { KeyId: keyId, NumberOfBytes: 1025 }, admin))).toBe('ValidationException');
    expect(await awsError(kms.call('GenerateDataKey', { KeyId: keyId, NumberOfBytes: 0 }, admin))).toBe('ValidationException');
    expect((await kms.call('GenerateDataKey', { KeyId: keyId, NumberOfBytes: 1024 }, admin)).CiphertextBlob).toBeInstanceOf(Uint8Array);
  });

  it('Encrypt limits: 1..4096 bytes; blob ≤ 6144', async () => {
    expect(await awsError(kms.call('Encrypt', { KeyId: keyId, Plaintext: new Uint8Array(0) }, admin))).toBe('ValidationException');
    expect(await awsError(kms.call('Encrypt', { KeyId: keyId, Plaintext: new Uint8Array(4097) }, admin))).toBe('ValidationException');
    const e = await kms.call('Encrypt', { KeyId: keyId, Plaintext: new Uint8Array(4096) }, admin);
    expect((e.CiphertextBlob as Uint8Array).length).toBeLessThanOrEqual(6144);
  });

  it('ReEncrypt moves a ciphertext to another key without exposing plaintext', async () => {
    const dst = ((await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string; Arn: string });
    const e = await kms.call('Encrypt', { KeyId: keyId, Plaintext: Buffer.from('move me'), EncryptionContext: { s: '1' } }, admin);
    const r = await kms.call('ReEncrypt', { CiphertextBlob: e.CiphertextBlob, SourceEncryptionContext: { s: '1' }, DestinationKeyId: dst.KeyId, DestinationEncryptionContext: { d: '2' } }, admin);
    expect(r).toMatchObject({ SourceKeyId: arn, KeyId: dst.Arn, SourceEncryptionAlgorithm: 'SYMMETRIC_DEFAULT' });
    expect(r.Plaintext).toBeUndefined();
    const d = await kms.call('Decrypt', { CiphertextBlob: r.CiphertextBlob, EncryptionContext: { d: '2' } }, admin);
    expect(Buffer.from(d.Plaintext as Uint8Array).toString()).toBe('move me');
    expect(await awsError(kms.call('ReEncrypt', { CiphertextBlob: e.CiphertextBlob, DestinationKeyId: dst.KeyId }, admin))).toBe('InvalidCiphertextException');
  });

  it('GenerateRandom', async () => {
    const r = await kms.call('GenerateRandom', { NumberOfBytes: 48 }, admin);
    expect((r.Plaintext as Uint8Array).length).toBe(48);
    // Named with its value, as AWS names a number out of range.
    await expect(kms.call('GenerateRandom', { NumberOfBytes: 1025 }, admin)).rejects.toMatchObject({
      awsName: 'ValidationException', message: "1 validation error detected: Value '1025' at 'numberOfBytes' failed to satisfy constraint: Member must have value less than or equal to 1024",
    });
    // NumberOfBytes is required, not 32 by default.
    await expect(kms.call('GenerateRandom', {}, admin)).rejects.toMatchObject({
      awsName: 'ValidationException', message: "1 validation error detected: Value null at 'numberOfBytes' failed to satisfy constraint: Member must not be null",
    });
    // No custom key stores here: any CustomKeyStoreId names none.
    await expect(kms.call('GenerateRandom', { NumberOfBytes: 16, CustomKeyStoreId: 'cks-1234567890abcdef0' }, admin)).rejects.toMatchObject({
      awsName: 'CustomKeyStoreNotFoundException', message: expect.stringContaining('cks-1234567890abcdef0'),
    });
  });

  it('unknown keys, bad ARNs, other accounts, unknown operations', async () => {
    expect(await awsError(kms.call('Encrypt', { KeyId: '00000000-0000-0000-0000-000000000000', Plaintext: Buffer.from('x') }, admin))).toBe('NotFoundException');
    expect(await awsError(kms.call('Encrypt', { KeyId: 'alias/nope', Plaintext: Buffer.from('x') }, admin))).toBe('NotFoundException');
    expect(await awsError(kms.call('DescribeKey', { KeyId: 'arn:aws:kms:bogus' }, admin))).toBe('InvalidArnException');
    expect(await awsError(kms.call('DescribeKey', {}, admin))).toBe('ValidationException');
    expect(await awsError(kms.call('DescribeKey', { KeyId: keyId }, stranger))).toBe('AccessDeniedException');
    expect(await awsError(kms.call('NoSuchOp', {}, admin))).toBe('UnknownOperationException');
  });

  it('key state matrix: Disabled and PendingDeletion', async () => {
    const k = ((await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string });
    const e = await kms.call('Encrypt', { KeyId: k.KeyId, Plaintext: Buffer.from('x') }, admin);
    await kms.call('DisableKey', { KeyId: k.KeyId }, admin);
    expect(await awsError(kms.call('Decrypt', { CiphertextBlob: e.CiphertextBlob }, admin))).toBe('DisabledException');
    expect(await awsError(kms.call('GenerateDataKeyWithoutPlaintext', { KeyId: k.KeyId, NumberOfBytes: 64 }, admin))).toBe('DisabledException');
    expect((await kms.call('DescribeKey', { KeyId: k.KeyId }, admin)).KeyMetadata).toMatchObject({ KeyState: 'Disabled', Enabled: false });
    await kms.call('UpdateKeyDescription', { KeyId: k.KeyId, Description: 'still ok' }, admin);
    expect(await awsError(kms.call('CancelKeyDeletion', { KeyId: k.KeyId }, admin))).toBe('KMSInvalidStateException');
    const s = await kms.call('ScheduleKeyDeletion', { KeyId: k.KeyId, PendingWindowInDays: 7 }, admin);
    expect(s).toMatchObject({ KeyState: 'PendingDeletion', PendingWindowInDays: 7 });
    expect(await awsError(kms.call('Decrypt', { CiphertextBlob: e.CiphertextBlob }, admin))).toBe('KMSInvalidStateException');
    expect(await awsError(kms.call('EnableKey', { KeyId: k.KeyId }, admin))).toBe('KMSInvalidStateException');
    expect(await awsError(kms.call('UpdateKeyDescription', { KeyId: k.KeyId, Description: 'no' }, admin))).toBe('KMSInvalidStateException');
    expect(await awsError(kms.call('ScheduleKeyDeletion', { KeyId: k.KeyId, PendingWindowInDays: 6 }, admin))).toBe('ValidationException');
    await kms.call('CancelKeyDeletion', { KeyId: k.KeyId }, admin);
    expect((await kms.call('DescribeKey', { KeyId: k.KeyId }, admin)).KeyMetadata).toMatchObject({ KeyState: 'Disabled' });
    await kms.call('EnableKey', { KeyId: k.KeyId }, admin);
    expect(Buffer.from((await kms.call('Decrypt', { CiphertextBlob: e.CiphertextBlob }, admin)).Plaintext as Uint8Array).toString()).toBe('x');
    expect(await awsError(kms.call('EnableKey', { KeyId: 'alias/app' }, admin))).toBe('NotFoundException');
  });

  it('ListKeys pages with Limit/Marker', async () => {
    const all: string[] = [];
    let Marker: string | undefined;
    do {
      const r = await kms.call('ListKeys', { Limit: 2, ...(Marker ? { Marker } : {}) }, admin);
      all.push(...(r.Keys as { KeyId: string }[]).map((k) => k.KeyId));
      Marker = r.Truncated ? (r.NextMarker as string) : undefined;
    } while (Marker);
    expect(all).toContain(keyId);
    expect(new Set(all).size).toBe(all.length);
    expect(await awsError(kms.call('ListKeys', { Marker: 'bogus' }, admin))).toBe('InvalidMarkerException');
    expect(await awsError(kms.call('ListKeys', { Limit: 1001 }, admin))).toBe('ValidationException');
  });

  it('aliases: naming rules, uniqueness, update, delete, list', async () => {
    expect(await awsError(kms.call('CreateAlias', { AliasName: 'app2', TargetKeyId: keyId }, admin))).toBe('InvalidAliasNameException');
    expect(await awsError(kms.call('CreateAlias', { AliasName: 'alias/aws/mine', TargetKeyId: keyId }, admin))).toBe('InvalidAliasNameException');
    expect(await awsError(kms.call('CreateAlias', { AliasName: 'alias/bad name', TargetKeyId: keyId }, admin))).toBe('InvalidAliasNameException');
    expect(await awsError(kms.call('CreateAlias', { AliasName: 'alias/app', TargetKeyId: keyId }, admin))).toBe('AlreadyExistsException');
    expect(await awsError(kms.call('CreateAlias', { AliasName: 'alias/x', TargetKeyId: 'alias/app' }, admin))).toBe('NotFoundException');
    const k2 = ((await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string });
    await kms.call('CreateAlias', { AliasName: 'alias/moving', TargetKeyId: keyId }, admin);
    await kms.call('UpdateAlias', { AliasName: 'alias/moving', TargetKeyId: k2.KeyId }, admin);
    const l = await kms.call('ListAliases', { KeyId: k2.KeyId }, admin);
    expect((l.Aliases as { AliasName: string }[]).map((a) => a.AliasName)).toEqual(['alias/moving']);
    const hm = ((await kms.call('CreateKey', { KeySpec: 'HMAC_256', KeyUsage: 'GENERATE_VERIFY_MAC' }, admin)).KeyMetadata as { KeyId: string });
    expect(await awsError(kms.call('UpdateAlias', { AliasName: 'alias/moving', TargetKeyId: hm.KeyId }, admin))).toBe('ValidationException');
    await kms.call('DeleteAlias', { AliasName: 'alias/moving' }, admin);
    expect(await awsError(kms.call('DeleteAlias', { AliasName: 'alias/moving' }, admin))).toBe('NotFoundException');
    expect(await awsError(kms.call('UpdateAlias', { AliasName: 'alias/moving', TargetKeyId: keyId }, admin))).toBe('NotFoundException');
  });

  it('tags', async () => {
    await kms.call('TagResource', { KeyId: keyId, Tags: [{ TagKey: 'env', TagValue: 'prod' }, { TagKey: 'app', TagValue: 'y' }] }, admin);
    let r = await kms.call('ListResourceTags', { KeyId: keyId }, admin);
    expect(r.Tags).toEqual([{ TagKey: 'app', TagValue: 'y' }, { TagKey: 'env', TagValue: 'prod' }]);
    await kms.call('UntagResource', { KeyId: keyId, TagKeys: ['app'] }, admin);
    r = await kms.call('ListResourceTags', { KeyId: keyId }, admin);
    expect(r.Tags).toEqual([{ TagKey: 'env', TagValue: 'prod' }]);
    expect(await awsError(kms.call('TagResource', { KeyId: keyId, Tags: [{ TagKey: 'aws:x', TagValue: 'v' }] }, admin))).toBe('TagException');
  });

  it('duplicate tag keys in one request: TagException naming the key, nothing stored (CreateKey and TagResource)', async () => {
    const dup = [{ TagKey: 'a', TagValue: '1' }, { TagKey: 'a', TagValue: '2' }];
    const refusal = (p: Promise<unknown>) => p.then(() => 'no error', (e: { awsName?: string; message: string }) => `${e.awsName}: ${e.message}`);
    const before = (await kms.call('ListKeys', {}, admin)).Keys as unknown[];
    expect(await refusal(kms.call('CreateKey', { Tags: dup }, admin))).toMatch(/^TagException: .*"a"/);
    expect((await kms.call('ListKeys', {}, admin)).Keys).toHaveLength(before.length);
    const k = ((await kms.call('CreateKey', { Tags: [{ TagKey: 'a', TagValue: '0' }] }, admin)).KeyMetadata as { KeyId: string }).KeyId;
    expect(await refusal(kms.call('TagResource', { KeyId: k, Tags: [...dup, { TagKey: 'b', TagValue: '3' }] }, admin))).toMatch(/^TagException: .*"a"/);
    expect((await kms.call('ListResourceTags', { KeyId: k }, admin)).Tags).toEqual([{ TagKey: 'a', TagValue: '0' }]);
  });

  it('CreateKey validation', async () => {
    expect(await awsError(kms.call('CreateKey', { KeySpec: 'SYMMETRIC_DEFAULT', KeyUsage: 'SIGN_VERIFY' }, admin))).toBe('ValidationException');
    expect(await awsError(kms.call('CreateKey', { KeySpec: 'RSA_1024' }, admin))).toBe('ValidationException');
    // KeySpec and its deprecated twin CustomerMasterKeySpec: one or the other, not both (not even equal).
    const before = ((await kms.call('ListKeys', {}, admin)).Keys as unknown[]).length;
    expect(await awsError(kms.call('CreateKey', { KeySpec: 'RSA_2048', CustomerMasterKeySpec: 'SYMMETRIC_DEFAULT', KeyUsage: 'ENCRYPT_DECRYPT' }, admin))).toBe('ValidationException');
    expect(await awsError(kms.call('CreateKey', { KeySpec: 'SYMMETRIC_DEFAULT', CustomerMasterKeySpec: 'SYMMETRIC_DEFAULT' }, admin))).toBe('ValidationException');
    expect(((await kms.call('ListKeys', {}, admin)).Keys as unknown[]).length).toBe(before);
    expect((await kms.call('CreateKey', { CustomerMasterKeySpec: 'HMAC_256', KeyUsage: 'GENERATE_VERIFY_MAC' }, admin)).KeyMetadata).toMatchObject({ KeySpec: 'HMAC_256', CustomerMasterKeySpec: 'HMAC_256' });
    expect(await awsError(kms.call('CreateKey', { Policy: '{not json' }, admin))).toBe('MalformedPolicyDocumentException');
    expect(await awsError(kms.call('CreateKey', { Origin: 'EXTERNAL' }, admin))).toBe('UnsupportedOperationException');
    const p = JSON.stringify({ Version: '2012-10-17', Statement: [] });
    const k = await kms.call('CreateKey', { Policy: p }, admin);
    expect(storedKeyPolicy(t.dir, (k.KeyMetadata as { KeyId: string }).KeyId)).toBe(p);
    expect(JSON.parse(storedKeyPolicy(t.dir, keyId)).Statement[0].Principal.AWS).toBe('arn:aws:iam::111122223333:root');
  });

  it('alias/aws/ebs is created on first use as an AWS managed key', async () => {
    const w = await kms.call('GenerateDataKeyWithoutPlaintext', { KeyId: 'alias/aws/ebs', NumberOfBytes: 64 }, admin);
    const md = (await kms.call('DescribeKey', { KeyId: 'alias/aws/ebs' }, admin)).KeyMetadata as Record<string, unknown>;
    expect(md.KeyManager).toBe('AWS');
    expect(w.KeyId).toBe(md.Arn);
    expect(await awsError(kms.call('ScheduleKeyDeletion', { KeyId: md.KeyId }, admin))).toBe('UnsupportedOperationException');
    expect(JSON.parse(storedKeyPolicy(t.dir, md.KeyId as string)).Id).toBe('auto-ebs-2');
  });

  it('registerOperation extends the table; handlers that skip authorize fail closed', async () => {
    kms.registerOperation('EchoKeyArn', async (ctx, call) => {
      const { key } = await ctx.resolveKey(call.request.KeyId as string);
      await call.authorize({ key, stateCheck: false });
      return { Arn: key.arn };
    });
    expect((await kms.call('EchoKeyArn', { KeyId: keyId }, admin)).Arn).toBe(arn);
    kms.registerOperation('Sneaky', async () => ({}));
    expect(await awsError(kms.call('Sneaky', {}, admin))).toBe('KMSInternalException');
  });
});
