import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { openSync, constants } from 'node:fs';
import { seeded, seededBytes, printSeedOnFailure } from '../crypto/seeded.js';
import { EncryptedBlockDevice } from '../../src/volume/encrypted-block-device.js';
import { PlainBlockDevice } from '../../src/volume/plain-block-device.js';
import { FdBackingFile, openBackingFile, type BackingFile } from '../../src/volume/backing-file.js';
import { VolumeError } from '../../src/volume/errors.js';
import { LUKS2_DATA_OFFSET } from '../../src/volume/luks2-json.js';
import { tmpDir, VOL, freshImage } from './helpers/image.js';
import { openEncrypted, diskSector as readDiskSector } from './helpers/device.js';
import { xtsSector } from './helpers/node-xts.js';
/** Random payloads replay under EBSD_TEST_SEED (test/crypto/seeded.ts); a failure prints the seed. */
const randomBytes = seededBytes('volume/block-device');
const rnd = seeded('volume/block-device offsets');
printSeedOnFailure();

const SS = 4096;
const SIZE = 1 << 20;

let t: ReturnType<typeof tmpDir>;
let img: string;
let key: Buffer;
beforeEach(async () => {
  ({ t, img, key } = await freshImage(SIZE));
});
afterEach(() => t.cleanup());

const openDev = (backing?: BackingFile): Promise<EncryptedBlockDevice> => openEncrypted(img, key, SIZE, backing);

const diskSector = (s: number): Buffer => readDiskSector(img, s);

