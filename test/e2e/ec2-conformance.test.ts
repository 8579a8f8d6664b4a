import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt, rawControlCall } from './helpers.js';
import { settled } from '../snapshot/helpers.js';

/**
 * EC2 API conformance of the volume operations, through the real daemon and
 * CLI: what a user who knows EC2 (Amazon EC2 API Reference) expects of
 * CreateVolume, DescribeVolumes, AttachVolume and the common parameters.
 */

type Answer = { status: number; body: { __type?: string; message?: string; [k: string]: any } };

function raw(env: Env, op: string, body: unknown): Promise<Answer> {
  return rawControlCall(env.state, `ebsd.${op}`, body);
}

const MiB = 1024 * 1024;

describe('EC2 conformance of the volume API (real daemon)', () => {
  const env = new Env('ec2-conf');
  const volumeIds = async (): Promise<string[]> => ((await env.api('ebsd.DescribeVolumes')).Volumes as { VolumeId: string }[]).map((v) => v.VolumeId).sort();
  /** A completed snapshot of `volumeId` (set-up: what `snapshot create --wait` does, without a CLI process). */
  const snapshotOf = async (volumeId: string): Promise<string> => {
    const s = await settled(env, (await env.api('ebsd.CreateSnapshot', { VolumeId: volumeId })).SnapshotId);
    expect(s.State).toBe('completed');
    return s.SnapshotId as string;
  };

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
  }, 60_000);
  afterAll(() => env.cleanup());

  it('CreateVolume ClientToken: a repeat answers the same volume (also after a restart and while the first runs), other parameters are IdempotentParameterMismatch, a deleted volume frees its token', async () => {
    const before = await volumeIds();
    const first = await env.ok(['volume', 'create', '--size', '4MiB', '--name', 'idem', '--client-token', 'tok-1']);
    const again = await env.api('ebsd.CreateVolume', { Size: '4MiB', Name: 'idem', ClientToken: 'tok-1' });
    expect(again.VolumeId).toBe(first.VolumeId);
    expect(again.State).toBe('available');
    expect(await volumeIds()).toEqual([...before, first.VolumeId].sort());

    // The same token with other parameters: refused, nothing created.
    const other = await raw(env, 'CreateVolume', { Size: 8 * MiB, Name: 'idem', ClientToken: 'tok-1' });
    expect(other.status).toBe(400);
    expect(other.body.__type).toBe('IdempotentParameterMismatch');
    const cli = await env.cli(['volume', 'create', '--size', '4MiB', '--name', 'other', '--client-token', 'tok-1']);
    expect(cli.code).not.toBe(0);
    expect(cli.stderr).toMatch(/IdempotentParameterMismatch/);
    // Case-sensitive: another token.
    const upper = await raw(env, 'CreateVolume', { Size: 4 * MiB, Name: 'idem', ClientToken: 'TOK-1' });
    expect(upper.status).toBe(200);
    expect(upper.body.VolumeId).not.toBe(first.VolumeId);
    expect(await volumeIds()).toEqual([...before, first.VolumeId, upper.body.VolumeId].sort());

    // Concurrent requests with one token make one volume.
    const both = await Promise.all([1, 2, 3].map(() => raw(env, 'CreateVolume', { Size: 4 * MiB, ClientToken: 'tok-concurrent' })));
    expect(both.map((r) => r.status)).toEqual([200, 200, 200]);
    expect(new Set(both.map((r) => r.body.VolumeId)).size).toBe(1);

    // Durable: the token survives a restart.
    await env.stop();
    await env.start();
    const afterRestart = await raw(env, 'CreateVolume', { Size: 4 * MiB, Name: 'idem', ClientToken: 'tok-1' });
    expect(afterRestart.status).toBe(200);
    expect(afterRestart.body.VolumeId).toBe(first.VolumeId);

    // A deleted volume's token is forgotten: the next use creates a new volume.
    await env.api('ebsd.DeleteVolume', { VolumeId: first.VolumeId });
    const fresh = await raw(env, 'CreateVolume', { Size: 4 * MiB, Name: 'idem', ClientToken: 'tok-1' });
    expect(fresh.status).toBe(200);
    expect(fresh.body.VolumeId).not.toBe(first.VolumeId);

    // EC2's limit: 64 ASCII characters.
    const long = await raw(env, 'CreateVolume', { Size: 4 * MiB, ClientToken: 't'.repeat(65) });
    expect(long.body.__type).toBe('InvalidParameterValue');
    expect(long.body.message).toMatch(/ClientToken must be 1 to 64 characters/);
    const nonAscii = await raw(env, 'CreateVolume', { Size: 4 * MiB, ClientToken: 'tök' });
    expect(nonAscii.body.__type).toBe('InvalidParameterValue');
    // The repeats are audited as CreateVolume calls.
    expect(env.auditText()).toMatch(/"idempotentRepeat":true/);
  }, 120_000);

  it('AttachVolume and DetachVolume take EC2\'s InstanceId and Device: this host\'s id attaches, another is InvalidInstanceID.NotFound, a malformed one InvalidInstanceID.Malformed', async () => {
    const host = readFileSync(join(env.state, 'volumes', 'instance-id'), 'utf8').trim();
    const vol = (await env.api('ebsd.CreateVolume', { Size: '4MiB' })).VolumeId as string;
    const other = await raw(env, 'AttachVolume', { VolumeId: vol, InstanceId: 'i-0123456789abcdef0', Device: '/dev/sdf' });
    expect(other.status).toBe(400);
    expect(other.body).toMatchObject({ __type: 'InvalidInstanceID.NotFound', message: expect.stringMatching(/^The instance ID 'i-0123456789abcdef0' does not exist/) });
    // A dry run refuses what the real call would: another instance is not DryRunOperation.
    const dry = await raw(env, 'AttachVolume', { VolumeId: vol, InstanceId: 'i-0123456789abcdef0', DryRun: true });
    expect(dry.body.__type).toBe('InvalidInstanceID.NotFound');
    expect((await raw(env, 'AttachVolume', { VolumeId: vol, InstanceId: host, DryRun: true })).body.__type).toBe('DryRunOperation');
    const bad = await raw(env, 'AttachVolume', { VolumeId: vol, InstanceId: 'i-xyz', Device: '/dev/sdf' });
    expect(bad.body.__type).toBe('InvalidInstanceID.Malformed');
    expect((await env.api('ebsd.DescribeVolumes', { VolumeIds: [vol] })).Volumes[0].State).toBe('available');

    const ok = await raw(env, 'AttachVolume', { VolumeId: vol, InstanceId: host, Device: '/dev/sdf' });
    expect(ok.status, JSON.stringify(ok.body)).toBe(200);
    expect(ok.body).toMatchObject({ VolumeId: vol, InstanceId: host, Device: '/dev/sdf', State: 'attached' });
    const att = (await env.api('ebsd.DescribeVolumes', { VolumeIds: [vol] })).Volumes[0].Attachments[0];
    expect(att).toMatchObject({ InstanceId: host, Device: '/dev/sdf' });

    // The CLI takes them too, and exits 5 (not found) as for an unknown volume.
    const cliOther = await env.cli(['attach', vol, '--instance-id', 'i-0123456789abcdef0']);
    expect(cliOther.code).toBe(5);
    expect(cliOther.stderr).toMatch(/^ebsd: InvalidInstanceID\.NotFound: The instance ID 'i-0123456789abcdef0' does not exist/);
    const cliDetach = await env.cli(['detach', vol, '--instance-id', 'i-0123456789abcdef0']);
    expect(cliDetach.code).toBe(5);
    const wrongDetach = await raw(env, 'DetachVolume', { VolumeId: vol, InstanceId: 'i-0123456789abcdef0' });
    expect(wrongDetach.body.__type).toBe('InvalidInstanceID.NotFound');
    await env.untilClosed(vol);
    const detached = await raw(env, 'DetachVolume', { VolumeId: vol, InstanceId: host, Device: '/dev/sdf' });
    expect(detached.status, JSON.stringify(detached.body)).toBe(200);
    expect(detached.body).toMatchObject({ VolumeId: vol, State: 'detached' });
  }, 60_000);

  it('DryRun on every EC2 operation: checked, authorized, then DryRunOperation (412) with nothing changed and an audit event; UnauthorizedOperation when not allowed', async () => {
    const dry = 'Request would have succeeded, but DryRun flag is set.';
    const vol = (await env.api('ebsd.CreateVolume', { Size: '4MiB', Name: 'dry' })).VolumeId as string;
    const attached = (await env.api('ebsd.CreateVolume', { Size: '4MiB' })).VolumeId as string;
    await env.api('ebsd.AttachVolume', { VolumeId: attached });
    const snap = await snapshotOf(vol);
    const region = (await env.api('ebsd.Status')).Daemon.Region as string;
    const volumesBefore = await volumeIds();
    const snapshotsBefore = ((await env.ok(['snapshot', 'ls'])).Snapshots as { SnapshotId: string }[]).map((x) => x.SnapshotId).sort(); // the CLI's listing

    const calls: [string, Record<string, unknown>][] = [
      ['CreateVolume', { Size: 4 * MiB }],
      ['CreateVolume', { SnapshotId: snap }],
      ['DescribeVolumes', {}],
      ['DescribeVolumes', { VolumeIds: [vol] }],
      ['DescribeVolumeStatus', { VolumeIds: [vol] }],
      ['ModifyVolume', { VolumeId: vol, Size: 8 * MiB }],
      ['DeleteVolume', { VolumeId: vol }],
      ['AttachVolume', { VolumeId: vol }],
      ['DetachVolume', { VolumeId: attached, Force: true }],
      ['CreateSnapshot', { VolumeId: vol }],
      ['DescribeSnapshots', {}],
      ['DeleteSnapshot', { SnapshotId: snap }],
      ['CopySnapshot', { SourceSnapshotId: snap, SourceRegion: region }],
    ];
    for (const [op, body] of calls) {
      const r = await raw(env, op, { ...body, DryRun: true });
      expect([op, r.status, r.body.__type, r.body.message]).toEqual([op, 412, 'DryRunOperation', dry]);
      // DryRun false is the ordinary request; a non-boolean is refused.
      const bad = await raw(env, op, { ...body, DryRun: 'yes' });
      expect([op, bad.body.__type, bad.body.message]).toEqual([op, 'InvalidParameterValue', expect.stringMatching(/DryRun must be true or false/)]);
    }
    // Request checking still comes first.
    expect((await raw(env, 'DeleteVolume', { VolumeId: 'vol-1', DryRun: true })).body.__type).toBe('InvalidVolumeID.Malformed');
    // And what the real copy would refuse after authorizing (a source that does not exist), a dry run refuses too.
    expect((await raw(env, 'CopySnapshot', { SourceSnapshotId: 'snap-0123456789abcdef0', SourceRegion: region, DryRun: true })).body.__type).toBe('InvalidSnapshot.NotFound');
    expect((await raw(env, 'DescribeVolumes', { DryRun: false })).status).toBe(200);

    // Nothing changed.
    expect(await volumeIds()).toEqual(volumesBefore);
    const described = (await env.api('ebsd.DescribeVolumes', { VolumeIds: [vol, attached] })).Volumes as { VolumeId: string; State: string; SizeBytes: number }[];
    expect(described.map((v) => [v.VolumeId, v.State, v.SizeBytes]).sort()).toEqual([[vol, 'available', 4 * MiB], [attached, 'in-use', 4 * MiB]].sort());
    expect(((await env.api('ebsd.DescribeSnapshots')).Snapshots as { SnapshotId: string }[]).map((x) => x.SnapshotId).sort()).toEqual(snapshotsBefore);

    // The CLI's --dry-run.
    for (const args of [['volume', 'create', '--size', '4MiB', '--dry-run'], ['volume', 'ls', '--dry-run'], ['volume', 'describe', vol, '--dry-run'], ['volume', 'modify', vol, '--size', '8MiB', '--dry-run'],
      ['volume', 'delete', vol, '--dry-run'], ['attach', vol, '--dry-run'], ['detach', attached, '--dry-run'], ['snapshot', 'create', vol, '--dry-run'], ['snapshot', 'ls', '--dry-run'],
      ['snapshot', 'describe', snap, '--dry-run'], ['snapshot', 'delete', snap, '--dry-run'], ['snapshot', 'copy', snap, '--dry-run']]) {
      const r = await env.cli(args);
      expect([args.join(' '), r.stderr.trim()]).toEqual([args.join(' '), `ebsd: DryRunOperation: ${dry}`]);
    }
    expect(await volumeIds()).toEqual(volumesBefore);

    // Audited as EC2 audits a dry run.
    const events = env.auditText().trim().split('\n').map((l) => JSON.parse(l) as { eventName: string; eventSource: string; errorCode?: string });
    const dryEvents = events.filter((e) => e.errorCode === 'Client.DryRunOperation');
    expect(new Set(dryEvents.map((e) => e.eventName))).toEqual(new Set(calls.map(([op]) => op)));
    expect(dryEvents.every((e) => e.eventSource === 'ec2.amazonaws.com')).toBe(true);

    // Without the permission: UnauthorizedOperation, not DryRunOperation.
    await env.api('ebsd.IamCreateUser', { UserName: 'dryrunner' });
    await env.api('ebsd.IamMapUid', { Uid: 1000, Principal: 'user/dryrunner' });
    const denied = await env.cli(['volume', 'delete', vol, '--dry-run'], { uid: 1000 });
    expect(denied.code).toBe(4);
    expect(denied.stderr).toMatch(/^ebsd: UnauthorizedOperation: /);
    const deniedSnap = await env.cli(['snapshot', 'delete', snap, '--dry-run'], { uid: 1000 });
    expect(deniedSnap.stderr).toMatch(/^ebsd: UnauthorizedOperation: /);
    // Listings without ids refuse nobody for real (the answer is filtered), but a dry run says whether
    // the caller may list at all: with no policy, UnauthorizedOperation; allowed on volume/*, DryRunOperation.
    for (const args of [['volume', 'ls', '--dry-run'], ['snapshot', 'ls', '--dry-run']]) {
      const r = await env.cli(args, { uid: 1000 });
      expect(r.stderr, args.join(' ')).toMatch(/^ebsd: UnauthorizedOperation: /);
    }
    await env.api('ebsd.IamPutPolicy', { Principal: 'user/dryrunner', PolicyName: 'list',
      PolicyDocument: JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: ['ec2:DescribeVolumes', 'ec2:DescribeSnapshots'], Resource: '*' }] }) });
    for (const args of [['volume', 'ls', '--dry-run'], ['snapshot', 'ls', '--dry-run']]) {
      const r = await env.cli(args, { uid: 1000 });
      expect(r.stderr, args.join(' ')).toMatch(/^ebsd: DryRunOperation: /);
    }
    await env.untilClosed(attached);
    await env.api('ebsd.DetachVolume', { VolumeId: attached, Force: false });
  }, 120_000);

  it('DescribeVolumes MaxResults over 500 is taken as 500 (EC2), not refused; below 5 and with VolumeIds it still is', async () => {
    const all = await volumeIds();
    const big = await raw(env, 'DescribeVolumes', { MaxResults: 1000 });
    expect(big.status, JSON.stringify(big.body)).toBe(200);
    expect((big.body.Volumes as { VolumeId: string }[]).map((v) => v.VolumeId).sort()).toEqual(all);
    expect(big.body.NextToken).toBeUndefined();
    expect((await raw(env, 'DescribeVolumes', { MaxResults: 4 })).body.__type).toBe('InvalidParameterValue');
    expect((await raw(env, 'DescribeVolumes', { MaxResults: 1000, VolumeIds: [all[0]] })).body.__type).toBe('InvalidParameterCombination');
  }, 60_000);

  it('a volume shows gp3\'s Iops, Throughput and MultiAttachEnabled, and the multi-attach-enabled filter matches it', async () => {
    const created = await env.api('ebsd.CreateVolume', { Size: '4MiB', Name: 'gp3' });
    expect(created).toMatchObject({ VolumeType: 'gp3', Iops: 3000, Throughput: 125, MultiAttachEnabled: false });
    const [v] = (await env.api('ebsd.DescribeVolumes', { VolumeIds: [created.VolumeId] })).Volumes;
    expect(v).toMatchObject({ VolumeType: 'gp3', Iops: 3000, Throughput: 125, MultiAttachEnabled: false });
    const f = await raw(env, 'DescribeVolumes', { Filters: [{ Name: 'multi-attach-enabled', Values: ['false'] }, { Name: 'tag:Name', Values: ['gp3'] }] });
    expect((f.body.Volumes as { VolumeId: string; MultiAttachEnabled: boolean }[]).map((x) => [x.VolumeId, x.MultiAttachEnabled])).toEqual([[created.VolumeId, false]]);
  }, 60_000);

  it('a restore (CreateVolume with SnapshotId) with a KmsKeyId that does not exist fails at once and creates nothing; a restored volume shows its key ARN while creating', async () => {
    const src = (await env.api('ebsd.CreateVolume', { Size: '16MiB' })).VolumeId as string;
    const snap = await snapshotOf(src);
    const before = await volumeIds();
    const bad = await raw(env, 'CreateVolume', { SnapshotId: snap, KmsKeyId: 'alias/nope' });
    expect(bad.status, JSON.stringify(bad.body)).toBe(400);
    expect(bad.body.__type).toBe('NotFoundException');
    // The same as without SnapshotId.
    expect((await raw(env, 'CreateVolume', { Size: 4 * MiB, KmsKeyId: 'alias/nope' })).body.__type).toBe('NotFoundException');
    expect(await volumeIds()).toEqual(before);

    // Another key: the answer (creating) already names its ARN, as the finished volume does.
    const key = await env.api('TrentService.CreateKey');
    await env.api('TrentService.CreateAlias', { AliasName: 'alias/restore-to', TargetKeyId: key.KeyMetadata.KeyId });
    const restored = await raw(env, 'CreateVolume', { SnapshotId: snap, KmsKeyId: 'alias/restore-to' });
    expect(restored.status, JSON.stringify(restored.body)).toBe(200);
    expect(restored.body).toMatchObject({ Encrypted: true, KmsKeyId: key.KeyMetadata.Arn, SnapshotId: snap });
    // The snapshot's own key when none is given.
    const srcKey = (await env.api('ebsd.DescribeVolumes', { VolumeIds: [src] })).Volumes[0].KmsKeyId as string;
    const same = await raw(env, 'CreateVolume', { SnapshotId: snap });
    expect(same.body).toMatchObject({ Encrypted: true, KmsKeyId: srcKey });
    for (const id of [restored.body.VolumeId as string, same.body.VolumeId as string]) {
      let v: { State: string; KmsKeyId: string } | undefined;
      for (const end = Date.now() + 60_000; Date.now() < end;) {
        v = (await env.api('ebsd.DescribeVolumes', { VolumeIds: [id] })).Volumes[0];

        if (v!.State !== 'creating') break;
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(v!.State).toBe('available');
      expect(v!.KmsKeyId).toBe(id === restored.body.VolumeId ? key.KeyMetadata.Arn : srcKey);
    }
  }, 120_000);

  it('a Size given as EC2 gives it (GiB) is refused with a message that says the unit', async () => {
    const hint = 'Size is in bytes, or a string with a unit such as "8GiB" (EC2\'s Size is GiB)';
    const before = await volumeIds();
    for (const [op, body] of [['CreateVolume', { Size: 8 }], ['CreateVolume', { Size: '8' }], ['CreateVolume', { Size: -1 }], ['CreateVolume', { Size: '8 gigs' }], ['CreateVolume', { Size: true }]] as const) {
      const r = await raw(env, op, body);
      expect([JSON.stringify(body), r.body.__type]).toEqual([JSON.stringify(body), 'InvalidParameterValue']);
      expect(r.body.message).toContain(hint);
    }
    const vol = before[0]!;
    const grow = await raw(env, 'ModifyVolume', { VolumeId: vol, Size: 16 });
    expect(grow.body.message).toContain(hint);
    const cli = await env.cli(['volume', 'create', '--size', '8']);
    expect(cli.stderr).toContain(hint);
    expect(await volumeIds()).toEqual(before);
  }, 60_000);
});
