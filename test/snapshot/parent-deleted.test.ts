import { afterEach, describe, expect, test } from 'vitest';
import { randomBytes } from 'node:crypto';
import type { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import type { SnapshotManifest, SnapshotStore } from '../../src/snapshot/types.js';
import { openSnapshotHarness, type SnapshotHarness } from './in-process.js';

/**
 * DeleteSnapshot of the parent while an incremental CreateSnapshot starts
 * (docs/architecture.md §12.4). EBS completes such a snapshot; so must ebsd:
 * the parent's blocks are pinned in the turn its manifest is read, and a parent
 * deleted before that makes the snapshot full instead of failing it. A store
 * wrapper between the SnapshotManager and the real directory store runs the
 * DeleteSnapshot at the moment under test; everything else is the daemon's
 * wiring in this process (in-process.ts).
 */

const B = 512 * 1024;
const SIZE = 4 * 1024 * 1024;

/** Runs `hook` once, on the `nth` read of snapshot `id`'s manifest after `arm`, before that read is answered (with what it read before the hook ran). */
function hookedStore(): { wrap: (s: DirSnapshotStore) => SnapshotStore; arm: (id: string, nth: number, hook: () => Promise<void>) => void; fired: () => boolean } {
  let armed: { id: string; left: number; hook: () => Promise<void> } | undefined;
  let fired = false;
  return {
    arm: (id, nth, hook) => {
      armed = { id, left: nth, hook };
    },
    fired: () => fired,
    wrap: (store) =>
      new Proxy(store, {
        get(target, key) {
          if (key === 'getManifest') {
            return async (id: string): Promise<SnapshotManifest | undefined> => {
              const m = await target.getManifest(id);
              if (armed && armed.id === id && --armed.left === 0) {
                const { hook } = armed;
                armed = undefined;
                fired = true;
                await hook();
              }
              return m;
            };
          }
          const v = Reflect.get(target, key, target) as unknown;
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        },
      }) as SnapshotStore,
  };
}

let h: SnapshotHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

async function write(h: SnapshotHarness, volumeId: string, data: Buffer, at: number, attached: boolean): Promise<void> {
  if (!attached) await h.mgr.attachVolume({ VolumeId: volumeId }, h.caller);
  await h.mgr.getBlockDevice(volumeId)!.write(at, data);
  if (!attached) await h.mgr.detachVolume({ VolumeId: volumeId }, h.caller);
}

describe.each([['detached', false], ['attached', true]] as const)('DeleteSnapshot of the parent as an incremental of a %s volume starts', (_name, attached) => {
  test('the parent deleted between its manifest read and its pins: the snapshot completes, full, and restores', async () => {
    const hs = hookedStore();
    h = await openSnapshotHarness({ wrapStore: hs.wrap });
    const vol = (await h.mgr.createVolume({ Size: SIZE }, h.caller)).VolumeId;
    const want = randomBytes(SIZE);
    await h.mgr.attachVolume({ VolumeId: vol }, h.caller);
    await h.mgr.getBlockDevice(vol)!.write(0, want);
    if (!attached) await h.mgr.detachVolume({ VolumeId: vol }, h.caller);
    const s1 = await h.snapshot(vol);
    expect(s1.state).toBe('completed');
    // Block 1 changes: the tracking says "block 1 since s1".
    const b1 = randomBytes(B);
    b1.copy(want, B);
    await write(h, vol, b1, B, attached);

    // The parent goes right after the create read its manifest, before anything pinned its blocks.
    const snaps = h.snaps;
    const caller = h.caller;
    // The delete and its collection (which runs after the delete answers, in the background) both at that moment.
    hs.arm(s1.snapshotId, 1, () => snaps.deleteSnapshot(s1.snapshotId, caller).then(() => h!.gc.idle()));
    const s2 = await h.snapshot(vol);
    expect(hs.fired()).toBe(true);
    expect(await h.store.getManifest(s1.snapshotId)).toBeUndefined();
    expect(s2.stateMessage).toBeUndefined();
    expect(s2.state).toBe('completed');
    expect(s2.parentSnapshotId, 'no parent: the snapshot read every block').toBeUndefined();
    expect(s2.blocks.map(([i]) => i)).toEqual([...Array(SIZE / B).keys()]);
    for (const [, hash] of s2.blocks) expect(await h.store.hasBlock(hash)).toBe(true);

    if (attached) await h.mgr.detachVolume({ VolumeId: vol }, h.caller);
    const r = await h.restoreVolume({ SnapshotId: s2.snapshotId });
    expect(r).toMatchObject({ state: 'available' });
    expect((await h.readVolume(r.volumeId)).equals(want)).toBe(true);
  });
});

test('the parent deleted after its pins: the snapshot completes as an incremental of it, its inherited blocks kept', async () => {
  const hs = hookedStore();
  h = await openSnapshotHarness({ wrapStore: hs.wrap });
  const vol = (await h.mgr.createVolume({ Size: SIZE }, h.caller)).VolumeId;
  const want = randomBytes(SIZE);
  await write(h, vol, want, 0, false);
  const s1 = await h.snapshot(vol);
  const b1 = randomBytes(B);
  b1.copy(want, B);
  await write(h, vol, b1, B, false);

  // The create reads the parent's manifest, pins its blocks, reads it again: the delete lands just after that.
  const snaps = h.snaps;
  const caller = h.caller;
  let deleted: Awaited<ReturnType<typeof h.gc.deleteSnapshot>> | undefined;
  const gc = h.gc;
  const realDelete = gc.deleteSnapshot.bind(gc);
  gc.deleteSnapshot = async (id) => {
    deleted = await realDelete(id);
    await deleted.collected;
    return deleted;
  };
  hs.arm(s1.snapshotId, 2, () => snaps.deleteSnapshot(s1.snapshotId, caller));
  const s2 = await h.snapshot(vol);
  expect(hs.fired()).toBe(true);
  expect(s2.state).toBe('completed');
  expect(s2.parentSnapshotId).toBe(s1.snapshotId);
  expect(s2.changedBlocks).toBe(1);
  // None of the parent's data blocks was freed while the create held them (its header area, which the
  // child hashes and stores itself, is not held). The collection runs after the delete answers: the hook waits for it.
  expect(deleted).toMatchObject({ deleted: true });
  expect((await deleted!.collected)!.keptPinned).toBe(s1.blocks.length);
  for (const [, hash] of s1.blocks) expect(await h.store.hasBlock(hash)).toBe(true);
  for (const [, hash] of s2.blocks) expect(await h.store.hasBlock(hash)).toBe(true);
  const r = await h.restoreVolume({ SnapshotId: s2.snapshotId });
  expect(r).toMatchObject({ state: 'available' });
  expect((await h.readVolume(r.volumeId)).equals(want)).toBe(true);
});
