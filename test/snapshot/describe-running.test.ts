import { afterEach, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { summaryOf } from '../../src/snapshot/manifest-check.js';
import { openSnapshotHarness, overrideStore, readerBefore, type SnapshotHarness } from './in-process.js';

const B = 512 * 1024;
const BLOCKS = 16;

/**
 * DescribeSnapshots of a create this daemon runs answers from the last
 * manifest the create wrote durably (SnapshotManager.getManifest), not from a
 * store read queued behind the copy's jobs: the same answer the store gives,
 * pending, with progress, then completed, and no read of that manifest.
 */
describe('DescribeSnapshots of a running create', () => {
  let h: SnapshotHarness | undefined;
  afterEach(async () => {
    await h?.close();
    h = undefined;
  });

  it('answers what the store holds (pending, progress, completed) without reading the manifest from the store', async () => {
    const reads = new Map<string, number>();
    const waiting: (() => void)[] = [];
    let passed = 0;
    let holding = true;
    h = await openSnapshotHarness({
      // Every getManifest the SnapshotManager makes of the store is counted per id.
      wrapStore: (s) => overrideStore(s, { getManifest: (id: string) => ((reads.set(id, (reads.get(id) ?? 0) + 1)), s.getManifest(id)) }),
      // The copy's block reads: four pass, the rest wait until the test lets them go, one by one.
      openReader: readerBefore(async (pos, len, into) => {
        if (into.length === B && holding && ++passed > 4) await new Promise<void>((res) => waiting.push(res));
      }),
    });
    const { snaps, store, caller } = h;
    const vol = (await h.mgr.createVolume({ Size: BLOCKS * B }, caller)).VolumeId;
    await h.mgr.attachVolume({ VolumeId: vol }, caller);
    await h.mgr.getBlockDevice(vol)!.write(0, randomBytes(BLOCKS * B));
    const id = (await snaps.createSnapshot({ VolumeId: vol }, caller)).SnapshotId;
    const described = async () => (await snaps.describeSnapshots({ SnapshotIds: [id] }))[0]!;
    const stored = async () => summaryOf((await store.getManifest(id))!);
    const until = async (what: string, ok: () => boolean | Promise<boolean>) => {
      for (let i = 0; !(await ok()); i++) {
        if (i > 1000) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    };

    await until('held reads', () => waiting.length > 0);
    const readsBefore = reads.get(id) ?? 0;
    // The same, but for StartTime: the point in time, which the stored pending manifest (written before it) gets
    // with the next write (docs/architecture.md §12.1).
    const first = await described();
    const pendingStored = await stored();
    expect({ ...first, startTime: '' }).toEqual({ ...pendingStored, startTime: '' });
    expect(first.startTime >= pendingStored.startTime).toBe(true);
    expect(first.state).toBe('pending');
    // A listing shows it as by id (the point in time as StartTime), and a start-time filter with it finds it.
    expect((await snaps.describeSnapshots({})).find((x) => x.snapshotId === id)).toEqual(first);
    expect((await snaps.describeSnapshots({ Filters: [{ Name: 'start-time', Values: [first.startTime] }] })).map((x) => x.snapshotId)).toEqual([id]);
    expect((await snaps.getManifest(id))?.state).toBe('pending');

    // Past a second since the copy began, the next block done records progress (directory store: at most once a second).
    await new Promise((r) => setTimeout(r, 1100));
    waiting.shift()!();
    await until('a progress write', async () => (await stored()).progress > 0);
    await until('the progress shown', async () => (await described()).progress > 0);
    expect(await described()).toEqual(await stored());
    expect((await described()).startTime).toBe(first.startTime);
    expect((await described()).state).toBe('pending');
    // No manifest read of the running create from the store for any of these answers.
    expect(reads.get(id) ?? 0).toBe(readsBefore);

    holding = false;
    for (const go of waiting.splice(0)) go();
    await until('completed', async () => (await described()).state === 'completed');
    // Completed is shown only once the store has it (the summary equal to the store's, block count included).
    expect(await described()).toEqual(await stored());
    expect((await stored()).state).toBe('completed');
  });

  it('a copy under another key is answered from the copier while it runs, as the store has it, then completed', async () => {
    const reads = new Map<string, number>();
    h = await openSnapshotHarness({
      wrapStore: (s) => overrideStore(s, { getManifest: (id: string) => ((reads.set(id, (reads.get(id) ?? 0) + 1)), s.getManifest(id)) }),
    });
    const { snaps, store, caller } = h;
    const vol = (await h.mgr.createVolume({ Size: BLOCKS * B }, caller)).VolumeId;
    await h.mgr.attachVolume({ VolumeId: vol }, caller);
    await h.mgr.getBlockDevice(vol)!.write(0, randomBytes(BLOCKS * B));
    const source = await h.snapshot(vol);
    const other = await h.kms.createKey();
    const { SnapshotId: id } = await h.copier.copySnapshot({ SourceSnapshotId: source.snapshotId, SourceRegion: 'us-east-1', KmsKeyId: other }, caller);
    // At once (the copy cannot have ended within these microtasks): answered from the copier, equal to the store's pending manifest.
    const first = (await snaps.describeSnapshots({ SnapshotIds: [id] }))[0]!;
    expect(reads.get(id) ?? 0).toBe(0);
    expect(first).toEqual(summaryOf((await store.getManifest(id))!));
    expect(first.state).toBe('pending');
    expect((await snaps.describeSnapshots({})).find((x) => x.snapshotId === id)).toEqual(first);
    await h.copier.settled();
    const done = (await snaps.describeSnapshots({ SnapshotIds: [id] }))[0]!;
    expect(done.state).toBe('completed');
    expect(done).toEqual(summaryOf((await store.getManifest(id))!));
    await h.mgr.detachVolume({ VolumeId: vol }, caller);
  });
});
