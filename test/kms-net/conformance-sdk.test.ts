/**
 * The KMS conformance fixes as an @aws-sdk/client-kms user sees them, against the daemon as a child
 * process (test/kms/conformance.test.ts checks each in the core): the key material members the SDK's
 * model has, and the typed exceptions for a 51st alias and a Decrypt missing its algorithm.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  KMSClient, CreateAliasCommand, CreateKeyCommand, DecryptCommand, DescribeKeyCommand, EncryptCommand, GenerateDataKeyCommand,
  InvalidKeyUsageException, LimitExceededException, ReEncryptCommand,
} from '@aws-sdk/client-kms';
import { KMS_ADMIN_POLICY, makeAccessKey, startKmsDaemon } from './helpers.js';
import { Env, ensureBuilt } from '../e2e/helpers.js';

describe('KMS conformance through @aws-sdk/client-kms', () => {
  const env = new Env('kmsconf');
  let kms: KMSClient;

  beforeAll(async () => {
    ensureBuilt();
    const { url } = await startKmsDaemon(env);
    const { key } = await makeAccessKey(env, 'admin', KMS_ADMIN_POLICY);
    kms = new KMSClient({ endpoint: url, region: 'us-east-1', credentials: { accessKeyId: key.AccessKeyId, secretAccessKey: key.SecretAccessKey }, maxAttempts: 1 });
  }, 120_000);
  afterAll(() => env.cleanup());

  it('GenerateDataKey, Decrypt and ReEncrypt name the key material they used', async () => {
    const keyId = (await kms.send(new CreateKeyCommand({}))).KeyMetadata!.KeyId!;
    const current = (await kms.send(new DescribeKeyCommand({ KeyId: keyId }))).KeyMetadata!.CurrentKeyMaterialId!;
    expect(current).toMatch(/^[0-9a-f]{64}$/);
    const dk = await kms.send(new GenerateDataKeyCommand({ KeyId: keyId, KeySpec: 'AES_256' }));
    expect(dk.KeyMaterialId).toBe(current);
    const d = await kms.send(new DecryptCommand({ CiphertextBlob: dk.CiphertextBlob! }));
    expect(d.KeyMaterialId).toBe(current);
    expect(Buffer.from(d.Plaintext!).equals(Buffer.from(dk.Plaintext!))).toBe(true);
    const re = await kms.send(new ReEncryptCommand({ CiphertextBlob: dk.CiphertextBlob!, DestinationKeyId: keyId }));
    expect([re.SourceKeyMaterialId, re.DestinationKeyMaterialId]).toEqual([current, current]);
  });

  it('a 51st alias on a key is LimitExceededException; Decrypt naming an RSA key without its algorithm is InvalidKeyUsageException', async () => {
    const keyId = (await kms.send(new CreateKeyCommand({}))).KeyMetadata!.KeyId!;
    for (let i = 0; i < 50; i++) await kms.send(new CreateAliasCommand({ AliasName: `alias/sdk-${i}`, TargetKeyId: keyId }));
    await expect(kms.send(new CreateAliasCommand({ AliasName: 'alias/sdk-50', TargetKeyId: keyId }))).rejects.toBeInstanceOf(LimitExceededException);

    const rsa = (await kms.send(new CreateKeyCommand({ KeySpec: 'RSA_2048', KeyUsage: 'ENCRYPT_DECRYPT' }))).KeyMetadata!.KeyId!;
    const blob = (await kms.send(new EncryptCommand({ KeyId: rsa, Plaintext: Buffer.from('x'), EncryptionAlgorithm: 'RSAES_OAEP_SHA_256' }))).CiphertextBlob!;
    await expect(kms.send(new DecryptCommand({ KeyId: rsa, CiphertextBlob: blob }))).rejects.toBeInstanceOf(InvalidKeyUsageException);
  });
});
