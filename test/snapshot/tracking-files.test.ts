import { afterEach, expect, test } from 'vitest';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { TrackingFiles } from '../../src/snapshot/change-tracker.js';
import { openSnapshotHarness, type SnapshotHarness } from './in-process.js';

/**
 * A tracking file that is lost or damaged (docs/architecture.md §12.3): the
 * next snapshot copies every block, never fails for it and is never wrong.
 * Real harness (KMS core, volume manager, directory store); the damage is
 * written into the real tracking file between a detach and a snapshot.
 */

const B = 512 * 1024;
const SIZE = 4 * 1024 * 1024;

let h: SnapshotHarness | undefined;
afterEach(async () => {
  await h?.close().catch(() => {});
  h = undefined;
});

const trackingDir = (h: SnapshotHarness): string => join(h.t.dir, 'snapshots-local', 'tracking');
const trackingPath = (h: SnapshotHarness, vol: string): string => join(trackingDir(h), `${vol}.json`);

/** A detached volume with a completed snapshot, then block 2 rewritten through an attach: `want` is its content now. */
async function detachedWithChange(): Promise<{ vol: string; s1: string; want: Buffer }> {
  h = await openSnapshotHarness();
  const vol = (await h.mgr.createVolume({ Size: SIZE }, h.caller)).VolumeId;
  await h.mgr.attachVolume({ VolumeId: vol }, h.caller);
  const want = randomBytes(SIZE);
  await h.mgr.getBlockDevice(vol)!.write(0, want);
  await h.mgr.detachVolume({ VolumeId: vol }, h.caller);
  const s1 = await h.snapshot(vol);
  expect(s1.state).toBe('completed');
  await h.mgr.attachVolume({ VolumeId: vol }, h.caller);
  const b2 = randomBytes(B);
  await h.mgr.getBlockDevice(vol)!.write(2 * B, b2);
  b2.copy(want, 2 * B);
  await h.mgr.detachVolume({ VolumeId: vol }, h.caller);
  return { vol, s1: s1.snapshotId, want };
}

async function restoredEquals(snapshotId: string, want: Buffer): Promise<boolean> {
  const r = await h!.restoreVolume({ SnapshotId: snapshotId, AvailabilityZone: 'us-east-1a' } as never);
  expect(r.state).toBe('available');
  return (await h!.readVolume(r.volumeId)).equals(want);
}

test('a torn tracking file of a detached volume: CreateSnapshot is accepted and copies every block', async () => {
  const { vol, want } = await detachedWithChange();
  await fsp.writeFile(trackingPath(h!, vol), '{"formatVersion":1,"volu');
  const s2 = await h!.snapshot(vol);
  expect(s2.state).toBe('completed');
  expect(await restoredEquals(s2.snapshotId, want)).toBe(true);
  // The snapshot is the tracking's new base: the file is whole again.
  expect((await new TrackingFiles(trackingDir(h!)).load(vol)).base).toBe(s2.snapshotId);
});
