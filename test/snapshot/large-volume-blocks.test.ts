import { afterEach, expect, test } from 'vitest';
import { join } from 'node:path';
import { BlockBitmap, BlockRange } from '../../src/snapshot/block-bitmap.js';
import { copyBlocks } from '../../src/snapshot/block-copier.js';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { SNAPSHOT_BLOCK_BYTES } from '../../src/snapshot/types.js';
import { tempDirPerTest } from '../helpers/temp-dir.js';

/**
 * Volumes past 8 TiB (2^24 blocks of 512 KiB; EBS allows 64 TiB, 2^27): V8
 * caps a Set or Map at 2^24 entries and Array.from at less than 2^27
 * elements, so the snapshot's per-block bookkeeping is a range or a bitmap
 * (docs/architecture.md §12.1). A sparse volume's full snapshot reads every
 * block and lists only the written ones: here every block reads as zeros but
 * a few, so nothing but the bookkeeping grows with the volume.
 */

const tmp = tempDirPerTest('ebsd-large-volume-');
let store: DirSnapshotStore | undefined;
afterEach(() => {
  store = undefined;
});

test('copyBlocks over blocks spread across 64 TiB: every one read once, in order, the written ones stored', async () => {
  // Reading 2^24 zero blocks takes minutes (each is compared with zeros): the set's members span the
  // indexes of a 64 TiB volume instead, and the bitmap's capacity for 2^24 + 2 members is checked below.
  const n = 2 ** 27;
  store = await DirSnapshotStore.open(join(tmp(), 'store'));
  const blocks = new BlockBitmap();
  for (const i of [0, 2 ** 24 - 1, 2 ** 24, 2 ** 24 + 1, n - 2, n - 1]) blocks.add(i);
  const zero = Buffer.alloc(SNAPSHOT_BLOCK_BYTES);
  const written = Buffer.alloc(SNAPSHOT_BLOCK_BYTES, 0x5a);
  const order: number[] = [];
  const res = await copyBlocks({
    blocks,
    read: (i) => {
      order.push(i);
      return Promise.resolve(i === n - 1 || i === 2 ** 24 ? written : zero);
    },
    store,
    concurrency: 1,
  });
  expect(order).toEqual([0, 2 ** 24 - 1, 2 ** 24, 2 ** 24 + 1, n - 2, n - 1]);
  expect(res.zeroBlocks).toBe(4);
  expect([...res.hashes.keys()].sort((a, b) => a - b)).toEqual([2 ** 24, n - 1]);
  expect(res.storedBlocks).toBe(1); // the same bytes twice: stored once
});

test('a BlockBitmap holds more than the 2^24 entries a Set can', () => {
  const b = BlockBitmap.withCapacity(2 ** 24 + 2);
  for (let i = 0; i < 2 ** 24 + 2; i++) b.add(i);
  expect(b.size).toBe(2 ** 24 + 2);
  expect(b.has(2 ** 24 + 1)).toBe(true);
});

test('BlockRange and BlockBitmap hold the 2^27 blocks of a 64 TiB volume', () => {
  const n = 2 ** 27;
  const r = new BlockRange(n);
  expect(r.size).toBe(n);
  expect(r.has(n - 1)).toBe(true);
  expect(r.has(n)).toBe(false);
  expect(r.has(-1)).toBe(false);
  const b = BlockBitmap.withCapacity(n);
  b.add(n - 1);
  b.add(0);
  expect(b.size).toBe(2);
  expect([...b.indexes()]).toEqual([0, n - 1]);
  b.truncate(n - 1);
  expect([...b.indexes()]).toEqual([0]);
  expect(b.size).toBe(1);
});
