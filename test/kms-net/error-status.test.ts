/**
 * HTTP status and exception class of every KMS error the listener can answer,
 * as AWS KMS answers them (src/daemon/aws-json.ts, KMS_ERROR_STATUS): 400 for
 * client faults (ThrottlingException and LimitExceededException included),
 * 412 for DryRunOperationException, 500 for the retryable internal ones.
 * One table, driven through @aws-sdk/client-kms against the daemon as a child
 * process; the exceptions a healthy daemon cannot be made to raise from
 * outside (KeyUnavailable, DependencyTimeout, Throttling) are checked at the
 * one function that decides statuses.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  KMSClient, CreateAliasCommand, CreateKeyCommand, DecryptCommand, DescribeKeyCommand, DisableKeyCommand, EncryptCommand,
  RotateKeyOnDemandCommand, ScheduleKeyDeletionCommand, type KMSServiceException,
} from '@aws-sdk/client-kms';
import { KMS_ADMIN_POLICY, makeAccessKey, startKmsDaemon } from './helpers.js';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { toWireError, KMS_ERROR_STATUS } from '../../src/daemon/aws-json.js';
import { KmsError } from '../../src/kms/errors.js';
import { ConnectionThrottledError } from '../../src/daemon/connection-guard.js';

/** A key id whose record file is unreadable: the keystore answers KMSInternalException for it. */
const BROKEN_KEY = '0badc0de-0000-4000-8000-000000000000';

describe('KMS exceptions: HTTP status as AWS KMS answers them, through @aws-sdk/client-kms', () => {
  const env = new Env('kmsstatus');
  let admin: KMSClient;
  let nobody: KMSClient;
  const keys = { enabled: '', disabled: '', pending: '', rotated: '' };

  const client = (k: { AccessKeyId: string; SecretAccessKey: string }, endpoint: string): KMSClient => new KMSClient({
    endpoint, region: 'us-east-1', credentials: { accessKeyId: k.AccessKeyId, secretAccessKey: k.SecretAccessKey },
    maxAttempts: 1, // a 500 is retryable: one attempt, so the status seen is the daemon's first answer
  });

  beforeAll(async () => {
    ensureBuilt();
    // An unreadable key record, there before the daemon loads its keystore.
    mkdirSync(join(env.state, 'kms', 'keys'), { recursive: true, mode: 0o700 });
    writeFileSync(join(env.state, 'kms', 'keys', `${BROKEN_KEY}.json`), '{ torn', { mode: 0o600 });
    const { url } = await startKmsDaemon(env);
    admin = client((await makeAccessKey(env, 'admin', KMS_ADMIN_POLICY)).key, url);
    nobody = client((await makeAccessKey(env, 'nobody')).key, url);
    for (const k of Object.keys(keys) as (keyof typeof keys)[]) keys[k] = (await admin.send(new CreateKeyCommand({}))).KeyMetadata!.KeyId!;
    await admin.send(new DisableKeyCommand({ KeyId: keys.disabled }));
    await admin.send(new ScheduleKeyDeletionCommand({ KeyId: keys.pending, PendingWindowInDays: 7 }));
    await admin.send(new CreateAliasCommand({ AliasName: 'alias/taken', TargetKeyId: keys.enabled }));
  }, 120_000);
  afterAll(() => env.cleanup());

  const plaintext = new Uint8Array([1, 2, 3]);
  const cases: { name: string; status: number; call: () => Promise<unknown> }[] = [
    { name: 'NotFoundException', status: 400, call: () => admin.send(new DescribeKeyCommand({ KeyId: 'alias/nothing-here' })) },
    { name: 'DisabledException', status: 400, call: () => admin.send(new EncryptCommand({ KeyId: keys.disabled, Plaintext: plaintext })) },
    { name: 'KMSInvalidStateException', status: 400, call: () => admin.send(new EncryptCommand({ KeyId: keys.pending, Plaintext: plaintext })) },
    { name: 'AlreadyExistsException', status: 400, call: () => admin.send(new CreateAliasCommand({ AliasName: 'alias/taken', TargetKeyId: keys.enabled })) },
    { name: 'InvalidCiphertextException', status: 400, call: () => admin.send(new DecryptCommand({ CiphertextBlob: new Uint8Array(64).fill(7) })) },
    { name: 'AccessDeniedException', status: 400, call: () => nobody.send(new EncryptCommand({ KeyId: keys.enabled, Plaintext: plaintext })) },
    { name: 'ValidationException', status: 400, call: () => admin.send(new EncryptCommand({ KeyId: keys.enabled, Plaintext: new Uint8Array(4097) })) },
    { name: 'UnsupportedOperationException', status: 400, call: async () => {
      const blob = (await admin.send(new EncryptCommand({ KeyId: keys.enabled, Plaintext: plaintext }))).CiphertextBlob!;
      return admin.send(new DecryptCommand({ CiphertextBlob: blob, Recipient: { KeyEncryptionAlgorithm: 'RSAES_OAEP_SHA_256', AttestationDocument: new Uint8Array(4) } }));
    } },
    { name: 'LimitExceededException', status: 400, call: async () => {
      // AWS allows 25 on-demand rotations per key; the 26th is refused.
      for (let i = 0; i < 25; i++) await admin.send(new RotateKeyOnDemandCommand({ KeyId: keys.rotated }));
      return admin.send(new RotateKeyOnDemandCommand({ KeyId: keys.rotated }));
    } },
    { name: 'DryRunOperationException', status: 412, call: () => admin.send(new EncryptCommand({ KeyId: keys.enabled, Plaintext: plaintext, DryRun: true })) },
    { name: 'KMSInternalException', status: 500, call: () => admin.send(new DescribeKeyCommand({ KeyId: BROKEN_KEY })) },
  ];

  for (const c of cases) {
    it(`${c.name}: HTTP ${c.status}, the SDK's typed exception`, async () => {
      const e = await c.call().then(() => undefined, (x: unknown) => x as KMSServiceException);
      expect(e, `${c.name} was expected, the call succeeded`).toBeDefined();
      expect(e!.name).toBe(c.name);
      expect(e!.$metadata.httpStatusCode).toBe(c.status);
      expect(e!.$fault).toBe(c.status >= 500 ? 'server' : 'client');
    });
  }

  it('the exceptions no outside request can raise on a healthy daemon get their status from the same table', () => {
    const rows: [unknown, number][] = [
      [new KmsError('KeyUnavailableException', 'x'), 500],
      [new KmsError('DependencyTimeoutException', 'x'), 500],
      [new KmsError('KMSInternalException', 'x'), 500],
      // The listener's body budget: KMS answers throttling with 400, as the transport does a connection past a cap at accept.
      [new ConnectionThrottledError('body-budget', 'x'), 400],
      [new KmsError('LimitExceededException', 'x'), 400],
      [new KmsError('NotFoundException', 'x'), 400],
      [new Error('no AWS name'), 500],
    ];
    for (const [e, status] of rows) expect([(e as Error).message, toWireError(e).status]).toEqual([(e as Error).message, status]);
    expect(Object.keys(KMS_ERROR_STATUS).sort()).toEqual(['DependencyTimeoutException', 'DryRunOperationException', 'InternalFailure', 'KMSInternalException', 'KeyUnavailableException', 'ServiceUnavailable', 'ThrottlingException']);
  });
});
