/**
 * A fleet host with --snapshot-manifest-key whose KMS stops answering while a snapshot is being
 * created (a KMS host's restart; docs/architecture.md §13.5, Writes): host B reaches host A's KMS
 * (--kms-only on loopback) through a TCP proxy that closes every GenerateMac connection while the
 * snapshot's blocks are copied, and lets them pass again a little later. Every block is stored, so
 * the `completed` manifest's write waits for the KMS instead of ending the snapshot `error` (before:
 * `error`, unusable, though nothing was missing). The store is S3 (s3rver), shared in kind, so each
 * try asks again for the blocks first. A same-key CopySnapshot's completed manifest is waited for the same way.
 */
import { closeSync, openSync, readFileSync, readSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { startKmsDaemon } from '../kms-net/helpers.js';
import { S3RVER_CREDENTIALS, startS3Server, type S3Server } from '../snapshot/s3-helpers.js';
import { S3SnapshotStore } from '../../src/snapshot/s3-store.js';
import { AnswerDroppingProxy } from './answer-dropping-proxy.js';
import { until } from './netns.js';
import { cleanupHostAndKms, createManifestKey, createRemoteHostUser, hostBEnv, hostKeyPolicy, savedAwsEnv } from './remote-host.js';

const MiB = 1 << 20;

describe('a snapshot whose completed manifest meets a KMS that does not answer', () => {
  const a = new Env('mkb-kms');
  const b = new Env('mkb-host');
  const saved = savedAwsEnv();
  let proxy: AnswerDroppingProxy | undefined;
  let s3: S3Server | undefined;
  let macKey = '';
  let volKey = '';
  let gate = '';
  let snapshotId = '';
  const waiting = 'the KMS did not answer for the completed manifest';

  beforeAll(async () => {
    ensureBuilt();
    const { url } = await startKmsDaemon(a);
    const host = await createRemoteHostUser(a);
    volKey = (await a.api('TrentService.CreateKey', { Description: 'volumes' })).KeyMetadata.Arn;
    await a.api('TrentService.PutKeyPolicy', { KeyId: volKey, PolicyName: 'default', Policy: hostKeyPolicy(host) });
    // What README "Snapshot store" tells a fleet host to be allowed on the manifest key.
    macKey = await createManifestKey(a, host);
    s3 = await startS3Server();
    await s3.addAccessKey(host.key.AccessKeyId, host.key.SecretAccessKey);
    // Short delete windows (s3rver on loopback acts at once), long enough that a same-key copy's wait
    // between its pending manifest and its completed one (their sum) leaves time to cut GenerateMac.
    const settings = await S3SnapshotStore.open({ bucket: s3.bucket, prefix: 'blip', endpoint: s3.endpoint, credentials: S3RVER_CREDENTIALS });
    try {
      await settings.putSettings({ deleteWindowMs: 1500, deleteMarginMs: 1500 });
    } finally {
      settings.close();
    }
    const u = new URL(url);
    proxy = new AnswerDroppingProxy({ host: u.hostname, port: Number(u.port) });
    const via = await proxy.start();
    hostBEnv(host, via);
    process.env.AWS_ENDPOINT_URL_S3 = s3.endpoint;
    // The copy waits while this file exists (snapshot-manager.ts): the KMS goes away after the pending manifest.
    gate = join(b.dir, 'copy-gate');
    process.env.EBSD_TEST_SNAPSHOT_COPY_GATE = gate;
    await b.start(['--kms-endpoint', via, '--snapshot-store', 's3://ebsd-snapshots/blip', '--snapshot-manifest-key', macKey, '--kms-request-timeout', '2s']);
    delete process.env.EBSD_TEST_SNAPSHOT_COPY_GATE;
  }, 90_000);

  afterAll(async () => {
    delete process.env.EBSD_TEST_SNAPSHOT_COPY_GATE;
    try {
      await cleanupHostAndKms(b, a, saved);
    } finally {
      await proxy?.close();
      await s3?.stop();
    }
  }, 60_000);

  it('completes once the KMS answers again, and restores what was written', async () => {
    const vol = (await b.api('ebsd.CreateVolume', { Size: '8MiB', KmsKeyId: volKey })).VolumeId as string;
    await b.api('ebsd.AttachVolume', { VolumeId: vol });
    const data = Buffer.alloc(MiB, 0x5a);
    const fd = openSync(b.file(vol), 'r+');
    try {
      writeSync(fd, data, 0, MiB, 0);
    } finally {
      closeSync(fd);
    }
    writeFileSync(gate, '');
    const snap = (await b.api('ebsd.CreateSnapshot', { VolumeId: vol })).SnapshotId as string;
    // The pending manifest is signed and stored; now the KMS stops answering GenerateMac, and the copy goes on.
    proxy!.set({ GenerateMac: 'refuse' });
    unlinkSync(gate);
    await b.untilLog((log) => log.includes(waiting) || log.includes('snapshot failed'), 30_000);
    expect(proxy!.faulted.generatemac).toBeGreaterThan(0);
    proxy!.set({});
    const done = await until(`${snap} settled`, async () => {
      const s = (await b.api('ebsd.DescribeSnapshots', { SnapshotIds: [snap] })).Snapshots[0];
      return s.State === 'pending' ? undefined : s;
    }, 90_000);
    expect(done).toMatchObject({ SnapshotId: snap, State: 'completed', Progress: '100%' });
    // It met the KMS's silence at its completed manifest (not only at a progress write), and waited it out.
    const log = readFileSync(b.log, 'utf8');
    expect(log).toContain(waiting);
    expect(log).not.toContain('snapshot failed');
    // Signed and usable: a restore on this host reads back what was written.
    const restored = (await b.api('ebsd.CreateVolume', { SnapshotId: snap })).VolumeId as string;
    await until(`${restored} available`, async () => ((await b.api('ebsd.DescribeVolumes', { VolumeIds: [restored] })).Volumes[0].State === 'available' ? true : undefined), 30_000);
    await b.api('ebsd.AttachVolume', { VolumeId: restored });
    const back = Buffer.alloc(MiB);
    const rfd = openSync(b.file(restored), 'r');
    try {
      readSync(rfd, back, 0, MiB, 0);
    } finally {
      closeSync(rfd);
    }
    expect(back.equals(data)).toBe(true);
    snapshotId = snap;
  }, 180_000);

  it('a same-key copy completes too once the KMS answers again', async () => {
    const before = readFileSync(b.log, 'utf8').split(waiting).length;
    const copy = (await b.api('ebsd.CopySnapshot', { SourceSnapshotId: snapshotId, SourceRegion: 'us-east-1' })).SnapshotId as string;
    // Its pending manifest is signed; it now waits out the store's delete window and margin before its completed one.
    proxy!.set({ GenerateMac: 'refuse' });
    await b.untilLog((log) => log.split(waiting).length > before || log.includes('snapshot copy failed'), 30_000);
    proxy!.set({});
    const done = await until(`${copy} settled`, async () => {
      const s = (await b.api('ebsd.DescribeSnapshots', { SnapshotIds: [copy] })).Snapshots[0];
      return s.State === 'pending' ? undefined : s;
    }, 90_000);
    expect(done).toMatchObject({ SnapshotId: copy, State: 'completed', Progress: '100%' });
    expect(readFileSync(b.log, 'utf8')).not.toContain('snapshot copy failed');
  }, 120_000);
});
