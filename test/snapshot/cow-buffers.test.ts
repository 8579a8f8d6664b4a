import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { BufferPool } from '../../src/snapshot/block-buffers.js';
import { CowSpill, COW_SECTOR } from '../../src/snapshot/cow-spill.js';
import { copyBlocks } from '../../src/snapshot/block-copier.js';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { SNAPSHOT_BLOCK_BYTES } from '../../src/snapshot/types.js';
import { BlockRange } from '../../src/snapshot/block-bitmap.js';
import { seeded } from '../crypto/seeded.js';
import { tempDirPerTest } from '../helpers/temp-dir.js';

/**
 * The snapshot copier's reusable buffers (src/snapshot/block-buffers.ts,
 * docs/architecture.md §12.2): a buffer is reused only once nobody reads it,
 * and reuse never changes what is stored.
 */
describe('snapshot buffer reuse', () => {
  const tmp = tempDirPerTest('ebsd-cowbuf-');

  it('BufferPool: a buffer given back is taken again; at most `keep` are kept; others are ignored', () => {
    const pool = new BufferPool(1024, 2);
    const a = pool.take();
    const b = pool.take();
    const c = pool.take();
    expect(pool.allocated).toBe(3);
    expect(a.length).toBe(1024);
    pool.give(a);
    pool.give(a); // twice: kept once
    pool.give(Buffer.alloc(512)); // another size
    pool.give(b);
    pool.give(c); // beyond keep
    const got = [pool.take(), pool.take()];
    expect(new Set(got)).toEqual(new Set([a, b]));
    expect(pool.allocated).toBe(3);
    expect(pool.take()).not.toBe(c);
    expect(pool.allocated).toBe(4);
    pool.give(a);
    pool.clear();
    expect(pool.take()).not.toBe(a);
    expect(() => new BufferPool(0, 1)).toThrow(RangeError);
    expect(() => new BufferPool(1024, -1)).toThrow(RangeError);
  });

  it('CowSpill reuses a chunk buffer once its write ended, and every slot still reads back its own bytes', async () => {
    const rnd = seeded('spill reuse');
    const spill = new CowSpill(join(tmp(), 's.spill'));
    const into = Buffer.alloc(COW_SECTOR);
    try {
      for (let round = 0; round < 8; round++) {
        const sectors = Array.from({ length: 64 }, () => rnd.bytes(COW_SECTOR));
        const slots = sectors.map((s) => spill.put(s, 0));
        // The full chunk's write has started, not ended: its bytes are served from its buffer.
        for (let k = 0; k < slots.length; k++) {
          into.fill(0);
          expect(spill.getNow(slots[k]!, into, 0), `round ${round} slot ${k}: from the chunk's buffer`).toBe(true);
          expect(into.equals(sectors[k]!), `round ${round} slot ${k} (getNow, buffer)`).toBe(true);
        }
        await spill.settled();
        for (let k = 0; k < slots.length; k++) {
          into.fill(0);
          // From the page cache, where the filesystem supports RWF_NOWAIT reads; else get() reads it.
          if (spill.getNow(slots[k]!, into, 0)) expect(into.equals(sectors[k]!), `round ${round} slot ${k} (getNow, file)`).toBe(true);
          into.fill(0);
          await spill.get(slots[k]!, into, 0);
          expect(into.equals(sectors[k]!), `round ${round} slot ${k} (get)`).toBe(true);
        }
        for (const s of slots) spill.release(s);
        expect(spill.getNow(slots[0]!, into, 0), 'a released slot is not served').toBe(false);
      }
      expect(spill.highWaterBytes, 'the freed chunk was reused').toBe(64 * COW_SECTOR);
      expect(spill.chunkBuffersAllocated, 'one chunk buffer for eight chunks written').toBe(1);
    } finally {
      await spill.close();
    }
  });

  it('copyBlocks hands a block buffer back only once it is stored: reuse right away never changes a stored block', async () => {
    const rnd = seeded('copier recycle');
    const store = await DirSnapshotStore.open(join(tmp(), 'store'));
    const n = 24;
    const blocks = Array.from({ length: n }, (_, i) => (i % 5 === 4 ? Buffer.alloc(SNAPSHOT_BLOCK_BYTES) : rnd.bytes(SNAPSHOT_BLOCK_BYTES)));
    const pool = new BufferPool(SNAPSHOT_BLOCK_BYTES, 4);
    const recycled: Buffer[] = [];
    const batch = store.openBlockBatch!();
    const res = await copyBlocks({
      blocks: new BlockRange(n),
      read: async (i) => {
        const buf = pool.take();
        blocks[i]!.copy(buf);
        await new Promise<void>((r) => setImmediate(r));
        return buf;
      },
      recycle: (buf) => {
        recycled.push(buf);
        // What the next take() may do with it at once: any write still reading it would store this.
        buf.fill(0xa5);
        pool.give(buf);
      },
      store,
      batch,
      concurrency: 4,
    });
    await batch.commit();
    expect(recycled.length, 'every block, zero ones too').toBe(n);
    expect(pool.allocated, 'buffers were reused').toBeLessThanOrEqual(8);
    expect(res.zeroBlocks).toBe(Math.floor(n / 5));
    for (let i = 0; i < n; i++) {
      const h = res.hashes.get(i);
      if (i % 5 === 4) {
        expect(h, `block ${i} is all zeros: listed nowhere`).toBeUndefined();
        continue;
      }
      expect(h).toBe(createHash('sha256').update(blocks[i]!).digest('hex'));
      expect((await store.getBlock(h!)).equals(blocks[i]!), `block ${i} as stored`).toBe(true);
    }
  });
});
