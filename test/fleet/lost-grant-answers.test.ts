/**
 * A grant KMS made but the host never heard of, or could not retire, does not
 * stay live until the host's next start (docs/architecture.md §6.1, §6.2): host
 * B reaches host A's KMS (--kms-only on loopback) through a TCP proxy that loses
 * the answer of a CreateGrant (KMS made the grant; B's SDK times out, retries
 * with the same Name, times out again) or refuses a RetireGrant. Once the KMS
 * answers again, B retires the grant by itself, without a restart or another
 * attach of the volume: an attach grant of a failed attach, one a detach could
 * not retire (of a volume kept, or deleted meanwhile), and the op grant of a
 * failed create.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { startKmsDaemon } from '../kms-net/helpers.js';
import { until } from './netns.js';
import { AnswerDroppingProxy } from './answer-dropping-proxy.js';
import { cleanupHostAndKms, createRemoteHostUser, hostBEnv, hostKeyPolicy, savedAwsEnv } from './remote-host.js';

describe('grants whose CreateGrant answer or RetireGrant was lost are retired once the KMS answers', () => {
  const a = new Env('lg-kms');
  const b = new Env('lg-host');
  const saved = savedAwsEnv();
  let proxy: AnswerDroppingProxy | undefined;
  let k = '';
  let instance = '';

  const grantsOn = async (): Promise<{ GrantId: string; Name?: string }[]> => (await a.api('TrentService.ListGrants', { KeyId: k })).Grants;
  const named = async (prefix: string): Promise<string[]> => (await grantsOn()).map((g) => g.Name ?? '').filter((n) => n.startsWith(prefix));
  /** Polled until the KMS holds no grant whose name starts with `prefix`; the bound is a safety net. */
  const untilNone = (prefix: string): Promise<true> => until(`no grant named ${prefix}*`, async () => ((await named(prefix)).length === 0 ? true : undefined), 30_000);

  beforeAll(async () => {
    ensureBuilt();
    const { url } = await startKmsDaemon(a);
    const host = await createRemoteHostUser(a);
    k = (await a.api('TrentService.CreateKey', { Description: 'K' })).KeyMetadata.Arn;
    await a.api('TrentService.PutKeyPolicy', { KeyId: k, PolicyName: 'default', Policy: hostKeyPolicy(host) });
    const u = new URL(url);
    proxy = new AnswerDroppingProxy({ host: u.hostname, port: Number(u.port) });
    const via = await proxy.start();
    hostBEnv(host, via);
    // TTL 2 s: grants are retried every TTL/4, at least 1 s (op-grants.ts opGrantRetryMs).
    // A lost answer costs the SDK's 3 attempts of --kms-request-timeout each: 2 s, not the default 5 s
    // (the two drop-answer tests took 16.5 s each), still well above a loaded machine's round trip.
    await b.start(['--kms-endpoint', via, '--key-cache-ttl', '2s', '--key-cache-max-stale', '120s', '--kms-request-timeout', '2s']);
    instance = readFileSync(join(b.state, 'volumes', 'instance-id'), 'utf8').trim();
  }, 120_000);

  afterAll(async () => {
    try {
      await cleanupHostAndKms(b, a, saved);
    } finally {
      await proxy?.close();
    }
  }, 60_000);

  it('an attach whose CreateGrant answer was lost fails, and its grant is retired once the KMS answers', async () => {
    const vol = (await b.api('ebsd.CreateVolume', { Size: '16MiB', KmsKeyId: k })).VolumeId as string;
    proxy!.set({ CreateGrant: 'drop-answer' });
    await expect(b.api('ebsd.AttachVolume', { VolumeId: vol })).rejects.toThrow();
    expect(proxy!.faulted.creategrant).toBeGreaterThan(0);
    // KMS made the grant (idempotent by Name: one, whatever the SDK's retries).
    expect(await named(`ebsd-attach-${instance}-${vol}`)).toHaveLength(1);
    expect((await b.api('ebsd.DescribeVolumes', { VolumeIds: [vol] })).Volumes[0].State).toBe('available');
    proxy!.set({});
    await untilNone(`ebsd-attach-${instance}-${vol}`);
    // The volume attaches as before; its detach retires the new grant.
    await b.api('ebsd.AttachVolume', { VolumeId: vol });
    await b.api('ebsd.DetachVolume', { VolumeId: vol });
    expect(await named(`ebsd-attach-${instance}-${vol}`)).toEqual([]);
  }, 120_000);

  it('an attach grant a detach could not retire (RetireGrant refused on the way) is retired once the KMS answers', async () => {
    const vol = (await b.api('ebsd.CreateVolume', { Size: '16MiB', KmsKeyId: k })).VolumeId as string;
    await b.api('ebsd.AttachVolume', { VolumeId: vol });
    proxy!.set({ RetireGrant: 'refuse' });
    await b.api('ebsd.DetachVolume', { VolumeId: vol });
    expect(proxy!.faulted.retiregrant).toBeGreaterThan(0);
    expect((await b.api('ebsd.DescribeVolumes', { VolumeIds: [vol] })).Volumes[0].State).toBe('available');
    expect(await named(`ebsd-attach-${instance}-${vol}`)).toHaveLength(1);
    proxy!.set({});
    await untilNone(`ebsd-attach-${instance}-${vol}`);
  }, 120_000);

  it('a volume deleted while its detach\'s grant is still unretired: the grant is found by name and retired once the KMS answers', async () => {
    const vol = (await b.api('ebsd.CreateVolume', { Size: '16MiB', KmsKeyId: k })).VolumeId as string;
    await b.api('ebsd.AttachVolume', { VolumeId: vol });
    proxy!.set({ RetireGrant: 'refuse', ListRetirableGrants: 'refuse' });
    await b.api('ebsd.DetachVolume', { VolumeId: vol });
    await b.api('ebsd.DeleteVolume', { VolumeId: vol });
    expect((await b.api('ebsd.DescribeVolumes', {})).Volumes.map((v: any) => v.VolumeId)).not.toContain(vol);
    expect(await named(`ebsd-attach-${instance}-${vol}`)).toHaveLength(1);
    proxy!.set({});
    await untilNone(`ebsd-attach-${instance}-${vol}`);
  }, 120_000);

  it('a create whose op grant\'s CreateGrant answer was lost fails, and that grant is retired once the KMS answers', async () => {
    proxy!.set({ CreateGrant: 'drop-answer' });
    await expect(b.api('ebsd.CreateVolume', { Size: '16MiB', KmsKeyId: k })).rejects.toThrow();
    expect((await named(`ebsd-op-${instance}-`)).length).toBeGreaterThan(0);
    proxy!.set({});
    await untilNone(`ebsd-op-${instance}-`);
  }, 120_000);
});
