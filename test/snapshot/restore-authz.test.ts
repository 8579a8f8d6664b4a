import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { settled } from './helpers.js';

/**
 * Issue 17, finding 1: CreateVolume with SnapshotId is authorized on the
 * snapshot's ARN too (`ec2:CreateVolume` on `arn:aws:ec2:REGION::snapshot/ID`,
 * with the snapshot's tags), and the volume's context carries
 * `ec2:ParentSnapshot`. uid 1000 is user/alice, uid 1001 user/bob.
 */
const ALICE = 1000;
const BOB = 1001;
const CAROL = 1002;
const DAVE = 1003;

interface AuditEvent {
  eventName: string;
  errorCode?: string;
  errorMessage?: string;
  userIdentity?: { arn?: string };
}

describe('CreateVolume from a snapshot: authorization on the snapshot (real daemon)', () => {
  const env = new Env('snap-restore-authz');
  let snap = '';
  const as = (uid: number, args: string[]) => env.cli([...args, '--output', 'json'], { uid });
  const putPolicy = (user: string, doc: unknown): Promise<unknown> =>
    env.api('ebsd.IamPutPolicy', { Principal: `user/${user}`, PolicyName: 'p', PolicyDocument: JSON.stringify(doc) });
  const volumeIds = async (): Promise<string[]> => ((await env.api('ebsd.DescribeVolumes')).Volumes as { VolumeId: string }[]).map((v) => v.VolumeId).sort();

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    const teamRoot = (ResourceType: string) => [{ ResourceType, Tags: [{ Key: 'team', Value: 'root' }] }];
    const vol = (await env.api('ebsd.CreateVolume', { Size: '16MiB', TagSpecifications: teamRoot('volume') })).VolumeId;
    const s = await settled(env, (await env.api('ebsd.CreateSnapshot', { VolumeId: vol, TagSpecifications: teamRoot('snapshot') })).SnapshotId);
    expect(s.State).toBe('completed');
    snap = s.SnapshotId;
    for (const [user, uid] of [['alice', ALICE], ['bob', BOB], ['carol', CAROL], ['dave', DAVE]] as const) {
      await env.api('ebsd.IamCreateUser', { UserName: user });
      await env.api('ebsd.IamMapUid', { Uid: uid, Principal: `user/${user}` });
    }
    // alice: volumes and KMS, and an explicit Deny on every snapshot.
    await putPolicy('alice', {
      Version: '2012-10-17',
      Statement: [
        { Effect: 'Allow', Action: ['ec2:CreateVolume', 'ec2:DescribeVolumes'], Resource: 'arn:aws:ec2:*:*:volume/*' },
        { Effect: 'Allow', Action: 'kms:*', Resource: '*' },
        { Effect: 'Deny', Action: 'ec2:*', Resource: 'arn:aws:ec2:*::snapshot/*' },
      ],
    });
    // bob: volumes only when made from a snapshot, and CreateVolume on snapshots tagged team=root.
    await putPolicy('bob', {
      Version: '2012-10-17',
      Statement: [
        { Effect: 'Allow', Action: 'ec2:CreateVolume', Resource: 'arn:aws:ec2:*:*:volume/*', Condition: { StringLike: { 'ec2:ParentSnapshot': 'arn:aws:ec2:*::snapshot/snap-*' } } },
        { Effect: 'Allow', Action: 'ec2:DescribeVolumes', Resource: 'arn:aws:ec2:*:*:volume/*' },
        { Effect: 'Allow', Action: 'ec2:CreateVolume', Resource: 'arn:aws:ec2:*::snapshot/*', Condition: { StringEquals: { 'ec2:ResourceTag/team': 'root' } } },
        { Effect: 'Allow', Action: 'kms:*', Resource: '*' },
      ],
    });
    // carol: volumes of at most 1 GiB; dave: everything but volumes of 1 GiB or more. The snapshot's VolumeSize is 1.
    await putPolicy('carol', {
      Version: '2012-10-17',
      Statement: [
        { Effect: 'Allow', Action: 'ec2:CreateVolume', Resource: 'arn:aws:ec2:*:*:volume/*', Condition: { NumericLessThanEquals: { 'ec2:VolumeSize': '1' } } },
        { Effect: 'Allow', Action: 'ec2:CreateVolume', Resource: 'arn:aws:ec2:*::snapshot/*' },
        { Effect: 'Allow', Action: 'ec2:DescribeVolumes', Resource: '*' },
        { Effect: 'Allow', Action: 'kms:*', Resource: '*' },
      ],
    });
    await putPolicy('dave', {
      Version: '2012-10-17',
      Statement: [
        { Effect: 'Allow', Action: ['ec2:*', 'kms:*'], Resource: '*' },
        { Effect: 'Deny', Action: 'ec2:CreateVolume', Resource: 'arn:aws:ec2:*:*:volume/*', Condition: { NumericGreaterThanEquals: { 'ec2:VolumeSize': '1' } } },
      ],
    });
  }, 180_000);
  afterAll(() => env.cleanup());

  it('a restore without Size is judged with the snapshot\'s size as ec2:VolumeSize: a size Allow lets it through, a size Deny stops it', async () => {
    const allowed = await as(CAROL, ['volume', 'create', '--snapshot-id', snap, '--wait']);
    expect(allowed.code, allowed.stderr).toBe(0);
    expect(allowed.json()).toMatchObject({ State: 'available', Size: 1 });
    const before = await volumeIds();
    const denied = await as(DAVE, ['volume', 'create', '--snapshot-id', snap]);
    expect(denied.code, denied.stderr).toBe(4);
    expect(denied.stderr).toMatch(/UnauthorizedOperation/);
    expect(denied.stderr).toContain('ec2:CreateVolume on resource: arn:aws:ec2:');
    expect(denied.stderr).toContain(':volume/*');
    expect(await volumeIds()).toEqual(before);
    // The same Deny with the size given, as before.
    expect((await as(DAVE, ['volume', 'create', '--snapshot-id', snap, '--size', '16MiB'])).code).toBe(4);
  });

  it('refused on the snapshot: UnauthorizedOperation (exit 4) naming the snapshot ARN, audited, nothing created', async () => {
    const before = await volumeIds();
    const r = await as(ALICE, ['volume', 'create', '--snapshot-id', snap]);
    expect(r.code, r.stderr).toBe(4);
    expect(r.stderr).toMatch(/UnauthorizedOperation/);
    expect(r.stderr).toContain(`ec2:CreateVolume on resource: arn:aws:ec2:`);
    expect(r.stderr).toContain(`::snapshot/${snap}`);
    expect(await volumeIds()).toEqual(before);
    const denied = env.auditText().trim().split('\n').map((l) => JSON.parse(l) as AuditEvent)
      .filter((e) => String(e.userIdentity?.arn).endsWith(':user/alice') && e.errorCode === 'Client.UnauthorizedOperation');
    expect(denied.map((e) => e.eventName)).toContain('CreateVolume');
    expect(denied.find((e) => e.eventName === 'CreateVolume')!.errorMessage).toContain(`snapshot/${snap}`);
  });

  it('allowed by a policy on the snapshot ARN (its tag) and ec2:ParentSnapshot: the volume is restored', async () => {
    const r = await as(BOB, ['volume', 'create', '--snapshot-id', snap, '--wait']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json()).toMatchObject({ State: 'available', Encrypted: true });
    // Without a snapshot, bob's volume statement (ec2:ParentSnapshot) does not match.
    const plain = await as(BOB, ['volume', 'create', '--size', '16MiB']);
    expect(plain.code, plain.stderr).toBe(4);
  });

  it('DescribeSnapshots shows a manifest it cannot read as a snapshot in error, nothing taken from it, and still lists the others', async () => {
    const bad = join(env.state, 'snapshots', 'manifests', 'snap-0123456789abcdef0.json');
    writeFileSync(bad, JSON.stringify({ formatVersion: 1, snapshotId: 'snap-0123456789abcdef0', blocks: [], tags: 'x' }));
    try {
      const r = await env.api('ebsd.DescribeSnapshots');

      expect((r.Snapshots as { SnapshotId: string; State: string }[]).map((x) => [x.SnapshotId, x.State])).toEqual([[snap, 'completed'], ['snap-0123456789abcdef0', 'error']]);
      expect(r.Snapshots[1]).toEqual({ SnapshotId: 'snap-0123456789abcdef0', State: 'error', StateMessage: expect.stringContaining('manifest cannot be read'), OwnerId: expect.any(String), StorageTier: 'standard' });
      // And DeleteSnapshot removes it (before: InternalFailure, and it stopped every sweep until removed by hand).
      expect(await env.api('ebsd.DeleteSnapshot', { SnapshotId: 'snap-0123456789abcdef0' })).toEqual({ Return: true });
      expect(existsSync(bad)).toBe(false);
    } finally {
      rmSync(bad, { force: true });
    }
  });
});
