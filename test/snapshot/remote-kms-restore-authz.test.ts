/**
 * Issue 17, finding 2: with --kms-endpoint a restore's KMS calls are signed as
 * this host, so the local identity policy decides the caller's use of the
 * snapshot's key: kms:Decrypt on it (restore under another key) or
 * kms:ReEncryptFrom + kms:ReEncryptTo (same key), with kms:ViaService. Host A
 * serves the KMS on loopback; host B restores for uid 1000 (user/alice).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { kmsUrl } from '../kms-net/helpers.js';

const ALICE = 1000;

describe('remote KMS: a restore needs the local caller\'s permission on the snapshot\'s key', () => {
  const a = new Env('rk-restore-a');
  const b = new Env('rk-restore-b');
  const saved = Object.fromEntries(Object.entries(process.env).filter(([x]) => x.startsWith('AWS_')));
  let k = '';
  let k2 = '';
  let snap = '';
  const alicePolicy = (extra: unknown[]): Promise<unknown> => {
    const file = join(b.dir, 'alice.json');
    writeFileSync(file, JSON.stringify({
      Version: '2012-10-17',
      Statement: [
        { Effect: 'Allow', Action: ['ec2:CreateVolume', 'ec2:DescribeVolumes'], Resource: '*' },
        // K2 only, unless a test adds more: nothing on K, the snapshot's key.
        { Effect: 'Allow', Action: 'kms:GenerateDataKeyWithoutPlaintext', Resource: k2 },
        ...extra,
      ],
    }));
    return b.ok(['iam', 'put-policy', 'user/alice', '--policy-name', 'p', '--policy-document', `file://${file}`]);
  };
  const volumeCount = async (): Promise<number> => (await b.ok(['volume', 'ls'])).Volumes.length;

  beforeAll(async () => {
    ensureBuilt();
    await a.start(['--kms-listen', '127.0.0.1:0']);
    const kmsAt = await kmsUrl(a);
    const userArn = (await a.ok(['iam', 'create-user', 'host-b'])).User.Arn as string;
    const key = (await a.ok(['iam', 'create-access-key', '--user-name', 'host-b'])).AccessKey;
    const account = userArn.split(':')[4];
    await a.ok(['iam', 'put-policy', 'user/host-b', '--policy-name', 'housekeeping', '--policy-document', JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'kms:ListRetirableGrants', Resource: '*' }] })]);
    const policy = JSON.stringify({
      Version: '2012-10-17',
      Statement: [
        { Sid: 'Account', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${account}:root` }, Action: 'kms:*', Resource: '*' },
        { Sid: 'HostB', Effect: 'Allow', Principal: { AWS: userArn }, Action: ['kms:GenerateDataKeyWithoutPlaintext', 'kms:Decrypt', 'kms:ReEncrypt*', 'kms:CreateGrant', 'kms:DescribeKey'], Resource: '*' },
      ],
    });
    k = (await a.ok(['kms', 'create-key', '--description', 'K: the snapshot key'])).KeyMetadata.Arn;
    k2 = (await a.ok(['kms', 'create-key', '--description', 'K2: alice may use'])).KeyMetadata.Arn;
    for (const id of [k, k2]) await a.ok(['kms', 'put-key-policy', '--key-id', id, '--policy-name', 'default', '--policy', policy]);
    for (const x of Object.keys(process.env)) if (x.startsWith('AWS_')) delete process.env[x];
    Object.assign(process.env, {
      AWS_ACCESS_KEY_ID: key.AccessKeyId, AWS_SECRET_ACCESS_KEY: key.SecretAccessKey, AWS_REGION: 'us-east-1',
      AWS_ENDPOINT_URL_STS: kmsAt, AWS_CONFIG_FILE: '/nonexistent', AWS_SHARED_CREDENTIALS_FILE: '/nonexistent',
    });
    await b.start(['--kms-endpoint', kmsAt]);
    const vol = (await b.ok(['volume', 'create', '--size', '16MiB', '--kms-key', k])).VolumeId;
    snap = (await b.ok(['snapshot', 'create', vol, '--wait'])).SnapshotId;
    await b.ok(['iam', 'create-user', 'alice']);
    await b.ok(['iam', 'map-uid', String(ALICE), 'user/alice']);
  }, 180_000);

  afterAll(async () => {
    try {
      await b.cleanup();
      await a.cleanup();
    } finally {
      for (const x of Object.keys(process.env)) if (x.startsWith('AWS_')) delete process.env[x];
      Object.assign(process.env, saved);
    }
  }, 60_000);

  it('under another key without kms:Decrypt on the snapshot key: UnauthorizedOperation naming it, nothing created', async () => {
    await alicePolicy([]);
    const before = await volumeCount();
    const r = await b.cli(['volume', 'create', '--snapshot-id', snap, '--kms-key', k2, '--output', 'json'], { uid: ALICE });
    expect(r.code, r.stderr).toBe(4);
    expect(r.stderr).toContain(`kms:Decrypt on resource: ${k}`);
    expect(await volumeCount()).toBe(before);
  });

  it('under the same key without kms:ReEncryptFrom on it: refused', async () => {
    await alicePolicy([]);
    const r = await b.cli(['volume', 'create', '--snapshot-id', snap, '--output', 'json'], { uid: ALICE });
    expect(r.code, r.stderr).toBe(4);
    expect(r.stderr).toContain(`kms:ReEncryptFrom on resource: ${k}`);
  });

  it('allowed kms:Decrypt on the snapshot key via EC2: restored under K2', async () => {
    await alicePolicy([{ Effect: 'Allow', Action: 'kms:Decrypt', Resource: k, Condition: { StringEquals: { 'kms:ViaService': 'ec2.us-east-1.amazonaws.com' } } }]);
    const r = await b.cli(['volume', 'create', '--snapshot-id', snap, '--kms-key', k2, '--wait', '--output', 'json'], { uid: ALICE });
    expect(r.code, r.stderr).toBe(0);
    expect(r.json()).toMatchObject({ State: 'available', KmsKeyId: k2, Encrypted: true });
  });
});
