import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { openSync, statfsSync } from 'node:fs';
import { seededBytes, printSeedOnFailure } from '../crypto/seeded.js';
import { EncryptedBlockDevice } from '../../src/volume/encrypted-block-device.js';
import { PlainBlockDevice } from '../../src/volume/plain-block-device.js';
import { SectorDevice } from '../../src/volume/sector-device.js';
import { READ_AHEAD } from '../../src/volume/read-ahead.js';
import { BEHIND_MIN_FREE } from '../../src/volume/free-space.js';
import { FdBackingFile, openBackingFile } from '../../src/volume/backing-file.js';
import { nativeIo, syncWriteGuard } from '../../src/volume/native-io.js';
import { LUKS2_DATA_OFFSET } from '../../src/volume/luks2-json.js';
import { tmpDir, VOL, freshImage } from './helpers/image.js';
import { openEncrypted, diskSector as readDiskSector } from './helpers/device.js';
import { xtsSector } from './helpers/node-xts.js';
import { readNowaitSupported } from './helpers/fs-caps.js';
/** Random payloads replay under EBSD_TEST_SEED (test/crypto/seeded.ts); a failure prints the seed. */
const randomBytes = seededBytes('volume/read-ahead-write-behind');
printSeedOnFailure();

// Sequential read-ahead and write-behind of SectorDevice (docs/perf-notes.md §6):
// what a read returns must never depend on whether it was served from the
// read-ahead, and a write-behind must be on disk (encrypted) once its
// completion ran, or else be reported by the next flush.

const SS = 4096;
const SIZE = 4 << 20;
const RA = READ_AHEAD;

let t: ReturnType<typeof tmpDir>;
let img: string;
let key: Buffer;
beforeEach(async () => {
  ({ t, img, key } = await freshImage(SIZE));
});
afterEach(() => t.cleanup());

const encDev = (backing?: FdBackingFile): Promise<EncryptedBlockDevice> => openEncrypted(img, key, SIZE, backing);

/** The turn of the event loop after a reply: where the read-ahead runs (setImmediate). */
const afterReply = (): Promise<void> => new Promise((r) => setImmediate(r));

const diskSector = (s: number): Buffer => readDiskSector(img, s);

/** Whether the test directory's filesystem leaves room for write-behind at all. */
function roomForWriteBehind(): boolean {
  const st = statfsSync(img);
  return st.bavail * st.bsize >= BEHIND_MIN_FREE;
}

async function readAt(dev: SectorDevice, off: number, len: number): Promise<Buffer> {
  const b = Buffer.alloc(len);
  expect(await dev.read(off, len, b)).toBe(len);
  return b;
}

