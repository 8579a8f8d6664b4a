import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { closeSync, constants, openSync, writeSync } from 'node:fs';
import { seededBytes, printSeedOnFailure } from '../crypto/seeded.js';
import { EncryptedBlockDevice } from '../../src/volume/encrypted-block-device.js';
import { PlainBlockDevice } from '../../src/volume/plain-block-device.js';
import { FdBackingFile, openBackingFile } from '../../src/volume/backing-file.js';
import { nativeIo, syncWriteGuard } from '../../src/volume/native-io.js';
import { LUKS2_DATA_OFFSET } from '../../src/volume/luks2-json.js';
import { tmpDir, VOL, freshImage } from './helpers/image.js';
import { openEncrypted, diskSector as readDiskSector } from './helpers/device.js';
import { xtsSector } from './helpers/node-xts.js';
import { evictFromPageCache } from './helpers/page-cache.js';
import { readNowaitSupported } from './helpers/fs-caps.js';
/** Random payloads replay under EBSD_TEST_SEED (test/crypto/seeded.ts); a failure prints the seed. */
const randomBytes = seededBytes('volume/block-device-fastpath');
printSeedOnFailure();

// The page-cache fast paths of SectorDevice (docs/perf-notes.md §4): reads with
// preadv2(RWF_NOWAIT) on the event loop and the pool on a miss, aligned writes
// without a copy (encrypted in the caller's buffer only via writeConsuming),
// small pwrites on the loop under the watchdog. Every result is checked
// against a model, and the ciphertext on disk against node:crypto.

const SS = 4096;
const SIZE = 1 << 20;

let t: ReturnType<typeof tmpDir>;
let img: string;
let key: Buffer;
beforeEach(async () => {
  ({ t, img, key } = await freshImage(SIZE));
});
afterEach(() => t.cleanup());

/** An FdBackingFile (so the fast paths apply) whose pool calls are counted. */
async function counted(): Promise<{ backing: FdBackingFile; calls: { read: number; write: number } }> {
  const backing = await openBackingFile(img);
  const calls = { read: 0, write: 0 };
  const r = backing.read.bind(backing);
  const w = backing.write.bind(backing);
  backing.read = (b, o, l, p) => (calls.read++, r(b, o, l, p));
  backing.write = (b, o, l, p) => (calls.write++, w(b, o, l, p));
  return { backing, calls };
}

const encDev = (backing: FdBackingFile): Promise<EncryptedBlockDevice> => openEncrypted(img, key, SIZE, backing);

const diskSector = (s: number): Buffer => readDiskSector(img, s);

function expectCiphertext(model: Buffer, sectors: Iterable<number>): void {
  for (const s of sectors) {
    const disk = diskSector(s);
    const plain = model.subarray(s * SS, (s + 1) * SS);
    expect(disk.equals(xtsSector(key, 'enc', plain, BigInt(s) * 8n)), `sector ${s}`).toBe(true);
  }
}

/** Put ciphertext on disk through O_DIRECT, then make sure those pages are not in the page cache. */
function writeUncached(data: Buffer, pos: number): boolean {
  let fd: number;
  try {
    fd = openSync(img, constants.O_RDWR | constants.O_DIRECT);
  } catch {
    return false;
  }
  try {
    const b = new FdBackingFile(fd, true).allocBuffer(data.length);
    data.copy(b);
    writeSync(fd, b, 0, b.length, pos);
  } finally {
    closeSync(fd);
  }
  evictFromPageCache(img, pos, data.length);
  return true;
}

