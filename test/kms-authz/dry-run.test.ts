import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Kms } from '../../src/kms/open-kms.js';
import type { Caller } from '../../src/kms/types.js';
import { awsName, openTestKms, tempDir } from './helpers.js';

/**
 * DryRun (docs/architecture.md §5.4), through the real core wired as the
 * daemon wires it: DryRunOperationException only where the real call would
 * have succeeded (authorization, key usage, algorithm, ciphertext, grant
 * existence), without its effect or its answer; honoured only by the
 * operations whose request has the member, ignored by the others.
 */
let t: ReturnType<typeof tempDir>;
let kms: Kms;
let root: Caller;
let alice: Caller;
const keys = { sym: '', ecc: '', hmac: '', rsa: '' };
const DRY = 'DryRunOperationException';

const call = (op: string, req: Record<string, unknown>, caller: Caller = root): Promise<Record<string, any>> => kms.core.call(op, req, caller);
const keyIds = async (): Promise<string[]> => (await call('ListKeys', {})).Keys.map((k: { KeyId: string }) => k.KeyId);

beforeAll(async () => {
  t = tempDir('ebsd-dry-run-');
  kms = await openTestKms(t.dir);
  root = kms.identities.callerForUid(0);
  await kms.identities.createUser('alice');
  await kms.identities.mapUid(1000, 'user/alice');
  alice = kms.identities.callerForUid(1000);
  const mk = async (KeySpec: string, KeyUsage: string): Promise<string> => (await call('CreateKey', { KeySpec, KeyUsage })).KeyMetadata.KeyId;
  keys.sym = await mk('SYMMETRIC_DEFAULT', 'ENCRYPT_DECRYPT');
  keys.ecc = await mk('ECC_NIST_P256', 'SIGN_VERIFY');
  keys.hmac = await mk('HMAC_256', 'GENERATE_VERIFY_MAC');
  keys.rsa = await mk('RSA_2048', 'ENCRYPT_DECRYPT');
}, 60_000);

afterAll(async () => {
  await kms?.close();
  t?.cleanup();
});

describe('DryRun on an operation without the member is ignored', () => {
  it('CreateKey with DryRun creates the key; ScheduleKeyDeletion and TagResource with DryRun take effect', async () => {
    const before = await keyIds();
    const created = await call('CreateKey', { Description: 'dry', DryRun: true });
    expect(created.KeyMetadata.Description).toBe('dry');
    expect(await keyIds()).toEqual([...before, created.KeyMetadata.KeyId].sort());
    const keyId = created.KeyMetadata.KeyId as string;
    await call('TagResource', { KeyId: keyId, Tags: [{ TagKey: 'k', TagValue: 'v' }], DryRun: true });
    expect((await call('ListResourceTags', { KeyId: keyId })).Tags).toEqual([{ TagKey: 'k', TagValue: 'v' }]);
    await call('ScheduleKeyDeletion', { KeyId: keyId, PendingWindowInDays: 7, DryRun: true });
    expect((await call('DescribeKey', { KeyId: keyId })).KeyMetadata.KeyState).toBe('PendingDeletion');
    expect((await call('GenerateRandom', { NumberOfBytes: 8, DryRun: true })).Plaintext).toHaveLength(8);
  });

  it('its type is still checked, as every member\'s is: DryRun "yes" on CreateKey is a ValidationException and creates nothing', async () => {
    const before = await keyIds();
    expect(await awsName(call('CreateKey', { DryRun: 'yes' }))).toBe('ValidationException');
    expect(await keyIds()).toEqual(before);
  });
});

