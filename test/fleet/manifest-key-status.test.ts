/**
 * `ebsd status` while the key of --snapshot-manifest-key is not open (README "Snapshot store",
 * Signed manifests): a fleet host B started while its KMS (host A's, --kms-only on loopback) is
 * not reachable at all says the key waits for that KMS (before: `SnapshotManifestKey` alone, as if
 * in use, while every snapshot failed), and once the KMS answers with a refusal (the host may not
 * GenerateMac) it says so (`SnapshotManifestKeyRefused`) while its volumes are served.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { startKmsDaemon } from '../kms-net/helpers.js';
import { until } from './netns.js';
import { cleanupHostAndKms, createManifestKey, createRemoteHostUser, hostBEnv, hostKeyPolicy, savedAwsEnv } from './remote-host.js';
import { TcpForwarder } from './tcp-forwarder.js';

describe('status of a manifest key that is not open', () => {
  const a = new Env('mks-kms');
  const b = new Env('mks-host');
  const saved = savedAwsEnv();
  let fwd: TcpForwarder | undefined;
  let macKey = '';
  let volKey = '';

  beforeAll(async () => {
    ensureBuilt();
    const { url } = await startKmsDaemon(a);
    const host = await createRemoteHostUser(a);
    volKey = (await a.api('TrentService.CreateKey', { Description: 'volumes' })).KeyMetadata.Arn;
    await a.api('TrentService.PutKeyPolicy', { KeyId: volKey, PolicyName: 'default', Policy: hostKeyPolicy(host) });
    // The host may describe and verify, but not GenerateMac: a refusal once the KMS answers.
    macKey = await createManifestKey(a, host, ['kms:VerifyMac', 'kms:DescribeKey']);
    const u = new URL(url);
    fwd = new TcpForwarder({ host: u.hostname, port: Number(u.port) });
    await fwd.reserve();
    hostBEnv(host, `http://127.0.0.1:${fwd.port}`);
  }, 60_000);

  afterAll(async () => {
    try {
      await cleanupHostAndKms(b, a, saved);
    } finally {
      await fwd?.stop();
    }
  }, 60_000);

  it('says the key waits for the host\'s KMS, then that the KMS refused it', async () => {
    await b.start(['--kms-endpoint', `http://127.0.0.1:${fwd!.port}`, '--snapshot-manifest-key', macKey, '--kms-request-timeout', '2s']);
    const before = (await b.api('ebsd.Status', {})).Daemon;
    expect(before.Kms.State).toBe('unreachable');
    expect(before.SnapshotManifestKeyWaiting).toMatchObject({ Since: expect.any(String), Attempts: 0, LastError: expect.stringContaining('not tried yet') });

    await fwd!.start();
    // The KMS answers, and refuses GenerateMac: the volume service opens (before: every try of it failed on the
    // refusal, so the recorded volumes were never served and the KMS was shown unreachable for good).
    const after = await until('the host resolved', async () => {
      const d = (await b.api('ebsd.Status', {})).Daemon;
      return d.Kms.State === 'unreachable' ? undefined : d;
    }, 30_000);
    expect(after.Kms.Waiting).toBeUndefined();
    expect(after.SnapshotManifestKeyWaiting).toBeUndefined();
    expect(after.SnapshotManifestKeyRefused).toMatchObject({ Time: expect.any(String), AwsName: 'AccessDeniedException', LastError: expect.stringContaining('kms:GenerateMac') });
    expect(after.SnapshotManifestKeyRefused.LastError).toContain('--snapshot-manifest-key');
    // Volumes are served; snapshots are refused, naming the key that is not open.
    const vol = (await b.api('ebsd.CreateVolume', { Size: 8 * 1024 * 1024, KmsKeyId: volKey })).VolumeId as string;
    await b.api('ebsd.AttachVolume', { VolumeId: vol });
    await expect(b.api('ebsd.CreateSnapshot', { VolumeId: vol })).rejects.toThrow('--snapshot-manifest-key');
    const log = await b.untilLog('the KMS refused the key of --snapshot-manifest-key');
    expect(log).toContain('the KMS refused the key of --snapshot-manifest-key');
  }, 120_000);
});
