import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, test } from 'vitest';
import type { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { openImageDataReader } from '../../src/snapshot/volume-image.js';
import { SnapshotCopier } from '../../src/snapshot/copy.js';
import { SnapshotGc, type CollectableStore } from '../../src/snapshot/gc.js';
import { manifestHashes } from '../../src/snapshot/manifest-check.js';
import type { SnapshotManifest, SnapshotStore } from '../../src/snapshot/types.js';
import { openSnapshotHarness, overrideStore, type SnapshotHarness } from './in-process.js';
import { testEngine } from '../volume/helpers/engine.js';

/**
 * The collector's last age read, then another host's touch, then the
 * collector's delete (docs/architecture.md §13.3): a create on one host that
 * found a block (or inherits it from a parent deleted meanwhile) must never
 * complete naming a block another host's collector deletes right after
 * reading its age. The create's host is this process's SnapshotManager on the
 * real directory store, shown to it as a shared store (no singleWriter); the
 * other host's collector is a SnapshotGc on the same store, without the
 * directory store's batched delete (as the S3 store), whose age read of the
 * block under test runs the whole create before it answers.
 */

const MiB = 1024 * 1024;
/** The other host's delete window (SnapshotGcOptions.deleteWindowMs) and this host's wait before it asks again (foundRecheckMs). */
const WINDOW_MS = 100;
const RECHECK_MS = 400;

let h: SnapshotHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/** Another host's collector on `store`: `onAge(hash, nth)` runs after each age read, before it is answered. */
function otherHostGc(store: DirSnapshotStore, onAge: (hash: string, nth: number) => Promise<void>, deleteWindowMs = WINDOW_MS): SnapshotGc {
  const reads = new Map<string, number>();
  const s: CollectableStore = Object.assign(Object.create(store) as CollectableStore, {
    deleteBlocks: undefined,
    blockModifiedMs: async (hash: string) => {
      const age = await store.blockModifiedMs(hash);
      const nth = (reads.get(hash) ?? 0) + 1;
      reads.set(hash, nth);
      await onAge(hash, nth);
      return age;
    },
  });
  return new SnapshotGc(s, { graceMs: 0, deleteWindowMs });
}

async function expectWhole(store: DirSnapshotStore, m: SnapshotManifest): Promise<void> {
  if (m.state !== 'completed') return;
  for (const hash of manifestHashes(m)) expect(await store.hasBlock(hash), `${m.snapshotId} names ${hash}`).toBe(true);
}

describe('a create on one host, a collector on another, sharing the store', () => {
  test('a block the create found (touched, not put) just after the collector read its age: the snapshot completes whole, or ends error', async () => {
    h = await openSnapshotHarness({ wrapStore: (s) => overrideStore(s, { singleWriter: undefined }), foundRecheckMs: RECHECK_MS });
    const hh = h;
    const vol = await hh.writtenVolume(randomBytes(MiB));
    const s1 = await hh.snapshot(vol);
    expect(s1.state).toBe('completed');
    const target = s1.blocks[0]![1];
    let s2: SnapshotManifest | undefined;
    // DeleteSnapshot of s1 on the other host: its second age read of `target` (just before its delete)
    // is answered only once this host's new snapshot of the same data, which finds `target`, has ended.
    const gc = otherHostGc(hh.store, async (hash, nth) => {
      if (hash !== target || nth !== 2) return;
      s2 = await hh.snapshot(vol);
    });
    const d = await (await gc.deleteSnapshot(s1.snapshotId)).collected;
    expect(s2).toBeDefined();
    // The age read answered after the window: the delete was not sent, the block kept.
    expect(d!.keptYoung).toBeGreaterThan(0);
    expect(s2!.state).toBe('completed');
    await expectWhole(hh.store, (await hh.store.getManifest(s2!.snapshotId))!);
  }, 30_000);

  test('the collector deletes the found block within its window, after the touch: the create, asking again past the window, ends error naming it; the volume is unaffected', async () => {
    // A window long enough for the create's set-up before its touch; the create asks again past it.
    const window = 2_000;
    let target = '';
    let child = '';
    let touched: () => void = () => {};
    const touchedTarget = new Promise<void>((r) => (touched = r));
    let collected: Promise<unknown> = Promise.resolve();
    h = await openSnapshotHarness({
      foundRecheckMs: window + RECHECK_MS,
      wrapStore: (s) =>
        overrideStore(s, {
          singleWriter: undefined,
          // The create's touch of the block under test, once it has renewed its age: the other host's collector
          // deletes it right after. (Not the block's age seen changing: a packed block's age is its pack's, which
          // the collector's own frees of the pack's other blocks renew too.)
          touchBlock: async (hash: string) => {
            const r = await s.touchBlock(hash);
            if (hash === target && r) touched();
            return r;
          },
          // A `completed` manifest waits for that delete: a create that never asked again would name a block gone.
          putManifest: async (m: SnapshotManifest) => {
            if (m.snapshotId === child && m.state === 'completed') await collected;
            return s.putManifest(m);
          },
        }),
    });
    const hh = h;
    const data = randomBytes(MiB);
    const vol = await hh.writtenVolume(data);
    const s1 = await hh.snapshot(vol);
    target = s1.blocks[0]![1];
    const gc = otherHostGc(hh.store, async (hash, nth) => {
      if (hash !== target || nth !== 2) return;
      child = (await hh.snaps.createSnapshot({ VolumeId: vol }, hh.caller)).SnapshotId;
      // Answered once the create has touched the block (its age renewed), well within the window.
      await touchedTarget;
    }, window);
    const deleting = gc.deleteSnapshot(s1.snapshotId).then((x) => x.collected);
    collected = deleting.catch(() => {});
    const d = await deleting;
    expect(d!.deleted).toBeGreaterThan(0);
    expect(await hh.store.hasBlock(target)).toBe(false);
    const m = await hh.settled(child);
    expect(m.state).toBe('error');
    expect(m.stateMessage).toMatch(new RegExp(`gone since.*${target}`));
    expect(m.blocks).toEqual([]);
    expect((await hh.readVolume(vol)).equals(data)).toBe(true);
  }, 30_000);

  test('a block the create put because another collector freed its older copy, the first collector deleting it after the put within its window: the create, asking again past the window, ends error naming it', async () => {
    // The other host's collector reads the age of s1's block, a second collector frees it, this host's create finds it
    // gone and puts it again, and only then does the first collector's delete (within its window) land: the put is no
    // safer than a touch.
    const window = 3_000;
    let target = '';
    let child = '';
    let committed: () => void = () => {};
    let collected: Promise<unknown> = Promise.resolve();
    h = await openSnapshotHarness({
      foundRecheckMs: window + RECHECK_MS,
      wrapStore: (s) =>
        overrideStore(s, {
          singleWriter: undefined,
          openBlockBatch: () => {
            const b = s.openBlockBatch();
            return { put: (hash, bytes) => b.put(hash, bytes), abort: () => b.abort(), commit: async () => {
              await b.commit();
              committed();
            } };
          },
          putManifest: async (m: SnapshotManifest) => {
            if (m.snapshotId === child && m.state === 'completed') await collected;
            return s.putManifest(m);
          },
        }),
    });
    const hh = h;
    const data = randomBytes(MiB);
    const vol = await hh.writtenVolume(data);
    const s1 = await hh.snapshot(vol);
    target = s1.blocks[0]![1];
    // s1's own commit is past: the next is the create's below.
    const putAgain = new Promise<void>((r) => (committed = r));
    const gc = otherHostGc(hh.store, async (hash, nth) => {
      if (hash !== target || nth !== 2) return;
      // The second collector's delete of the older copy.
      await hh.store.deleteBlock(target);
      child = (await hh.snaps.createSnapshot({ VolumeId: vol }, hh.caller)).SnapshotId;
      // Answered once the create's blocks, this one put again among them, are in the store.
      await putAgain;
      expect(await hh.store.hasBlock(target)).toBe(true);
    }, window);
    const deleting = gc.deleteSnapshot(s1.snapshotId).then((x) => x.collected);
    collected = deleting.catch(() => {});
    const d = await deleting;
    expect(d!.deleted).toBeGreaterThan(0);
    expect(await hh.store.hasBlock(target)).toBe(false);
    const m = await hh.settled(child);
    expect(m.state).toBe('error');
    expect(m.stateMessage).toMatch(new RegExp(`gone since.*${target}`));
    expect(m.blocks).toEqual([]);
    expect((await hh.readVolume(vol)).equals(data)).toBe(true);
  }, 30_000);

  test('the collector\'s delete reaches the store late, yet within its window: the create asks again only past the window, so the delete given up leaves the block, and the snapshot completes whole', async () => {
    // The other host's delete is delivered (a slow network) only once this host's create has asked again for
    // the block; sent within the window, it lands then unless the window has run out (its AbortSignal).
    const window = 2_000;
    let asked: () => void = () => {};
    const askedAgain = new Promise<void>((r) => (asked = r));
    let target = '';
    h = await openSnapshotHarness({
      foundRecheckMs: window + RECHECK_MS,
      wrapStore: (s) =>
        overrideStore(s, {
          singleWriter: undefined,
          hasBlock: async (hash: string) => {
            const r = await s.hasBlock(hash);
            if (hash === target) asked();
            return r;
          },
        }),
    });
    const hh = h;
    const vol = await hh.writtenVolume(randomBytes(MiB));
    const s1 = await hh.snapshot(vol);
    target = s1.blocks[0]![1];
    let child = '';
    let nth = 0;
    const other: CollectableStore = Object.assign(Object.create(hh.store) as CollectableStore, {
      deleteBlocks: undefined,
      blockModifiedMs: async (hash: string) => {
        const before = await hh.store.blockModifiedMs(hash);
        if (hash === target && ++nth === 2) {
          child = (await hh.snaps.createSnapshot({ VolumeId: vol }, hh.caller)).SnapshotId;
          // Answered once the create has touched the block, well within the window.
          while ((await hh.store.blockModifiedMs(hash)) === before) await new Promise((r) => setTimeout(r, 2));
        }
        return before;
      },
      deleteBlock: async (hash: string, o: { signal?: AbortSignal } = {}) => {
        if (hash === target) await askedAgain;
        o.signal?.throwIfAborted();
        await hh.store.deleteBlock(hash);
      },
    });
    const d = await (await new SnapshotGc(other, { graceMs: 0, deleteWindowMs: window }).deleteSnapshot(s1.snapshotId)).collected;
    expect(child).not.toBe('');
    expect(d!.keptYoung).toBeGreaterThan(0);
    const m = await hh.settled(child);
    expect(m.state).toBe('completed');
    await expectWhole(hh.store, m);
  }, 30_000);

  test('shutdown while a create waits to ask again: the wait ends at once and the snapshot is recorded error', async () => {
    let armed = false;
    let waiting: () => void = () => {};
    const inWait = new Promise<void>((r) => (waiting = r));
    h = await openSnapshotHarness({
      wrapStore: (s) => overrideStore(s, { singleWriter: undefined }),
      // Far longer than the test's timeout: only close() can end it.
      foundRecheckMs: 10 * 60_000,
      // The create closes its read handle just before the wait.
      openReader: async (...a: Parameters<typeof openImageDataReader>) => {
        const r = await openImageDataReader(...a);
        return { read: (pos, len, into) => r.read(pos, len, into), close: async () => {
          await r.close();
          if (armed) waiting();
        } };
      },
    });
    const hh = h;
    const vol = await hh.writtenVolume(randomBytes(MiB));
    armed = true;
    // Every create on a shared store waits before asking again for its blocks, one that put them all too.
    const s2 = (await hh.snaps.createSnapshot({ VolumeId: vol }, hh.caller)).SnapshotId;
    await inWait;
    await hh.snaps.close();
    const m = (await hh.store.getManifest(s2))!;
    expect(m.state).toBe('error');
    expect(m.stateMessage).toMatch(/shut down/);
  }, 30_000);

  test('an incremental child inheriting its parent\'s block, the parent deleted on the other host: the child completes whole, or ends error', async () => {
    let armed = false;
    let hold: (() => void) | undefined;
    let held: Promise<void> | undefined;
    let signalHeld: () => void = () => {};
    const reached = new Promise<void>((r) => (signalHeld = r));
    h = await openSnapshotHarness({
      foundRecheckMs: RECHECK_MS,
      wrapStore: (s) =>
        overrideStore(s, {
          singleWriter: undefined,
          // The create's pending manifest naming its inherited blocks waits until the other host's collector has marked.
          putManifest: async (m: SnapshotManifest) => {
            if (armed && m.state === 'pending' && m.blocks.length && !held) {
              held = new Promise<void>((r) => (hold = r));
              signalHeld();
              await held;
            }
            return s.putManifest(m);
          },
        }),
    });
    const hh = h;
    const vol = (await hh.mgr.createVolume({ Size: MiB }, hh.caller)).VolumeId;
    await hh.mgr.attachVolume({ VolumeId: vol }, hh.caller);
    await hh.mgr.getBlockDevice(vol)!.write(0, randomBytes(MiB));
    const s1 = await hh.snapshot(vol);
    expect(s1.state).toBe('completed');
    // One block changes: the child inherits the other from s1.
    await hh.mgr.getBlockDevice(vol)!.write(0, randomBytes(4096));
    const target = s1.blocks[1]![1];
    armed = true;
    const child = (await hh.snaps.createSnapshot({ VolumeId: vol }, hh.caller)).SnapshotId;
    await reached;
    let s2: SnapshotManifest | undefined;
    const gc = otherHostGc(hh.store, async (hash, nth) => {
      if (hash !== target || nth !== 2) return;
      hold!();
      s2 = await hh.settled(child);
    });
    await (await gc.deleteSnapshot(s1.snapshotId)).collected;
    expect(s2).toBeDefined();
    const m = (await hh.store.getManifest(child))!;
    expect(m.parentSnapshotId).toBe(s1.snapshotId);
    await expectWhole(hh.store, m);
    await hh.mgr.detachVolume({ VolumeId: vol }, hh.caller);
  }, 30_000);

  test('a same-key copy of a snapshot the other host deletes: the copy completes whole, or ends error', async () => {
    h = await openSnapshotHarness();
    const hh = h;
    const vol = await hh.writtenVolume(randomBytes(MiB));
    const s1 = await hh.snapshot(vol);
    // This host's copier sees the store as shared; its pending manifest, naming the source's objects, waits until the other host's collector has marked.
    let hold: (() => void) | undefined;
    let signalHeld: () => void = () => {};
    const reached = new Promise<void>((r) => (signalHeld = r));
    const shared = overrideStore(hh.store, {
      singleWriter: undefined,
      putManifest: async (m: SnapshotManifest) => {
        if (m.state === 'pending' && !hold) {
          const held = new Promise<void>((r) => (hold = r));
          signalHeld();
          await held;
        }
        return hh.store.putManifest(m);
      },
    });
    const copier = await SnapshotCopier.open({
      store: shared, keyService: hh.kms.keyService, xtsEngine: await testEngine(), region: 'us-east-1', accountId: '111122223333',
      localDir: `${hh.t.dir}/copies-shared`, pin: (hs) => hh.gc.pin(hs), allowUnencrypted: true, foundRecheckMs: RECHECK_MS,
    });
    const copying = copier.copySnapshot({ SourceSnapshotId: s1.snapshotId, SourceRegion: 'us-east-1' }, hh.caller);
    await reached;
    // Every age read just before a delete (the source's header and blocks) is answered once the copy has ended.
    let copied: Promise<void> | undefined;
    const gc = otherHostGc(hh.store, async (_hash, nth) => {
      if (nth !== 2) return;
      await (copied ??= (async () => {
        hold!();
        await copying;
        await copier.settled();
      })());
    });
    await (await gc.deleteSnapshot(s1.snapshotId)).collected;
    const m = (await hh.store.getManifest((await copying).SnapshotId))!;
    if (m.state === 'error') {
      // Ended error only for the reason under test: a source object the other host freed meanwhile (gone at the touch, or at the asking again).
      expect(m.stateMessage).toMatch(new RegExp(`block [0-9a-f]{64} of the source ${s1.snapshotId}(, deleted meanwhile, is gone| is missing) from `));
      expect(m.blocks).toEqual([]);
    } else {
      expect(m.state).toBe('completed');
      await expectWhole(hh.store, m);
    }
  }, 30_000);
});
