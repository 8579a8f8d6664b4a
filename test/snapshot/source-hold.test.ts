/**
 * A restore or copy holds its source snapshot against DeleteSnapshot from
 * before it reads the manifest (SnapshotManager.hold, taken inside the
 * delete's per-snapshot mutex; docs/architecture.md §12.4, §14.2): a delete
 * that comes while the source's header is being read is refused
 * (InvalidSnapshot.InUse) and frees nothing, and a copy or restore that comes
 * while a delete runs finds no snapshot (InvalidSnapshot.NotFound) and writes
 * nothing. In process: the directory store, a collector without a grace
 * period (a freed block is gone at once), the real SnapshotManager, copier
 * and restore, and a store wrapper that runs the delete at the chosen point.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { selectXtsEngine } from '../../src/crypto/xts-engine.js';
import { SnapshotCopier } from '../../src/snapshot/copy.js';
import { SnapshotGc } from '../../src/snapshot/gc.js';
import { SnapshotManager } from '../../src/snapshot/snapshot-manager.js';
import { SnapshotRestore } from '../../src/snapshot/restore.js';
import type { SnapshotManifest, SnapshotStore } from '../../src/snapshot/types.js';
import { ACCOUNT, REGION, missingBlocks, openInProcessHost, storeWith, type InProcessHost } from './in-process-host.js';
import { makeSnapshot } from './make-snapshot.js';

describe('source snapshot held against DeleteSnapshot', () => {
  let h: InProcessHost;
  let snaps: SnapshotManager;
  let gc: SnapshotGc;

  beforeAll(async () => {
    h = await openInProcessHost('ebsd-source-hold-');
    gc = new SnapshotGc(h.store, { graceMs: 0 });
    snaps = await SnapshotManager.open({ store: h.store, localDir: join(h.dir, 'snapshots-local'), volumes: h.mgr, accountId: ACCOUNT, gc });
  }, 60_000);

  afterAll(async () => {
    try {
      await gc?.idle(); // the deletes' collections, run after they answered, before the store goes
      await snaps?.close();
    } finally {
      await h?.close();
    }
  });

  /** The store as a reader sees it, with DeleteSnapshot of `src` run (to its end) right after the source's header area was read. */
  function deleteAfterHeaderRead(src: SnapshotManifest): { store: SnapshotStore; outcome: () => Promise<unknown> } {
    let outcome: Promise<unknown> | undefined;
    const store = storeWith(h.store, {
      getBlock: async (hash) => {
        const bytes = await h.store.getBlock(hash);
        if (hash === src.header && !outcome) {
          outcome = snaps.deleteSnapshot(src.snapshotId, h.root).then(() => 'deleted', (e: unknown) => e);
          await outcome;
        }
        return bytes;
      },
    });
    return { store, outcome: () => outcome ?? Promise.reject(new Error('the source header was never read')) };
  }

  const copier = (store: SnapshotStore): Promise<SnapshotCopier> => SnapshotCopier.open({
    store, keyService: h.keyService, xtsEngine: selectXtsEngine('auto'), region: REGION, accountId: ACCOUNT,
    localDir: join(h.dir, 'snapshots-local', 'copies'), pin: (x) => gc.pin(x), hold: (id) => snaps.hold(id),
  });

  it('same-key CopySnapshot: a delete while the source header is read is InvalidSnapshot.InUse; the copy completes naming only blocks that are there', async () => {
    const src = await h.newSnapshot();
    const race = deleteAfterHeaderRead(src);
    const c = await copier(race.store);
    const { SnapshotId } = await c.copySnapshot({ SourceSnapshotId: src.snapshotId, SourceRegion: REGION }, h.root);
    await c.settled();
    const copy = (await h.store.getManifest(SnapshotId))!;
    expect(await missingBlocks(h.store, copy), 'blocks the copy names').toEqual([]);
    expect(copy.state, copy.stateMessage).toBe('completed');
    expect(copy.blocks).toEqual(src.blocks);
    expect(await race.outcome()).toMatchObject({ code: 'SNAPSHOT_IN_USE', awsName: 'InvalidSnapshot.InUse' });
    expect(await h.store.getManifest(src.snapshotId)).toBeDefined();
    // Released with the copy's end: the delete now goes through, and the copy still reads whole once the source's
    // blocks were collected (after the delete answered, in the background).
    await snaps.deleteSnapshot(src.snapshotId, h.root);
    await gc.idle();
    expect(await missingBlocks(h.store, copy)).toEqual([]);
  });

  it('same-key CopySnapshot on a shared store: its pending manifest names the source\'s objects, so another host deleting the source frees none of them', async () => {
    const src = await h.newSnapshot();
    // Another host: its own collector (no pins or holds of ours), deleting the source once the copy is pending.
    const otherHost = new SnapshotGc(h.store, { graceMs: 0 });
    let firstPending: SnapshotManifest | undefined;
    let otherDelete: Promise<unknown> | undefined;
    const shared = new Proxy(h.store, {
      get(target, prop) {
        if (prop === 'singleWriter') return false;
        if (prop === 'putManifest') {
          return async (m: SnapshotManifest) => {
            await target.putManifest(m);
            if (m.snapshotId !== src.snapshotId && m.state === 'pending' && !firstPending) {
              firstPending = structuredClone(m);
              // Its blocks collected at this moment too (the collector does it after the delete resolves).
              otherDelete = otherHost.deleteSnapshot(src.snapshotId).then(async (r) => ({ deleted: r.deleted, result: await r.collected }));
              await otherDelete;
            }
          };
        }
        const v: unknown = Reflect.get(target, prop, target);
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    }) as SnapshotStore;
    const c = await copier(shared);
    const { SnapshotId } = await c.copySnapshot({ SourceSnapshotId: src.snapshotId, SourceRegion: REGION }, h.root);
    await c.settled();
    expect(await otherDelete).toMatchObject({ deleted: true, result: { deleted: 0 } });
    expect(firstPending).toMatchObject({ snapshotId: SnapshotId, header: src.header, blocks: src.blocks });
    const copy = (await h.store.getManifest(SnapshotId))!;
    expect(copy.state, copy.stateMessage).toBe('completed');
    expect(await missingBlocks(h.store, copy), 'blocks the copy names').toEqual([]);
    await snaps.deleteSnapshot(SnapshotId, h.root);
  });

  it('CreateSnapshot on a shared store: a block found in the store, then freed by another host, fails the create rather than being named', async () => {
    const vol = await h.newVolume();
    const old = await makeSnapshot(h.dir, vol);
    await h.store.deleteManifest(old.snapshotId); // its blocks are orphans now: the create finds them (a touch), it does not put them
    const victim = old.blocks[0]![1];
    let freed = false;
    const shared = new Proxy(h.store, {
      get(target, prop) {
        if (prop === 'singleWriter') return false;
        if (prop === 'touchBlock') {
          // Another host's collector deletes the block right after our touch (it read the block's age just before).
          return async (x: string) => {
            const present = await target.touchBlock(x);
            if (present && x === victim && !freed) {
              freed = true;
              await target.deleteBlock(x);
            }
            return present;
          };
        }
        const v: unknown = Reflect.get(target, prop, target);
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    }) as SnapshotStore;
    const s2 = await SnapshotManager.open({ store: shared, localDir: join(h.dir, 'local-found'), volumes: h.mgr, accountId: ACCOUNT, gc });
    try {
      const { SnapshotId } = await s2.createSnapshot({ VolumeId: vol }, h.root);
      let m = await h.store.getManifest(SnapshotId);
      for (let i = 0; i < 500 && m?.state === 'pending'; i++) {
        await new Promise((r) => setTimeout(r, 20));
        m = await h.store.getManifest(SnapshotId);
      }
      expect(freed).toBe(true);
      expect(m!.state, 'the create names no missing block').toBe('error');
      expect(m!.stateMessage).toContain(victim);
      await s2.deleteSnapshot(SnapshotId, h.root);
    } finally {
      await s2.close();
    }
  });

  it('an incremental on a shared store names its inherited blocks in its pending manifest before it touches them; one freed by another host before the touch fails the create', async () => {
    const vol = await h.newVolume();
    let armed = false;
    let victim = '';
    let namedFirst: boolean | undefined;
    const shared = new Proxy(h.store, {
      get(target, prop) {
        if (prop === 'singleWriter') return false;
        if (prop === 'touchBlock') {
          return async (x: string) => {
            if (armed && x === victim && namedFirst === undefined) {
              // What another host's collector would see at this moment: a pending manifest of ours naming the block.
              namedFirst = (await target.listManifests()).some((m) => m.state === 'pending' && m.volumeId === vol && m.blocks.some(([, hh]) => hh === x));
              await target.deleteBlock(x); // freed by that collector just before our touch
            }
            return target.touchBlock(x);
          };
        }
        const v: unknown = Reflect.get(target, prop, target);
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    }) as SnapshotStore;
    const s2 = await SnapshotManager.open({ store: shared, localDir: join(h.dir, 'local-inherited'), volumes: h.mgr, accountId: ACCOUNT, gc });
    // As DescribeSnapshots sees it (the store's file shows `completed` a moment before the write is durable, and the
    // next create of the volume is refused until then: one pending snapshot per volume).
    const settled = async (id: string): Promise<SnapshotManifest> => {
      let m = await s2.getManifest(id);
      for (let i = 0; i < 500 && m?.state === 'pending'; i++) {
        await new Promise((r) => setTimeout(r, 20));
        m = await s2.getManifest(id);
      }
      return m!;
    };
    try {
      const first = await settled((await s2.createSnapshot({ VolumeId: vol }, h.root)).SnapshotId);
      expect(first.state).toBe('completed');
      victim = first.blocks[0]![1];
      armed = true;
      const second = await settled((await s2.createSnapshot({ VolumeId: vol }, h.root)).SnapshotId); // nothing written since: every block inherited
      expect(namedFirst, 'the pending manifest named the block before the touch').toBe(true);
      expect(second.state, 'the create names no missing block').toBe('error');
      expect(second.stateMessage).toContain(victim);
      await s2.deleteSnapshot(second.snapshotId, h.root);
      await s2.deleteSnapshot(first.snapshotId, h.root);
    } finally {
      await s2.close();
    }
  });

  it('CreateVolume from a snapshot: a delete while the header is read is InvalidSnapshot.InUse; the volume ends available', async () => {
    const src = await h.newSnapshot();
    const race = deleteAfterHeaderRead(src);
    const restore = new SnapshotRestore({ store: race.store, volumes: h.mgr, hold: (id) => snaps.hold(id) });
    const v = await restore.createVolume({ SnapshotId: src.snapshotId }, h.root);
    await h.mgr.settled();
    const d = h.mgr.describeVolumes({ VolumeIds: [v.VolumeId] }).Volumes[0]!;
    expect(d.State, d.StateMessage).toBe('available');
    expect(await race.outcome()).toMatchObject({ code: 'SNAPSHOT_IN_USE', awsName: 'InvalidSnapshot.InUse' });
    expect(await missingBlocks(h.store, src)).toEqual([]);
    // The hold ended with `creating`: the delete now goes through.
    await snaps.deleteSnapshot(src.snapshotId, h.root);
  });

  it('a copy or restore asked while the delete runs waits for it, then is InvalidSnapshot.NotFound, and writes nothing', async () => {
    for (const op of ['copy', 'restore'] as const) {
      const src = await h.newSnapshot();
      const before = new Set((await h.store.listManifests()).map((m) => m.snapshotId));
      const volumesBefore = new Set(h.mgr.describeVolumes().Volumes.map((v) => v.VolumeId));
      let asked: Promise<unknown> | undefined;
      let s2!: SnapshotManager;
      let c2!: SnapshotCopier;
      // The collector's store: the copy or restore is asked once the delete has read the manifest, before it removes it.
      const gcStore = storeWith(h.store, {
        getManifest: async (id) => {
          const m = await h.store.getManifest(id);
          if (id === src.snapshotId && !asked) {
            asked = op === 'copy'
              ? c2.copySnapshot({ SourceSnapshotId: src.snapshotId, SourceRegion: REGION }, h.root)
              : new SnapshotRestore({ store: h.store, volumes: h.mgr, hold: (x) => s2.hold(x) }).createVolume({ SnapshotId: src.snapshotId }, h.root);
            asked.catch(() => {});
          }
          return m;
        },
      });
      const gc2 = new SnapshotGc(gcStore, { graceMs: 0 });
      s2 = await SnapshotManager.open({ store: h.store, localDir: join(h.dir, `local-${op}`), volumes: h.mgr, accountId: ACCOUNT, gc: gc2 });
      try {
        c2 = await SnapshotCopier.open({
          store: h.store, keyService: h.keyService, xtsEngine: selectXtsEngine('auto'), region: REGION, accountId: ACCOUNT,
          localDir: join(h.dir, `local-${op}`, 'copies'), pin: (x) => gc2.pin(x), hold: (id) => s2.hold(id),
        });
        await s2.deleteSnapshot(src.snapshotId, h.root);
        expect(asked, 'the delete read the manifest through its collector').toBeDefined();
        await expect(asked).rejects.toMatchObject({ code: 'SNAPSHOT_NOT_FOUND', awsName: 'InvalidSnapshot.NotFound' });
        await c2.settled();
        await h.mgr.settled();
        await gc2.idle();
        expect((await h.store.listManifests()).map((m) => m.snapshotId).filter((id) => !before.has(id))).toEqual([]);
        expect(h.mgr.describeVolumes().Volumes.map((v) => v.VolumeId).filter((id) => !volumesBefore.has(id))).toEqual([]);
      } finally {
        await s2.close();
      }
    }
  });
});
