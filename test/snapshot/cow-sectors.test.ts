import { describe, expect, it } from 'vitest';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { CowSession } from '../../src/snapshot/cow-session.js';
import { BlockRange } from '../../src/snapshot/block-bitmap.js';
import { SNAPSHOT_BLOCK_BYTES } from '../../src/snapshot/types.js';
import { printSeedOnFailure, seeded, SEED, type SeededRandom } from '../crypto/seeded.js';
import { tempDirPerTest } from '../helpers/temp-dir.js';

/**
 * Copy-on-write at write granularity (src/snapshot/cow-session.ts,
 * docs/architecture.md §12.2), at the unit level: a disk in memory whose
 * reads and writes are torn (each goes in pieces, with turns of the event
 * loop between them, so a read overlapping a write sees part of each), writers
 * that follow the gate's protocol (tryPass, with or without the page-cache
 * reader, else beforeWrite; the bytes land some turns after passing) and a
 * copier taking blocks in a random order, several at once. Whatever the
 * interleaving, what take(i) returns must be block i at the point in time.
 */
printSeedOnFailure();

const B = SNAPSHOT_BLOCK_BYTES;
const S = 4096;
const BLOCKS = 6;
const SECTORS = (BLOCKS * B) / S;

const turns = (n: number): Promise<void> => (n <= 0 ? Promise.resolve() : new Promise<void>((r) => setImmediate(r)).then(() => turns(n - 1)));

/** A disk whose I/O is torn: each read or write moves its bytes in up to 4 pieces with event-loop turns between. */
function tornDisk(rnd: SeededRandom, disk: Buffer) {
  const pieces = async (len: number, fn: (off: number, n: number) => void): Promise<void> => {
    const cuts = [0, len];
    for (let k = rnd.int(4); k > 0; k--) cuts.push(Math.floor(rnd.int(len / S + 1)) * S);
    cuts.sort((a, b) => a - b);
    for (let j = 0; j + 1 < cuts.length; j++) {
      await turns(rnd.int(3));
      if (cuts[j + 1]! > cuts[j]!) fn(cuts[j]!, cuts[j + 1]! - cuts[j]!);
    }
  };
  return {
    read: (pos: number, len: number, into: Buffer): Promise<void> => pieces(len, (o, n) => disk.copy(into, o, pos + o, pos + o + n)),
    write: (pos: number, data: Buffer): Promise<void> => pieces(data.length, (o, n) => data.copy(disk, pos + o, o, o + n)),
    readNow: (into: Buffer, pos: number): boolean => {
      if (rnd.int(4) === 0) return false; // a page-cache miss
      disk.copy(into, 0, pos, pos + into.length);
      return true;
    },
  };
}

interface Run {
  disk: Buffer;
  pit: Buffer;
  cow: CowSession;
  io: ReturnType<typeof tornDisk>;
  rnd: SeededRandom;
}

function start(label: string, o: { maxMemoryBytes?: number; spillPath?: string } = {}): Run {
  const rnd = seeded(label);
  const disk = rnd.bytes(BLOCKS * B);
  const pit = Buffer.from(disk);
  const io = tornDisk(rnd, disk);
  // A full snapshot's set, as SnapshotManager gives it: the range of every block.
  const cow = new CowSession(new BlockRange(BLOCKS), io.read, o);
  return { disk, pit, cow, io, rnd };
}

/** One write through the gate's protocol, as BackingIo does it. */
async function write(r: Run, s: number, n: number, viaPageCache: boolean): Promise<void> {
  const data = r.rnd.bytes(n * S);
  await turns(r.rnd.int(3));
  if (!r.cow.tryPass(s * S, n * S, viaPageCache ? r.io.readNow : undefined)) await r.cow.beforeWrite(s * S, n * S);
  await r.io.write(s * S, data);
}

function randomWrite(r: Run): Promise<void> {
  // Mostly 4 KiB, sometimes up to 128 KiB, some crossing a block boundary.
  const n = r.rnd.int(4) === 0 ? 1 + r.rnd.int(32) : 1;
  const s = r.rnd.int(3) === 0 ? Math.max(0, Math.min(SECTORS - n, (1 + r.rnd.int(BLOCKS - 1)) * (B / S) - r.rnd.int(n))) : r.rnd.int(SECTORS - n + 1);
  return write(r, s, n, r.rnd.int(2) === 0);
}

function expectPit(r: Run, i: number, got: Buffer | undefined): void {
  expect(got, `block ${i} (EBSD_TEST_SEED=${SEED})`).toBeDefined();
  const want = r.pit.subarray(i * B, (i + 1) * B);
  if (!got!.equals(want)) {
    let k = 0;
    while (got!.subarray(k * S, (k + 1) * S).equals(want.subarray(k * S, (k + 1) * S))) k++;
    expect.fail(`block ${i}: sector ${k} is not its point-in-time content (EBSD_TEST_SEED=${SEED})`);
  }
}

