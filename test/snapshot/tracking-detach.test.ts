import { afterEach, expect, test } from 'vitest';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FdBackingFile } from '../../src/volume/backing-file.js';
import { TrackingFiles } from '../../src/snapshot/change-tracker.js';
import { openSnapshotHarness, type SnapshotHarness } from './in-process.js';

/**
 * The clean mark a detach writes (docs/architecture.md §12.3) says "the image
 * differs from the base only in these blocks": it must become durable only
 * after the data it describes is. The volume's fdatasync is made to fail as a
 * failing disk does (EIO) on the real backing file; the tracking file is read
 * at each fdatasync to see what a power cut at that moment would leave.
 */

const SIZE = 4 * 1024 * 1024;

let h: SnapshotHarness | undefined;
afterEach(async () => {
  await h?.close().catch(() => {});
  h = undefined;
});

const trackingPath = (h: SnapshotHarness, vol: string): string => join(h.t.dir, 'snapshots-local', 'tracking', `${vol}.json`);
const trackingText = (p: string): string => {
  try {
    return readFileSync(p, 'utf8').trim();
  } catch {
    return '(none)';
  }
};

/** Runs `fn` with every FdBackingFile fdatasync recording the tracking file's text, then answering `fail` (or succeeding). */
async function watchingDatasync<T>(path: string, fail: boolean, fn: () => Promise<T>): Promise<{ seen: string[]; result: PromiseSettledResult<T> }> {
  const orig = FdBackingFile.prototype.datasync;
  const seen: string[] = [];
  FdBackingFile.prototype.datasync = function (this: FdBackingFile) {
    seen.push(trackingText(path));
    if (fail) return Promise.reject(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO', errno: -5 }));
    return orig.call(this);
  };
  try {
    const [result] = await Promise.allSettled([fn()]);
    return { seen, result: result! };
  } finally {
    FdBackingFile.prototype.datasync = orig;
  }
}

async function attachedAfterSnapshot(): Promise<{ vol: string; base: string }> {
  h = await openSnapshotHarness();
  const vol = (await h.mgr.createVolume({ Size: SIZE }, h.caller)).VolumeId;
  await h.mgr.attachVolume({ VolumeId: vol }, h.caller);
  await h.mgr.getBlockDevice(vol)!.write(0, randomBytes(SIZE));
  const s1 = await h.snapshot(vol);
  expect(s1.state).toBe('completed');
  await h.mgr.getBlockDevice(vol)!.write(SIZE / 2, randomBytes(4096));
  return { vol, base: s1.snapshotId };
}

test('detach: the clean mark is written only after the volume fdatasync succeeded', async () => {
  const { vol, base } = await attachedAfterSnapshot();
  const p = trackingPath(h!, vol);
  const { seen, result } = await watchingDatasync(p, false, () => h!.mgr.detachVolume({ VolumeId: vol }, h!.caller));
  expect(result.status).toBe('fulfilled');
  // The first fdatasync after the writes is the one that makes them durable: the file still says dirty then.
  expect(seen.length).toBeGreaterThan(0);
  expect(JSON.parse(seen[0]!).clean).toBe(false);
  const after = await new TrackingFiles(join(h!.t.dir, 'snapshots-local', 'tracking')).load(vol);
  expect(after.base).toBe(base);
  expect([...after.changed.indexes()]).toEqual([Math.floor(SIZE / 2 / (512 * 1024))]);
});

test('detach: a failed volume fdatasync leaves the tracking unknown (the next snapshot is full)', async () => {
  const { vol } = await attachedAfterSnapshot();
  const p = trackingPath(h!, vol);
  const { seen, result } = await watchingDatasync(p, true, () => h!.mgr.detachVolume({ VolumeId: vol }, h!.caller));
  // DetachVolume reports the failed last flush (its own error), and the volume is detached anyway.
  expect(result.status).toBe('rejected');
  expect(seen.length).toBeGreaterThan(0);
  for (const text of seen) expect(text === '(none)' || JSON.parse(text).clean === false).toBe(true);
  const after = await new TrackingFiles(join(h!.t.dir, 'snapshots-local', 'tracking')).load(vol);
  expect(after.base).toBeUndefined();
});

test('shutdown: a failed volume fdatasync leaves the tracking unknown too', async () => {
  const { vol } = await attachedAfterSnapshot();
  const p = trackingPath(h!, vol);
  const dir = join(h!.t.dir, 'snapshots-local', 'tracking');
  // The daemon's shutdown: the volume manager stops every attachment (hide, then teardown), as daemon.ts does.
  const { seen } = await watchingDatasync(p, true, () => h!.mgr.close());
  expect(seen.length).toBeGreaterThan(0);
  for (const text of seen) expect(text === '(none)' || JSON.parse(text).clean === false).toBe(true);
  expect((await new TrackingFiles(dir).load(vol)).base).toBeUndefined();
});
