import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeSync, openSync, readFileSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { api, asUid, detachWhenClosed, serviceRefusal as failure, settled } from './helpers.js';

/**
 * Signed snapshot manifests (--snapshot-manifest-key, src/snapshot/manifest-mac.ts) through
 * the real daemon, its embedded KMS and FUSE: a manifest rolled back to an older snapshot's
 * block list (snap-1's manifest re-labelled as snap-2) is refused naming the manifest MAC by
 * DescribeSnapshots (shown in state error) and a restore, while an untouched snapshot restores its data; without the
 * flag the same edit goes unseen (the old behaviour); a key that is not an HMAC key stops the
 * start; sign-manifests signs unsigned manifests once and never blesses a wrong MAC.
 */
const B = 512 * 1024;

describe('signed snapshot manifests', () => {
  const env = new Env('manifest-mac');
  const call = api(env);
  let vol = '';
  let macKey = '';
  let symmetricKey = '';
  const manifestPath = (id: string): string => join(env.state, 'snapshots', 'manifests', `${id}.json`);
  const readManifest = (id: string): any => JSON.parse(readFileSync(manifestPath(id), 'utf8'));

  /** Writes `fill` over block 0 of the volume (attached for the write, detached after). */
  const writeBlock0 = async (fill: number): Promise<void> => {
    await call('AttachVolume', { VolumeId: vol });
    const fd = openSync(env.file(vol), 'r+');
    try {
      writeSync(fd, Buffer.alloc(B, fill), 0, B, 0);
    } finally {
      closeSync(fd);
    }
    await detachWhenClosed(env, vol);
  };
  const snapshot = async (): Promise<string> => {
    const s = await call('CreateSnapshot', { VolumeId: vol });
    expect((await settled(env, s.SnapshotId)).State).toBe('completed');
    return s.SnapshotId;
  };
  /** The first byte of block 0 of a volume restored from `snapshotId`. */
  const restoredFill = async (snapshotId: string): Promise<number> => {
    const v = (await call('CreateVolume', { SnapshotId: snapshotId })).VolumeId as string;
    for (let i = 0; i < 400 && (await call('DescribeVolumes', { VolumeIds: [v] })).Volumes[0].State !== 'available'; i++) await new Promise((r) => setTimeout(r, 25));
    await call('AttachVolume', { VolumeId: v });
    const buf = Buffer.alloc(B);
    const fd = openSync(env.file(v), 'r');
    try {
      readSync(fd, buf, 0, B, 0);
    } finally {
      closeSync(fd);
    }
    await detachWhenClosed(env, v);
    await call('DeleteVolume', { VolumeId: v });
    expect(buf.every((x) => x === buf[0])).toBe(true);
    return buf[0]!;
  };
  const auditEvents = (): any[] => env.auditText().split('\n').filter(Boolean).map((l) => JSON.parse(l));
  /** snap-1's manifest, re-labelled as `as`, written over `as`'s: a rollback to snap-1's blocks. */
  const rollBack = (from: string, as: string): void => {
    writeFileSync(manifestPath(as), `${JSON.stringify({ ...readManifest(from), snapshotId: as })}\n`);
  };

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    macKey = (await env.api('TrentService.CreateKey', { KeySpec: 'HMAC_256', KeyUsage: 'GENERATE_VERIFY_MAC', Description: 'manifests' })).KeyMetadata.Arn;
    await env.api('TrentService.CreateAlias', { AliasName: 'alias/manifests', TargetKeyId: macKey });
    symmetricKey = (await env.api('TrentService.CreateKey', {})).KeyMetadata.Arn;
    vol = (await call('CreateVolume', { Size: 64 * 1024 * 1024 })).VolumeId;
    await env.stop();
  }, 60_000);

  afterAll(() => env.cleanup());

  it('refuses to start with a key that is not an HMAC_256 key, or none, naming the flag and what is wrong', async () => {
    for (const [key, why] of [[symmetricKey, 'KeySpec SYMMETRIC_DEFAULT'], ['alias/no-such-key', 'alias/no-such-key']] as const) {
      await expect(env.start(['--snapshot-manifest-key', key])).rejects.toThrow();
      const log = readFileSync(env.log, 'utf8');
      expect(log).toContain('--snapshot-manifest-key');
      expect(log).toContain(why);
      await env.stop();
    }
  }, 60_000);

  it('signs every manifest; a rolled-back manifest is refused naming the manifest MAC; an untouched one restores', async () => {
    await env.start(['--snapshot-manifest-key', 'alias/manifests']);
    await writeBlock0(0x11);
    const snap1 = await snapshot();
    await writeBlock0(0x22);
    const snap2 = await snapshot();
    expect((await call('Status')).Daemon.SnapshotManifestKey).toBe(macKey);
    expect(readManifest(snap1).manifestMac).toMatchObject({ keyArn: macKey, mac: expect.stringMatching(/^[A-Za-z0-9+/]+=*$/) });
    expect(readManifest(snap2).blocks).not.toEqual(readManifest(snap1).blocks);

    rollBack(snap1, snap2);
    // DescribeSnapshots shows it in state error, nothing taken from it (manifest-refused.test.ts), and the log names the MAC.
    const listed = (await call('DescribeSnapshots', {})).Snapshots.map((s: any) => [s.SnapshotId, s.State]);
    expect(listed).toContainEqual([snap1, 'completed']);
    expect(listed).toContainEqual([snap2, 'error']);
    expect(await env.untilLog(`manifest ${snap2}: its manifest MAC does not verify`)).toContain('manifest MAC does not verify');
    // A restore of it is refused, naming the snapshot and the MAC.
    const refused = await failure(call('CreateVolume', { SnapshotId: snap2 }));
    expect(refused.message).toContain(snap2);
    expect(refused.message).toContain('manifest MAC');
    // So are a copy of it and an EBS direct read of its block list.
    const copyRefused = await failure(call('CopySnapshot', { SourceSnapshotId: snap2, SourceRegion: 'us-east-1' }));
    expect(copyRefused.message).toContain('manifest MAC');
    const ebsRefused = await failure(env.api('ebs.ListSnapshotBlocks', { SnapshotId: snap2 }));
    expect(ebsRefused.message).toContain('manifest MAC');
    // The untouched snapshot restores its own data.
    expect(await restoredFill(snap1)).toBe(0x11);
    // A snapshot taken meanwhile and deleted: the delete takes effect and is
    // audited, though the collector cannot mark past the refused manifest (its blocks wait for a later sweep).
    const extra = await call('CreateSnapshot', { VolumeId: vol });
    expect((await settled(env, extra.SnapshotId)).State).toBe('completed');
    // A refused manifest is never a parent: the incremental is not taken against snap-2's rolled-back block list.
    expect(readManifest(extra.SnapshotId).parentSnapshotId).not.toBe(snap2);
    await call('DeleteSnapshot', { SnapshotId: extra.SnapshotId });
    expect((await call('DescribeSnapshots', {})).Snapshots.map((x: any) => x.SnapshotId)).not.toContain(extra.SnapshotId);
    expect(auditEvents().find((e) => e.eventName === 'DeleteSnapshot' && e.requestParameters?.snapshotId === extra.SnapshotId)).toMatchObject({ eventSource: 'ec2.amazonaws.com' });

    // A manifest whose MAC was removed is refused too: unsigned manifests are not trusted.
    const unsigned = readManifest(snap1);
    delete unsigned.manifestMac;
    writeFileSync(manifestPath(snap1), `${JSON.stringify(unsigned)}\n`);
    expect((await call('DescribeSnapshots', {})).Snapshots.map((s: any) => s.State)).toEqual(['error', 'error']);
    const noMac = (await failure(call('CreateVolume', { SnapshotId: snap1 }))).message;
    expect(noMac).toContain('has no manifest MAC');
    // It names §13.5, not sign-manifests: a manifest stripped of its MAC is exactly what signing must not bless unreviewed.
    expect(noMac).toContain('§13.5');
    expect(noMac).not.toContain('sign-manifests');

    // sign-manifests is the account root's alone: a mapped user with every permission is refused, nothing signed.
    await env.api('ebsd.IamCreateUser', { UserName: 'admin' });
    await env.api('ebsd.IamPutPolicy', { Principal: 'user/admin', PolicyName: 'all', PolicyDocument: JSON.stringify({ Statement: [{ Effect: 'Allow', Action: '*', Resource: '*' }] }) });
    await env.api('ebsd.IamMapUid', { Uid: 1000, Principal: 'user/admin' });
    const [byUser] = await asUid(env, 1000, [['SignManifests', {}]]);
    expect(byUser).toMatchObject({ error: { awsName: 'AccessDeniedException', message: expect.stringContaining('only the account root may call ebsd:SignManifests') } });
    expect(readManifest(snap1).manifestMac).toBeUndefined();
    // sign-manifests without --confirm is a dry run (root): it lists the unsigned manifest with its digest, signs nothing, and is audited as a read.
    const dry = await env.cli(['snapshot', 'sign-manifests', '--output', 'json']);
    expect(dry.code).toBe(6);
    const plan = dry.json();
    expect(plan).toMatchObject({ DryRun: true, AlreadySigned: 0, Unsigned: [{ SnapshotId: snap1, VolumeId: vol, StartTime: unsigned.startTime, BlockCount: unsigned.blocks.length, Digest: expect.stringMatching(/^[0-9a-f]{64}$/) }] });
    expect(plan.Refused.map((x: any) => x.SnapshotId)).toEqual([snap2]);
    expect(plan.PlanDigest).toBe(createHash('sha256').update(`${snap1}:${plan.Unsigned[0].Digest}\n`).digest('hex'));
    expect(readManifest(snap1).manifestMac).toBeUndefined();
    expect(auditEvents().find((e) => e.eventName === 'SignManifests' && e.requestParameters?.dryRun === true)).toMatchObject({ readOnly: true, responseElements: { planDigest: plan.PlanDigest, toSign: [{ snapshotId: snap1, digest: plan.Unsigned[0].Digest }] } });
    // A store writer edits the unsigned manifest after root reviewed the list: the confirmation names both plans and signs nothing.
    writeFileSync(manifestPath(snap1), `${JSON.stringify({ ...unsigned, description: 'edited after the review' })}\n`);
    const stale = await env.cli(['snapshot', 'sign-manifests', '--confirm', plan.PlanDigest]);
    expect(stale.code).not.toBe(0);
    expect(stale.stderr).toContain(plan.PlanDigest);
    expect(stale.stderr).toMatch(/the store's now [0-9a-f]{64}/);
    expect(readManifest(snap1).manifestMac).toBeUndefined();
    // Recorded as refused: the digest it named, IncorrectState, nothing answered.
    expect(auditEvents().filter((e) => e.eventName === 'SignManifests' && e.requestParameters?.confirm !== undefined)).toEqual([
      expect.objectContaining({ errorCode: 'IncorrectState', requestParameters: expect.objectContaining({ confirm: plan.PlanDigest }), responseElements: null, readOnly: true }),
    ]);
    // A confirmation that is not a plan digest is refused naming it, by the CLI (exit 2) and by the daemon.
    const badCli = await env.cli(['snapshot', 'sign-manifests', '--confirm', 'abc']);
    expect(badCli.code).toBe(2);
    expect(badCli.stderr).toContain('--confirm "abc": not a plan digest');
    expect((await failure(env.api('ebsd.SignManifests', { ConfirmPlanDigest: 'ABC' }))).message).toContain('ConfirmPlanDigest "ABC" is not a plan digest');
    expect(readManifest(snap1).manifestMac).toBeUndefined();
    // Reviewed again and confirmed: it signs exactly that one and leaves the rolled-back one refused (exit 6).
    const plan2 = (await env.cli(['snapshot', 'sign-manifests', '--output', 'json'])).json();
    expect(plan2.PlanDigest).not.toBe(plan.PlanDigest);
    const signed = await env.cli(['snapshot', 'sign-manifests', '--confirm', plan2.PlanDigest, '--output', 'json']);
    expect(signed.code).toBe(6);
    const r = signed.json();
    expect(r.Signed).toEqual([snap1]);
    expect(r.Refused.map((x: any) => x.SnapshotId)).toEqual([snap2]);
    expect(r.Refused[0].Message).toContain('manifest MAC does not verify');
    expect((await call('DescribeSnapshots', { Filters: [{ Name: 'status', Values: ['completed'] }] })).Snapshots.map((s: any) => s.SnapshotId)).toEqual([snap1]);
    expect(readManifest(snap1).manifestMac.keyArn).toBe(macKey);
    expect(readManifest(snap1).description).toBe('edited after the review');
    // Recorded before it signed: who asked, the key, what it was about to trust (ids and digests) and what stays refused.
    const ev = auditEvents().find((e) => e.eventName === 'SignManifests' && e.requestParameters?.confirm === plan2.PlanDigest);
    expect(ev).toMatchObject({ eventSource: 'ebsd', readOnly: false, userIdentity: { type: 'Root' }, requestParameters: { snapshotManifestKey: macKey }, responseElements: { toSign: [{ snapshotId: snap1, digest: plan2.Unsigned[0].Digest }], refused: [snap2] } });
    await env.stop();

    // Without the flag the old behaviour stands: the rolled-back manifest is listed and restores snap-1's data.
    await env.start();
    const old = (await call('DescribeSnapshots', { SnapshotIds: [snap2] })).Snapshots;
    expect(old.map((s: any) => s.SnapshotId)).toEqual([snap2]);
    expect(await restoredFill(snap2)).toBe(0x11);
    // ... and what it writes carries no MAC, so it cannot hand a later signing daemon a stale one.
    await writeBlock0(0x33);
    const snap3 = await snapshot();
    expect(readManifest(snap3).manifestMac).toBeUndefined();
    await env.stop();
  }, 120_000);
});
