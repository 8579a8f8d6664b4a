/**
 * Issue 17, finding 2: with --kms-endpoint a restore's KMS calls are signed as
 * this host, so the local identity policy decides the caller's use of the
 * snapshot's key: kms:Decrypt on it (restore under another key) or
 * kms:ReEncryptFrom + kms:ReEncryptTo (same key), with kms:ViaService. Host A
 * serves the KMS on loopback; host B restores for uid 1000 (user/alice).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { settled } from './helpers.js';
import { kmsUrl } from '../kms-net/helpers.js';
import { cleanupHostAndKms, createRemoteHostUser, hostBEnv, hostKeyPolicy, savedAwsEnv } from '../fleet/remote-host.js';

const ALICE = 1000;

describe('remote KMS: a restore needs the local caller\'s permission on the snapshot\'s key', () => {
  const a = new Env('rk-restore-a');
  const b = new Env('rk-restore-b');
  const saved = savedAwsEnv();
  let k = '';
  let k2 = '';
  let snap = '';
  const alicePolicy = (extra: unknown[]): Promise<unknown> =>
    b.api('ebsd.IamPutPolicy', { Principal: 'user/alice', PolicyName: 'p', PolicyDocument: JSON.stringify({
      Version: '2012-10-17',
      Statement: [
        { Effect: 'Allow', Action: ['ec2:CreateVolume', 'ec2:DescribeVolumes'], Resource: '*' },
        // K2 only, unless a test adds more: nothing on K, the snapshot's key.
        { Effect: 'Allow', Action: 'kms:GenerateDataKeyWithoutPlaintext', Resource: k2 },
        ...extra,
      ],
    }) });
  const volumeCount = async (): Promise<number> => (await b.api('ebsd.DescribeVolumes')).Volumes.length;

  beforeAll(async () => {
    ensureBuilt();
    await a.start(['--kms-listen', '127.0.0.1:0']);
    const kmsAt = await kmsUrl(a);
    const host = await createRemoteHostUser(a);
    k = (await a.api('TrentService.CreateKey', { Description: 'K: the snapshot key' })).KeyMetadata.Arn;
    k2 = (await a.api('TrentService.CreateKey', { Description: 'K2: alice may use' })).KeyMetadata.Arn;
    for (const id of [k, k2]) await a.api('TrentService.PutKeyPolicy', { KeyId: id, PolicyName: 'default', Policy: hostKeyPolicy(host) });
    hostBEnv(host, kmsAt);
    await b.start(['--kms-endpoint', kmsAt]);
    const vol = (await b.api('ebsd.CreateVolume', { Size: '16MiB', KmsKeyId: k })).VolumeId;
    const s = await settled(b, (await b.api('ebsd.CreateSnapshot', { VolumeId: vol })).SnapshotId);
    expect(s.State).toBe('completed');
    snap = s.SnapshotId;
    await b.api('ebsd.IamCreateUser', { UserName: 'alice' });
    await b.api('ebsd.IamMapUid', { Uid: ALICE, Principal: 'user/alice' });

  }, 180_000);

  afterAll(async () => {
    await cleanupHostAndKms(b, a, saved);
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
