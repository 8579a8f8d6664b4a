/**
 * CreateVolume from a snapshot (src/snapshot/restore.ts) through the real
 * daemon child, real FUSE, fio and cryptsetup: fio data written and snapshot
 * taken, the volume overwritten, the snapshot restored to a new volume, which
 * verifies against the snapshot's data while the original verifies against
 * the overwrite; same KMS key (data key shared, ciphertext copied) and
 * another key (re-encrypted); EC2's refusals.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, readSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt, run } from '../e2e/helpers.js';
import { readLuks2 } from '../../src/volume/luks2-header.js';
import { LUKS2_DATA_OFFSET } from '../../src/volume/luks2-json.js';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { SnapshotGc } from '../../src/snapshot/gc.js';
import { SNAPSHOT_BLOCK_BYTES } from '../../src/snapshot/types.js';
import { makeSnapshot } from './make-snapshot.js';
import { settled } from './helpers.js';

const MiB = 1024 * 1024;
const SIZE = 4 * MiB;

/** fio job A (the snapshot's data, 64 KiB blocks) and B (the overwrite, 32 KiB blocks): A's verify fails on B's data (header length). */
const job = (file: string, bs: string, phase: 'write' | 'verify'): string[] => [
  `--name=j${bs}`, `--filename=${file}`, `--size=${SIZE}`, '--ioengine=psync', '--rw=write', `--bs=${bs}`, '--verify=crc32c',
  ...(phase === 'write' ? ['--do_verify=0', '--fsync_on_close=1'] : ['--verify_only']),
];
const fio = (file: string, bs: string, phase: 'write' | 'verify') => run('fio', job(file, bs, phase));

