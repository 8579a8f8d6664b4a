import { afterEach, expect, test } from 'vitest';
import { randomBytes } from 'node:crypto';
import { BlockBitmap, BlockRange, type BlockSet } from '../../src/snapshot/block-bitmap.js';
import { CowSession } from '../../src/snapshot/cow-session.js';
import { CowMemory } from '../../src/snapshot/cow-memory.js';
import { asSnapshotSource } from '../../src/snapshot/snapshot-manager.js';
import type { BlockDevice } from '../../src/volume/types.js';
import { tempDirPerTest } from '../helpers/temp-dir.js';
import { openSnapshotHarness, type SnapshotHarness } from './in-process.js';

/**
 * The snapshot's point in time holds every write of the volume
 * (docs/architecture.md §12.2): what runs inside the pause must not grow
 * with the volume. No timing: the work done inside the pause is counted as
 * calls that enumerate blocks (a list of every index, a bitmap filled block
 * by block, an iteration over a set).
 */

const B = 512 * 1024;
const tmp = tempDirPerTest('ebsd-pause-work-');

let h: SnapshotHarness | undefined;
afterEach(async () => {
  await h?.close().catch(() => {});
  h = undefined;
});

/** Counts, while `active`, the calls that enumerate blocks one by one. */
function enumerationCounter(): { active: boolean; calls: Record<string, number>; restore: () => void } {
  const c = { active: false, calls: {} as Record<string, number>, restore: () => {} };
  const undo: (() => void)[] = [];
  const wrap = <T extends object>(obj: T, key: keyof T & string, name: string): void => {
    const orig = obj[key] as unknown as (...a: unknown[]) => unknown;
    (obj as Record<string, unknown>)[key] = function (this: unknown, ...a: unknown[]) {
      if (c.active) c.calls[name] = (c.calls[name] ?? 0) + 1;
      return orig.apply(this, a);
    };
    undo.push(() => void ((obj as Record<string, unknown>)[key] = orig));
  };
  wrap(Array, 'from', 'Array.from');
  wrap(BlockBitmap.prototype, 'add', 'BlockBitmap.add');
  wrap(BlockBitmap.prototype, 'indexes', 'BlockBitmap.indexes');
  wrap(BlockRange.prototype, 'indexes', 'BlockRange.indexes');
  c.restore = () => undo.forEach((u) => u());
  return c;
}

test('CowSession over a BlockSet neither enumerates nor copies it: the same set-up for 64 TiB as for 1 MiB', async () => {
  const n = 2 ** 27; // 64 TiB of 512 KiB blocks
  const range = new BlockRange(n);
  let has = 0;
  let iterated = 0;
  const watched: BlockSet = {
    size: range.size,
    has: (i) => (has++, range.has(i)),
    indexes: () => (iterated++, range.indexes()),
  };
  const cow = new CowSession(watched, async (_pos, len, into) => void into.fill(7, 0, len), { memory: new CowMemory(1 << 20), spillPath: `${tmp()}/x.spill` });
  expect(has).toBe(0);
  expect(iterated).toBe(0);
  // The range's last block is part of the snapshot; one past it is not.
  expect((await cow.take(n - 1))?.[0]).toBe(7);
  expect(await cow.take(n - 1)).toBeUndefined();
  expect(await cow.take(n)).toBeUndefined();
  await cow.end();
});

for (const kind of ['full', 'incremental'] as const) {
  test(`the write pause of the ${kind} snapshot of an attached volume enumerates no block`, async () => {
    const counter = enumerationCounter();
    let pauses = 0;
    const wrapDevice = (dev: BlockDevice): BlockDevice => {
      const src = asSnapshotSource(dev)!;
      return Object.assign(Object.create(dev) as BlockDevice, {
        withWritesPaused: <T>(fn: () => Promise<T> | T): Promise<T> =>
          src.withWritesPaused(() => {
            pauses++;
            // Counted while fn runs synchronously (the manager's is synchronous): nothing else runs meanwhile.
            counter.active = true;
            try {
              return fn();
            } finally {
              counter.active = false;
            }
          }),
      });
    };
    try {
      h = await openSnapshotHarness({ wrapDevice });
      const size = 64 * 1024 * 1024;
      const vol = (await h.mgr.createVolume({ Size: size }, h.caller)).VolumeId;
      await h.mgr.attachVolume({ VolumeId: vol }, h.caller);
      const dev = h.mgr.getBlockDevice(vol)!;
      await dev.write(0, randomBytes(4 * B));
      if (kind === 'incremental') {
        expect((await h.snapshot(vol)).state).toBe('completed');
        await dev.write(2 * B, randomBytes(B));
        counter.calls = {};
      }
      pauses = 0;
      const s = await h.snapshot(vol);
      expect(s.state).toBe('completed');
      if (kind === 'incremental') expect(s.parentSnapshotId).toBeDefined();
      expect(pauses).toBe(1);
      expect(counter.calls).toEqual({});
    } finally {
      counter.restore();
    }
  });
}
