import { randomBytes } from 'node:crypto';
import { afterEach, expect, test } from 'vitest';
import { SnapshotGc } from '../../src/snapshot/gc.js';
import { SnapshotRestore } from '../../src/snapshot/restore.js';
import { openSnapshotHarness, overrideStore, type SnapshotHarness } from './in-process.js';

/**
 * DeleteSnapshot on another host sharing the store while this host restores
 * from the snapshot (CreateVolume with SnapshotId): this host's hold keeps its
 * own DeleteSnapshot away, not another host's collector, which frees the
 * blocks (older than its grace) mid-restore. The volume must never be
 * `available` with blocks missing: it ends `error`, naming the block. The
 * restore reads the real directory store through a wrapper that runs the
 * other host's delete before its second block read; the other host is a
 * SnapshotGc (grace 0) on the same store.
 */

const MiB = 1024 * 1024;

let h: SnapshotHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

test('the snapshot deleted on another host mid-restore: the volume ends error naming the missing block, never available', async () => {
  h = await openSnapshotHarness();
  const hh = h;
  const vol = await hh.writtenVolume(randomBytes(2 * MiB));
  const s1 = await hh.snapshot(vol);
  const dataBlocks = new Set(s1.blocks.map(([, x]) => x));
  let reads = 0;
  let deleted = false;
  const store = overrideStore(hh.store, {
    getBlock: async (hash: string, maxBytes?: number) => {
      if (dataBlocks.has(hash) && ++reads === 2 && !deleted) {
        deleted = true;
        await (await new SnapshotGc(hh.store, { graceMs: 0 }).deleteSnapshot(s1.snapshotId)).collected;
      }
      return hh.store.getBlock(hash, maxBytes);
    },
  });
  const restore = new SnapshotRestore({ store, volumes: hh.mgr, window: 1 });
  const v = await restore.createVolume({ SnapshotId: s1.snapshotId }, hh.caller);
  await hh.mgr.settled();
  expect(deleted).toBe(true);
  const d = hh.mgr.describeVolumes({ VolumeIds: [v.VolumeId] }).Volumes[0] as { State: string; StateMessage?: string } | undefined;
  expect(d).toMatchObject({ State: 'error' });
  expect(d!.StateMessage).toMatch(/SNAPSHOT_BLOCK_NOT_FOUND: block [0-9a-f]{64} is missing from the snapshot store/);
}, 30_000);
