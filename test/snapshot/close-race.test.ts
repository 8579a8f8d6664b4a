import { afterEach, expect, test } from 'vitest';
import { randomBytes } from 'node:crypto';
import type { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import type { SnapshotManifest, SnapshotStore } from '../../src/snapshot/types.js';
import { openSnapshotHarness, type SnapshotHarness } from './in-process.js';

/**
 * SnapshotManager.close() stops every create under way (docs/architecture.md
 * §12.4), including one that had passed its shutdown check but was not yet
 * registered as running: here close() starts while the create's `pending`
 * manifest is being written (a store wrapper calls it at that moment).
 */

let h: SnapshotHarness | undefined;
afterEach(async () => {
  await h?.close().catch(() => {});
  h = undefined;
});

test('a create writing its pending manifest when close() starts is aborted and ends `error`', async () => {
  let onPending: (() => void) | undefined;
  const wrap = (store: DirSnapshotStore): SnapshotStore =>
    new Proxy(store, {
      get(target, key) {
        if (key === 'putManifest') {
          return async (m: SnapshotManifest) => {
            const r = await target.putManifest(m);
            if (m.state === 'pending' && onPending) {
              const f = onPending;
              onPending = undefined;
              f();
            }
            return r;
          };
        }
        const v = Reflect.get(target, key, target) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    }) as SnapshotStore;
  h = await openSnapshotHarness({ wrapStore: wrap });
  const vol = (await h.mgr.createVolume({ Size: 8 * 1024 * 1024 }, h.caller)).VolumeId;
  await h.mgr.attachVolume({ VolumeId: vol }, h.caller);
  await h.mgr.getBlockDevice(vol)!.write(0, randomBytes(8 * 1024 * 1024));
  let closing: Promise<void> | undefined;
  // close() takes its list of runs synchronously: called here, it runs before the create registers.
  onPending = () => {
    closing = h!.snaps.close();
  };
  const s = await h.snaps.createSnapshot({ VolumeId: vol }, h.caller);
  expect(closing).toBeDefined();
  await closing;
  const m = await h.store.getManifest(s.SnapshotId);
  expect(m?.state).toBe('error');
  expect(m?.blocks).toEqual([]);
  expect(h.snaps.unsettledMarkers).toEqual([]);
});
