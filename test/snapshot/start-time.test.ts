import { afterEach, expect, test } from 'vitest';
import { randomBytes } from 'node:crypto';
import type { SnapshotManifest } from '../../src/snapshot/types.js';
import { openSnapshotHarness, overrideStore, type SnapshotHarness } from './in-process.js';

/**
 * A snapshot's StartTime is its point in time, as EC2's is when the snapshot
 * was initiated, not when CreateSnapshot arrived: the set-up before it (the
 * volume's lock, the header, the pending manifest, the parent's look-up) is
 * not in it. The answer, DescribeSnapshots and the stored manifests agree.
 */
let h: SnapshotHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

test.each([['attached'], ['detached']] as const)('StartTime of a snapshot of the volume (%s) is taken at its point in time, after the pending manifest is written', async (mode) => {
  /** When the first pending manifest's write resolved (held a few ms, so the request's arrival is surely earlier). */
  let pendingWritten: string | undefined;
  h = await openSnapshotHarness({
    wrapStore: (s) =>
      overrideStore(s, {
        putManifest: async (m: SnapshotManifest) => {
          await s.putManifest(m);
          if (m.state === 'pending' && pendingWritten === undefined) {
            await new Promise((r) => setTimeout(r, 5));
            pendingWritten = new Date().toISOString();
          }
        },
      }),
  });
  const hh = h;
  const vol = (await hh.mgr.createVolume({ Size: 2 * 1024 * 1024 }, hh.caller)).VolumeId;
  await hh.mgr.attachVolume({ VolumeId: vol }, hh.caller);
  await hh.mgr.getBlockDevice(vol)!.write(0, randomBytes(4096));
  if (mode === 'detached') await hh.mgr.detachVolume({ VolumeId: vol }, hh.caller);
  const answer = await hh.snaps.createSnapshot({ VolumeId: vol }, hh.caller);
  expect(pendingWritten).toBeDefined();
  expect(answer.StartTime >= pendingWritten!, `StartTime ${answer.StartTime} is after the pending manifest (${pendingWritten})`).toBe(true);
  expect((await hh.snaps.getManifest(answer.SnapshotId))?.startTime).toBe(answer.StartTime);
  const done = await hh.settled(answer.SnapshotId);
  expect(done.state).toBe('completed');
  expect(done.startTime).toBe(answer.StartTime);
  expect((await hh.store.getManifest(answer.SnapshotId))?.startTime).toBe(answer.StartTime);
  if (mode === 'attached') await hh.mgr.detachVolume({ VolumeId: vol }, hh.caller);
}, 60_000);