// Read-ahead and write-behind ride on RWF_NOWAIT page-cache I/O: off where the filesystem has none (helpers/fs-caps.ts).
describe.skipIf(nativeIo === null || !readNowaitSupported)('sequential read-ahead', () => {
  test('sequential 128 KiB reads are served from the read-ahead after the first two, with the right plaintext', async () => {
    const dev = await encDev();
    const model = randomBytes(SIZE);
    await dev.write(0, model);
    for (let off = 0; off < 2 << 20; off += RA) {
      expect((await readAt(dev, off, RA)).equals(model.subarray(off, off + RA)), `at ${off}`).toBe(true);
      await afterReply();
    }
    // Read 0 and 1 come from the page cache (1 is the first sequential one and schedules the
    // prefetch of 2); every later read is a hit and prefetches the next.
    expect(dev.readAheadStats.hits).toBe(14);
    expect(dev.readAheadStats.prefetched).toBe(15);
    await dev.close();
  });

  test('small sequential reads hit inside one prefetched run; a random read neither hits nor prefetches', async () => {
    const dev = await encDev();
    const model = randomBytes(SIZE);
    await dev.write(0, model);
    await readAt(dev, 0, SS);
    await readAt(dev, SS, SS); // sequential: prefetch [2, 2 + 32) sectors
    await afterReply();
    expect(dev.readAheadStats.prefetched).toBe(1);
    for (let s = 2; s < 10; s++) expect((await readAt(dev, s * SS, SS)).equals(model.subarray(s * SS, (s + 1) * SS))).toBe(true);
    expect(dev.readAheadStats.hits).toBe(8);
    const before = { ...dev.readAheadStats };
    expect((await readAt(dev, 3 << 20, SS)).equals(model.subarray(3 << 20, (3 << 20) + SS))).toBe(true);
    await afterReply();
    expect(dev.readAheadStats).toEqual(before);
    await dev.close();
  });

  test('sequential reads larger than the read-ahead (not FUSE-sized) prefetch nothing', async () => {
    const dev = await encDev();
    const model = randomBytes(SIZE);
    await dev.write(0, model);
    for (let off = 0; off < SIZE; off += 1 << 20) {
      expect((await readAt(dev, off, 1 << 20)).equals(model.subarray(off, off + (1 << 20)))).toBe(true);
      await afterReply();
    }
    expect(dev.readAheadStats).toEqual({ prefetched: 0, hits: 0 });
    await dev.close();
  });

  test('a write into the prefetched range is never hidden by it (aligned, unaligned, write-behind)', async () => {
    const dev = await encDev();
    const model = randomBytes(SIZE);
    await dev.write(0, model);
    const prime = async (): Promise<void> => {
      await readAt(dev, 0, RA);
      await readAt(dev, RA, RA); // prefetches [2 RA, 3 RA)
      await afterReply();
    };
    await prime();
    const a = randomBytes(SS);
    await dev.write(2 * RA + SS, a);
    a.copy(model, 2 * RA + SS);
    expect((await readAt(dev, 2 * RA, RA)).equals(model.subarray(2 * RA, 3 * RA))).toBe(true);

    await prime();
    const b = randomBytes(100);
    await dev.write(2 * RA + 777, b);
    b.copy(model, 2 * RA + 777);
    expect((await readAt(dev, 2 * RA, RA)).equals(model.subarray(2 * RA, 3 * RA))).toBe(true);

    if (roomForWriteBehind()) {
      await prime();
      const c = randomBytes(2 * SS);
      const complete = dev.writeBehind(2 * RA + 4 * SS, c);
      expect(complete).not.toBeNull();
      complete!();
      c.copy(model, 2 * RA + 4 * SS);
      expect((await readAt(dev, 2 * RA, RA)).equals(model.subarray(2 * RA, 3 * RA))).toBe(true);
    }
    await dev.close();
  });

  test('no prefetch is taken while a write is under way in the range lock', async () => {
    // Pool reads take 20 ms here, so the unaligned write below (read-modify-write on
    // the pool) is still running when the scheduled prefetch comes round.
    const backing = await openBackingFile(img);
    const poolRead = backing.read.bind(backing);
    backing.read = (b, o, l, p) => new Promise((r) => setTimeout(r, 20)).then(() => poolRead(b, o, l, p));
    const dev = await encDev(backing);
    const model = randomBytes(SIZE);
    await dev.write(0, model);
    await readAt(dev, 0, RA);
    await readAt(dev, RA, RA); // schedules the prefetch of [2 RA, 3 RA) for the next turn
    const c = randomBytes(SS);
    const w = dev.write(2 * RA + 100, c); // unaligned: holds its sectors across pool reads
    c.copy(model, 2 * RA + 100);
    await afterReply(); // the prefetch ran now, and must have stood aside
    expect(dev.readAheadStats.prefetched).toBe(0);
    await w;
    expect((await readAt(dev, 2 * RA, RA)).equals(model.subarray(2 * RA, 3 * RA))).toBe(true);
    await dev.close();
  });

  test('the passthrough prefetches too (no cipher), and a closed device serves nothing from it', async () => {
    const backing = await openBackingFile(img);
    const dev = new PlainBlockDevice({ volumeId: VOL, size: SIZE, dataOffset: LUKS2_DATA_OFFSET, backing });
    const model = randomBytes(SIZE);
    await dev.write(0, model);
    for (let off = 0; off < 4 * RA; off += RA) {
      expect((await readAt(dev, off, RA)).equals(model.subarray(off, off + RA))).toBe(true);
      await afterReply();
    }
    expect(dev.readAheadStats.hits).toBe(2);
    await dev.close();
    await expect(dev.read(4 * RA, RA, Buffer.alloc(RA))).rejects.toMatchObject({ code: 'VOLUME_CLOSED' });
  });
});

