/**
 * A refused snapshot manifest in a store two hosts share (docs/architecture.md §13.5): hosts B and
 * C reach one KMS (a --kms-only daemon on loopback) with --kms-endpoint and sign their manifests
 * with the same HMAC key into one S3 store (s3rver). A manifest B wrote, changed by a byte in the
 * store, is a snapshot in state `error` on both hosts (listing and by id); a restore of it on C is
 * IncorrectState (400); C deletes it, and its sweep (after the answer) frees the block only that manifest named from
 * the store, through the shared store's windowed deletes, and none of the other snapshot's; B then
 * no longer finds it and restores the other snapshot whole.
 */
import { closeSync, existsSync, openSync, readFileSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { startKmsDaemon } from '../kms-net/helpers.js';
import { startS3Server, useTestDeleteWindows, type S3Server } from '../snapshot/s3-helpers.js';
import { serviceRefusal as failure, settled } from '../snapshot/helpers.js';
import { cleanupHostAndKms, createManifestKey, createRemoteHostUser, hostBEnv, hostKeyPolicy, savedAwsEnv } from './remote-host.js';

const B = 512 * 1024;
const PREFIX = 'refused';

describe('a refused manifest in a store two hosts share', () => {
  const kms = new Env('mrs-kms');
  const b = new Env('mrs-b');
  const c = new Env('mrs-c');
  const saved = savedAwsEnv();
  let s3: S3Server | undefined;
  let volKey = '';
  const manifestFile = (id: string): string => s3!.objectFile(`${PREFIX}/manifests/${id}.json`);
  const blockFile = (hash: string): string => s3!.objectFile(`${PREFIX}/blocks/${hash}`);
  const hashOf = (id: string, index: number): string => (JSON.parse(readFileSync(manifestFile(id), 'utf8')).blocks as [number, string][]).find(([i]) => i === index)![1];

  beforeAll(async () => {
    ensureBuilt();
    const { url } = await startKmsDaemon(kms);
    const host = await createRemoteHostUser(kms);
    volKey = (await kms.api('TrentService.CreateKey', { Description: 'volumes' })).KeyMetadata.Arn;
    await kms.api('TrentService.PutKeyPolicy', { KeyId: volKey, PolicyName: 'default', Policy: hostKeyPolicy(host) });
    const macKey = await createManifestKey(kms, host);
    s3 = await startS3Server();
    await useTestDeleteWindows(s3, PREFIX);
    await s3.addAccessKey(host.key.AccessKeyId, host.key.SecretAccessKey);
    hostBEnv(host, url);
    process.env.AWS_ENDPOINT_URL_S3 = s3.endpoint;
    // Grace 0: what a delete leaves unnamed is freed at once, not an hour later.
    const flags = ['--kms-endpoint', url, '--snapshot-store', `s3://${s3.bucket}/${PREFIX}`, '--snapshot-manifest-key', macKey, '--snapshot-gc-grace', '0'];
    await b.start(flags);
    await c.start(flags);
  }, 120_000);

  afterAll(async () => {
    try {
      await c.cleanup();
      await cleanupHostAndKms(b, kms, saved);
    } finally {
      await s3?.stop();
    }
  }, 60_000);

  it('is error on both hosts; the other host refuses to restore it, deletes it, and frees only its blocks', async () => {
    const vol = (await b.api('ebsd.CreateVolume', { Size: '8MiB', KmsKeyId: volKey })).VolumeId as string;
    const write = async (index: number, fill: number): Promise<void> => {
      await b.api('ebsd.AttachVolume', { VolumeId: vol });
      const fd = openSync(b.file(vol), 'r+');
      try {
        writeSync(fd, Buffer.alloc(B, fill), 0, B, index * B);
      } finally {
        closeSync(fd);
      }
      await b.untilClosed(vol);
      await b.api('ebsd.DetachVolume', { VolumeId: vol });
    };
    await write(0, 0x11);
    const snap1 = (await settled(b, (await b.api('ebsd.CreateSnapshot', { VolumeId: vol })).SnapshotId)).SnapshotId as string;
    await write(1, 0x22);
    const snap2 = await settled(b, (await b.api('ebsd.CreateSnapshot', { VolumeId: vol, Description: 'abc' })).SnapshotId);
    expect(snap2.State).toBe('completed');
    const shared = hashOf(snap1, 0);
    expect(hashOf(snap2.SnapshotId, 0)).toBe(shared);
    const onlyInSnap2 = hashOf(snap2.SnapshotId, 1);
    expect(existsSync(blockFile(onlyInSnap2))).toBe(true);

    // A byte of snap-2's manifest object changed in the store (its description, the object's size kept).
    const text = readFileSync(manifestFile(snap2.SnapshotId), 'utf8');
    expect(text).toContain('"description":"abc"');
    writeFileSync(manifestFile(snap2.SnapshotId), text.replace('"description":"abc"', '"description":"abd"'));

    // Both hosts show it in state error, in the listing and by id, with nothing taken from it.
    for (const h of [b, c]) {
      const listed = (await h.api('ebsd.DescribeSnapshots', {})).Snapshots;
      expect(listed.map((s: any) => [s.SnapshotId, s.State]).sort()).toEqual([[snap1, 'completed'], [snap2.SnapshotId, 'error']].sort());
      const [byId] = (await h.api('ebsd.DescribeSnapshots', { SnapshotIds: [snap2.SnapshotId] })).Snapshots;
      expect(byId).toEqual({ SnapshotId: snap2.SnapshotId, State: 'error', StateMessage: expect.stringContaining('manifest MAC does not verify'), OwnerId: expect.any(String), StorageTier: 'standard' });
    }
    // A restore of it on the other host: IncorrectState, a client error.
    const refused = await failure(c.api('ebsd.CreateVolume', { SnapshotId: snap2.SnapshotId }));
    expect([refused.awsName, refused.status]).toEqual(['IncorrectState', 400]);

    // The other host deletes it; its sweep, after the answer, frees from the store the block only snap-2 named, and
    // nothing of snap-1's.
    expect(await c.api('ebsd.DeleteSnapshot', { SnapshotId: snap2.SnapshotId })).toEqual({ Return: true });
    expect(existsSync(manifestFile(snap2.SnapshotId))).toBe(false);
    const swept = new RegExp(`"snapshotIds":\\["${snap2.SnapshotId}"\\][^\\n]*"deleted":[1-9][^\\n]*the store swept`);
    expect(await c.untilLog(swept, 20_000)).toMatch(swept);
    expect(existsSync(blockFile(onlyInSnap2))).toBe(false);
    expect(existsSync(blockFile(shared))).toBe(true);
    // The host that wrote it no longer finds it, and restores snap-1 whole.
    expect((await failure(b.api('ebsd.DescribeSnapshots', { SnapshotIds: [snap2.SnapshotId] }))).awsName).toBe('InvalidSnapshot.NotFound');
    const v = (await b.api('ebsd.CreateVolume', { SnapshotId: snap1 })).VolumeId as string;
    for (let i = 0; i < 400 && (await b.api('ebsd.DescribeVolumes', { VolumeIds: [v] })).Volumes[0].State !== 'available'; i++) await new Promise((r) => setTimeout(r, 25));
    await b.api('ebsd.AttachVolume', { VolumeId: v });
    const got = Buffer.alloc(2 * B);
    const fd = openSync(b.file(v), 'r');
    try {
      readSync(fd, got, 0, got.length, 0);
    } finally {
      closeSync(fd);
    }
    expect([got[0], got[B - 1], got[B], got[2 * B - 1]]).toEqual([0x11, 0x11, 0, 0]);
    await b.untilClosed(v);
    await b.api('ebsd.DetachVolume', { VolumeId: v });
  }, 180_000);
});
