/**
 * --snapshot-manifest-key on a fleet host whose KMS does not answer for the key at start
 * (docs/architecture.md §13.5, Start): host B reaches host A's KMS (--kms-only on loopback)
 * through a TCP proxy that closes every DescribeKey connection (STS and the rest pass). That is
 * not a refusal: B starts (before, exit 9 as a configuration error), refuses sign-manifests while
 * the key is not open, logs the failure once, and opens the key in the background once the KMS
 * answers, with no restart.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { startKmsDaemon } from '../kms-net/helpers.js';
import { AnswerDroppingProxy } from './answer-dropping-proxy.js';
import { cleanupHostAndKms, createManifestKey, createRemoteHostUser, hostBEnv, savedAwsEnv } from './remote-host.js';

describe('a manifest key the KMS does not answer for at start', () => {
  const a = new Env('mk-kms');
  const b = new Env('mk-host');
  const saved = savedAwsEnv();
  let proxy: AnswerDroppingProxy | undefined;
  let macKey = '';
  let via = '';

  beforeAll(async () => {
    ensureBuilt();
    const { url } = await startKmsDaemon(a);
    const host = await createRemoteHostUser(a);
    // What README "Snapshot store" tells a fleet host to be allowed on the manifest key.
    macKey = await createManifestKey(a, host);
    const u = new URL(url);
    proxy = new AnswerDroppingProxy({ host: u.hostname, port: Number(u.port) });
    via = await proxy.start();
    hostBEnv(host, via);
  }, 60_000);

  afterAll(async () => {
    try {
      await cleanupHostAndKms(b, a, saved);
    } finally {
      await proxy?.close();
    }
  }, 60_000);

  it('starts with the key closed, and opens it in the background once the KMS answers', async () => {
    proxy!.set({ DescribeKey: 'refuse' });
    await b.start(['--kms-endpoint', via, '--snapshot-manifest-key', macKey, '--kms-request-timeout', '2s']);
    const waiting = 'the KMS did not answer for the key of --snapshot-manifest-key';
    expect(await b.untilLog(waiting, 30_000)).toContain(waiting);
    expect(proxy!.faulted.describekey).toBeGreaterThan(0);
    // Up, its key not open: sign-manifests says so (nothing is read or trusted meanwhile).
    await expect(b.api('ebsd.SignManifests', {})).rejects.toThrow('the key of --snapshot-manifest-key is not open yet');
    expect((await b.api('ebsd.Status', {})).Daemon.SnapshotManifestKeyWaiting).toMatchObject({ Since: expect.any(String), Attempts: expect.any(Number), LastError: expect.stringContaining('DescribeKey') });
    proxy!.set({});
    const opened = 'the key of --snapshot-manifest-key is open';
    const log = await b.untilLog(opened, 60_000);
    expect(log).toContain(opened);
    // Logged once for the kind of failure, not once per try.
    expect(log.split('\n').filter((l) => l.includes(waiting))).toHaveLength(1);
    const status = (await b.api('ebsd.Status', {})).Daemon;
    expect(status.SnapshotManifestKey).toBe(macKey);
    expect(status.SnapshotManifestKeyWaiting).toBeUndefined();
    expect(await b.api('ebsd.SignManifests', {})).toMatchObject({ DryRun: true, Unsigned: [], AlreadySigned: 0 });
  }, 120_000);
});