describe.skipIf(nativeIo === null)('SectorDevice fast paths', () => {
  test.skipIf(!readNowaitSupported)('aligned read from the page cache: no pool call, promise already settled, plaintext right', async () => {
    const { backing, calls } = await counted();
    const dev = await encDev(backing);
    const data = randomBytes(4 * SS);
    await dev.write(8 * SS, data);
    calls.read = 0;
    const out = Buffer.alloc(4 * SS);
    let settled = false;
    const p = dev.read(8 * SS, 4 * SS, out).then((n) => { settled = true; return n; });
    await Promise.resolve();
    expect(settled).toBe(true); // one microtask: nothing waited on a thread
    expect(await p).toBe(4 * SS);
    expect(out.equals(data)).toBe(true);
    expect(calls.read).toBe(0);
    // 128 KiB, the largest FUSE request.
    const big = randomBytes(128 * 1024);
    await dev.write(32 * SS, big);
    const o2 = Buffer.alloc(big.length + 3);
    expect(await dev.read(32 * SS, big.length, o2, 3)).toBe(big.length);
    expect(o2.subarray(3).equals(big)).toBe(true);
    expect(calls.read).toBe(0);
    await dev.close();
  });

  test.skipIf(!readNowaitSupported)('page-cache miss (EAGAIN) falls back to the pool, also when only the head is cached', async (ctx) => {
    const { backing, calls } = await counted();
    const dev = await encDev(backing);
    const model = Buffer.alloc(SIZE);
    randomBytes(16 * SS).copy(model, 40 * SS);
    const ct = Buffer.alloc(16 * SS);
    for (let i = 0; i < 16; i++) xtsSector(key, 'enc', model.subarray((40 + i) * SS, (41 + i) * SS), BigInt(40 + i) * 8n).copy(ct, i * SS);
    if (!writeUncached(ct, LUKS2_DATA_OFFSET + 40 * SS)) ctx.skip();
    // preadv2(RWF_NOWAIT) on a miss starts readahead and may still return the data when the
    // disk answers within the call (a fast virtio disk sometimes does), so a miss is set up
    // again until the read really missed; what is asserted is unchanged.
    const readAfterEvict = async (evictSector: number, evictSectors: number, sector: number, out: Buffer) => {
      for (let attempt = 0; attempt < 5; attempt++) {
        evictFromPageCache(img, LUKS2_DATA_OFFSET + evictSector * SS, evictSectors * SS);
        calls.read = 0;
        await dev.read(sector * SS, out.length, out.fill(0));
        if (calls.read > 0) break;
      }
    };
    // Whole miss.
    const out = Buffer.alloc(8 * SS);
    await readAfterEvict(40, 16, 40, out);
    expect(out.equals(model.subarray(40 * SS, 48 * SS))).toBe(true);
    expect(calls.read).toBeGreaterThan(0);
    // Head cached (the sector just read), tail not.
    const o2 = Buffer.alloc(8 * SS);
    await readAfterEvict(48, 8, 47, o2);
    expect(o2.equals(model.subarray(47 * SS, 55 * SS))).toBe(true);
    expect(calls.read).toBeGreaterThan(0);
    // Now cached: no pool.
    calls.read = 0;
    await dev.read(47 * SS, 8 * SS, o2.fill(0));
    expect(o2.equals(model.subarray(47 * SS, 55 * SS))).toBe(true);
    expect(calls.read).toBe(0);
    await dev.close();
  });

  test('aligned write: write() leaves the caller buffer alone, writeConsuming() encrypts in it; ciphertext checked', async () => {
    const { backing } = await counted();
    const dev = await encDev(backing);
    const model = Buffer.alloc(SIZE);
    const a = randomBytes(2 * SS);
    const aCopy = Buffer.from(a);
    await dev.write(4 * SS, a);
    a.copy(model, 4 * SS);
    expect(a.equals(aCopy)).toBe(true);
    const b = randomBytes(64 * 1024);
    const bCopy = Buffer.from(b);
    await dev.writeConsuming(16 * SS, b);
    bCopy.copy(model, 16 * SS);
    expect(b.equals(bCopy)).toBe(false);
    expect(b.subarray(0, SS).equals(diskSector(16))).toBe(true); // the buffer now holds what went to disk
    const c = randomBytes(SS);
    const cCopy = Buffer.from(c);
    await dev.writeConsuming(3 * SS, c);
    cCopy.copy(model, 3 * SS);
    const back = Buffer.alloc(SIZE);
    await dev.read(0, SIZE, back);
    expect(back.equals(model)).toBe(true);
    expectCiphertext(model, [3, 4, 5, 16, 20, 31]);
    await dev.close();
  });

  test('unaligned writes (RMW) and the watchdog: tripped, small writes take the pool; same bytes', async () => {
    const { backing, calls } = await counted();
    const dev = await encDev(backing);
    const model = Buffer.alloc(SIZE);
    const w = async (off: number, d: Buffer): Promise<void> => { await dev.write(off, d); d.copy(model, off); };
    await w(SS - 3, randomBytes(10)); // cross-sector, tiny
    await w(5 * SS + 100, randomBytes(3 * SS)); // unaligned both ends
    await w(10 * SS, randomBytes(SS));
    syncWriteGuard.trip();
    try {
      calls.write = 0;
      expect(syncWriteGuard.allowed()).toBe(false);
      await w(12 * SS, randomBytes(SS));
      await w(13 * SS + 1, randomBytes(SS));
      expect(calls.write).toBeGreaterThanOrEqual(2);
    } finally {
      syncWriteGuard.record(0); // back to normal for the other tests
    }
    const back = Buffer.alloc(SIZE);
    await dev.read(0, SIZE, back);
    expect(back.equals(model)).toBe(true);
    expectCiphertext(model, [0, 1, 5, 6, 7, 8, 10, 12, 13, 14]);
    await dev.close();
  });

  test('concurrent overlapping aligned and unaligned writes apply in call order; concurrent reads see whole sectors', async () => {
    const { backing } = await counted();
    const dev = await encDev(backing);
    const model = Buffer.alloc(64 * SS);
    const jobs: Promise<unknown>[] = [];
    for (let i = 0; i < 200; i++) {
      const aligned = i % 3 !== 0;
      const off = aligned ? (i * 7 % 56) * SS : (i * 7919) % (60 * SS);
      const len = aligned ? SS * (1 + (i % 4)) : 1 + (i * 131) % (3 * SS);
      const d = randomBytes(len);
      d.copy(model, off);
      // Half of them consuming (as FUSE calls it): the model holds the copy.
      jobs.push(i % 2 ? dev.writeConsuming(off, Buffer.from(d)) : dev.write(off, d));
      if (i % 10 === 0) jobs.push(dev.read(0, 64 * SS, Buffer.alloc(64 * SS)));
    }
    await Promise.all(jobs);
    const back = Buffer.alloc(64 * SS);
    await dev.read(0, 64 * SS, back);
    expect(back.equals(model)).toBe(true);
    expectCiphertext(model, Array.from({ length: 64 }, (_, i) => i).filter((s) => !model.subarray(s * SS, (s + 1) * SS).equals(Buffer.alloc(SS))));
    await dev.close();
  });

  test.skipIf(!readNowaitSupported)('passthrough: aligned I/O straight from and into the caller buffers, plaintext on disk', async () => {
    const { backing, calls } = await counted();
    const dev = new PlainBlockDevice({ volumeId: VOL, size: SIZE, dataOffset: LUKS2_DATA_OFFSET, backing });
    const d = randomBytes(8 * SS);
    const copy = Buffer.from(d);
    await dev.writeConsuming(2 * SS, d);
    expect(d.equals(copy)).toBe(true); // nothing to encrypt: untouched
    const o = Buffer.alloc(8 * SS);
    calls.read = 0;
    await dev.read(2 * SS, 8 * SS, o);
    expect(o.equals(copy)).toBe(true);
    expect(calls.read).toBe(0);
    expect(diskSector(2).equals(copy.subarray(0, SS))).toBe(true);
    await dev.close();
  });

  test('an error on the fast path is typed (EBADF after the fd is gone)', async () => {
    const { backing } = await counted();
    const dev = await encDev(backing);
    closeSync(backing.fd);
    await expect(dev.read(0, SS, Buffer.alloc(SS))).rejects.toMatchObject({ code: 'VOLUME_IO' });
    await expect(dev.write(0, Buffer.alloc(SS))).rejects.toMatchObject({ code: 'VOLUME_IO' });
  });
});
