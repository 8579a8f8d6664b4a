/**
 * KeyService.reEncrypt, one suite run against both implementations: the
 * embedded core (KmsCoreKeyService) and AwsKeyService over @aws-sdk/client-kms
 * against a real `ebsd daemon --kms-only --kms-listen` on loopback. What a
 * restore under the snapshot's key relies on: the wrapped data key is bound
 * to a new context without changing the key, the old context no longer opens
 * the new blob, and a refusal keeps its AWS name.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Caller } from '../../src/kms/types.js';
import { AwsKeyService } from '../../src/volume/aws-key-service.js';
import type { KeyService } from '../../src/volume/key-service.js';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { tempDir } from '../helpers/temp-dir.js';
import { startKmsDaemon } from '../kms-net/helpers.js';
import { kmsHarness, VIA, type KmsHarness } from './helpers/kms.js';

interface Impl {
  ks: KeyService;
  caller: Caller;
  keyA: string;
  keyB: string;
  disable(arn: string): Promise<void>;
  enable(arn: string): Promise<void>;
}

const A = { 'aws:ebs:id': 'snap-0123456789abcdef0' };
const B = { 'aws:ebs:id': 'vol-0fedcba9876543210' };

function runReEncryptSuite(name: string, impl: () => Impl): void {
  describe(`KeyService.reEncrypt: ${name}`, () => {
    it('same key: the data key is unchanged, bound to the new context; the old context no longer opens the new blob', async () => {
      const { ks, caller, keyA } = impl();
      const gen = await ks.generateDataKeyWithoutPlaintext({ KeyId: keyA, NumberOfBytes: 64, EncryptionContext: A }, caller);
      const before = (await ks.decrypt({ CiphertextBlob: gen.CiphertextBlob, EncryptionContext: A }, caller)).Plaintext;
      const r = await ks.reEncrypt({ CiphertextBlob: gen.CiphertextBlob, SourceKeyId: keyA, SourceEncryptionContext: A, DestinationKeyId: keyA, DestinationEncryptionContext: B }, caller);
      expect(r).toMatchObject({ KeyId: keyA, SourceKeyId: keyA });
      expect(Buffer.from(r.CiphertextBlob).equals(Buffer.from(gen.CiphertextBlob))).toBe(false);
      const after = (await ks.decrypt({ CiphertextBlob: r.CiphertextBlob, EncryptionContext: B }, caller)).Plaintext;
      expect(Buffer.from(after).equals(Buffer.from(before))).toBe(true);
      await expect(ks.decrypt({ CiphertextBlob: r.CiphertextBlob, EncryptionContext: A }, caller)).rejects.toMatchObject({ awsName: 'InvalidCiphertextException', authoritative: true });
    });

    it('to another key: KeyId names the destination; a disabled source key is an authoritative DisabledException', async () => {
      const { ks, caller, keyA, keyB, disable, enable } = impl();
      const gen = await ks.generateDataKeyWithoutPlaintext({ KeyId: keyA, NumberOfBytes: 64, EncryptionContext: A }, caller);
      const r = await ks.reEncrypt({ CiphertextBlob: gen.CiphertextBlob, SourceEncryptionContext: A, DestinationKeyId: keyB, DestinationEncryptionContext: B }, caller);
      expect(r).toMatchObject({ KeyId: keyB, SourceKeyId: keyA });
      expect((await ks.decrypt({ CiphertextBlob: r.CiphertextBlob, EncryptionContext: B }, caller)).KeyId).toBe(keyB);
      await disable(keyA);
      try {
        await expect(ks.reEncrypt({ CiphertextBlob: gen.CiphertextBlob, SourceEncryptionContext: A, DestinationKeyId: keyA, DestinationEncryptionContext: B }, caller))
          .rejects.toMatchObject({ awsName: 'DisabledException', authoritative: true });
      } finally {
        await enable(keyA);
      }
    });
  });
}

// ---- the embedded core -------------------------------------------------------
let core: KmsHarness;
let coreImpl: Impl;
const coreDir = tempDir('ebsd-reencrypt-');
beforeAll(async () => {
  core = await kmsHarness(coreDir.dir);
  // The account root: the default key policy allows it everything (ReEncrypt* included).
  coreImpl = {
    ks: core.keyService, caller: { ...core.root, viaService: VIA },
    keyA: await core.createKey(), keyB: await core.createKey(),
    disable: (a) => core.disableKey(a), enable: (a) => core.enableKey(a),
  };
});
afterAll(async () => {
  await core?.close();
  coreDir.cleanup();
});
runReEncryptSuite('embedded core (KmsCoreKeyService)', () => coreImpl);

// ---- AwsKeyService over the AWS KMS protocol --------------------------------
const VARS = ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_REGION', 'AWS_ENDPOINT_URL', 'AWS_PROFILE', 'AWS_CONFIG_FILE', 'AWS_SHARED_CREDENTIALS_FILE', 'AWS_EC2_METADATA_DISABLED'];
const env = new Env('reencrypt');
const saved = Object.fromEntries(VARS.map((k) => [k, process.env[k]]));
let aws: AwsKeyService | undefined;
let awsImpl: Impl;
beforeAll(async () => {
  ensureBuilt();
  const { url } = await startKmsDaemon(env);
  await env.api('ebsd.IamCreateUser', { UserName: 'host' });
  const cred = (await env.ok(['iam', 'create-access-key', '--user-name', 'host'])).AccessKey;
  await env.api('ebsd.IamPutPolicy', { Principal: 'user/host', PolicyName: 'kms', PolicyDocument: JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'kms:*', Resource: '*' }] }) });
  for (const k of VARS) delete process.env[k];
  Object.assign(process.env, { AWS_ACCESS_KEY_ID: cred.AccessKeyId, AWS_SECRET_ACCESS_KEY: cred.SecretAccessKey, AWS_REGION: 'us-east-1', AWS_ENDPOINT_URL: url, AWS_EC2_METADATA_DISABLED: 'true' });
  aws = new AwsKeyService({ endpoint: url });
  const host = await aws.hostPrincipal();
  const key = async (): Promise<string> => (await env.api('TrentService.CreateKey')).KeyMetadata.Arn;
  awsImpl = {
    ks: aws, caller: host, keyA: await key(), keyB: await key(),
    disable: async (a) => void (await env.api('TrentService.DisableKey', { KeyId: a })),
    enable: async (a) => void (await env.api('TrentService.EnableKey', { KeyId: a })),

  };
}, 60_000);
afterAll(async () => {
  aws?.close();
  for (const k of VARS) if (saved[k] === undefined) delete process.env[k]; else process.env[k] = saved[k];
  await env.cleanup();
});
runReEncryptSuite('AwsKeyService against a --kms-only daemon', () => awsImpl);
