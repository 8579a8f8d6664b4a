import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect, test } from 'vitest';
import { manifestHashes } from '../../src/snapshot/manifest-check.js';
import { openSnapshotHarness, type SnapshotHarness } from './in-process.js';

/**
 * The directory store on a filesystem that fills up mid-create (a 20 MiB
 * tmpfs: the LUKS2 header area's 16 MiB fit, the 8 MiB of data do not): a
 * real ENOSPC from the pack's writes. The snapshot ends `error` naming it,
 * names no block, leaves no pack behind, and the volume reads as before.
 */

const MiB = 1024 * 1024;

let h: SnapshotHarness | undefined;
let mnt: string | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
  if (mnt) {
    execFileSync('umount', [mnt]);
    rmdirSync(mnt);
    mnt = undefined;
  }
});

test('ENOSPC mid-create on the directory store: error naming it, no block named, no pack left, the volume unaffected; once space is back a snapshot completes', async () => {
  mnt = mkdtempSync('/tmp/ebsd-store-full-');
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=20m', 'tmpfs', mnt]);
  h = await openSnapshotHarness({ snapshotsDir: join(mnt, 'snapshots') });
  const hh = h;
  const data = randomBytes(8 * MiB);
  const vol = await hh.writtenVolume(data);
  const s = await hh.snapshot(vol);
  expect(s.state).toBe('error');
  expect(s.stateMessage).toMatch(/ENOSPC|no space left/i);
  expect(s.blocks).toEqual([]);
  expect((await hh.store.getManifest(s.snapshotId))!).toMatchObject({ state: 'error', blocks: [] });
  // Nothing the failed create wrote is left but what a sweep frees; no manifest names a missing block.
  await hh.gc.sweep();
  const present = new Set<string>();
  for await (const x of hh.store.listBlocks()) present.add(x);
  for (const m of await hh.store.listManifests()) for (const x of manifestHashes(m)) expect(present.has(x)).toBe(true);
  expect(readdirSync(join(mnt, 'snapshots', 'packs'))).toEqual([]);
  expect((await hh.readVolume(vol)).equals(data)).toBe(true);
  // Space back (a larger filesystem): the next snapshot completes.
  execFileSync('mount', ['-o', 'remount,size=64m', mnt]);
  const again = await hh.snapshot(vol);
  expect(again.state).toBe('completed');
}, 60_000);