describe('EncryptedBlockDevice', () => {
  test('never-written sectors read as zeros and stay holes on disk', async () => {
    const dev = await openDev();
    const out = Buffer.alloc(3 * SS + 100, 0xaa);
    await dev.read(SS - 50, 3 * SS + 100, out);
    expect(out.equals(Buffer.alloc(3 * SS + 100))).toBe(true);
    expect(diskSector(0).equals(Buffer.alloc(SS))).toBe(true);
    await dev.close();
  });

  test('unaligned and cross-sector writes round-trip against a model', async () => {
    const dev = await openDev();
    const model = Buffer.alloc(SIZE);
    const ops: [number, number][] = [[0, 1], [1, 4095], [4095, 2], [SS * 3 - 7, SS * 2 + 14], [SS * 10, SS * 4], [SIZE - 3, 3], [123457, 65536], [SS * 20 + 1, 1]];
    for (let i = 0; i < 40; i++) {
      const off = rnd.int((SIZE - 1));
      ops.push([off, 1 + rnd.int(Math.min(3 * SS, SIZE - off - 1))]);
    }
    for (const [off, len] of ops) {
      const d = randomBytes(len);
      expect(await dev.write(off, d)).toBe(len);
      d.copy(model, off);
    }
    const all = Buffer.alloc(SIZE);
    await dev.read(0, SIZE, all);
    expect(all.equals(model)).toBe(true);
    for (let i = 0; i < 30; i++) {
      const off = rnd.int((SIZE - 1));
      const len = 1 + rnd.int((SIZE - off - 1));
      const o = Buffer.alloc(len + 9);
      await dev.read(off, len, o, 9);
      expect(o.subarray(9).equals(model.subarray(off, off + len))).toBe(true);
    }
    await dev.flush();
    await dev.close();

    // Ciphertext on disk, decrypted independently with node:crypto per sector.
    for (let s = 0; s < SIZE / SS; s++) {
      const c = diskSector(s);
      const want = model.subarray(s * SS, (s + 1) * SS);
      if (c.equals(Buffer.alloc(SS))) {
        expect(want.equals(Buffer.alloc(SS))).toBe(true);
        continue;
      }
      expect(c.equals(want)).toBe(false);
      expect(xtsSector(key, 'dec', c, BigInt(s) * 8n).equals(want)).toBe(true);
    }
  });

  test('writing zeros still writes ciphertext (no hole punching)', async () => {
    const dev = await openDev();
    await dev.write(SS * 5, Buffer.alloc(SS));
    await dev.close();
    const c = diskSector(5);
    expect(c.equals(Buffer.alloc(SS))).toBe(false);
    expect(xtsSector(key, 'dec', c, 40n).equals(Buffer.alloc(SS))).toBe(true);
  });

  test('concurrent partial writes into one sector never lose each other', async () => {
    const dev = await openDev();
    const jobs: Promise<number>[] = [];
    const model = Buffer.alloc(2 * SS);
    // 64 writers, each owning a disjoint 100-byte slice straddling sectors 7 and 8.
    for (let i = 0; i < 64; i++) {
      const d = Buffer.alloc(100, i + 1);
      const off = 7 * SS + 1000 + i * 100;
      d.copy(model, off - 7 * SS);
      jobs.push(dev.write(off, d));
    }
    await Promise.all(jobs);
    const o = Buffer.alloc(2 * SS);
    await dev.read(7 * SS, 2 * SS, o);
    expect(o.equals(model)).toBe(true);
    await dev.close();
  });

  test('concurrent overlapping writes land whole, in some order, per sector', async () => {
    const dev = await openDev();
    const a = Buffer.alloc(3 * SS, 0xa1);
    const b = Buffer.alloc(3 * SS, 0xb2);
    const c = Buffer.alloc(SS / 2, 0xc3);
    await Promise.all([dev.write(SS / 2, a), dev.write(SS, b), dev.write(2 * SS + 100, c)]);
    const o = Buffer.alloc(5 * SS);
    await dev.read(0, 5 * SS, o);
    // In the order issued (ranges overlap, so they serialize FIFO): a, then b, then c.
    const m = Buffer.alloc(5 * SS);
    a.copy(m, SS / 2);
    b.copy(m, SS);
    c.copy(m, 2 * SS + 100);
    expect(o.equals(m)).toBe(true);
    await dev.close();
  });

  test('out-of-range I/O is a typed error', async () => {
    const dev = await openDev();
    await expect(dev.write(SIZE - 1, Buffer.alloc(2))).rejects.toMatchObject({ code: 'VOLUME_OUT_OF_RANGE' });
    await expect(dev.read(SIZE, 1, Buffer.alloc(1))).rejects.toMatchObject({ code: 'VOLUME_OUT_OF_RANGE' });
    await expect(dev.read(-1, 1, Buffer.alloc(1))).rejects.toBeInstanceOf(VolumeError);
    await dev.close();
  });

  test('ENOSPC becomes VOLUME_NO_SPACE', async () => {
    const fd = openSync('/dev/full', constants.O_RDWR);
    const dev = await openDev(new FdBackingFile(fd));
    await expect(dev.write(0, Buffer.alloc(SS, 1))).rejects.toMatchObject({ code: 'VOLUME_NO_SPACE' });
    // /dev/full takes no fdatasync (EINVAL), and the close says so; an image is always a regular file.
    await expect(dev.close()).rejects.toMatchObject({ code: 'VOLUME_IO', message: expect.stringContaining('fdatasync on detach') });
  });

  test('an EIO on one run is typed and leaves other sectors intact', async () => {
    const real = await openBackingFile(img);
    let failAt = -1;
    const flaky: BackingFile = {
      read: (b, o, l, p) => real.read(b, o, l, p),
      write: (b, o, l, p) => (p === failAt ? Promise.reject(Object.assign(new Error('EIO'), { code: 'EIO' })) : real.write(b, o, l, p)),
      datasync: () => real.datasync(),
      truncate: (n) => real.truncate(n),
      close: () => real.close(),
    };
    const dev = await openDev(flaky);
    const good = randomBytes(4 * SS);
    await dev.write(0, good);
    failAt = LUKS2_DATA_OFFSET + 2 * SS;
    await expect(dev.write(2 * SS + 10, Buffer.alloc(10, 9))).rejects.toMatchObject({ code: 'VOLUME_IO' });
    const o = Buffer.alloc(4 * SS);
    await dev.read(0, 4 * SS, o);
    expect(o.equals(good)).toBe(true);
    await dev.close();
  });

  test('flush reaches fdatasync', async () => {
    const real = await openBackingFile(img);
    let syncs = 0;
    const counting: BackingFile = { ...bind(real), datasync: () => (syncs++, real.datasync()) };
    const dev = await openDev(counting);
    await dev.write(0, Buffer.alloc(10, 1));
    await dev.flush();
    expect(syncs).toBe(1);
    await dev.close();
  });

  test('after fail(): I/O refused with the reason, key schedule destroyed after drain', async () => {
    const dev = await openDev();
    const w = dev.write(0, randomBytes(SS * 8));
    const reason = new VolumeError('VOLUME_IMPAIRED', 'key revoked');
    let wiped = false;
    await dev.fail(reason, () => {
      wiped = true;
      dev.wipeKey();
    });
    await w; // the in-flight write completed before the wipe
    expect(wiped).toBe(true);
    await expect(dev.read(0, 1, Buffer.alloc(1))).rejects.toBe(reason);
    await expect(dev.write(0, Buffer.alloc(1))).rejects.toBe(reason);
    await dev.close();
  });
});

