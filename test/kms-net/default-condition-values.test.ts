/**
 * Condition keys carry a value in every request they belong to (docs/architecture.md §5.4): a
 * request member's default when the member is left out (kms:EncryptionAlgorithm SYMMETRIC_DEFAULT
 * for Encrypt, Decrypt, ReEncrypt and every data-key operation; kms:MessageType RAW;
 * kms:ScheduleKeyDeletionPendingWindowInDays 30; kms:RotationPeriodInDays 365), and the request's
 * own facts (kms:MultiRegion false for every key; aws:RequestedRegion for a call without a key;
 * aws:PrincipalIsAWSService false for a user). Else a Deny on the value is passed by leaving the
 * member out, and an Allow of it refuses the SDK's own calls. An Allow of the default value alone
 * pins that the default is a value, and ReEncrypt's two checks each read their own side's
 * algorithm. Real daemon
 * (`--kms-only --kms-listen 127.0.0.1:0`), real @aws-sdk/client-kms.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CreateKeyCommand, DecryptCommand, DescribeKeyCommand, GenerateRandomCommand, ListKeysCommand, EnableKeyRotationCommand, EncryptCommand, GenerateDataKeyCommand, GenerateDataKeyPairCommand, GetKeyRotationStatusCommand,
  KMSClient, ReEncryptCommand, ScheduleKeyDeletionCommand, SignCommand, VerifyCommand,
} from '@aws-sdk/client-kms';
import { REGION, kmsUrl, makeAccessKey, startKmsDaemon, kmsClientFor } from './helpers.js';
import { Env, ensureBuilt } from '../e2e/helpers.js';

describe('condition keys with a default or a fact behind them have a value in every request they belong to', () => {
  const env = new Env('conddefault');
  let admin: KMSClient;
  let user: KMSClient;
  let sym = '';
  let other = '';
  let signing = '';
  const clients: KMSClient[] = [];

  beforeAll(async () => {
    ensureBuilt();
    const { url } = await startKmsDaemon(env);
    const client = (k: { AccessKeyId: string; SecretAccessKey: string }): KMSClient => kmsClientFor(url, k, clients);
    const policy = (...Statement: Record<string, unknown>[]): string => JSON.stringify({ Version: '2012-10-17', Statement });
    admin = client((await makeAccessKey(env, 'admin', policy({ Effect: 'Allow', Action: 'kms:*', Resource: '*' }))).key);
    // The user may do anything with keys, but never symmetric encryption, and may sign only RAW messages.
    user = client((await makeAccessKey(env, 'user', policy(
      { Effect: 'Allow', Action: 'kms:*', Resource: '*' },
      { Sid: 'NoSymmetric', Effect: 'Deny', Action: ['kms:Encrypt', 'kms:Decrypt', 'kms:ReEncrypt*', 'kms:GenerateDataKey*'], Resource: '*', Condition: { StringEquals: { 'kms:EncryptionAlgorithm': 'SYMMETRIC_DEFAULT' } } },
      { Sid: 'RawOnly', Effect: 'Deny', Action: ['kms:Sign', 'kms:Verify'], Resource: '*', Condition: { StringNotEquals: { 'kms:MessageType': 'RAW' } } },
      // The guardrails AWS documents for these two keys: no short deletion window, no rotation more often than half-yearly.
      { Sid: 'LongWindow', Effect: 'Deny', Action: 'kms:ScheduleKeyDeletion', Resource: '*', Condition: { NumericLessThan: { 'kms:ScheduleKeyDeletionPendingWindowInDays': '30' } } },
      { Sid: 'SlowRotation', Effect: 'Deny', Action: 'kms:EnableKeyRotation', Resource: '*', Condition: { NumericLessThan: { 'kms:RotationPeriodInDays': '180' } } },
    ))).key);
    sym = (await admin.send(new CreateKeyCommand({}))).KeyMetadata!.Arn!;
    other = (await admin.send(new CreateKeyCommand({}))).KeyMetadata!.Arn!;
    signing = (await admin.send(new CreateKeyCommand({ KeySpec: 'ECC_NIST_P256', KeyUsage: 'SIGN_VERIFY' }))).KeyMetadata!.Arn!;
  });
  afterAll(async () => {
    for (const c of clients) c.destroy();
    await env.cleanup();
  });

  const outcome = (p: Promise<unknown>): Promise<string> => p.then(() => 'ok', (e: Error) => e.name);
  const kmsEndpoint = async (): Promise<string> => (await kmsUrl(env));
  const singleRegionUser = async (policy: string): Promise<{ accessKeyId: string; secretAccessKey: string }> => {
    const k = (await makeAccessKey(env, 'single', policy)).key;
    return { accessKeyId: k.AccessKeyId, secretAccessKey: k.SecretAccessKey };
  };

  it('a Deny on SYMMETRIC_DEFAULT refuses Encrypt, Decrypt, ReEncrypt and the data-key operations without EncryptionAlgorithm', async () => {
    const blob = (await admin.send(new EncryptCommand({ KeyId: sym, Plaintext: Buffer.from('x') }))).CiphertextBlob!;
    expect(await outcome(user.send(new EncryptCommand({ KeyId: sym, Plaintext: Buffer.from('x') })))).toBe('AccessDeniedException');
    expect(await outcome(user.send(new DecryptCommand({ CiphertextBlob: blob })))).toBe('AccessDeniedException');
    expect(await outcome(user.send(new ReEncryptCommand({ CiphertextBlob: blob, DestinationKeyId: other })))).toBe('AccessDeniedException');
    expect(await outcome(user.send(new GenerateDataKeyCommand({ KeyId: sym, KeySpec: 'AES_256' })))).toBe('AccessDeniedException');
    expect(await outcome(user.send(new GenerateDataKeyPairCommand({ KeyId: sym, KeyPairSpec: 'ECC_NIST_P256' })))).toBe('AccessDeniedException');
    // Named, as before.
    expect(await outcome(user.send(new EncryptCommand({ KeyId: sym, Plaintext: Buffer.from('x'), EncryptionAlgorithm: 'SYMMETRIC_DEFAULT' })))).toBe('AccessDeniedException');
    // The admin, without the Deny, is served.
    expect(await outcome(admin.send(new DecryptCommand({ CiphertextBlob: blob })))).toBe('ok');
  });

  it('a Deny on MessageType other than RAW lets a Sign and Verify without MessageType through (RAW is the default), and refuses DIGEST', async () => {
    const msg = Buffer.from('message');
    const sig = await user.send(new SignCommand({ KeyId: signing, Message: msg, SigningAlgorithm: 'ECDSA_SHA_256' }));
    expect(sig.Signature?.length).toBeGreaterThan(0);
    const v = await user.send(new VerifyCommand({ KeyId: signing, Message: msg, Signature: sig.Signature!, SigningAlgorithm: 'ECDSA_SHA_256' }));
    expect(v.SignatureValid).toBe(true);
    const digest = Buffer.alloc(32, 7);
    expect(await outcome(user.send(new SignCommand({ KeyId: signing, Message: digest, MessageType: 'DIGEST', SigningAlgorithm: 'ECDSA_SHA_256' })))).toBe('AccessDeniedException');
  });

  it('kms:ScheduleKeyDeletionPendingWindowInDays is the request\'s PendingWindowInDays, 30 when left out: a Deny under 30 refuses 7 days', async () => {
    const k = (await admin.send(new CreateKeyCommand({}))).KeyMetadata!.Arn!;
    expect(await outcome(user.send(new ScheduleKeyDeletionCommand({ KeyId: k, PendingWindowInDays: 7 })))).toBe('AccessDeniedException');
    expect((await admin.send(new DescribeKeyCommand({ KeyId: k }))).KeyMetadata!.KeyState).toBe('Enabled');
    const r = await user.send(new ScheduleKeyDeletionCommand({ KeyId: k }));
    expect(r.PendingWindowInDays).toBe(30);
  });

  it('kms:RotationPeriodInDays is the request\'s RotationPeriodInDays, 365 when left out: a Deny under 180 refuses 90 days', async () => {
    const k = (await admin.send(new CreateKeyCommand({}))).KeyMetadata!.Arn!;
    expect(await outcome(user.send(new EnableKeyRotationCommand({ KeyId: k, RotationPeriodInDays: 90 })))).toBe('AccessDeniedException');
    expect((await admin.send(new GetKeyRotationStatusCommand({ KeyId: k }))).KeyRotationEnabled).toBe(false);
    await user.send(new EnableKeyRotationCommand({ KeyId: k }));
    const st = await admin.send(new GetKeyRotationStatusCommand({ KeyId: k }));
    expect([st.KeyRotationEnabled, st.RotationPeriodInDays]).toEqual([true, 365]);
  });

  it('kms:MultiRegion is false for CreateKey and every key: AWS\'s "single-Region keys only" Allow lets the user create and use keys', async () => {
    const p = (...Statement: Record<string, unknown>[]): string => JSON.stringify({ Version: '2012-10-17', Statement });
    const single = new KMSClient({ endpoint: await kmsEndpoint(), region: REGION, credentials: await singleRegionUser(p(
      { Effect: 'Allow', Action: ['kms:CreateKey', 'kms:DescribeKey'], Resource: '*', Condition: { Bool: { 'kms:MultiRegion': 'false' } } },
    )) });
    clients.push(single);
    const k = (await single.send(new CreateKeyCommand({}))).KeyMetadata!.Arn!;
    expect((await single.send(new DescribeKeyCommand({ KeyId: k }))).KeyMetadata!.MultiRegion).toBe(false);
  });

  it('aws:RequestedRegion is the KMS\'s region for calls without a key too: a region lock lets CreateKey, ListKeys and GenerateRandom through', async () => {
    const p = (...Statement: Record<string, unknown>[]): string => JSON.stringify({ Version: '2012-10-17', Statement });
    const k = (await makeAccessKey(env, 'regional', p(
      { Effect: 'Allow', Action: 'kms:*', Resource: '*' },
      { Sid: 'RegionLock', Effect: 'Deny', Action: '*', Resource: '*', Condition: { StringNotEquals: { 'aws:RequestedRegion': [REGION] } } },
    ))).key;
    const regional = new KMSClient({ endpoint: await kmsEndpoint(), region: REGION, credentials: { accessKeyId: k.AccessKeyId, secretAccessKey: k.SecretAccessKey } });
    clients.push(regional);
    const key = (await regional.send(new CreateKeyCommand({}))).KeyMetadata!.Arn!;
    expect(await outcome(regional.send(new ListKeysCommand({})))).toBe('ok');
    expect(await outcome(regional.send(new GenerateRandomCommand({ NumberOfBytes: 16 })))).toBe('ok');
    expect(await outcome(regional.send(new EncryptCommand({ KeyId: key, Plaintext: Buffer.from('x') })))).toBe('ok');
    // Locked to another region, the same user is refused everything, with a key or without.
    const away = (await makeAccessKey(env, 'away', p(
      { Effect: 'Allow', Action: 'kms:*', Resource: '*' },
      { Effect: 'Deny', Action: '*', Resource: '*', Condition: { StringNotEquals: { 'aws:RequestedRegion': ['eu-west-1'] } } },
    ))).key;
    const elsewhere = new KMSClient({ endpoint: await kmsEndpoint(), region: REGION, credentials: { accessKeyId: away.AccessKeyId, secretAccessKey: away.SecretAccessKey } });
    clients.push(elsewhere);
    expect(await outcome(elsewhere.send(new CreateKeyCommand({})))).toBe('AccessDeniedException');
    expect(await outcome(elsewhere.send(new EncryptCommand({ KeyId: key, Plaintext: Buffer.from('x') })))).toBe('AccessDeniedException');
  });

  it('the defaults are values, not just a missing key: an Allow only of the default value allows a request that leaves the member out', async () => {
    const p = (...Statement: Record<string, unknown>[]): string => JSON.stringify({ Version: '2012-10-17', Statement });
    const k = (await makeAccessKey(env, 'defaults-only', p(
      { Effect: 'Allow', Action: 'kms:ScheduleKeyDeletion', Resource: '*', Condition: { NumericGreaterThanEquals: { 'kms:ScheduleKeyDeletionPendingWindowInDays': '30' } } },
      { Effect: 'Allow', Action: 'kms:EnableKeyRotation', Resource: '*', Condition: { NumericGreaterThanEquals: { 'kms:RotationPeriodInDays': '365' } } },
      { Effect: 'Allow', Action: ['kms:Sign', 'kms:Verify'], Resource: '*', Condition: { StringEquals: { 'kms:MessageType': 'RAW' } } },
      { Effect: 'Allow', Action: ['kms:Encrypt', 'kms:GenerateDataKey'], Resource: '*', Condition: { StringEquals: { 'kms:EncryptionAlgorithm': 'SYMMETRIC_DEFAULT' } } },
    ))).key;
    const c = new KMSClient({ endpoint: await kmsEndpoint(), region: REGION, credentials: { accessKeyId: k.AccessKeyId, secretAccessKey: k.SecretAccessKey } });
    clients.push(c);
    const doomed = (await admin.send(new CreateKeyCommand({}))).KeyMetadata!.Arn!;
    expect(await outcome(c.send(new ScheduleKeyDeletionCommand({ KeyId: doomed, PendingWindowInDays: 29 })))).toBe('AccessDeniedException');
    expect((await c.send(new ScheduleKeyDeletionCommand({ KeyId: doomed }))).PendingWindowInDays).toBe(30);
    const rotated = (await admin.send(new CreateKeyCommand({}))).KeyMetadata!.Arn!;
    expect(await outcome(c.send(new EnableKeyRotationCommand({ KeyId: rotated, RotationPeriodInDays: 364 })))).toBe('AccessDeniedException');
    expect(await outcome(c.send(new EnableKeyRotationCommand({ KeyId: rotated })))).toBe('ok');
    expect((await admin.send(new GetKeyRotationStatusCommand({ KeyId: rotated }))).RotationPeriodInDays).toBe(365);
    const msg = Buffer.from('message');
    const sig = await c.send(new SignCommand({ KeyId: signing, Message: msg, SigningAlgorithm: 'ECDSA_SHA_256' }));
    expect((await c.send(new VerifyCommand({ KeyId: signing, Message: msg, Signature: sig.Signature!, SigningAlgorithm: 'ECDSA_SHA_256' }))).SignatureValid).toBe(true);
    expect(await outcome(c.send(new SignCommand({ KeyId: signing, Message: Buffer.alloc(32, 7), MessageType: 'DIGEST', SigningAlgorithm: 'ECDSA_SHA_256' })))).toBe('AccessDeniedException');
    expect(await outcome(c.send(new EncryptCommand({ KeyId: sym, Plaintext: Buffer.from('x') })))).toBe('ok');
    expect(await outcome(c.send(new GenerateDataKeyCommand({ KeyId: sym, KeySpec: 'AES_256' })))).toBe('ok');
  });

  it('kms:EncryptionAlgorithm is the source\'s algorithm for kms:ReEncryptFrom and the destination\'s for kms:ReEncryptTo', async () => {
    const p = (...Statement: Record<string, unknown>[]): string => JSON.stringify({ Version: '2012-10-17', Statement });
    const rsa = (await admin.send(new CreateKeyCommand({ KeySpec: 'RSA_2048', KeyUsage: 'ENCRYPT_DECRYPT' }))).KeyMetadata!.Arn!;
    const blob = (await admin.send(new EncryptCommand({ KeyId: rsa, Plaintext: Buffer.from('wrapped'), EncryptionAlgorithm: 'RSAES_OAEP_SHA_256' }))).CiphertextBlob!;
    const userWith = async (name: string, ...statements: Record<string, unknown>[]): Promise<KMSClient> => {
      const k = (await makeAccessKey(env, name, p(...statements))).key;
      const c = new KMSClient({ endpoint: await kmsEndpoint(), region: REGION, credentials: { accessKeyId: k.AccessKeyId, secretAccessKey: k.SecretAccessKey } });
      clients.push(c);
      return c;
    };
    const alg = (a: string): Record<string, unknown> => ({ StringEquals: { 'kms:EncryptionAlgorithm': a } });
    // From RSA ciphertexts to the symmetric key only (DestinationEncryptionAlgorithm left out: SYMMETRIC_DEFAULT).
    const unwrapper = await userWith('unwrapper',
      { Effect: 'Allow', Action: 'kms:ReEncryptFrom', Resource: '*', Condition: alg('RSAES_OAEP_SHA_256') },
      { Effect: 'Allow', Action: 'kms:ReEncryptTo', Resource: '*', Condition: alg('SYMMETRIC_DEFAULT') });
    // The same two statements with the actions the other way round.
    const swapped = await userWith('swapped',
      { Effect: 'Allow', Action: 'kms:ReEncryptFrom', Resource: '*', Condition: alg('SYMMETRIC_DEFAULT') },
      { Effect: 'Allow', Action: 'kms:ReEncryptTo', Resource: '*', Condition: alg('RSAES_OAEP_SHA_256') });
    // Only one of the two actions.
    const fromOnly = await userWith('from-only', { Effect: 'Allow', Action: 'kms:ReEncryptFrom', Resource: '*' });
    const req = (): ReEncryptCommand => new ReEncryptCommand({ CiphertextBlob: blob, SourceKeyId: rsa, SourceEncryptionAlgorithm: 'RSAES_OAEP_SHA_256', DestinationKeyId: sym });
    const out = await unwrapper.send(req());
    expect([out.SourceEncryptionAlgorithm, out.DestinationEncryptionAlgorithm, out.KeyId]).toEqual(['RSAES_OAEP_SHA_256', 'SYMMETRIC_DEFAULT', sym]);
    expect(Buffer.from((await admin.send(new DecryptCommand({ CiphertextBlob: out.CiphertextBlob! }))).Plaintext!).toString()).toBe('wrapped');
    expect(await outcome(swapped.send(req()))).toBe('AccessDeniedException');
    expect(await outcome(fromOnly.send(req()))).toBe('AccessDeniedException');
  });

  it('aws:PrincipalIsAWSService is false for a user: a key kept for AWS services (Deny when it is false) refuses the user', async () => {
    const p = (...Statement: Record<string, unknown>[]): string => JSON.stringify({ Version: '2012-10-17', Statement });
    const k = (await makeAccessKey(env, 'notservice', p(
      { Effect: 'Allow', Action: 'kms:*', Resource: '*' },
      { Sid: 'ServicesOnly', Effect: 'Deny', Action: 'kms:Encrypt', Resource: '*', Condition: { Bool: { 'aws:PrincipalIsAWSService': 'false' } } },
    ))).key;
    const c = new KMSClient({ endpoint: await kmsEndpoint(), region: REGION, credentials: { accessKeyId: k.AccessKeyId, secretAccessKey: k.SecretAccessKey } });
    clients.push(c);
    expect(await outcome(c.send(new EncryptCommand({ KeyId: sym, Plaintext: Buffer.from('x') })))).toBe('AccessDeniedException');
    expect(await outcome(c.send(new DescribeKeyCommand({ KeyId: sym })))).toBe('ok');
  });
});
