/**
 * A snapshot stored in S3 restores on a second daemon with its own state dir
 * (issue 17 point 5): daemon A (its embedded KMS served on loopback with
 * --kms-listen) snapshots a volume into s3://bucket/prefix on s3rver; daemon B
 * (keys from A's KMS with --kms-endpoint, signed with an IAM user's access key;
 * the same store) sees the snapshot, restores it and reads the same bytes.
 * Both daemons find the store through the standard AWS environment only.
 */
import { closeSync, existsSync, openSync, readSync, readdirSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { kmsUrl } from '../kms-net/helpers.js';
import { TEST_DELETE_WINDOWS, startS3Server, useTestDeleteWindows, type S3Server } from './s3-helpers.js';
import { settled } from './helpers.js';

const MiB = 1 << 20;
/** The wait of a writer on this suite's shared store before it asks again for its blocks (s3-helpers.ts). */
const RECHECK_MS = TEST_DELETE_WINDOWS.deleteWindowMs + TEST_DELETE_WINDOWS.deleteMarginMs;
/** A timer may fire a millisecond or so before its time as Date counts it. */
const TIMER_SLACK_MS = 20;

describe('a snapshot in S3 restores on another daemon', () => {
  const a = new Env('s3-restore-a');
  const b = new Env('s3-restore-b');
  let server: S3Server;
  const saved = { ...process.env };
  const store = (): string => `s3://${server.bucket}/fleet`;
  const data = randomBytes(3 * MiB);
  let vol = '';
  let snap: any;
  let keyArn = '';
  let kmsAt = '';
  let userArn = '';

  /** The environment a daemon started now inherits. */
  const setEnv = (vars: Record<string, string>): void => {
    for (const k of Object.keys(process.env)) if (k.startsWith('AWS_')) delete process.env[k];
    Object.assign(process.env, vars);
  };

  beforeAll(async () => {
    ensureBuilt();
    server = await startS3Server();
    await useTestDeleteWindows(server, 'fleet');
    setEnv(server.env);
    await a.start(['--snapshot-store', store(), '--kms-listen', '127.0.0.1:0']);
    kmsAt = await kmsUrl(a);
    // B's identity at A's KMS: an IAM user whose key policy entry lets it use the key as a host.
    userArn = (await a.api('ebsd.IamCreateUser', { UserName: 'host-b' })).User.Arn as string;
    const k = (await a.api('ebsd.IamCreateAccessKey', { UserName: 'host-b' })).AccessKey;
    const account = userArn.split(':')[4];
    await a.api('ebsd.IamPutPolicy', { Principal: 'user/host-b', PolicyName: 'housekeeping', PolicyDocument: JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'kms:ListRetirableGrants', Resource: '*' }] }) });
    keyArn = (await a.api('TrentService.CreateKey', { Description: 'shared volumes' })).KeyMetadata.Arn;
    // Through the CLI (its --policy, a JSON string member): the one put-key-policy that reaches the daemon in the tests.
    await a.ok(['kms', 'put-key-policy', '--key-id', keyArn, '--policy-name', 'default', '--policy', JSON.stringify({
      Version: '2012-10-17',
      Statement: [
        { Sid: 'Account', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${account}:root` }, Action: 'kms:*', Resource: '*' },
        { Sid: 'HostB', Effect: 'Allow', Principal: { AWS: userArn }, Action: ['kms:GenerateDataKeyWithoutPlaintext', 'kms:Decrypt', 'kms:ReEncrypt*', 'kms:CreateGrant', 'kms:DescribeKey'], Resource: '*' },
      ],
    })]);
    // The same access key signs B's KMS calls and its S3 calls: s3rver must know it.
    await server.addAccessKey(k.AccessKeyId, k.SecretAccessKey);
    setEnv({
      AWS_ACCESS_KEY_ID: k.AccessKeyId, AWS_SECRET_ACCESS_KEY: k.SecretAccessKey, AWS_REGION: 'us-east-1',
      AWS_ENDPOINT_URL_S3: server.endpoint, AWS_ENDPOINT_URL_STS: kmsAt,
      AWS_CONFIG_FILE: '/nonexistent', AWS_SHARED_CREDENTIALS_FILE: '/nonexistent',
    });
    await b.start(['--snapshot-store', store(), '--kms-endpoint', kmsAt]);
  }, 120_000);

  afterAll(async () => {
    await b.cleanup();
    await a.cleanup();
    for (const k of Object.keys(process.env)) if (k.startsWith('AWS_')) delete process.env[k];
    Object.assign(process.env, Object.fromEntries(Object.entries(saved).filter(([k]) => k.startsWith('AWS_'))));
    await server?.stop();
  }, 60_000);

  it('A snapshots a volume into the S3 store; the objects are there, not in A\'s state dir', async () => {
    vol = (await a.api('ebsd.CreateVolume', { Size: '16MiB', KmsKeyId: keyArn })).VolumeId;
    await a.api('ebsd.AttachVolume', { VolumeId: vol });
    const fd = openSync(a.file(vol), 'r+');
    try {
      writeSync(fd, data, 0, data.length, MiB);
    } finally {
      closeSync(fd);
    }
    await a.untilClosed(vol); // FUSE RELEASE reaches the daemon after close() returns
    await a.api('ebsd.DetachVolume', { VolumeId: vol, Force: false });
    snap = await settled(a, (await a.api('ebsd.CreateSnapshot', { VolumeId: vol, Description: 'to host b' })).SnapshotId);
    expect(snap).toMatchObject({ State: 'completed', VolumeId: vol, KmsKeyId: keyArn, Encrypted: true });
    // Shown completed only after the shared store's recheck wait from its last block: so is its CompletionTime.
    expect(Date.parse(snap.CompletionTime) - Date.parse(snap.StartTime)).toBeGreaterThanOrEqual(RECHECK_MS - TIMER_SLACK_MS);
    expect(existsSync(server.objectFile(`fleet/manifests/${snap.SnapshotId}.json`))).toBe(true);
    // 3 MiB from 1 MiB on: blocks 2..7 of 512 KiB, each a store object.
    const blocks = readdirSync(join(server.dir, server.bucket, 'fleet', 'blocks')).filter((n) => n.endsWith('._S3rver_object'));
    expect(blocks.length).toBe(6 + 1); // and the LUKS2 header area
    expect(existsSync(join(a.state, 'snapshots', 'manifests', `${snap.SnapshotId}.json`))).toBe(false);
    expect((await a.api('ebsd.Status')).Daemon.SnapshotStore).toBe(store());
    expect(await a.untilLog('"snapshot store answers"')).toContain('"snapshot store answers"');
  });

  it('B, with its own state dir, describes the same snapshot from the store', async () => {
    const d = await b.api('ebsd.DescribeSnapshots', { SnapshotIds: [snap.SnapshotId] });
    expect(d.Snapshots).toHaveLength(1);
    expect(d.Snapshots[0]).toMatchObject({ SnapshotId: snap.SnapshotId, State: 'completed', VolumeId: vol, KmsKeyId: keyArn, DataEncryptionKeyId: snap.DataEncryptionKeyId, Description: 'to host b' });
    expect((await b.api('ebsd.Status')).Daemon.SnapshotStore).toBe(store());
  });

  it('B restores it (volume create --snapshot-id), attaches it and reads the same bytes', async () => {
    const r = await b.cli(['volume', 'create', '--snapshot-id', snap.SnapshotId, '--wait', '--output', 'json']);
    expect(r.code, r.stderr).toBe(0);
    const restored = r.json();
    // Same KMS key: the snapshot's data key is shared (ReEncrypt at A's KMS to the new volume's context).
    expect(restored).toMatchObject({ Encrypted: true, KmsKeyId: keyArn, State: 'available' });
    expect(existsSync(join(b.state, 'volumes', `${restored.VolumeId}.img`))).toBe(true);
    await b.api('ebsd.AttachVolume', { VolumeId: restored.VolumeId });
    const file = b.file(restored.VolumeId);
    expect(readAt(file, MiB, data.length).equals(data)).toBe(true);
    expect(readAt(file, 0, MiB).equals(Buffer.alloc(MiB))).toBe(true); // never written on A: zeros
    await b.untilClosed(restored.VolumeId); // readAt's close: FUSE RELEASE comes after close() returns
    await b.api('ebsd.DetachVolume', { VolumeId: restored.VolumeId, Force: false });
    // B's key came from A's KMS, as B's host identity: A's audit log says so.
    const byB = a.auditText().trim().split('\n').map((l) => JSON.parse(l)).filter((e) => e.userIdentity?.arn === userArn && !e.errorCode);
    for (const op of ['CreateGrant', 'Decrypt']) expect(byB.map((e) => e.eventName)).toContain(op);
  });

  it('A deletes the snapshot: its manifest leaves the store at once, its blocks stay for the grace period (B may be writing)', async () => {
    await a.api('ebsd.DeleteSnapshot', { SnapshotId: snap.SnapshotId });
    expect(existsSync(server.objectFile(`fleet/manifests/${snap.SnapshotId}.json`))).toBe(false);
    // Its blocks are collected after the answer, in the background: once the log says the collection ended, it freed
    // none of them (all younger than the grace period).
    const freed = new RegExp(`"snapshotIds":\\[[^\\]]*"${snap.SnapshotId}"[^\\n]*unshared blocks freed`);
    const line = (await a.untilLog(freed)).split('\n').find((l) => freed.test(l));
    expect(line, 'the collection of its blocks ended').toBeDefined();
    expect(JSON.parse(line!)).toMatchObject({ examined: 7, deleted: 0, keptYoung: 7 });
    expect((await b.api('ebsd.DescribeSnapshots')).Snapshots
.map((x: any) => x.SnapshotId)).not.toContain(snap.SnapshotId);
    const blocks = readdirSync(join(server.dir, server.bucket, 'fleet', 'blocks')).filter((n) => n.endsWith('._S3rver_object'));
    expect(blocks.length).toBe(7);
  });

  it('EBS direct on the shared store: CompleteSnapshot answers after the recheck wait, and CompletionTime is then, not when the last block was put', async () => {
    const started = await a.api('ebs.StartSnapshot', { VolumeSize: 1, KmsKeyArn: keyArn });
    const block = randomBytes(MiB / 2);
    const putSent = Date.now();
    await a.api('ebs.PutSnapshotBlock', { SnapshotId: started.SnapshotId, BlockIndex: 3, BlockData: block.toString('base64'), DataLength: block.length,
      Checksum: createHash('sha256').update(block).digest('base64'), ChecksumAlgorithm: 'SHA256' });
    // Sent twice at once, as a client retrying one it thinks lost: the second comes while the first waits (or after
    // it), and shares its answer; the audit tells the completion from the repeat.
    const both = await Promise.all([0, 1].map(() => a.api('ebs.CompleteSnapshot', { SnapshotId: started.SnapshotId, ChangedBlocksCount: 1 })));
    expect(both).toEqual([{ Status: 'completed' }, { Status: 'completed' }]);
    const completions = a.auditText().trim().split('\n').map((l) => JSON.parse(l))
      .filter((e) => e.eventName === 'CompleteSnapshot' && e.requestParameters?.snapshotId === started.SnapshotId);
    // Both end at the same moment: the two events may be written in either order.
    expect(completions.map((e) => JSON.stringify([e.errorCode ?? null, e.additionalEventData ?? null])).sort()).toEqual(['[null,null]', '[null,{"repeat":true}]']);
    const [d] = (await a.api('ebsd.DescribeSnapshots', { SnapshotIds: [started.SnapshotId] })).Snapshots;
    expect(d).toMatchObject({ State: 'completed', Progress: '100%' });
    expect(Date.parse(d.CompletionTime) - putSent).toBeGreaterThanOrEqual(RECHECK_MS - TIMER_SLACK_MS);
    await a.api('ebsd.DeleteSnapshot', { SnapshotId: started.SnapshotId });
  });
});

function readAt(file: string, offset: number, length: number): Buffer {
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    let got = 0;
    while (got < length) got += readSync(fd, buf, got, length - got, offset + got);
    return buf;
  } finally {
    closeSync(fd);
  }
}