function bind(b: BackingFile): BackingFile {
  return { read: b.read.bind(b), write: b.write.bind(b), datasync: b.datasync.bind(b), truncate: b.truncate.bind(b), close: b.close.bind(b) };
}

describe('PlainBlockDevice', () => {
  test('same path, plaintext on disk', async () => {
    const dev = new PlainBlockDevice({ volumeId: VOL, size: SIZE, dataOffset: LUKS2_DATA_OFFSET, backing: await openBackingFile(img) });
    expect(dev.unencrypted).toBe(true);
    const d = randomBytes(SS + 77);
    await dev.write(SS - 5, d);
    const o = Buffer.alloc(d.length);
    await dev.read(SS - 5, d.length, o);
    expect(o.equals(d)).toBe(true);
    await dev.close();
    expect(diskSector(1).subarray(0, SS).equals(d.subarray(5, SS + 5))).toBe(true);
  });
});

describe('large runs and O_DIRECT', () => {
  test('a run split into parallel chunks: holes kept, ciphertext per sector checked with node:crypto', async () => {
    const dev = await openDev();
    const data = randomBytes(600 * 1024 + 123); // > PARALLEL_MIN, unaligned both ends
    const off = 3 * SS + 17;
    await dev.write(off, data);
    const back = Buffer.alloc(SIZE, 0xee);
    await dev.read(0, SIZE, back); // whole volume, aligned: parallel chunks into the caller's buffer
    const model = Buffer.alloc(SIZE);
    data.copy(model, off);
    expect(back.equals(model)).toBe(true);
    for (const s of [3, 4, 70, 150, 3 + Math.floor((off + data.length) / SS) - 3]) {
      expect(xtsSector(key, 'dec', diskSector(s), BigInt(s) * 8n).equals(model.subarray(s * SS, (s + 1) * SS))).toBe(true);
    }
    expect(diskSector(200).equals(Buffer.alloc(SS))).toBe(true); // never written: still a hole
    await dev.close();
  });

  test('O_DIRECT backing: aligned buffers from allocBuffer, unaligned caller buffers bounce, same bytes on disk', async () => {
    const backing = await openBackingFile(img, constants.O_RDWR, { direct: true });
    expect(backing.direct).toBe(true);
    const dev = await openDev(backing);
    const a = dev.allocBuffer(256 * 1024);
    randomBytes(a.length).copy(a);
    await dev.write(8 * SS, a);
    const b = dev.allocBuffer(256 * 1024);
    await dev.read(8 * SS, b.length, b);
    expect(b.equals(a)).toBe(true);
    // A plain Buffer the kernel refuses for O_DIRECT (16-byte aligned at best) still works.
    const odd = Buffer.alloc(SS + 1).subarray(1);
    await dev.read(8 * SS, SS, odd);
    expect(odd.equals(a.subarray(0, SS))).toBe(true);
    await dev.write(100, Buffer.from('unaligned through O_DIRECT'));
    const u = Buffer.alloc(26);
    await dev.read(100, 26, u);
    expect(u.toString()).toBe('unaligned through O_DIRECT');
    await dev.close();
    expect(xtsSector(key, 'dec', diskSector(9), 72n).equals(a.subarray(SS, 2 * SS))).toBe(true);
  });
});
