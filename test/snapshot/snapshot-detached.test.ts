import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openSync, writeSync, closeSync, readFileSync, readdirSync, existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { Env, ensureBuilt } from '../e2e/helpers.js';

/**
 * CreateSnapshot / DescribeSnapshots / DeleteSnapshot of a detached volume
 * through the real daemon and CLI: the manifest lists exactly the written
 * blocks, each stored as the image's on-disk bytes (ciphertext), the header
 * area is stored, unwritten blocks are not.
 */
const B = 512 * 1024;
const DATA_OFFSET = 16 * 1024 * 1024;

describe('snapshots of a detached volume', () => {
  const env = new Env('snap-detached');
  let vol = '';

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    vol = (await env.ok(['volume', 'create', '--size', '64MiB', '--name', 'snapsrc'])).VolumeId;
    await env.ok(['attach', vol]);
    const fd = openSync(env.file(vol), 'r+');
    try {
      writeSync(fd, randomBytes(B), 0, B, 0); // block 0
      writeSync(fd, randomBytes(4096), 0, 4096, 5 * B + 8192); // part of block 5
    } finally {
      closeSync(fd);
    }
    await env.ok(['detach', vol]);
  }, 60_000);

  afterAll(() => env.cleanup());

  it('stores the written blocks as on-disk ciphertext and lists only them', async () => {
    const s = await env.ok(['snapshot', 'create', vol, '--description', 'first', '--tag', 'team=blue', '--wait']);
    expect(s.SnapshotId).toMatch(/^snap-[0-9a-f]{17}$/);
    expect(s).toMatchObject({ VolumeId: vol, State: 'completed', Progress: '100%', VolumeSize: 1, Encrypted: true, Description: 'first', Tags: [{ Key: 'team', Value: 'blue' }] });
    expect(s.KmsKeyId).toMatch(/^arn:aws:kms:/);
    expect(s.DataEncryptionKeyId).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    const m = JSON.parse(readFileSync(join(env.state, 'snapshots', 'manifests', `${s.SnapshotId}.json`), 'utf8'));
    expect(m.blocks.map((b: [number, string]) => b[0])).toEqual([0, 5]);
    expect(m.wrappedKey.encryptionContext).toEqual({ 'aws:ebs:id': vol });
    const image = readFileSync(join(env.state, 'volumes', `${vol}.img`));
    for (const [i, h] of m.blocks as [number, string][]) {
      const disk = image.subarray(DATA_OFFSET + i * B, DATA_OFFSET + (i + 1) * B);
      const stored = readFileSync(join(env.state, 'snapshots', 'blocks', h.slice(0, 2), h));
      expect(stored.equals(disk)).toBe(true);
      expect(createHash('sha256').update(stored).digest('hex')).toBe(h);
    }
    const header = readFileSync(join(env.state, 'snapshots', 'blocks', m.header.slice(0, 2), m.header));
    expect(header.equals(image.subarray(0, DATA_OFFSET))).toBe(true);
    expect(header.subarray(0, 6).toString('latin1')).toBe('LUKS\xba\xbe');

    // Describe: by id, by filters; ls.
    const byId = await env.ok(['snapshot', 'describe', s.SnapshotId]);
    expect(byId.Snapshots).toHaveLength(1);
    const filtered = await env.ok(['snapshot', 'describe', '--filters', `Name=volume-id,Values=${vol}`, '--filters', 'Name=tag:team,Values=bl*']);
    expect(filtered.Snapshots.map((x: any) => x.SnapshotId)).toEqual([s.SnapshotId]);
    const none = await env.ok(['snapshot', 'describe', '--filters', 'Name=status,Values=error']);
    expect(none.Snapshots).toEqual([]);
    expect((await env.ok(['snapshot', 'ls'])).Snapshots).toHaveLength(1);

    // An audit event names the snapshot and its volume.
    const audit = env.auditText().split('\n').filter(Boolean).map((l) => JSON.parse(l));
    const ev = audit.find((e) => e.eventName === 'CreateSnapshot');
    expect(ev?.requestParameters).toEqual({ snapshotId: s.SnapshotId, volumeId: vol });

    // Delete: gone, a second delete is NotFound (exit 5).
    await env.ok(['snapshot', 'delete', s.SnapshotId]);
    expect(existsSync(join(env.state, 'snapshots', 'manifests', `${s.SnapshotId}.json`))).toBe(false);
    const again = await env.cli(['snapshot', 'delete', s.SnapshotId]);
    expect(again.code).toBe(5);
    expect(again.stderr).toContain('InvalidSnapshot.NotFound');
  }, 60_000);

  it('refuses what EC2 refuses, naming it', async () => {
    const missing = await env.cli(['snapshot', 'create', 'vol-00000000000000000']);
    expect(missing.code).toBe(5);
    expect(missing.stderr).toContain('InvalidVolume.NotFound');
    const badId = await env.cli(['snapshot', 'delete', 'snap-xyz']);
    expect(badId.code).toBe(5);
    expect(badId.stderr).toContain('InvalidSnapshotID.Malformed');
    const badTag = await env.cli(['snapshot', 'create', vol, '--tag-specifications', 'ResourceType=volume,Tags=[{Key=a,Value=b}]']);
    expect(badTag.code).toBe(7);
    expect(badTag.stderr).toContain('ResourceType');
    const longDesc = await env.cli(['snapshot', 'create', vol, '--description', 'x'.repeat(256)]);
    expect(longDesc.code).toBe(7);
    expect(longDesc.stderr).toContain('Description');
    expect(readdirSync(join(env.state, 'snapshots', 'manifests'))).toEqual([]);
  }, 60_000);

  it('authorizes each snapshot operation through identity policies (uid 1000 as user/alice), audits refusals, and filters what alice sees', async () => {
    const ALICE = 1000;
    const st = await env.ok(['status']);
    const account = st.Daemon.AccountId as string;
    const region = st.Daemon.Region as string;
    await env.ok(['iam', 'create-user', 'alice']);
    await env.ok(['iam', 'map-uid', String(ALICE), 'user/alice']);
    const alice = (args: string[]) => env.cli([...args, '--output', 'json'], { uid: ALICE });
    const refused = (r: { code: number; stderr: string }, action: string, resource: string): void => {
      expect(r.code, r.stderr).toBe(4);
      expect(r.stderr).toContain(`UnauthorizedOperation: You are not authorized to perform this operation. User: arn:aws:iam::${account}:user/alice is not authorized to perform: ${action} on resource: ${resource}`);
    };
    const rootSnap = (await env.ok(['snapshot', 'create', vol, '--wait'])).SnapshotId;

    // No policy: refused on the volume, the snapshot ARN (no account in it), and invisible in ls.
    refused(await alice(['snapshot', 'create', vol]), 'ec2:CreateSnapshot', `arn:aws:ec2:${region}:${account}:volume/${vol}`);
    refused(await alice(['snapshot', 'delete', rootSnap]), 'ec2:DeleteSnapshot', `arn:aws:ec2:${region}::snapshot/${rootSnap}`);
    refused(await alice(['snapshot', 'describe', rootSnap]), 'ec2:DescribeSnapshots', `arn:aws:ec2:${region}::snapshot/${rootSnap}`);
    expect((await alice(['snapshot', 'ls'])).json().Snapshots).toEqual([]);

    // Team blue: create only with the request tag team=blue, see and delete only team=blue snapshots.
    const doc = {
      Version: '2012-10-17',
      Statement: [
        { Effect: 'Allow', Action: 'ec2:CreateSnapshot', Resource: `arn:aws:ec2:*:*:volume/*` },
        { Effect: 'Allow', Action: 'ec2:CreateSnapshot', Resource: 'arn:aws:ec2:*::snapshot/*', Condition: { StringEquals: { 'aws:RequestTag/team': 'blue' } } },
        { Effect: 'Allow', Action: 'ec2:CreateTags', Resource: 'arn:aws:ec2:*::snapshot/*', Condition: { StringEquals: { 'ec2:CreateAction': 'CreateSnapshot' } } },
        { Effect: 'Allow', Action: ['ec2:DescribeSnapshots', 'ec2:DeleteSnapshot'], Resource: 'arn:aws:ec2:*::snapshot/*', Condition: { StringEquals: { 'ec2:ResourceTag/team': 'blue' } } },
      ],
    };
    const file = join(env.dir, 'alice.json');
    writeFileSync(file, JSON.stringify(doc));
    await env.ok(['iam', 'put-policy', 'user/alice', '--policy-name', 'blue', '--policy-document', `file://${file}`]);
    refused(await alice(['snapshot', 'create', vol, '--tag', 'team=red']), 'ec2:CreateSnapshot', `arn:aws:ec2:${region}::snapshot/*`);
    const mine = await alice(['snapshot', 'create', vol, '--tag', 'team=blue', '--wait']);
    expect(mine.code, mine.stderr).toBe(0);
    const blue = mine.json().SnapshotId;
    expect((await alice(['snapshot', 'ls'])).json().Snapshots.map((x: any) => x.SnapshotId)).toEqual([blue]);
    refused(await alice(['snapshot', 'delete', rootSnap]), 'ec2:DeleteSnapshot', `arn:aws:ec2:${region}::snapshot/${rootSnap}`);
    expect((await alice(['snapshot', 'delete', blue])).code).toBe(0);

    const events = env.auditText().trim().split('\n').map((l) => JSON.parse(l));
    const denied = events.filter((e) => e.eventName === 'CreateSnapshot' && e.errorCode === 'Client.UnauthorizedOperation');
    expect(denied.length).toBeGreaterThanOrEqual(1);
    expect(events.some((e) => e.eventName === 'DeleteSnapshot' && !e.errorCode && String(e.userIdentity?.arn).endsWith(':user/alice'))).toBe(true);
    await env.ok(['snapshot', 'delete', rootSnap]);
  }, 90_000);

  it('a daemon killed after the blocks are durable, before the manifest says completed, leaves the snapshot error and referencing nothing', async () => {
    await env.stop();
    process.env.EBSD_TEST_FAULT = 'snapshot.after-blocks';
    try {
      await env.start();
    } finally {
      delete process.env.EBSD_TEST_FAULT;
    }
    const pid = env.pid!;
    const s = await env.ok(['snapshot', 'create', vol]);
    expect(s.State).toBe('pending');
    // The fault point kills the daemon once the copy is durable; poll until it is gone.
    const alive = (): boolean => { try { process.kill(pid, 0); return true; } catch { return false; } };
    for (let i = 0; alive() && i < 600; i++) await new Promise((r) => setTimeout(r, 50));
    expect(alive()).toBe(false);
    const pending = JSON.parse(readFileSync(join(env.state, 'snapshots', 'manifests', `${s.SnapshotId}.json`), 'utf8'));
    expect(pending.state).toBe('pending');
    await env.kill9(); // reap the child record
    await env.start();
    const d = (await env.ok(['snapshot', 'describe', s.SnapshotId])).Snapshots[0];
    expect(d).toMatchObject({ SnapshotId: s.SnapshotId, State: 'error' });
    expect(d.StateMessage).toMatch(/daemon stopped/);
    const m = JSON.parse(readFileSync(join(env.state, 'snapshots', 'manifests', `${s.SnapshotId}.json`), 'utf8'));
    expect(m.blocks).toEqual([]);
    expect(m.header).toBeUndefined();
    // The next snapshot completes and names only blocks that are in the store.
    const next = await env.ok(['snapshot', 'create', vol, '--wait']);
    expect(next.State).toBe('completed');
    const nm = JSON.parse(readFileSync(join(env.state, 'snapshots', 'manifests', `${next.SnapshotId}.json`), 'utf8'));
    for (const h of [nm.header, ...nm.blocks.map((b: [number, string]) => b[1])]) expect(existsSync(join(env.state, 'snapshots', 'blocks', h.slice(0, 2), h)), h).toBe(true);
    await env.ok(['snapshot', 'delete', s.SnapshotId]);
  }, 90_000);
});