describe('DryRun answers DryRunOperationException only where the real call would succeed', () => {
  const pt = Buffer.from('dry run');
  const dry = (op: string, req: Record<string, unknown>, caller: Caller = root): Promise<string> => awsName(call(op, { ...req, DryRun: true }, caller));

  it('Encrypt and GenerateDataKey*: key usage, algorithm and parameters are checked before the stop', async () => {
    expect(await dry('Encrypt', { KeyId: keys.sym, Plaintext: pt })).toBe(DRY);
    expect(await dry('Encrypt', { KeyId: keys.ecc, Plaintext: pt })).toBe('InvalidKeyUsageException');
    expect(await dry('Encrypt', { KeyId: keys.sym, Plaintext: pt, EncryptionAlgorithm: 'RSAES_OAEP_SHA_256' })).toBe('InvalidKeyUsageException');
    expect(await dry('Encrypt', { KeyId: keys.rsa, Plaintext: pt, EncryptionAlgorithm: 'RSAES_OAEP_SHA_256', EncryptionContext: { a: 'b' } })).toBe('ValidationException');
    expect(await dry('Encrypt', { KeyId: keys.rsa, Plaintext: Buffer.alloc(4000), EncryptionAlgorithm: 'RSAES_OAEP_SHA_256' })).toBe('ValidationException');
    expect(await dry('Encrypt', { KeyId: keys.rsa, Plaintext: pt, EncryptionAlgorithm: 'RSAES_OAEP_SHA_256' })).toBe(DRY);
    for (const op of ['GenerateDataKey', 'GenerateDataKeyWithoutPlaintext']) {
      expect(await dry(op, { KeyId: keys.sym, KeySpec: 'AES_256' })).toBe(DRY);
      expect(await dry(op, { KeyId: keys.rsa, KeySpec: 'AES_256' })).toBe('InvalidKeyUsageException');
    }
    for (const op of ['GenerateDataKeyPair', 'GenerateDataKeyPairWithoutPlaintext']) {
      expect(await dry(op, { KeyId: keys.sym, KeyPairSpec: 'ECC_NIST_P256' })).toBe(DRY);
      expect(await dry(op, { KeyId: keys.ecc, KeyPairSpec: 'ECC_NIST_P256' })).toBe('InvalidKeyUsageException');
    }
    // Authorization still comes first.
    expect(await dry('Encrypt', { KeyId: keys.sym, Plaintext: pt }, alice)).toBe('AccessDeniedException');
  });

  it('Sign, Verify, GenerateMac, VerifyMac: usage and algorithm checked; a wrong signature or MAC fails', async () => {
    const Message = Buffer.from('message');
    expect(await dry('Sign', { KeyId: keys.ecc, Message, SigningAlgorithm: 'ECDSA_SHA_256' })).toBe(DRY);
    expect(await dry('Sign', { KeyId: keys.ecc, Message, SigningAlgorithm: 'RSASSA_PSS_SHA_256' })).toBe('InvalidKeyUsageException');
    expect(await dry('Sign', { KeyId: keys.sym, Message, SigningAlgorithm: 'ECDSA_SHA_256' })).toBe('InvalidKeyUsageException');
    const { Signature } = await call('Sign', { KeyId: keys.ecc, Message, SigningAlgorithm: 'ECDSA_SHA_256' });
    expect(await dry('Verify', { KeyId: keys.ecc, Message, Signature, SigningAlgorithm: 'ECDSA_SHA_256' })).toBe(DRY);
    expect(await dry('Verify', { KeyId: keys.ecc, Message: Buffer.from('other'), Signature, SigningAlgorithm: 'ECDSA_SHA_256' })).toBe('KMSInvalidSignatureException');
    expect(await dry('GenerateMac', { KeyId: keys.hmac, Message, MacAlgorithm: 'HMAC_SHA_256' })).toBe(DRY);
    expect(await dry('GenerateMac', { KeyId: keys.hmac, Message, MacAlgorithm: 'HMAC_SHA_384' })).toBe('InvalidKeyUsageException');
    expect(await dry('GenerateMac', { KeyId: keys.ecc, Message, MacAlgorithm: 'HMAC_SHA_256' })).toBe('InvalidKeyUsageException');
    const { Mac } = await call('GenerateMac', { KeyId: keys.hmac, Message, MacAlgorithm: 'HMAC_SHA_256' });
    expect(await dry('VerifyMac', { KeyId: keys.hmac, Message, Mac, MacAlgorithm: 'HMAC_SHA_256' })).toBe(DRY);
    expect(await dry('VerifyMac', { KeyId: keys.hmac, Message, Mac: Buffer.alloc(32), MacAlgorithm: 'HMAC_SHA_256' })).toBe('KMSInvalidMacException');
  });

  it('Decrypt validates the ciphertext (and answers no plaintext) unless DryRunModifiers is IGNORE_CIPHERTEXT', async () => {
    const ec = { purpose: 'dry-run' };
    const { CiphertextBlob } = await call('Encrypt', { KeyId: keys.sym, Plaintext: pt, EncryptionContext: ec });
    const tampered = Buffer.from(CiphertextBlob as Uint8Array);
    tampered[tampered.length - 1]! ^= 1;
    const e = await call('Decrypt', { CiphertextBlob, EncryptionContext: ec, DryRun: true }).then(() => undefined, (x: unknown) => x as Record<string, unknown>);
    expect(e).toMatchObject({ awsName: DRY });
    expect(e).not.toHaveProperty('Plaintext');
    expect(await dry('Decrypt', { CiphertextBlob, EncryptionContext: { purpose: 'other' } })).toBe('InvalidCiphertextException');
    expect(await dry('Decrypt', { CiphertextBlob: tampered, EncryptionContext: ec })).toBe('InvalidCiphertextException');
    expect(await dry('Decrypt', { CiphertextBlob, EncryptionContext: ec, KeyId: keys.rsa })).toBe('IncorrectKeyException');
    // IGNORE_CIPHERTEXT: authorization (and the key's usage) only; the request names the key.
    const ignore = { DryRunModifiers: ['IGNORE_CIPHERTEXT'] };
    expect(await dry('Decrypt', { ...ignore, KeyId: keys.sym })).toBe(DRY);
    expect(await dry('Decrypt', { ...ignore, KeyId: keys.sym, CiphertextBlob: tampered })).toBe(DRY);
    expect(await dry('Decrypt', { ...ignore, KeyId: keys.ecc })).toBe('InvalidKeyUsageException');
    expect(await dry('Decrypt', { ...ignore, KeyId: keys.sym }, alice)).toBe('AccessDeniedException');
    expect(await dry('Decrypt', { ...ignore, CiphertextBlob })).toBe('ValidationException');
    // Without DryRun the modifier changes nothing: the ciphertext is required and read.
    expect(await awsName(call('Decrypt', { ...ignore, KeyId: keys.sym }))).toBe('ValidationException');
    expect(Buffer.from((await call('Decrypt', { ...ignore, CiphertextBlob, EncryptionContext: ec })).Plaintext).toString()).toBe('dry run');
    // DryRunModifiers: a list of the enum.
    expect(await dry('Decrypt', { CiphertextBlob, EncryptionContext: ec, DryRunModifiers: ['IGNORE_PLAINTEXT'] })).toBe('ValidationException');
    expect(await dry('Decrypt', { CiphertextBlob, EncryptionContext: ec, DryRunModifiers: 'IGNORE_CIPHERTEXT' })).toBe('ValidationException');
    expect(await dry('Decrypt', { CiphertextBlob, EncryptionContext: ec, DryRunModifiers: [] })).toBe(DRY);
  });

  it('ReEncrypt validates the ciphertext and both keys unless IGNORE_CIPHERTEXT', async () => {
    const { CiphertextBlob } = await call('Encrypt', { KeyId: keys.sym, Plaintext: pt });
    const tampered = Buffer.from(CiphertextBlob as Uint8Array);
    tampered[tampered.length - 1]! ^= 1;
    expect(await dry('ReEncrypt', { CiphertextBlob, DestinationKeyId: keys.sym })).toBe(DRY);
    expect(await dry('ReEncrypt', { CiphertextBlob: tampered, DestinationKeyId: keys.sym })).toBe('InvalidCiphertextException');
    expect(await dry('ReEncrypt', { CiphertextBlob, DestinationKeyId: keys.ecc })).toBe('InvalidKeyUsageException');
    const ignore = { DryRunModifiers: ['IGNORE_CIPHERTEXT'] };
    expect(await dry('ReEncrypt', { ...ignore, SourceKeyId: keys.sym, DestinationKeyId: keys.sym })).toBe(DRY);
    expect(await dry('ReEncrypt', { ...ignore, CiphertextBlob: tampered, SourceKeyId: keys.sym, DestinationKeyId: keys.sym })).toBe(DRY);
    expect(await dry('ReEncrypt', { ...ignore, CiphertextBlob, DestinationKeyId: keys.sym })).toBe('ValidationException');
  });

  it('CreateGrant, RetireGrant, RevokeGrant: the grant must exist; nothing is created or removed', async () => {
    const grant = { KeyId: keys.sym, GranteePrincipal: alice.arn, Operations: ['Decrypt'] };
    const grantIds = async (): Promise<string[]> => (await call('ListGrants', { KeyId: keys.sym })).Grants.map((g: { GrantId: string }) => g.GrantId);
    expect(await dry('CreateGrant', grant)).toBe(DRY);
    expect(await dry('CreateGrant', { ...grant, Operations: ['Sign'] })).toBe('ValidationException');
    expect(await grantIds()).toEqual([]);
    const { GrantId } = await call('CreateGrant', grant);
    const missing = 'f'.repeat(64);
    expect(await dry('RevokeGrant', { KeyId: keys.sym, GrantId: missing })).toBe('NotFoundException');
    expect(await dry('RetireGrant', { KeyId: keys.sym, GrantId: missing })).toBe('NotFoundException');
    expect(await dry('RevokeGrant', { KeyId: keys.sym, GrantId })).toBe(DRY);
    expect(await dry('RetireGrant', { KeyId: keys.sym, GrantId })).toBe(DRY);
    expect(await grantIds()).toEqual([GrantId]);
  });
});

describe('the dispatcher holds handlers to the dry-run contract', () => {
  it('a handler of a DryRun operation that returns without stopping, or stops before authorizing, answers KMSInternalException', async () => {
    // DeriveSharedSecret has a DryRun member and no handler in ebsd: a stand-in registered from outside.
    kms.core.registerOperation('DeriveSharedSecret', async (_ctx, c) => {
      await c.authorize({});
      return { SharedSecret: new Uint8Array(32) };
    });
    expect((await call('DeriveSharedSecret', {})).SharedSecret).toHaveLength(32);
    const e = await call('DeriveSharedSecret', { DryRun: true }).then(() => undefined, (x: unknown) => x as Record<string, unknown>);
    expect(e).toMatchObject({ awsName: 'KMSInternalException', code: 'KMS_DRY_RUN_NOT_STOPPED' });
    kms.core.registerOperation('DeriveSharedSecret', async (_ctx, c) => {
      c.stopIfDryRun();
      await c.authorize({});
      return {};
    });
    expect(await awsName(call('DeriveSharedSecret', { DryRun: true }, alice))).toBe('KMSInternalException');
  });
});
