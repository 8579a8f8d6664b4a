import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openSync, writeSync, closeSync, readFileSync, readdirSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { api, asUid, detachWhenClosed, refusal, settled, type UidCallResult } from './helpers.js';
import { storedBlockBytes, storedBlockSet } from './stored-blocks.js';

/**
 * CreateSnapshot / DescribeSnapshots / DeleteSnapshot of a detached volume
 * through the real daemon and CLI: the manifest lists exactly the written
 * blocks, each stored as the image's on-disk bytes (ciphertext), the header
 * area is stored, unwritten blocks are not; EC2's refusals; authorization
 * through identity policies; a daemon killed mid-create.
 */
const B = 512 * 1024;
const DATA_OFFSET = 16 * 1024 * 1024;

describe('snapshots of a detached volume', () => {
  const env = new Env('snap-detached');
  const call = api(env);
  let vol = '';
  /** Audit events, polled until `pred` holds for one (events are appended just after the call answers). */
  const auditUntil = async (pred: (e: any) => boolean): Promise<any[]> => {
    for (let i = 0; i < 200; i++) {
      const events = env.auditText().split('\n').filter(Boolean).map((l) => JSON.parse(l));
      if (events.some(pred)) return events;
      await new Promise((r) => setTimeout(r, 25));
    }
    throw new Error('no such audit event');
  };
  const manifestOf = (id: string): any => JSON.parse(readFileSync(join(env.state, 'snapshots', 'manifests', `${id}.json`), 'utf8'));
  /** A daemon started with the fault point `fault` (EBSD_TEST_FAULT), then a CreateSnapshot: the fault point kills it; polled until it is gone, the snapshot still pending on disk. */
  const createKilledAt = async (fault: string): Promise<any> => {
    await env.stop();
    process.env.EBSD_TEST_FAULT = fault;
    try {
      await env.start();
    } finally {
      delete process.env.EBSD_TEST_FAULT;
    }
    const pid = env.pid!;
    const s = await call('CreateSnapshot', { VolumeId: vol });
    expect(s.State).toBe('pending');
    const alive = (): boolean => { try { process.kill(pid, 0); return true; } catch { return false; } };
    for (let i = 0; alive() && i < 600; i++) await new Promise((r) => setTimeout(r, 50));
    expect(alive()).toBe(false);
    expect(manifestOf(s.SnapshotId).state).toBe('pending');
    return s;
  };

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    vol = (await call('CreateVolume', { Size: 64 * 1024 * 1024, Name: 'snapsrc' })).VolumeId;
    await call('AttachVolume', { VolumeId: vol });
    const fd = openSync(env.file(vol), 'r+');
    try {
      writeSync(fd, randomBytes(B), 0, B, 0); // block 0
      writeSync(fd, randomBytes(4096), 0, 4096, 5 * B + 8192); // part of block 5
    } finally {
      closeSync(fd);
    }
    await detachWhenClosed(env, vol);
  }, 60_000);

  afterAll(() => env.cleanup());

  it('stores the written blocks as on-disk ciphertext and lists only them (CLI)', async () => {
    const s = await env.ok(['snapshot', 'create', vol, '--description', 'first', '--tag', 'team=blue', '--wait']);
    expect(s.SnapshotId).toMatch(/^snap-[0-9a-f]{17}$/);
    expect(s).toMatchObject({ VolumeId: vol, State: 'completed', Progress: '100%', VolumeSize: 1, Encrypted: true, Description: 'first', Tags: [{ Key: 'team', Value: 'blue' }] });
    expect(s.KmsKeyId).toMatch(/^arn:aws:kms:/);
    expect(s.DataEncryptionKeyId).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    const m = manifestOf(s.SnapshotId);
    expect(m.blocks.map((b: [number, string]) => b[0])).toEqual([0, 5]);
    expect(m.wrappedKey.encryptionContext).toEqual({ 'aws:ebs:id': vol });
    const image = readFileSync(join(env.state, 'volumes', `${vol}.img`));
    for (const [i, h] of m.blocks as [number, string][]) {
      const disk = image.subarray(DATA_OFFSET + i * B, DATA_OFFSET + (i + 1) * B);
      const stored = await storedBlockBytes(env.state, h);
      expect(stored.equals(disk)).toBe(true);
      expect(createHash('sha256').update(stored).digest('hex')).toBe(h);
    }
    const header = await storedBlockBytes(env.state, m.header);
    expect(header.equals(image.subarray(0, DATA_OFFSET))).toBe(true);
    expect(header.subarray(0, 6).toString('latin1')).toBe('LUKS\xba\xbe');

    // Describe: by id, by filters (the CLI's shorthand, a wildcard), paging.
    expect((await call('DescribeSnapshots', { SnapshotIds: [s.SnapshotId] })).Snapshots).toHaveLength(1);
    const filtered = await env.ok(['snapshot', 'describe', '--filters', `Name=volume-id,Values=${vol}`, '--filters', 'Name=tag:team,Values=bl*']);
    expect(filtered.Snapshots.map((x: any) => x.SnapshotId)).toEqual([s.SnapshotId]);
    expect((await call('DescribeSnapshots', { Filters: [{ Name: 'status', Values: ['error'] }] })).Snapshots).toEqual([]);
    expect((await call('DescribeSnapshots', { MaxResults: 5 })).Snapshots).toHaveLength(1);

    // An audit event names the snapshot and its volume.
    const audit = await auditUntil((e) => e.eventName === 'CreateSnapshot');
    expect(audit.find((e) => e.eventName === 'CreateSnapshot')?.requestParameters).toEqual({ snapshotId: s.SnapshotId, volumeId: vol });

    // Delete: gone, a second delete is NotFound (exit 5).
    await env.ok(['snapshot', 'delete', s.SnapshotId]);
    expect(existsSync(join(env.state, 'snapshots', 'manifests', `${s.SnapshotId}.json`))).toBe(false);
    const again = await env.cli(['snapshot', 'delete', s.SnapshotId]);
    expect(again.code).toBe(5);
    expect(again.stderr).toContain('InvalidSnapshot.NotFound');
  }, 60_000);

  it('refuses what EC2 refuses, naming it, with no effect', async () => {
    expect(await refusal(call('CreateSnapshot', { VolumeId: 'vol-00000000000000000' }))).toBe('InvalidVolume.NotFound');
    const badId = await env.cli(['snapshot', 'delete', 'snap-xyz']);
    expect(badId.code).toBe(5);
    expect(badId.stderr).toContain('InvalidSnapshotID.Malformed');
    expect(await refusal(call('CreateSnapshot', { VolumeId: vol, TagSpecifications: [{ ResourceType: 'volume', Tags: [{ Key: 'a', Value: 'b' }] }] }))).toBe('InvalidParameterValue');
    expect(await refusal(call('CreateSnapshot', { VolumeId: vol, Description: 'x'.repeat(256) }))).toBe('InvalidParameterValue');
    expect(await refusal(call('CreateSnapshot', { VolumeId: vol, Bogus: 1 }))).toBe('UnknownParameter');
    expect(await refusal(call('DescribeSnapshots', { Filters: [{ Name: 'no-such-filter', Values: ['x'] }] }))).toBe('InvalidParameterValue');
    expect(await refusal(call('DescribeSnapshots', { SnapshotIds: ['snap-00000000000000000'] }))).toBe('InvalidSnapshot.NotFound');
    expect(await refusal(call('DescribeSnapshots', { MaxResults: 4 }))).toBe('InvalidParameterValue');
    expect(readdirSync(join(env.state, 'snapshots', 'manifests'))).toEqual([]);
  }, 60_000);

  it('authorizes each snapshot operation through identity policies (uid 1000 as user/alice), audits refusals, and filters what alice sees', async () => {
    const ALICE = 1000;
    const st = await call('Status');
    const account = st.Daemon.AccountId as string;
    const region = st.Daemon.Region as string;
    await call('IamCreateUser', { UserName: 'alice' });
    await call('IamMapUid', { Uid: ALICE, Principal: 'user/alice' });
    const refused = (r: UidCallResult, action: string, resource: string): void => {
      expect('error' in r ? r.error.awsName : 'allowed').toBe('UnauthorizedOperation');
      expect('error' in r && r.error.message).toContain(`User: arn:aws:iam::${account}:user/alice is not authorized to perform: ${action} on resource: ${resource}`);
    };
    const rootSnap = (await call('CreateSnapshot', { VolumeId: vol })).SnapshotId;
    await settled(env, rootSnap);

    // No policy: refused on the volume, the snapshot ARN (no account in it), and invisible in a listing.
    const [c0, d0, ds0, ls0] = await asUid(env, ALICE, [
      ['CreateSnapshot', { VolumeId: vol }], ['DeleteSnapshot', { SnapshotId: rootSnap }], ['DescribeSnapshots', { SnapshotIds: [rootSnap] }], ['DescribeSnapshots', {}],
    ]);
    refused(c0!, 'ec2:CreateSnapshot', `arn:aws:ec2:${region}:${account}:volume/${vol}`);
    refused(d0!, 'ec2:DeleteSnapshot', `arn:aws:ec2:${region}::snapshot/${rootSnap}`);
    refused(ds0!, 'ec2:DescribeSnapshots', `arn:aws:ec2:${region}::snapshot/${rootSnap}`);
    expect(ls0).toEqual({ ok: { Snapshots: [] } });

    // Team blue: create only with the request tag team=blue, see and delete only team=blue snapshots.
    await call('IamPutPolicy', {
      Principal: 'user/alice',
      PolicyName: 'blue',
      PolicyDocument: JSON.stringify({
        Version: '2012-10-17',
        Statement: [
          { Effect: 'Allow', Action: 'ec2:CreateSnapshot', Resource: 'arn:aws:ec2:*:*:volume/*' },
          { Effect: 'Allow', Action: 'ec2:CreateSnapshot', Resource: 'arn:aws:ec2:*::snapshot/*', Condition: { StringEquals: { 'aws:RequestTag/team': 'blue' } } },
          { Effect: 'Allow', Action: 'ec2:CreateTags', Resource: 'arn:aws:ec2:*::snapshot/*', Condition: { StringEquals: { 'ec2:CreateAction': 'CreateSnapshot' } } },
          { Effect: 'Allow', Action: ['ec2:DescribeSnapshots', 'ec2:DeleteSnapshot'], Resource: 'arn:aws:ec2:*::snapshot/*', Condition: { StringEquals: { 'ec2:ResourceTag/team': 'blue' } } },
        ],
      }),
    });
    const tags = (v: string) => [{ ResourceType: 'snapshot', Tags: [{ Key: 'team', Value: v }] }];
    const [red, blue] = await asUid(env, ALICE, [['CreateSnapshot', { VolumeId: vol, TagSpecifications: tags('red') }], ['CreateSnapshot', { VolumeId: vol, TagSpecifications: tags('blue') }]]);
    refused(red!, 'ec2:CreateSnapshot', `arn:aws:ec2:${region}::snapshot/*`);
    const blueId = ('ok' in blue! && blue.ok.SnapshotId) as string;
    expect(blueId).toMatch(/^snap-/);
    expect((await settled(env, blueId)).State).toBe('completed');
    const [ls1, dRoot, dBlue] = await asUid(env, ALICE, [['DescribeSnapshots', {}], ['DeleteSnapshot', { SnapshotId: rootSnap }], ['DeleteSnapshot', { SnapshotId: blueId }]]);
    expect('ok' in ls1! && ls1.ok.Snapshots.map((x: any) => x.SnapshotId)).toEqual([blueId]);
    refused(dRoot!, 'ec2:DeleteSnapshot', `arn:aws:ec2:${region}::snapshot/${rootSnap}`);
    expect(dBlue).toEqual({ ok: { Return: true } });

    // The CLI maps the refusal to exit 4.
    const cli = await env.cli(['snapshot', 'delete', rootSnap], { uid: ALICE });
    expect(cli.code).toBe(4);
    await auditUntil((e) => e.eventName === 'CreateSnapshot' && e.errorCode === 'Client.UnauthorizedOperation');
    await auditUntil((e) => e.eventName === 'DeleteSnapshot' && !e.errorCode && String(e.userIdentity?.arn).endsWith(':user/alice'));
    await call('DeleteSnapshot', { SnapshotId: rootSnap });
  }, 90_000);

  it('a daemon killed after the blocks are durable, before the manifest says completed, leaves the snapshot error and referencing nothing', async () => {
    const s = await createKilledAt('snapshot.after-blocks');
    await env.kill9(); // forget the dead child
    await env.start();
    const d = (await call('DescribeSnapshots', { SnapshotIds: [s.SnapshotId] })).Snapshots[0];
    expect(d).toMatchObject({ SnapshotId: s.SnapshotId, State: 'error' });
    expect(d.StateMessage).toMatch(/daemon stopped/);
    expect(manifestOf(s.SnapshotId).blocks).toEqual([]);
    expect(manifestOf(s.SnapshotId).header).toBeUndefined();
    // The next snapshot completes and names only blocks that are in the store.
    const next = await settled(env, (await call('CreateSnapshot', { VolumeId: vol })).SnapshotId);
    expect(next.State).toBe('completed');
    const nm = manifestOf(next.SnapshotId);
    const present = await storedBlockSet(env.state);
    for (const h of [nm.header, ...nm.blocks.map((b: [number, string]) => b[1])]) expect(present.has(h), h).toBe(true);
    await call('DeleteSnapshot', { SnapshotId: s.SnapshotId });
  }, 90_000);

  it('a daemon killed after SnapshotCompleted is audited, before the manifest says completed: after the restart the log says SnapshotFailed after it', async () => {
    const s = await createKilledAt('snapshot.after-completed-event');
    const named = (e: any): boolean => e.requestParameters?.snapshotId === s.SnapshotId;
    expect(env.auditText().split('\n').filter(Boolean).map((l) => JSON.parse(l)).filter(named).map((e) => e.eventName)).toContain('SnapshotCompleted');
    await env.kill9(); // forget the dead child
    await env.start();
    const d = (await call('DescribeSnapshots', { SnapshotIds: [s.SnapshotId] })).Snapshots[0];
    expect(d).toMatchObject({ SnapshotId: s.SnapshotId, State: 'error' });
    const events = (await auditUntil((e) => e.eventName === 'SnapshotFailed' && named(e))).filter(named);
    const names = events.map((e) => e.eventName);
    expect(names.indexOf('SnapshotFailed')).toBeGreaterThan(names.indexOf('SnapshotCompleted'));
    expect(events[names.indexOf('SnapshotFailed')].additionalEventData).toEqual({ reason: 'the daemon restarted during the create' });
    await call('DeleteSnapshot', { SnapshotId: s.SnapshotId });
  }, 90_000);
});
