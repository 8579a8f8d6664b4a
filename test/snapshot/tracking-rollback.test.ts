import { afterEach, expect, test } from 'vitest';
import { randomBytes } from 'node:crypto';
import type { SnapshotManifest, SnapshotStore } from '../../src/snapshot/types.js';
import { openSnapshotHarness, readerBefore, type SnapshotHarness } from './in-process.js';

/**
 * A snapshot that fails without a crash (here its `completed` manifest cannot
 * be written) gives its changed blocks back: the tracking that names it as its
 * base since its point in time goes back to the base before it, with the
 * failed snapshot's bits merged into those written since
 * (SnapshotManager.rollbackTracking, ChangeTracker.rollback;
 * docs/architecture.md §12.3). The next snapshot is then an incremental on
 * the completed one before, reading exactly the blocks written since it:
 * one written before the failed snapshot's point in time (block 0) and one
 * while it was pending, by another attachment (block 2). Without the merge it
 * would read block 2 alone and miss block 0. The undo runs on the tracking
 * file when the volume is detached at the failure, on the attachment's
 * tracker when it is attached.
 */
const B = 512 * 1024;
const SIZE = 8 * B;

let h: SnapshotHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

test.each([
  ['attached', 'detached'],
  ['detached', 'attached'],
] as const)('S1 (%s at its point in time, %s when it fails) fails after a detach, attach and write while pending: S2 is an incremental on S0 with every write since', async (atPointInTime, atFailure) => {
  let failCompleted = false;
  // The copier's 512 KiB block reads wait while `holding` (the copy-on-write captures are 4 KiB: not held).
  let holding = false;
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  /** Blocks read by the copier while `reads` is set. */
  let reads: Set<number> | undefined;
  h = await openSnapshotHarness({
    wrapStore: (s) =>
      new Proxy(s, {
        get(t, k) {
          const v = Reflect.get(t, k, t) as unknown;
          if (k === 'putManifest') {
            return async (m: SnapshotManifest) => {
              if (failCompleted && m.state === 'completed') throw new Error('injected: the completed manifest cannot be written');
              return t.putManifest(m);
            };
          }
          return typeof v === 'function' ? v.bind(t) : v;
        },
      }) as SnapshotStore,
    openReader: readerBefore(async (pos, len, into) => {
      if (len === B) {
        reads?.add(pos / B);
        if (holding) await released;
      }
    }),
  });
  const hh = h;
  const vol = (await hh.mgr.createVolume({ Size: SIZE }, hh.caller)).VolumeId;
  const attach = () => hh.mgr.attachVolume({ VolumeId: vol }, hh.caller);
  const detach = () => hh.mgr.detachVolume({ VolumeId: vol }, hh.caller);
  const write = async (buf: Buffer, pos: number): Promise<void> => {
    const d = hh.mgr.getBlockDevice(vol)!;
    await d.write(pos, buf);
    await d.flush();
  };
  const content = randomBytes(SIZE);
  await attach();
  await write(content, 0);
  await detach();
  const s0 = await hh.snapshot(vol);
  expect(s0.state).toBe('completed');

  // Between S0 and S1: block 0.
  const b0 = randomBytes(B);
  content.set(b0, 0);
  await attach();
  await write(b0, 0);
  if (atPointInTime === 'detached') await detach();

  failCompleted = true;
  holding = true;
  const s1 = await hh.snaps.createSnapshot({ VolumeId: vol }, hh.caller);
  // While S1 is pending, a new attachment writes block 2.
  if (atPointInTime === 'attached') await detach();
  await attach();
  const b2 = randomBytes(B);
  content.set(b2, 2 * B);
  await write(b2, 2 * B);
  if (atFailure === 'detached') await detach();

  holding = false;
  release();
  expect((await hh.settled(s1.SnapshotId)).state).toBe('error');
  failCompleted = false;

  reads = new Set();
  const s2 = await hh.snapshot(vol);
  expect(s2.state).toBe('completed');
  expect(s2.parentSnapshotId, 'S2 is an incremental on S0, the base before the failed S1').toBe(s0.snapshotId);
  expect([...reads].sort((a, b) => a - b), 'S2 reads the blocks written since S0: before S1 (0) and while it was pending (2)').toEqual([0, 2]);
  reads = undefined;
  if (atFailure === 'attached') await detach();

  const r = await hh.restoreVolume({ SnapshotId: s2.snapshotId });
  expect(r.state).toBe('available');
  const bytes = await hh.readVolume(r.volumeId);
  expect(bytes.subarray(0, B).equals(content.subarray(0, B)), 'block 0, written between S0 and S1').toBe(true);
  expect(bytes.equals(content)).toBe(true);
}, 60_000);

test('a throw between the set-up and the copy (the CreateSnapshot event refused) fails the snapshot and still undoes its tracking', async () => {
  let refuseEvent = false;
  let reads: Set<number> | undefined;
  h = await openSnapshotHarness({
    onAudit: (ev) => {
      if (refuseEvent && ev.eventName === 'CreateSnapshot') throw new Error('injected: the CreateSnapshot event cannot be handed on');
    },
    openReader: readerBefore(async (pos, len, into) => {
      if (len === B) reads?.add(pos / B);
    }),
  });
  const hh = h;
  const vol = (await hh.mgr.createVolume({ Size: SIZE }, hh.caller)).VolumeId;
  await hh.mgr.attachVolume({ VolumeId: vol }, hh.caller);
  const d = hh.mgr.getBlockDevice(vol)!;
  const content = randomBytes(SIZE);
  await d.write(0, content);
  const s0 = await hh.snapshot(vol);
  expect(s0.state).toBe('completed');
  const b0 = randomBytes(B);
  content.set(b0, 0);
  await d.write(0, b0);

  refuseEvent = true;
  await expect(hh.snaps.createSnapshot({ VolumeId: vol }, hh.caller)).rejects.toThrow(/injected/);
  refuseEvent = false;
  // Its session left the gate: a write to a block it would have copied passes, and the next snapshot takes it.
  const b3 = randomBytes(B);
  content.set(b3, 3 * B);
  await d.write(3 * B, b3);

  reads = new Set();
  const s2 = await hh.snapshot(vol);
  expect(s2.state).toBe('completed');
  expect(s2.parentSnapshotId).toBe(s0.snapshotId);
  expect([...reads].sort((a, b) => a - b), 'an incremental on S0: the failed snapshot gave its bits back').toEqual([0, 3]);
  reads = undefined;
  await hh.mgr.detachVolume({ VolumeId: vol }, hh.caller);
  const r = await hh.restoreVolume({ SnapshotId: s2.snapshotId });
  expect((await hh.readVolume(r.volumeId)).equals(content)).toBe(true);
}, 60_000);
