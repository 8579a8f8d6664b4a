import { afterEach, expect, test } from 'vitest';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { BlockBitmap } from '../../src/snapshot/block-bitmap.js';
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

test('a clean tracking file without `changed`: the snapshot copies every block instead of inheriting block 2', async () => {
  const { vol, want } = await detachedWithChange();
  const f = JSON.parse(await fsp.readFile(trackingPath(h!, vol), 'utf8')) as Record<string, unknown>;
  expect(f.clean).toBe(true);
  delete f.changed; // a damaged file that still parses, or a hand edit
  await fsp.writeFile(trackingPath(h!, vol), JSON.stringify(f));
  const s2 = await h!.snapshot(vol);
  expect(s2.state).toBe('completed');
  expect(await restoredEquals(s2.snapshotId, want)).toBe(true);
});

test('a tracking file with invalid base64 in `changed`, attached then snapshotted: every block is copied', async () => {
  const { vol, want } = await detachedWithChange();
  const f = JSON.parse(await fsp.readFile(trackingPath(h!, vol), 'utf8')) as Record<string, unknown>;
  f.changed = '!!!!'; // Buffer.from(…, 'base64') skips what is not base64: it would read "no block changed"
  await fsp.writeFile(trackingPath(h!, vol), JSON.stringify(f));
  // Through an attach: the tracker reads the file, finds it unknown, and the attached snapshot is full.
  await h!.mgr.attachVolume({ VolumeId: vol }, h!.caller);
  const s2 = await h!.snapshot(vol);
  expect(s2.state).toBe('completed');
  await h!.mgr.detachVolume({ VolumeId: vol }, h!.caller);
  expect(await restoredEquals(s2.snapshotId, want)).toBe(true);
});

test('TrackingFiles.load: only what saveClean and markDirty write is read; anything else is SNAPSHOT_CORRUPT', async () => {
  h = await openSnapshotHarness();
  const files = new TrackingFiles(trackingDir(h));
  const vol = 'vol-0123456789abcdef0';
  const base = 'snap-0123456789abcdef0';
  const p = files.path(vol);

  const changed = new BlockBitmap();
  changed.addRange(3, 9);
  await files.saveClean(vol, { base, changed });
  const good = JSON.parse(await fsp.readFile(p, 'utf8')) as Record<string, unknown>;
  const read = await files.load(vol);
  expect(read.base).toBe(base);
  expect([...read.changed.indexes()]).toEqual([3, 4, 5, 6, 7, 8, 9]);
  await files.markDirty(vol);
  expect((await files.load(vol)).base).toBeUndefined();

  const bad: [string, unknown][] = [
    ['not an object', [good]],
    ['null', null],
    ['no formatVersion', { ...good, formatVersion: undefined }],
    ['formatVersion 2', { ...good, formatVersion: 2 }],
    ['another volume', { ...good, volumeId: 'vol-fedcba9876543210f' }],
    ['clean not a boolean', { ...good, clean: 'true' }],
    ['no base', { ...good, baseSnapshotId: undefined }],
    ['base not a snapshot id', { ...good, baseSnapshotId: 'snap-x' }],
    ['no changed', { ...good, changed: undefined }],
    ['changed not a string', { ...good, changed: 12 }],
    ['changed with a character outside base64', { ...good, changed: `${String(good.changed)}!` }],
    ['changed without its padding', { ...good, changed: String(good.changed).replace(/=+$/, '') }],
  ];
  for (const [what, content] of bad) {
    await fsp.writeFile(p, JSON.stringify(content));
    await expect(files.load(vol), what).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT' });
  }
});

test('BlockBitmap.fromBase64 takes only canonical base64', async () => {

  const b = new BlockBitmap();
  b.addRange(0, 20);
  expect([...BlockBitmap.fromBase64(b.toBase64()).indexes()]).toEqual([...b.indexes()]);
  expect(BlockBitmap.fromBase64('').size).toBe(0);
  for (const s of ['!', 'AA', 'AB==', '/w= =', ' /w==', '/w==\n', '-_8=']) expect(() => BlockBitmap.fromBase64(s), s).toThrow(RangeError);
});
