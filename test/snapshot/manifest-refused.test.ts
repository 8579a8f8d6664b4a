import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { api, detachWhenClosed, serviceRefusal as failure, settled } from './helpers.js';

/**
 * A refused snapshot manifest (--snapshot-manifest-key, docs/architecture.md §13.5) through the
 * real daemon, its embedded KMS and FUSE: a manifest someone changed by a byte, or stripped of its
 * MAC, is a snapshot in state `error` (DescribeSnapshots by id and in the listing, with a
 * StateMessage and nothing taken from the manifest), CreateVolume and CopySnapshot from it are
 * IncorrectState (400, not InternalFailure), an incremental whose parent it was is taken in full and
 * says so; while it exists no sweep frees anything, whatever it claims to name; DeleteSnapshot removes
 * it and answers, after which the collector (in the background) frees the blocks only it named (and those other deletes left) and
 * none of the other snapshots'.
 */
const B = 512 * 1024;

/** Polls `done` every 25 ms, 20 s at most (a refused snapshot's delete sweeps the store after its answer); returns its last answer. */
async function until(done: () => boolean): Promise<boolean> {
  for (let i = 0; i < 800 && !done(); i++) await new Promise((r) => setTimeout(r, 25));
  return done();
}

describe('refused snapshot manifests', () => {
  const env = new Env('manifest-refused');
  const call = api(env);
  let vol = '';
  let macKey = '';
  const storeDir = (): string => join(env.state, 'snapshots');
  const manifestPath = (id: string): string => join(storeDir(), 'manifests', `${id}.json`);
  const readManifest = (id: string): any => JSON.parse(readFileSync(manifestPath(id), 'utf8'));
  /** Whether the directory store holds block `hash`: as a block file, or named by a pack's index. */
  const stored = (hash: string): boolean => {
    if (existsSync(join(storeDir(), 'blocks', hash.slice(0, 2), hash))) return true;
    const packs = join(storeDir(), 'packs');
    if (!existsSync(packs)) return false;
    // The collector sweeps in the background (after a refused delete): a pack listed here may be gone when read.
    const index = (f: string): [string][] => {
      try {
        return JSON.parse(readFileSync(join(packs, f), 'utf8')).blocks as [string][];
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
        throw e;
      }
    };
    return readdirSync(packs).filter((f) => f.endsWith('.idx')).some((f) => index(f).some(([h]) => h === hash));
  };
  const hashOf = (id: string, index: number): string => (readManifest(id).blocks as [number, string][]).find(([i]) => i === index)![1];

  /** Writes `fill` over block `index` of the volume (attached for the write, detached after). */
  const writeBlock = async (index: number, fill: number): Promise<void> => {
    await call('AttachVolume', { VolumeId: vol });
    const fd = openSync(env.file(vol), 'r+');
    try {
      writeSync(fd, Buffer.alloc(B, fill), 0, B, index * B);
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
  /** The fill of each of the first `n` blocks of a volume restored from `snapshotId` (each block all one byte). */
  const restoredFills = async (snapshotId: string, n: number): Promise<number[]> => {
    const v = (await call('CreateVolume', { SnapshotId: snapshotId })).VolumeId as string;
    for (let i = 0; i < 400 && (await call('DescribeVolumes', { VolumeIds: [v] })).Volumes[0].State !== 'available'; i++) await new Promise((r) => setTimeout(r, 25));
    await call('AttachVolume', { VolumeId: v });
    const fills: number[] = [];
    const fd = openSync(env.file(v), 'r');
    try {
      for (let i = 0; i < n; i++) {
        const buf = Buffer.alloc(B);
        readSync(fd, buf, 0, B, i * B);
        expect(buf.every((x) => x === buf[0])).toBe(true);
        fills.push(buf[0]!);
      }
    } finally {
      closeSync(fd);
    }
    await detachWhenClosed(env, v);
    await call('DeleteVolume', { VolumeId: v });
    return fills;
  };
  const auditEvents = (): any[] => env.auditText().split('\n').filter(Boolean).map((l) => JSON.parse(l));

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    macKey = (await env.api('TrentService.CreateKey', { KeySpec: 'HMAC_256', KeyUsage: 'GENERATE_VERIFY_MAC', Description: 'manifests' })).KeyMetadata.Arn;
    vol = (await call('CreateVolume', { Size: 64 * 1024 * 1024 })).VolumeId;
    await env.stop();
    // Grace 0: the blocks a delete leaves unnamed are freed at once, not an hour later.
    await env.start(['--snapshot-manifest-key', macKey, '--snapshot-gc-grace', '0']);
  }, 60_000);

  afterAll(() => env.cleanup());

  it('shows a changed manifest as a snapshot in error, refuses to restore or copy it (IncorrectState), and deletes it and the blocks only it named', async () => {
    await writeBlock(0, 0x11);
    const snap1 = await snapshot();
    await writeBlock(1, 0x22);
    const snap2 = await snapshot();
    // snap-2 is incremental on snap-1: it shares block 0's object and alone names block 1's.
    const shared = hashOf(snap1, 0);
    expect(hashOf(snap2, 0)).toBe(shared);
    const onlyInSnap2 = hashOf(snap2, 1);
    expect(stored(onlyInSnap2)).toBe(true);

    // Someone with write access to the store changes one byte of snap-2's manifest (its description).
    const text = readFileSync(manifestPath(snap2), 'utf8');
    const at = text.indexOf('"description":"') + '"description":"'.length;
    writeFileSync(manifestPath(snap2), `${text.slice(0, at)}X${text.slice(at)}`);

    // DescribeSnapshots by id: state error, a StateMessage, nothing else of the manifest (no volume, size, time, tags).
    const byId = (await call('DescribeSnapshots', { SnapshotIds: [snap2] })).Snapshots;
    expect(byId).toEqual([{ SnapshotId: snap2, State: 'error', StateMessage: expect.stringContaining('its manifest MAC does not verify'), OwnerId: expect.stringMatching(/^\d{12}$/), StorageTier: 'standard' }]);
    expect(byId[0].StateMessage).toContain('failed verification');
    // In the listing too, beside the snapshot that is untouched; filters see only what is known of it.
    const listed = (await call('DescribeSnapshots', {})).Snapshots;
    expect(listed.map((s: any) => [s.SnapshotId, s.State]).sort()).toEqual([[snap1, 'completed'], [snap2, 'error']].sort());
    expect((await call('DescribeSnapshots', { Filters: [{ Name: 'status', Values: ['error'] }] })).Snapshots.map((s: any) => s.SnapshotId)).toEqual([snap2]);
    expect((await call('DescribeSnapshots', { Filters: [{ Name: 'volume-id', Values: [vol] }] })).Snapshots.map((s: any) => s.SnapshotId)).toEqual([snap1]);
    // The CLI prints it (exit 0), as `aws ec2 describe-snapshots` would.
    const cliDescribe = await env.cli(['snapshot', 'describe', snap2, '--output', 'json']);
    expect(cliDescribe.code).toBe(0);
    expect(cliDescribe.json().Snapshots[0]).toMatchObject({ SnapshotId: snap2, State: 'error' });

    // CreateVolume and CopySnapshot from it: EC2's IncorrectState, a client error (400), naming the snapshot and why.
    const restore = await failure(call('CreateVolume', { SnapshotId: snap2 }));
    expect([restore.awsName, restore.status]).toEqual(['IncorrectState', 400]);
    expect(restore.message).toContain(snap2);
    expect(restore.message).toContain('manifest MAC does not verify');
    const copy = await failure(call('CopySnapshot', { SourceSnapshotId: snap2, SourceRegion: 'us-east-1' }));
    expect([copy.awsName, copy.status]).toEqual(['IncorrectState', 400]);
    expect(copy.message).toContain(snap2);
    // So is an EBS direct read of it: ValidationException (400) as for any snapshot that is not completed.
    const ebsList = await failure(env.api('ebs.ListSnapshotBlocks', { SnapshotId: snap2 }));
    expect([ebsList.awsName, ebsList.status]).toEqual(['ValidationException', 400]);
    expect(ebsList.message).toContain(`${snap2} is in state error`);
    const cliRestore = await env.cli(['volume', 'create', '--snapshot-id', snap2]);
    expect(cliRestore.code).toBe(6); // conflicting state, not 10 (a service failure to retry)
    expect(cliRestore.stderr).toContain('IncorrectState');
    // Nothing was created from it.
    expect((await call('DescribeVolumes', {})).Volumes.map((v: any) => v.VolumeId)).toEqual([vol]);

    // An incremental whose parent's manifest is refused: taken without it, said in the log, and whole.
    await writeBlock(1, 0x44);
    await writeBlock(2, 0x33);
    const snap3 = await snapshot();
    expect(readManifest(snap3).parentSnapshotId).not.toBe(snap2);
    const log = await env.untilLog(new RegExp(`${snap2}[^\\n]*(refused|not considered)|(refused|not considered)[^\\n]*${snap2}`));
    expect(log).toMatch(new RegExp(`"snapshotId":"${snap3}"[^\\n]*${snap2}[^\\n]*refused`));
    expect(await restoredFills(snap3, 3)).toEqual([0x11, 0x44, 0x33]);

    // The store writer edits the refused manifest further: it now names another snapshot's block (which a collector
    // trusting it would keep) and no longer block 1's (which such a collector would free). Still refused, and neither is believed.
    await writeBlock(4, 0x66);
    const snap4 = await snapshot();
    const onlyInSnap4 = hashOf(snap4, 4);
    const edited = JSON.parse(readFileSync(manifestPath(snap2), 'utf8'));
    edited.blocks = [[0, shared], [4, onlyInSnap4]];
    const tampered = Buffer.from(`${JSON.stringify(edited)}\n`);
    writeFileSync(manifestPath(snap2), tampered);
    expect((await call('DescribeSnapshots', { SnapshotIds: [snap2] })).Snapshots[0].State).toBe('error');
    // A delete of another snapshot meanwhile takes effect, but frees nothing: no sweep marks past a refused manifest.
    expect(await call('DeleteSnapshot', { SnapshotId: snap4 })).toEqual({ Return: true });
    const leftFor = new RegExp(`"snapshotIds":\\[[^\\]]*"${snap4}"[^\\n]*their blocks are left to a later sweep`);
    expect(await env.untilLog(leftFor)).toMatch(leftFor);
    expect(stored(onlyInSnap4)).toBe(true);
    expect(stored(onlyInSnap2)).toBe(true);
    // `ebsd snapshot ls` shows it in its table, the columns nothing is known of as "-".
    const table = await env.cli(['snapshot', 'ls', '--output', 'table']);
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(new RegExp(`${snap2}\\s+-\\s+error\\s+-\\s+-\\s+-\\s+-`));

    // DeleteSnapshot of it succeeds, audited; the snapshot is gone on every read.
    expect(await call('DeleteSnapshot', { SnapshotId: snap2 })).toEqual({ Return: true });
    expect(existsSync(manifestPath(snap2))).toBe(false);
    expect((await failure(call('DescribeSnapshots', { SnapshotIds: [snap2] }))).awsName).toBe('InvalidSnapshot.NotFound');
    const deleted = auditEvents().find((e) => e.eventName === 'DeleteSnapshot' && e.requestParameters?.snapshotId === snap2);
    expect(deleted).toMatchObject({ eventSource: 'ec2.amazonaws.com', additionalEventData: { manifestRefused: true } });
    // What was removed is recorded, the only trace of the tampering left: the SHA-256 and size of the bytes written
    // above, and the file's last-modified; nothing of its content (its block list, its description).
    expect(deleted.additionalEventData).toEqual({
      manifestRefused: true,
      manifestSha256: createHash('sha256').update(tampered).digest('hex'),
      manifestBytes: tampered.length,
      manifestLastModified: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
    });
    expect(JSON.stringify(deleted)).not.toContain(onlyInSnap4);
    expect(JSON.stringify(deleted)).not.toContain(shared);
    // Nothing of the manifest is trusted: the event names no volume.
    expect(deleted.requestParameters.volumeId).toBeUndefined();
    // The collector sweeps after the answer, in the background: the block only snap-2 named is freed, and so is the
    // deleted snap-4's, which the edited manifest claimed; snap-1's and snap-3's are kept and restore.
    expect(await until(() => !stored(onlyInSnap2) && !stored(onlyInSnap4))).toBe(true);
    const swept = new RegExp(`"snapshotIds":\\[[^\\]]*"${snap2}"[^\\n]*the store swept`);
    expect(await env.untilLog(swept)).toMatch(swept);
    expect(stored(shared)).toBe(true);
    for (const [i, h] of readManifest(snap3).blocks as [number, string][]) expect([i, stored(h)]).toEqual([i, true]);
    expect(await restoredFills(snap1, 2)).toEqual([0x11, 0x00]);
    expect(await restoredFills(snap3, 3)).toEqual([0x11, 0x44, 0x33]);
  }, 180_000);

  it('shows a manifest stripped of its MAC as a snapshot in error naming that, and deletes it', async () => {
    await writeBlock(3, 0x55);
    const snap = await snapshot();
    const only = hashOf(snap, 3);
    const m = readManifest(snap);
    delete m.manifestMac;
    writeFileSync(manifestPath(snap), `${JSON.stringify(m)}\n`);
    const [s] = (await call('DescribeSnapshots', { SnapshotIds: [snap] })).Snapshots;
    expect(s).toMatchObject({ SnapshotId: snap, State: 'error', StateMessage: expect.stringContaining('it has no manifest MAC') });
    expect(s.VolumeId).toBeUndefined();
    const copy = await failure(call('CopySnapshot', { SourceSnapshotId: snap, SourceRegion: 'us-east-1' }));
    expect([copy.awsName, copy.status]).toEqual(['IncorrectState', 400]);
    // Not by anyone but the account root: an IAM user allowed ec2:DeleteSnapshot on every snapshot is refused (a policy
    // conditioned on its tags could not be judged; a manifest not yet signed is refused too), and it stays.
    await env.api('ebsd.IamCreateUser', { UserName: 'deleter' });
    await env.api('ebsd.IamMapUid', { Uid: 2731, Principal: 'user/deleter' });
    await env.api('ebsd.IamPutPolicy', { Principal: 'user/deleter', PolicyName: 'p', PolicyDocument: JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: ['ec2:DeleteSnapshot', 'ec2:DescribeSnapshots'], Resource: '*' }] }) });
    const notRoot = await env.cli(['snapshot', 'delete', snap], { uid: 2731 });
    expect(notRoot.code).toBe(4);
    expect(notRoot.stderr).toMatch(/UnauthorizedOperation.*its manifest is refused.*only the account root may delete it/s);
    expect((await call('DescribeSnapshots', { SnapshotIds: [snap] })).Snapshots[0]).toMatchObject({ SnapshotId: snap, State: 'error' });
    expect(stored(only)).toBe(true);
    // Through the CLI as root: deleted (exit 0), and its block freed.
    const del = await env.cli(['snapshot', 'delete', snap]);
    expect(del.code).toBe(0);
    expect((await call('DescribeSnapshots', {})).Snapshots.map((x: any) => x.SnapshotId)).not.toContain(snap);
    expect(await until(() => !stored(only))).toBe(true);
  }, 120_000);
});