describe('CowSession (sector-granular copy-on-write)', () => {
  const spillDir = tempDirPerTest('ebsd-cow-');

  for (const [name, cap] of [['in memory', undefined], ['spilling past a 64 KiB memory cap', 64 * 1024]] as const) {
    it(`take(i) is block i at the point in time under random interleavings of writes and the copier, ${name}`, async () => {
      let spilled = 0;
      for (let round = 0; round < 12; round++) {
        const dir = spillDir();
        const r = start(`cow ${name} ${round}`, { ...(cap ? { maxMemoryBytes: cap, spillPath: join(dir, 'x.spill') } : {}) });
        const writers = Array.from({ length: 6 }, async () => {
          for (let k = 0; k < 40; k++) await randomWrite(r);
        });
        // The copier: captured blocks first, else a random one; 3 in flight.
        const left = new Set(Array.from({ length: BLOCKS }, (_, i) => i));
        const copier = Array.from({ length: 3 }, async () => {
          for (;;) {
            await turns(r.rnd.int(6));
            let i = r.cow.nextCaptured();
            if (i === undefined || !left.has(i)) {
              if (left.size === 0) return;
              i = [...left][r.rnd.int(left.size)]!;
            }
            left.delete(i);
            const got = await r.cow.take(i);
            expectPit(r, i, got);
            // As the copier does once the block is stored: the next take may fill this buffer again.
            r.cow.buffers.give(got!);
          }
        });
        await Promise.all([...writers, ...copier]);
        expect(r.cow.capturedSectors).toBeGreaterThan(0);
        spilled += r.cow.spilledSectors;
        expect(r.cow.memoryBytes, 'every captured sector was freed when its block was taken').toBe(0);
        await r.cow.end();
        expect(readdirSync(dir), 'the spill file has no name once open, and none after end').toEqual([]);
      }
      if (cap) expect(spilled, 'the cap sent sectors to the spill file').toBeGreaterThan(0);
    }, 60_000);
  }

  it('a sector is captured once: a second write to it keeps the first one\'s old bytes', async () => {
    const r = start('twice');
    await write(r, 5, 1, false);
    await write(r, 5, 1, true);
    await write(r, 4, 3, false); // sectors 4..6: only 4 and 6 are new captures
    expect(r.cow.capturedSectors).toBe(3);
    expectPit(r, 0, await r.cow.take(0));
    // Block 0 is copied: writes to it pass without capture, synchronously.
    expect(r.cow.tryPass(0, S)).toBe(true);
    expect(r.cow.capturedSectors).toBe(3);
    await r.cow.end();
  });

  it('writes never wait for the copier: with no block taken, every write completes and memory stays under the cap', async () => {
    const dir = spillDir();
    const r = start('no copier', { maxMemoryBytes: 16 * S, spillPath: join(dir, 'y.spill') });
    // Every sector of the volume once, in random order, 4 at a time: nothing is taken meanwhile.
    const order = Array.from({ length: SECTORS }, (_, s) => s);
    for (let k = order.length - 1; k > 0; k--) {
      const j = r.rnd.int(k + 1);
      [order[k], order[j]] = [order[j]!, order[k]!];
    }
    await Promise.all(Array.from({ length: 4 }, async (_, w) => {
      for (let k = w; k < order.length; k += 4) await write(r, order[k]!, 1, k % 2 === 0);
    }));
    expect(r.cow.capturedSectors).toBe(SECTORS);
    expect(r.cow.memoryBytes).toBeLessThanOrEqual(16 * S);
    expect(r.cow.spillBytes).toBeGreaterThanOrEqual((SECTORS - 16) * S);
    for (let i = 0; i < BLOCKS; i++) expectPit(r, i, await r.cow.take(i));
    await r.cow.end();
    expect(readdirSync(dir)).toEqual([]);
  }, 30_000);

  it('a block outside the snapshot is never captured; after end() every write passes', async () => {
    const rnd = seeded('outside');
    const disk = rnd.bytes(2 * B);
    const io = tornDisk(rnd, disk);
    const cow = new CowSession([1], io.read);
    expect(cow.tryPass(0, 8 * S)).toBe(true);
    expect(cow.tryPass(B, S)).toBe(false);
    expect(await cow.take(0)).toBeUndefined();
    await cow.end();
    expect(cow.tryPass(B, S)).toBe(true);
    await expect(cow.take(1)).rejects.toMatchObject({ code: 'SNAPSHOT_INCORRECT_STATE' });
  });
});