describe.skipIf(nativeIo === null || !readNowaitSupported)('write-behind', () => {
  test('the completion seals and writes: ciphertext on disk, plaintext read back, caller buffer untouched', async (ctx) => {
    if (!roomForWriteBehind()) ctx.skip(); // the guard is tested below; this needs the room
    const dev = await encDev();
    const data = randomBytes(RA);
    const copy = Buffer.from(data);
    const complete = dev.writeBehind(8 * SS, data);
    expect(complete).toBeTypeOf('function');
    expect(data.equals(copy)).toBe(true); // copied at once: the caller may drop its buffer now
    expect(dev.pending).toBe(1); // a detach drains it
    complete!();
    expect(dev.pending).toBe(0);
    for (let i = 0; i < RA / SS; i++) {
      expect(diskSector(8 + i).equals(xtsSector(key, 'enc', copy.subarray(i * SS, (i + 1) * SS), BigInt(8 + i) * 8n)), `sector ${8 + i}`).toBe(true);
    }
    expect((await readAt(dev, 8 * SS, RA)).equals(copy)).toBe(true);
    await dev.flush();
    await dev.close();
  });

  test('declined (null) where the write must be written through: unaligned, too large, out of range, contended, watchdog, closed', async (ctx) => {
    if (!roomForWriteBehind()) ctx.skip();
    const dev = await encDev();
    expect(dev.writeBehind(100, randomBytes(SS))).toBeNull();
    expect(dev.writeBehind(0, randomBytes(SS + 1))).toBeNull();
    expect(dev.writeBehind(0, randomBytes(RA + SS))).toBeNull();
    expect(dev.writeBehind(SIZE - SS, randomBytes(2 * SS))).toBeNull();
    expect(dev.writeBehind(0, Buffer.alloc(0))).toBeNull();
    // A write holding the range (an unaligned one waits for its read-modify-write).
    const slow = dev.write(SS + 5, randomBytes(10));
    expect(dev.writeBehind(0, randomBytes(2 * SS))).toBeNull();
    await slow;
    syncWriteGuard.trip();
    try {
      expect(dev.writeBehind(0, randomBytes(SS))).toBeNull();
    } finally {
      syncWriteGuard.record(0); // reset the process-wide watchdog for the other tests
    }
    const ok = dev.writeBehind(0, randomBytes(SS));
    expect(ok).not.toBeNull();
    ok!();
    await dev.close();
    expect(dev.writeBehind(0, randomBytes(SS))).toBeNull();
  });

  test('a completion that cannot write is reported by every later flush, and stops write-behind', async (ctx) => {
    if (!roomForWriteBehind()) ctx.skip();
    // A read-only descriptor: the loop's pwrite and the pool's retry both fail (EBADF).
    const dev = await encDev(new FdBackingFile(openSync(img, 'r')));
    const complete = dev.writeBehind(0, randomBytes(SS));
    expect(complete).not.toBeNull();
    complete!();
    // Reads wait for the retry on the pool before they look at the disk.
    await readAt(dev, 0, SS);
    await expect(dev.flush()).rejects.toMatchObject({ code: 'VOLUME_IO', message: expect.stringContaining('acknowledged earlier') });
    await expect(dev.flush()).rejects.toMatchObject({ code: 'VOLUME_IO' });
    expect(dev.writeBehind(SS, randomBytes(SS))).toBeNull();
    // The detach hears of it too: close rejects, after wiping the key and closing the fd.
    await expect(dev.close()).rejects.toMatchObject({ code: 'VOLUME_IO', message: expect.stringContaining('acknowledged earlier') });
    await expect(dev.read(0, SS, Buffer.alloc(SS))).rejects.toMatchObject({ code: 'VOLUME_CLOSED' });
    // A second close answers the same and does not close the fd number again.
    await expect(dev.close()).rejects.toMatchObject({ code: 'VOLUME_IO' });
  });
});

describe('close at detach', () => {
  test('a failed fdatasync or close at detach rejects close; the key is wiped and the file closed all the same', async () => {
    const real = await openBackingFile(img);
    let closed = false;
    const failing = Object.assign(Object.create(real) as FdBackingFile, {
      datasync: () => Promise.reject(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' })),
      close: async () => { await real.close(); closed = true; throw Object.assign(new Error('EIO: i/o error, close'), { code: 'EIO' }); },
    });
    const dev = await encDev(failing);
    await dev.write(0, randomBytes(SS));
    // The first failure is the one reported (fdatasync), and the close ran anyway.
    await expect(dev.close()).rejects.toMatchObject({ code: 'VOLUME_IO', message: expect.stringMatching(/fdatasync on detach.*EIO/) });
    expect(closed).toBe(true);
    await expect(dev.write(0, randomBytes(SS))).rejects.toMatchObject({ code: 'VOLUME_CLOSED' });
  });
});
