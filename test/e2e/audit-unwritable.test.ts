/**
 * A call that cannot be audited does not take effect, or at least does not
 * answer as if it had (docs/architecture.md §5.8). With the live audit file
 * made immutable (`chattr +i`), a volume or snapshot operation answers EC2's
 * InternalError naming the audit log (exit 10) instead of success, and
 * AssumeRole on the listener hands out no credentials (500 InternalFailure, as
 * STS answers an internal failure). Real daemon with a listener, real CLI, the
 * AWS SDK's STS client; the file is made mutable again in every outcome.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { STSClient, AssumeRoleCommand } from '@aws-sdk/client-sts';
import { Env, ensureBuilt } from './helpers.js';
import { settled } from '../snapshot/helpers.js';
import { StandardChain, auditEvents, keyVars, kmsUrl, makeAccessKey, type AccessKey } from '../kms-net/helpers.js';

describe('operations whose event cannot be written do not answer success', () => {
  const env = new Env('audit-unwritable');
  const chain = new StandardChain();
  const events = join(env.state, 'kms', 'audit', 'events.ndjson');
  const chattr = (flag: '+i' | '-i'): void => {
    const r = spawnSync('chattr', [flag, events], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`chattr ${flag} ${events}: ${r.stderr}`);
  };
  let url = '';
  let roleArn = '';
  let alice: AccessKey;
  let volA = '';
  let volB = '';
  let snap = '';

  beforeAll(async () => {
    ensureBuilt();
    await env.start(['--kms-listen', '127.0.0.1:0']);
    url = await kmsUrl(env);
    let accountId: string;
    ({ key: alice, accountId } = await makeAccessKey(env, 'alice'));
    await env.api('ebsd.IamCreateRole', { RoleName: 'app' });
    roleArn = `arn:aws:iam::${accountId}:role/app`;
    await env.api('ebsd.IamUpdateAssumeRolePolicy', { RoleName: 'app', PolicyDocument:
      JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${accountId}:user/alice` }, Action: 'sts:AssumeRole' }] }) });
    volA = (await env.api('ebsd.CreateVolume', { Size: '16MiB', Name: 'a' })).VolumeId;
    volB = (await env.api('ebsd.CreateVolume', { Size: '16MiB', Name: 'b' })).VolumeId;
    const s = await settled(env, (await env.api('ebsd.CreateSnapshot', { VolumeId: volA })).SnapshotId);
    expect(s.State).toBe('completed');
    snap = s.SnapshotId;
    // SnapshotCompleted is written before the manifest that says completed (src/snapshot/errors.ts auditCompletion),
    // so it is in the file the moment DescribeSnapshots says so, without waiting; for a copy as for a create. The
    // first test counts events from here.
    const completed = (id: string): boolean => env.auditText().split('\n').some((l) => l.includes('"SnapshotCompleted"') && l.includes(id));
    expect(completed(snap)).toBe(true);
    const copy = await settled(env, (await env.api('ebsd.CopySnapshot', { SourceSnapshotId: snap, SourceRegion: (await env.api('ebsd.Status')).Daemon.Region })).SnapshotId);
    expect(copy.State).toBe('completed');
    expect(completed(copy.SnapshotId)).toBe(true);
  }, 120_000);
  afterAll(async () => {
    chain.restore();
    spawnSync('chattr', ['-i', events]);
    await env.cleanup();
  }, 60_000);

  const assumeRole = async (): Promise<unknown> => {
    chain.use(keyVars(alice, url));
    const sts = new STSClient({ maxAttempts: 1 });
    try {
      return await sts.send(new AssumeRoleCommand({ RoleArn: roleArn, RoleSessionName: 'unaudited' }));
    } catch (e) {
      return e;
    } finally {
      sts.destroy();
    }
  };

  it('with the audit file immutable: ModifyVolume, DeleteVolume, DeleteSnapshot answer InternalError; AssumeRole gives no credentials', async () => {
    const before = auditEvents(env).length;
    chattr('+i');
    try {
      const modify = await env.cli(['volume', 'modify', volA, '--size', '32MiB']);
      const del = await env.cli(['volume', 'delete', volB]);
      const delSnap = await env.cli(['snapshot', 'delete', snap]);
      for (const [what, r] of [['modify', modify], ['delete', del], ['snapshot delete', delSnap]] as const) {
        expect(r.code, `${what}: ${r.stdout}${r.stderr}`).toBe(10);
        expect(r.stderr, what).toMatch(/InternalError/);
        expect(r.stderr, what).toMatch(/took effect but its event could not be written to the audit log/);
      }
      const sts = (await assumeRole()) as { name?: string; $metadata?: { httpStatusCode?: number }; Credentials?: unknown };
      expect(sts.Credentials).toBeUndefined();
      expect(sts.name).toBe('InternalFailure');
      expect(sts.$metadata?.httpStatusCode).toBe(500);
    } finally {
      chattr('-i');
    }
    expect(auditEvents(env).length).toBe(before);
    expect(await env.untilLog(/could not audit an STS call/)).toMatch(/could not audit an STS call/);
  }, 60_000);

  it('once the file takes writes again, the same operations answer and are recorded', async () => {
    const sts = (await assumeRole()) as { Credentials?: { AccessKeyId?: string } };
    expect(sts.Credentials?.AccessKeyId).toMatch(/^ASIA/);
    const vol = (await env.api('ebsd.CreateVolume', { Size: '16MiB', Name: 'c' })).VolumeId as string;
    await env.api('ebsd.ModifyVolume', { VolumeId: vol, Size: '32MiB' });
    await env.api('ebsd.DeleteVolume', { VolumeId: vol });
    const names = auditEvents(env).filter((e) => e.requestParameters?.volumeId === vol).map((e) => e.eventName);
    expect(names).toEqual(['CreateVolume', 'ModifyVolume', 'DeleteVolume']);
    expect(auditEvents(env).some((e) => e.eventSource === 'sts.amazonaws.com' && e.eventName === 'AssumeRole' && !e.errorCode)).toBe(true);
  }, 60_000);
});