describe('volume create --snapshot-id', () => {
  const env = new Env('restore');
  let keyA = '';
  let keyB = '';
  let vol = '';
  let snap = '';

  async function detach(id: string): Promise<void> {
    // FUSE RELEASE follows close(): poll our own handles away before an orderly detach.
    await env.untilClosed(id);
    await env.api('ebsd.DetachVolume', { VolumeId: id, Force: false });
  }

  const image = (id: string): string => join(env.state, 'volumes', `${id}.img`);

  function readImageBlock(id: string, index: number): Buffer {
    const b = Buffer.alloc(SNAPSHOT_BLOCK_BYTES);
    const fd = openSync(image(id), 'r');
    try {
      readSync(fd, b, 0, b.length, LUKS2_DATA_OFFSET + index * SNAPSHOT_BLOCK_BYTES);
    } finally {
      closeSync(fd);
    }
    return b;
  }

  beforeAll(async () => {
    ensureBuilt();
    await env.start(['--key-cache-ttl', '1s']);
    keyA = (await env.api('TrentService.CreateKey', { Description: 'restore A' })).KeyMetadata.Arn;
    keyB = (await env.api('TrentService.CreateKey', { Description: 'restore B' })).KeyMetadata.Arn;
    vol = (await env.api('ebsd.CreateVolume', { Size: '4MiB', KmsKeyId: keyA })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    expect((await fio(env.file(vol), '64k', 'write')).code).toBe(0);
    await detach(vol);
    const c = await settled(env, (await env.api('ebsd.CreateSnapshot', { VolumeId: vol })).SnapshotId);
    expect(c).toMatchObject({ State: 'completed', Encrypted: true, KmsKeyId: keyA });
    snap = c.SnapshotId;
    // Overwrite everything: the original now holds B's data, which A's verify refuses.
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    expect((await fio(env.file(vol), '32k', 'write')).code).toBe(0);
    expect((await fio(env.file(vol), '32k', 'verify')).code).toBe(0);
    expect((await fio(env.file(vol), '64k', 'verify')).code).not.toBe(0);
    await detach(vol);
  }, 120_000);
  afterAll(() => env.cleanup());

  it('same KMS key: the data key is shared (ciphertext copied, LUKS2 digest kept), the token bound to the new volume; fio verifies the snapshot data', async () => {
    const r = await env.cli(['volume', 'create', '--snapshot-id', snap, '--wait', '--output', 'json']);
    expect(r.code, r.stderr).toBe(0);
    const v = r.json();
    expect(v).toMatchObject({ State: 'available', SizeBytes: SIZE, Encrypted: true, KmsKeyId: keyA });
    expect(r.stderr).toMatch(new RegExp(`${v.VolumeId} from ${snap}: available 100%`));
    const h = (await readLuks2(image(v.VolumeId), { repair: false }));
    expect(h.label).toBe(v.VolumeId);
    expect(h.volume.token).toMatchObject({ key_arn: keyA, volume_id: v.VolumeId, encryption_context: { 'aws:ebs:id': v.VolumeId } });
    const store = await DirSnapshotStore.open(join(env.state, 'snapshots'));
    const m = (await store.getManifest(snap))!;
    expect(h.volume.token.ciphertext_blob).not.toBe(m.wrappedKey!.ciphertextBlob);
    // Same data key: the same digest, and every block's bytes on disk are the snapshot's ciphertext.
    const fromSnap = (await store.getBlock(m.header!)).subarray(0, 16384);
    expect(h.volume.json.digests['0']!.digest).toBe(JSON.parse(fromSnap.subarray(4096).toString('utf8').replace(/\0+$/, '')).digests['0'].digest);
    expect(m.blocks.length).toBe(SIZE / SNAPSHOT_BLOCK_BYTES);
    for (const [i, hash] of m.blocks) expect(readImageBlock(v.VolumeId, i).equals(await store.getBlock(hash))).toBe(true);
    expect(spawnSync('cryptsetup', ['luksDump', image(v.VolumeId)]).status).toBe(0);
    await env.api('ebsd.AttachVolume', { VolumeId: v.VolumeId });
    expect((await fio(env.file(v.VolumeId), '64k', 'verify')).code).toBe(0);
    await detach(v.VolumeId);
    // The original still holds the overwrite.
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    expect((await fio(env.file(vol), '32k', 'verify')).code).toBe(0);
    await detach(vol);
    const ev = env.auditText().trim().split('\n').map((l) => JSON.parse(l));
    expect(ev.some((e) => e.eventName === 'ReEncrypt' && e.requestParameters?.destinationEncryptionContext?.['aws:ebs:id'] === v.VolumeId)).toBe(true);
    const cv = ev.find((e) => e.eventName === 'CreateVolume' && e.requestParameters?.volumeId === v.VolumeId);
    expect(cv.additionalEventData).toMatchObject({ snapshotId: snap, reEncrypted: false });
  }, 90_000);

  it('another KMS key: every block re-encrypted under a new data key; the old key disabled, the volume still attaches and verifies', async () => {
    const r = await env.cli(['volume', 'create', '--snapshot-id', snap, '--kms-key', keyB, '--size', '8MiB', '--wait', '--output', 'json']);
    expect(r.code, r.stderr).toBe(0);
    const v = r.json();
    expect(v).toMatchObject({ State: 'available', SizeBytes: 8 * MiB, KmsKeyId: keyB });
    const store = await DirSnapshotStore.open(join(env.state, 'snapshots'));
    const m = (await store.getManifest(snap))!;
    for (const [i, hash] of m.blocks) expect(readImageBlock(v.VolumeId, i).equals(await store.getBlock(hash))).toBe(false);
    // Past the snapshot's size the volume is a hole (reads as zeros).
    expect(readImageBlock(v.VolumeId, SIZE / SNAPSHOT_BLOCK_BYTES).every((x) => x === 0)).toBe(true);
    expect(spawnSync('cryptsetup', ['luksDump', image(v.VolumeId)]).status).toBe(0);
    await env.api('TrentService.DisableKey', { KeyId: keyA });
    try {
      await env.api('ebsd.AttachVolume', { VolumeId: v.VolumeId });
      expect((await fio(env.file(v.VolumeId), '64k', 'verify')).code).toBe(0);
      await detach(v.VolumeId);
      // A same-key restore now needs the disabled key: refused, and the failed volume ends in `error`.
      const same = await env.cli(['volume', 'create', '--snapshot-id', snap, '--wait', '--output', 'json']);
      expect(same.code).toBe(6);
      expect(same.stderr).toMatch(/IncorrectState: vol-[0-9a-f]{17} from snap-[0-9a-f]{17} ended in state 'error': DisabledException/);
    } finally {
      await env.api('TrentService.EnableKey', { KeyId: keyA });
    }
  }, 90_000);

  it('copy to another key: a new data key and lineage, every block stored anew (ciphertext differs); the old key disabled, the copy still restores, attaches and verifies', async () => {
    const store = await DirSnapshotStore.open(join(env.state, 'snapshots'));
    const src = (await store.getManifest(snap))!;
    // Same key: a new manifest naming the same objects and the same lineage.
    const same = await env.cli(['snapshot', 'copy', snap, '--wait', '--output', 'json']);
    expect(same.code, same.stderr).toBe(0);
    const s1 = same.json();
    expect(s1).toMatchObject({ State: 'completed', KmsKeyId: keyA, DataEncryptionKeyId: src.dataEncryptionKeyId });
    const m1 = (await store.getManifest(s1.SnapshotId))!;
    expect(m1.blocks).toEqual(src.blocks);
    expect(m1.header).toBe(src.header);
    // Another key.
    const r = await env.cli(['snapshot', 'copy', snap, '--kms-key-id', keyB, '--description', 'to B', '--wait', '--output', 'json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/completed 100%/);
    const s2 = r.json();
    expect(s2).toMatchObject({ State: 'completed', KmsKeyId: keyB, Encrypted: true, Description: 'to B', VolumeSize: src.volumeSize });
    expect(s2.DataEncryptionKeyId).toBeTruthy();
    expect(s2.DataEncryptionKeyId).not.toBe(src.dataEncryptionKeyId);
    const m2 = (await store.getManifest(s2.SnapshotId))!;
    expect(m2.wrappedKey).toMatchObject({ keyArn: keyB, encryptionContext: { 'aws:ebs:id': s2.SnapshotId } });
    expect(m2.blocks.map(([i]) => i)).toEqual(src.blocks.map(([i]) => i));
    const old = new Map(src.blocks);
    for (const [i, h] of m2.blocks) {
      expect(h).not.toBe(old.get(i));
      expect((await store.getBlock(h)).equals(await store.getBlock(old.get(i)!))).toBe(false);
    }
    const ev = env.auditText().trim().split('\n').map((l) => JSON.parse(l));
    expect(ev.some((e) => e.eventName === 'CopySnapshot' && e.requestParameters?.snapshotId === s2.SnapshotId && e.additionalEventData?.sourceSnapshotId === snap)).toBe(true);
    expect(ev.some((e) => e.eventName === 'GenerateDataKeyWithoutPlaintext' && e.requestParameters?.encryptionContext?.['aws:ebs:id'] === s2.SnapshotId)).toBe(true);
    await env.api('TrentService.DisableKey', { KeyId: keyA });
    try {
      const v = await env.cli(['volume', 'create', '--snapshot-id', s2.SnapshotId, '--wait', '--output', 'json']);
      expect(v.code, v.stderr).toBe(0);
      const id = v.json().VolumeId;
      expect(v.json()).toMatchObject({ State: 'available', KmsKeyId: keyB });
      expect(spawnSync('cryptsetup', ['luksDump', image(id)]).status).toBe(0);
      await env.api('ebsd.AttachVolume', { VolumeId: id });
      expect((await fio(env.file(id), '64k', 'verify')).code).toBe(0);
      await detach(id);
    } finally {
      await env.api('TrentService.EnableKey', { KeyId: keyA });
    }
  }, 90_000);

  it('volume ls --filters takes DescribeVolumes\' filters: snapshot-id names the volumes restored from the snapshot, alone or with --kms-key', async () => {
    const mine: string = (await env.api('ebsd.CreateVolume', { SnapshotId: snap, KmsKeyId: keyB })).VolumeId;
    const all: { VolumeId: string; SnapshotId: string; KmsKeyId: string; State: string }[] = (await env.api('ebsd.DescribeVolumes')).Volumes;
    const restored = all.filter((v) => v.SnapshotId === snap);
    expect(restored.map((v) => v.VolumeId)).toContain(mine);
    expect(all.filter((v) => v.VolumeId === vol).map((v) => v.SnapshotId)).toEqual(['']); // the source, which the filter leaves out
    const ls = async (args: string[]): Promise<string[]> => {
      const r = await env.cli(['volume', 'ls', ...args, '--output', 'json']);
      expect(r.code, r.stderr).toBe(0);
      return r.json().Volumes.map((v: { VolumeId: string }) => v.VolumeId).sort();
    };
    expect(await ls(['--filters', `Name=snapshot-id,Values=${snap}`])).toEqual(restored.map((v) => v.VolumeId).sort());
    for (const key of [keyA, keyB]) {
      expect(await ls(['--filters', `Name=snapshot-id,Values=${snap}`, '--kms-key', key])).toEqual(restored.filter((v) => v.KmsKeyId === key).map((v) => v.VolumeId).sort());
    }
    expect(await ls(['--filters', JSON.stringify([{ Name: 'snapshot-id', Values: ['snap-0123456789abcdef0'] }])])).toEqual([]);
    const bad = await env.cli(['volume', 'ls', '--filters', 'Name=snapshot,Values=x']);
    expect(bad.code).toBe(7);
    expect(bad.stderr).toMatch(/^ebsd: InvalidParameterValue: The filter 'snapshot' is invalid/);
    // The restore ends before the next test stops the daemon.
    for (let i = 0; (await env.api('ebsd.DescribeVolumes', { VolumeIds: [mine] })).Volumes[0].State !== 'available'; i++) {
      if (i > 600) throw new Error(`${mine} not available`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }, 60_000);

  it('SIGKILL during a restore and during a copy: after restart the volume is gone (no image, no temp), the copy is error naming no blocks, and a sweep frees what it stored (nothing orphaned, nothing missing)', async () => {
    const dead = async (): Promise<void> => {
      const pid = env.pid!;
      for (let i = 0; i < 1000; i++) {
        try { process.kill(pid, 0); } catch { return; }
        await new Promise((r) => setTimeout(r, 20));
      }
      throw new Error('daemon did not die at the fault point');
    };
    await env.stop();
    process.env.EBSD_TEST_FAULT = 'restore.after-blocks';
    try {
      await env.start(['--key-cache-ttl', '1s']);
    } finally {
      delete process.env.EBSD_TEST_FAULT;
    }
    // CreateVolume answers `creating`; the daemon dies once the blocks are written, before `available`.
    const r = await env.api('ebsd.CreateVolume', { SnapshotId: snap, KmsKeyId: keyB });
    expect(r.State).toBe('creating');
    await dead();
    await env.start(['--key-cache-ttl', '1s']);
    const after = (await env.api('ebsd.DescribeVolumes')).Volumes.map((x: { VolumeId: string }) => x.VolumeId);
    expect(after).not.toContain(r.VolumeId);
    expect(readdirSync(join(env.state, 'volumes')).filter((f) => f.includes(r.VolumeId))).toEqual([]);
    await env.stop();
    process.env.EBSD_TEST_FAULT = 'copy.before-complete';
    try {
      await env.start(['--key-cache-ttl', '1s']);
    } finally {
      delete process.env.EBSD_TEST_FAULT;
    }
    const region = (await env.api('ebsd.Status')).Daemon.Region as string;
    const c = await env.api('ebsd.CopySnapshot', { SourceSnapshotId: snap, SourceRegion: region, KmsKeyId: keyB });
    await dead();
    await env.start(['--key-cache-ttl', '1s']);
    const store = await DirSnapshotStore.open(join(env.state, 'snapshots'));
    const last = (await store.getManifest(c.SnapshotId))!;
    expect(last).toMatchObject({ state: 'error', blocks: [] });
    expect(last.header).toBeUndefined();
    expect(last.stateMessage).toMatch(/stopped.*while the snapshot was being copied/);
    // Under the key it was asked for, as EC2 shows a failed copy; no data key was made for it, so none is shown (not the source's).
    const shown = (await env.api('ebsd.DescribeSnapshots', { SnapshotIds: [last.snapshotId] })).Snapshots[0];
    expect(shown).toMatchObject({ State: 'error', KmsKeyId: keyB, Encrypted: true });
    expect(shown.DataEncryptionKeyId).toBeUndefined();
    // What the failed copy stored is garbage: a sweep (no grace) frees it, and leaves no block unnamed or named but missing.
    const swept = await new SnapshotGc(store, { graceMs: 0 }).sweep();
    expect(swept.deleted).toBeGreaterThan(0);
    const named = new Set((await store.listManifests()).flatMap((x) => [...x.blocks.map(([, h]) => h), ...(x.header ? [x.header] : [])]));
    const present = new Set<string>();
    for await (const h of store.listBlocks()) present.add(h);
    expect([...present].filter((h) => !named.has(h))).toEqual([]);
    expect([...named].filter((h) => !present.has(h))).toEqual([]);
  }, 120_000);

  it('authorization: ec2:CreateVolume on the snapshot ARN and ec2:CopySnapshot through identity policies; the KMS calls are the caller\'s, via EC2', async () => {
    const UID = 4242;
    await env.api('ebsd.IamCreateUser', { UserName: 'carol' });
    await env.api('ebsd.IamMapUid', { Uid: UID, Principal: 'user/carol' });
    const policy = (statements: object[]) => env.api('ebsd.IamPutPolicy', { Principal: 'user/carol', PolicyName: 'p', PolicyDocument: JSON.stringify({ Version: '2012-10-17', Statement: statements }) });
    const base = [
      { Effect: 'Allow', Action: ['ec2:CreateVolume'], Resource: 'arn:aws:ec2:*:*:volume/*' },
      { Effect: 'Allow', Action: ['ec2:DescribeVolumes', 'ec2:DescribeSnapshots'], Resource: '*' },
      { Effect: 'Allow', Action: 'kms:*', Resource: '*', Condition: { StringEquals: { 'kms:ViaService': 'ec2.us-east-1.amazonaws.com' } } },
      { Effect: 'Allow', Action: 'ec2:CopySnapshot', Resource: 'arn:aws:ec2:*::snapshot/*', Condition: { StringEquals: { 'aws:RequestTag/team': 'a' } } },
      { Effect: 'Allow', Action: 'ec2:CopySnapshot', Resource: `arn:aws:ec2:*::snapshot/${snap}` },
    ];
    await policy(base);
    const carol = (args: string[]) => env.cli([...args, '--output', 'json'], { uid: UID });
    const refused = await carol(['volume', 'create', '--snapshot-id', snap]);
    expect(refused.code).toBe(4);
    expect(refused.stderr).toMatch(new RegExp(`UnauthorizedOperation.*ec2:CreateVolume on resource: arn:aws:ec2:us-east-1::snapshot/${snap}`));
    await policy([...base, { Effect: 'Allow', Action: 'ec2:CreateVolume', Resource: 'arn:aws:ec2:*::snapshot/*', Condition: { StringEquals: { 'ec2:Encrypted': 'true' } } }]);
    const ok = await carol(['volume', 'create', '--snapshot-id', snap, '--wait']);
    expect(ok.code, ok.stderr).toBe(0);
    const ev = env.auditText().trim().split('\n').map((l) => JSON.parse(l));
    // The embedded KMS judges the caller's own ReEncrypt, via EC2 (no op grants: those are for a remote KMS, src/volume/op-grants.ts).
    const re = ev.find((e) => e.eventName === 'ReEncrypt' && e.requestParameters?.destinationEncryptionContext?.['aws:ebs:id'] === ok.json().VolumeId);
    expect(re.userIdentity.arn).toMatch(/:user\/carol$/);
    expect(re.userIdentity.invokedBy).toBe('ec2.amazonaws.com'); // CloudTrail's service name, not kms:ViaService's
    expect(ev.filter((e) => e.eventName === 'CreateGrant' && JSON.stringify(e.requestParameters ?? {}).includes('ebsd-op-'))).toEqual([]);
    // CopySnapshot: the new snapshot/* needs the request tag team=a, and tags need ec2:CreateTags (CreateAction CopySnapshot).
    const noTag = await carol(['snapshot', 'copy', snap]);
    expect(noTag.code).toBe(4);
    expect(noTag.stderr).toMatch(/UnauthorizedOperation.*ec2:CopySnapshot on resource: arn:aws:ec2:us-east-1::snapshot\/\*/);
    const noCreateTags = await carol(['snapshot', 'copy', snap, '--tag', 'team=a']);
    expect(noCreateTags.code).toBe(4);
    expect(noCreateTags.stderr).toMatch(/ec2:CreateTags/);
    await policy([...base, { Effect: 'Allow', Action: 'ec2:CreateTags', Resource: '*', Condition: { StringEquals: { 'ec2:CreateAction': 'CopySnapshot' } } }]);
    const copied = await carol(['snapshot', 'copy', snap, '--tag', 'team=a', '--wait']);
    expect(copied.code, copied.stderr).toBe(0);
    expect(copied.json()).toMatchObject({ State: 'completed', Tags: [{ Key: 'team', Value: 'a' }] });
    const denied = ev.filter((e) => e.errorCode === 'Client.UnauthorizedOperation' && e.eventName === 'CreateVolume');
    expect(denied.length).toBeGreaterThan(0);
  }, 90_000);

  it('the embedded KMS judges the caller\'s own Decrypt and ReEncrypt: allowed CreateGrant via EC2 but denied kms:Decrypt and kms:ReEncrypt*, the caller can neither create, restore nor copy', async () => {
    const UID = 4343;
    await env.api('ebsd.IamCreateUser', { UserName: 'dave' });
    await env.api('ebsd.IamMapUid', { Uid: UID, Principal: 'user/dave' });
    await env.api('ebsd.IamPutPolicy', { Principal: 'user/dave', PolicyName: 'p', PolicyDocument: JSON.stringify({ Version: '2012-10-17', Statement: [
      { Effect: 'Allow', Action: ['ec2:CreateVolume', 'ec2:CopySnapshot', 'ec2:DescribeVolumes', 'ec2:DescribeSnapshots'], Resource: '*' },
      { Effect: 'Allow', Action: ['kms:GenerateDataKeyWithoutPlaintext', 'kms:DescribeKey', 'kms:CreateGrant'], Resource: '*', Condition: { StringEquals: { 'kms:ViaService': 'ec2.us-east-1.amazonaws.com' } } },
      { Effect: 'Deny', Action: ['kms:Decrypt', 'kms:ReEncrypt*'], Resource: '*' },
    ] }) });
    const dave = (args: string[]) => env.cli([...args, '--output', 'json'], { uid: UID });
    const before = (await env.api('ebsd.DescribeVolumes')).Volumes.length as number;

    const created = await dave(['volume', 'create', '--size', '4MiB', '--kms-key', keyA, '--wait']);
    expect(created.code).not.toBe(0);
    expect(created.stderr).toMatch(/AccessDeniedException/);
    const restored = await dave(['volume', 'create', '--snapshot-id', snap, '--wait']);
    expect(restored.code).not.toBe(0);
    expect(restored.stderr).toMatch(/AccessDeniedException/);
    const copied = await dave(['snapshot', 'copy', snap, '--wait']);
    expect(copied.stderr).toMatch(/AccessDeniedException/);
    expect((await env.api('ebsd.DescribeVolumes')).Volumes.filter((v: { State: string }) => v.State === 'available').length).toBeLessThanOrEqual(before);

    // Each refusal is the KMS's, of dave's own call via EC2; no op grant was made for him.
    const ev = env.auditText().trim().split('\n').map((l) => JSON.parse(l));
    const his = ev.filter((e) => /:user\/dave$/.test(String(e.userIdentity?.arn)));
    const refused = his.filter((e) => (e.eventName === 'Decrypt' || e.eventName === 'ReEncrypt') && e.errorCode === 'AccessDeniedException');
    expect(refused.map((e) => e.eventName).sort()).toEqual(['Decrypt', 'ReEncrypt', 'ReEncrypt']);
    for (const e of refused) expect(e.userIdentity.invokedBy).toBe('ec2.amazonaws.com');
    expect(his.filter((e) => e.eventName === 'CreateGrant')).toEqual([]);
  }, 90_000);

  it("EC2's refusals: smaller than the snapshot, unencrypted from encrypted, unknown or pending snapshot, malformed id", async () => {
    const small = await env.cli(['volume', 'create', '--snapshot-id', snap, '--size', '2MiB']);
    expect(small.code).toBe(7);
    expect(small.stderr).toMatch(/InvalidParameterValue/);
    expect(small.stderr).toContain(`${2 * MiB} bytes is smaller than snapshot '${snap}', expect size >= ${SIZE} bytes`);
    const plain = await env.cli(['volume', 'create', '--snapshot-id', snap, '--cipher', 'none']);
    expect(plain.code).toBe(7);
    expect(plain.stderr).toMatch(/InvalidParameterCombination.*always encrypted/);
    const none = await env.cli(['volume', 'create', '--snapshot-id', 'snap-0123456789abcdef0']);
    expect(none.code).toBe(5);
    expect(none.stderr).toMatch(/InvalidSnapshot\.NotFound/);
    const bad = await env.cli(['volume', 'create', '--snapshot-id', 'snap-xyz']);
    expect(bad.code).toBe(5);
    expect(bad.stderr).toMatch(/InvalidSnapshotID\.Malformed/);
    const pending = (await makeSnapshot(env.state, vol, { state: 'pending' })).snapshotId;
    const p = await env.cli(['volume', 'create', '--snapshot-id', pending]);
    expect(p.code).toBe(6);
    expect(p.stderr).toMatch(/IncorrectState.*'pending'/);
    // Nothing was created by any refusal.
    const vols = (await env.api('ebsd.DescribeVolumes')).Volumes
.map((x: { VolumeId: string; State: string }) => x.State);
    expect(vols.filter((s: string) => s === 'creating')).toEqual([]);
  }, 60_000);
});
