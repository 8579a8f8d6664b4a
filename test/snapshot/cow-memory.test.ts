import { describe, expect, it } from 'vitest';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CowMemory, cgroupMemoryLimit, defaultCowBudget, resolveCowBudget } from '../../src/snapshot/cow-memory.js';
import { CowSession } from '../../src/snapshot/cow-session.js';
import { SNAPSHOT_BLOCK_BYTES } from '../../src/snapshot/types.js';
import { seeded } from '../crypto/seeded.js';
import { tempDirPerTest } from '../helpers/temp-dir.js';

/**
 * The daemon-wide copy-on-write memory (src/snapshot/cow-memory.ts,
 * docs/architecture.md §12.2): real CowSessions over a disk in memory share
 * one CowMemory. The budget is shared (a second session spills while the
 * first holds it all, and gets memory once the first ends), every way a
 * session ends returns its slots, slabs are reused by the next session and
 * dropped after the idle delay, and a session never holds more than its
 * pending blocks' bytes.
 */

const B = SNAPSHOT_BLOCK_BYTES;
const S = 4096;
const BLOCKS = 4;
const MiB = 1024 * 1024;

interface Vol {
  disk: Buffer;
  pit: Buffer;
  cow: CowSession;
}

describe('CowMemory: one copy-on-write memory budget for every snapshot of the daemon', () => {
  const tmp = tempDirPerTest('ebsd-cowmem-');

  /** A volume of BLOCKS blocks in memory and a session over all of them, drawing on `memory`, spilling under a temp dir. */
  function volume(label: string, memory: CowMemory): Vol {
    const d = tmp();
    const disk = seeded(label).bytes(BLOCKS * B);
    const pit = Buffer.from(disk);
    const read = async (pos: number, len: number, into: Buffer): Promise<void> => void disk.copy(into, 0, pos, pos + len);
    const cow = new CowSession(Array.from({ length: BLOCKS }, (_, i) => i), read, { memory, spillPath: join(d, 'x.spill') });
    return { disk, pit, cow };
  }

  /** Overwrites sectors [s0, s0 + n) one by one through the page-cache path (tryPass with a reader), as BackingIo does. */
  function overwrite(v: Vol, s0: number, n: number): void {
    const readNow = (into: Buffer, pos: number): boolean => {
      v.disk.copy(into, 0, pos, pos + into.length);
      return true;
    };
    for (let s = s0; s < s0 + n; s++) {
      expect(v.cow.tryPass(s * S, S, readNow)).toBe(true);
      v.disk.fill(0xee, s * S, (s + 1) * S);
    }
  }

  async function takeAll(v: Vol): Promise<void> {
    for (let i = 0; i < BLOCKS; i++) {
      const got = await v.cow.take(i);
      expect(got!.equals(v.pit.subarray(i * B, (i + 1) * B)), `block ${i} at the point in time`).toBe(true);
      v.cow.buffers.give(got!);
    }
  }

  it('two sessions share the budget: the second spills while the first holds it all, and gets memory once the first ends', async () => {
    const memory = new CowMemory(16 * S);
    const a = volume('a', memory);
    const b = volume('b', memory);
    overwrite(a, 0, 20);
    expect(a.cow.memoryBytes).toBe(16 * S);
    expect(a.cow.spilledSectors).toBe(4);
    expect(memory.used).toBe(16);
    overwrite(b, 0, 3);
    expect(b.cow.memoryBytes, 'nothing left for the second session').toBe(0);
    expect(b.cow.spilledSectors).toBe(3);
    await a.cow.end();
    expect(memory.used, 'the ended session returned its slots').toBe(0);
    overwrite(b, 3, 5);
    expect(b.cow.memoryBytes).toBe(5 * S);
    expect(b.cow.spilledSectors).toBe(3);
    // Memory and spill mixed in one session: still the point in time.
    await takeAll(b);
    expect(memory.used).toBe(0);
    await b.cow.end();
  });

  it('every way a session ends returns its slots: completed (all taken), ended early, failed', async () => {
    const memory = new CowMemory(4 * MiB);
    const done = volume('done', memory);
    overwrite(done, 0, 300);
    await takeAll(done);
    expect(memory.used, 'taking a block frees its slots').toBe(0);
    await done.cow.end();

    const early = volume('early', memory);
    overwrite(early, 100, 400);
    expect(memory.used).toBe(400);
    await early.cow.end();
    expect(memory.used, 'an ended session returns what it still held').toBe(0);

    const d = tmp();
    const disk = seeded('failing').bytes(BLOCKS * B);
    let failReads = false;
    const read = async (pos: number, len: number, into: Buffer): Promise<void> => {
      if (failReads) throw new Error('EIO (test)');
      disk.copy(into, 0, pos, pos + len);
    };
    const failing = new CowSession([0, 1, 2, 3], read, { memory, spillPath: join(d, 'f.spill') });
    overwrite({ disk, pit: disk, cow: failing }, 0, 50);
    expect(memory.used).toBe(50);
    failReads = true;
    // A capture read on the pool fails: the snapshot fails, not the write, and its slots go back at once.
    await failing.beforeWrite(60 * S, S);
    expect(memory.used, 'a failed session holds nothing').toBe(0);
    await expect(failing.take(3)).rejects.toThrow(/EIO/);
    await failing.end();
    expect(memory.used).toBe(0);
  });

  it('slabs are kept across sessions: the next snapshot reuses them and allocates none', async () => {
    const memory = new CowMemory(8 * MiB);
    const first = volume('first', memory);
    overwrite(first, 0, 300); // 2 slabs of 256 slots
    expect(memory.slabsAllocated).toBe(2);
    await takeAll(first);
    await first.cow.end();
    expect(memory.slabBytes, 'kept after the session ended (default 60 s trim)').toBe(2 * MiB);
    const second = volume('second', memory);
    overwrite(second, 10, 500);
    expect(second.cow.memoryBytes).toBe(500 * S);
    expect(memory.slabsAllocated, 'the second session reused both slabs').toBe(2);
    expect(first.cow.newSlabs).toBe(2);
    expect(second.cow.newSlabs).toBe(0);
    // A session running beside it: the slab the pool adds is counted for the session it was added for.
    const third = volume('third', memory);
    overwrite(third, 0, 100); // 12 free slots, then a third slab
    expect(memory.slabsAllocated).toBe(3);
    expect(third.cow.newSlabs).toBe(1);
    expect(second.cow.newSlabs, 'not counted for the session beside it').toBe(0);
    await takeAll(second);
    await second.cow.end();
    await takeAll(third);
    await third.cow.end();
    expect(memory.trim()).toBe(true); // the test's own clean-up: no idle timer left behind
  });

  it('idle slabs are dropped after the trim delay; a later session allocates again', async () => {
    const memory = new CowMemory(8 * MiB, { trimAfterMs: 5 });
    const one = volume('one', memory);
    overwrite(one, 0, 10);
    expect(memory.slabBytes).toBe(MiB);
    await one.cow.end();
    for (let i = 0; i < 400 && memory.slabBytes > 0; i++) await new Promise((r) => setTimeout(r, 5));
    expect(memory.slabBytes, 'dropped once no session held a slot for trimAfterMs').toBe(0);
    const two = volume('two', memory);
    overwrite(two, 0, 10);
    expect(memory.slabsAllocated, 'a new slab after the trim').toBe(2);
    await takeAll(two);
    await two.cow.end();
  });

  it('a session holds at most its pending blocks\' bytes, so the rest of the budget stays for the others', () => {
    const memory = new CowMemory(8 * MiB);
    const small = memory.session(2 * S);
    expect(small.alloc()).toBeGreaterThanOrEqual(0);
    expect(small.alloc()).toBeGreaterThanOrEqual(0);
    expect(small.alloc(), 'its cap, with the pool far from used up').toBe(-1);
    const other = memory.session(8 * MiB);
    let n = 0;
    while (other.alloc() >= 0) n++;
    expect(n, 'the other session gets everything the first does not hold').toBe(2048 - 2);
    small.close();
    expect(memory.used).toBe(2046);
    other.close();
    expect(memory.used).toBe(0);
    memory.trim();

    // Through CowSession: a snapshot of one block is capped at one block's sectors.
    const d = tmp();
    const one = new CowSession([0], async () => {}, { memory, spillPath: join(d, 'o.spill') });
    const s = one as unknown as { mem: { alloc(): number } };
    for (let k = 0; k < B / S; k++) expect(s.mem.alloc()).toBeGreaterThanOrEqual(0);
    expect(s.mem.alloc(), 'no slot beyond the 128 sectors of its one block').toBe(-1);
    void one.end();
    expect(memory.used).toBe(0);
    memory.trim();
  });

  it('the default budget: min(2 GiB, MemTotal/16, cgroup limit/8), rounded to 4 KiB; the flag rounded to 4 KiB; EBSD_TEST_COW_MEMORY_BYTES only lowers it', () => {
    const mem = (gib: number): string => `MemTotal:       ${gib * 1024 * 1024} kB\nMemFree:  1 kB\n`;
    expect(defaultCowBudget(mem(24), 'max\n')).toEqual({ bytes: 1.5 * 1024 * MiB, from: 'MemTotal/16' });
    expect(defaultCowBudget(mem(64), '')).toEqual({ bytes: 2048 * MiB, from: '2 GiB ceiling' });
    expect(defaultCowBudget(mem(24), `${1024 * MiB}\n`)).toEqual({ bytes: 128 * MiB, from: 'cgroup memory limit/8' });
    expect(defaultCowBudget(mem(24), '9223372036854771712\n'), "v1's 'unlimited'").toEqual({ bytes: 1.5 * 1024 * MiB, from: 'MemTotal/16' });
    expect(defaultCowBudget(mem(24), `${1000 * 1000 + 5}\n`).bytes % 4096).toBe(0);
    expect(resolveCowBudget(96 * MiB, undefined)).toEqual({ bytes: 96 * MiB, from: '--snapshot-cow-memory' });
    expect(resolveCowBudget(4095, undefined).bytes, 'the flag in whole 4 KiB slots').toBe(0);
    expect(resolveCowBudget(96 * MiB + 100, undefined).bytes).toBe(96 * MiB);
    expect(resolveCowBudget(96 * MiB, '65536')).toEqual({ bytes: 65536, from: 'EBSD_TEST_COW_MEMORY_BYTES' });
    expect(resolveCowBudget(96 * MiB, String(200 * MiB)).bytes, 'the override never raises the budget').toBe(96 * MiB);
    for (const junk of [' ', '', '0x10', '-1', '1e3']) expect(resolveCowBudget(96 * MiB, junk).bytes, `override ${JSON.stringify(junk)} ignored`).toBe(96 * MiB);
  });

  it('the cgroup limit: the smallest on the cgroup and its ancestors, v2 memory.max or v1 memory.limit_in_bytes', () => {
    const root = tmp();
    const put = (rel: string, text: string): void => {
      mkdirSync(join(root, rel, '..'), { recursive: true });
      writeFileSync(join(root, rel), text);
    };
    // v2: the leaf says max, its slice (a parent) 2 GiB, the root has no file.
    put('system.slice/ebsd.service/memory.max', 'max\n');
    put('system.slice/memory.max', `${2048 * MiB}\n`);
    expect(cgroupMemoryLimit('0::/system.slice/ebsd.service\n', root)).toBe(2048 * MiB);
    // v1 (and hybrid: a v2 line that names no limit): the memory controller's files, 'unlimited' ignored.
    put('memory/memory.limit_in_bytes', '9223372036854771712\n');
    put('memory/docker/abc/memory.limit_in_bytes', `${1024 * MiB}\n`);
    expect(cgroupMemoryLimit('12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n', root)).toBe(1024 * MiB);
    expect(cgroupMemoryLimit('4:memory:/\n', root), 'only unlimited on the way').toBeUndefined();
    expect(cgroupMemoryLimit('', root)).toBeUndefined();
  });

  it("a session's own pool (no shared memory given) keeps its slabs while it runs and drops them when it ends", async () => {
    const disk = seeded('own').bytes(BLOCKS * B);
    const read = async (pos: number, len: number, into: Buffer): Promise<void> => void disk.copy(into, 0, pos, pos + len);
    const cow = new CowSession(Array.from({ length: BLOCKS }, (_, i) => i), read, { spillPath: join(tmp(), 'own.spill') });
    const pool = (cow as unknown as { ownPool: CowMemory }).ownPool;
    const readNow = (into: Buffer, pos: number): boolean => { disk.copy(into, 0, pos, pos + into.length); return true; };
    expect(cow.tryPass(0, S, readNow)).toBe(true);
    const got = await cow.take(0);
    expect(got!.equals(disk.subarray(0, B))).toBe(true);
    expect(pool.used, 'the one slot went back when block 0 was taken').toBe(0);
    expect(cow.tryPass(B, S, readNow)).toBe(true);
    expect(pool.slabsAllocated, 'the slab stayed for the next capture').toBe(1);
    await cow.end();
    expect(pool.slabBytes, 'gone with the session').toBe(0);
  });
});
