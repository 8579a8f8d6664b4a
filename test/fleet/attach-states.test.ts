/**
 * EC2's attachment states while an attach or a detach is under way: the volume
 * is `in-use` with its attachment `attaching` while the host's CreateGrant and
 * Decrypt are out, and `detaching` while the detach retires the grant
 * (docs/architecture.md §6). Host A serves the KMS (--kms-only on loopback);
 * host B attaches through it. The KMS process is stopped (SIGSTOP) to hold a
 * call open, so the states are seen, not raced for; SIGCONT lets the call
 * finish within the host's 5 s request timeout.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt, type CliResult } from '../e2e/helpers.js';
import { startKmsDaemon } from '../kms-net/helpers.js';
import { callDaemon, socketPathFor } from '../../src/cli/client.js';
import { until } from './netns.js';
import { cleanupHostAndKms, createRemoteHostUser, hostBEnv, hostKeyPolicy, savedAwsEnv } from './remote-host.js';

describe('attachment states while the KMS call of an attach or a detach is out', () => {
  const a = new Env('ast-kms');
  const b = new Env('ast-host');
  const saved = savedAwsEnv();
  let vol = '';
  let kmsPid = 0;
  /** DescribeVolumes straight from the socket: a poll spawns no CLI process. */
  const describe1 = async (): Promise<any> => (await callDaemon(socketPathFor(b.state), 'ebsd.DescribeVolumes', { VolumeIds: [vol] })).Volumes[0];
  const byStatus = async (status: string): Promise<string[]> =>
    (await callDaemon(socketPathFor(b.state), 'ebsd.DescribeVolumes', { Filters: [{ Name: 'attachment.status', Values: [status] }] })).Volumes.map((v: any) => v.VolumeId);

  /**
   * `start` run with the KMS stopped, which holds its KMS call open; once DescribeVolumes shows the
   * attachment `state` (and the attachment.status filter finds it) the KMS goes on. The volume as
   * then described, and what `start` started.
   */
  async function seenWhileKmsStopped(state: string, start: () => Promise<CliResult>): Promise<{ seen: any; done: Promise<CliResult> }> {
    process.kill(kmsPid, 'SIGSTOP');
    const done = start();
    try {
      const seen = await until(`the ${state} under way`, async () => {
        const v = await describe1();
        return v.Attachments[0]?.State === state ? v : undefined;
      }, 15_000);
      expect(await byStatus(state)).toEqual([vol]);
      return { seen, done };
    } finally {
      process.kill(kmsPid, 'SIGCONT');
    }
  }

  beforeAll(async () => {
    ensureBuilt();
    const { url } = await startKmsDaemon(a);
    kmsPid = a.pid!;
    const host = await createRemoteHostUser(a);
    const arn = (await a.api('TrentService.CreateKey')).KeyMetadata.Arn as string;
    await a.api('TrentService.PutKeyPolicy', { KeyId: arn, PolicyName: 'default', Policy: hostKeyPolicy(host) });
    hostBEnv(host, url);
    await b.start(['--kms-endpoint', url]);
    vol = (await b.api('ebsd.CreateVolume', { Size: '16MiB', KmsKeyId: arn })).VolumeId as string;
  }, 180_000);

  afterAll(async () => {
    try {
      if (kmsPid) process.kill(kmsPid, 'SIGCONT');
    } catch { /* gone already */ }
    await cleanupHostAndKms(b, a, saved);
  }, 60_000);

  it('shows attaching, then attached; detaching, then no attachment', async () => {
    expect(await describe1()).toMatchObject({ State: 'available', Attachments: [] });

    const attach = await seenWhileKmsStopped('attaching', () => b.cli(['attach', vol, '--output', 'json']));
    expect(attach.seen).toMatchObject({ State: 'in-use', Attachments: [{ VolumeId: vol, Device: `/dev/ebsd/${vol}`, State: 'attaching', DeleteOnTermination: false }] });
    const attached = await attach.done;
    expect(attached.code, attached.stderr).toBe(0);
    expect(JSON.parse(attached.stdout).State).toBe('attached');
    expect(await describe1()).toMatchObject({ State: 'in-use', Attachments: [{ State: 'attached' }] });
    expect(await byStatus('attaching')).toEqual([]);

    const detach = await seenWhileKmsStopped('detaching', () => b.cli(['detach', vol, '--output', 'json']));
    expect(detach.seen).toMatchObject({ State: 'in-use', Attachments: [{ VolumeId: vol, State: 'detaching' }] });
    const detached = await detach.done;
    expect(detached.code, detached.stderr).toBe(0);
    expect(JSON.parse(detached.stdout).State).toBe('detached');
    expect(await describe1()).toMatchObject({ State: 'available', Attachments: [] });
  });

  it('an attach the KMS refuses leaves the volume available, with no attachment shown', async () => {
    // Host B's user loses kms:CreateGrant on the key: the attach fails at the grant.
    const arn = (await describe1()).KmsKeyId as string;
    await a.api('TrentService.PutKeyPolicy', { KeyId: arn, PolicyName: 'default', Policy: JSON.stringify({
      Version: '2012-10-17',
      Statement: [{ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${arn.split(':')[4]}:root` }, Action: 'kms:*', Resource: '*' }],
    }) });

    const r = await b.cli(['attach', vol]);
    expect(r.code, r.stderr).not.toBe(0);
    expect(r.stderr).toContain('AccessDenied');
    expect(await describe1()).toMatchObject({ State: 'available', Attachments: [] });
  });
});
