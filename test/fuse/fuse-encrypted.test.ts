import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { seededBytes, printSeedOnFailure } from '../crypto/seeded.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockFileSystem, FuseMount } from '../../src/fuse/index.js';
import type { EncryptedBlockDevice } from '../../src/volume/encrypted-block-device.js';
import { createLogger } from '../../src/util/logger.js';
import { makeImage, volumeKey, VOL } from '../volume/helpers/image.js';
import { xtsSector } from '../volume/helpers/node-xts.js';
import { diskSector, openEncrypted } from '../volume/helpers/device.js';
import { sh, tempDir } from './helpers.js';
import { readNowaitSupported } from '../volume/helpers/fs-caps.js';
/** Random payloads replay under EBSD_TEST_SEED (test/crypto/seeded.ts); a failure prints the seed. */
const randomBytes = seededBytes('fuse/fuse-encrypted');
printSeedOnFailure();

// The FUSE adapter over a real EncryptedBlockDevice: writes reach the device
// through writeConsuming (encrypted in libfuse's request buffer, no copy),
// O_DIRECT reads through the page-cache fast path. Async I/O only: this
// process serves the mount.

const SS = 4096;
const SIZE = 8 * 1024 * 1024;
const log = createLogger({ level: 'silent' });

/**
 * A real mount (this process serves it) of one EncryptedBlockDevice over a
 * fresh image, set up in beforeAll and torn down in afterAll. `instrument`
 * may wrap the device's methods before it is exposed.
 */
function encryptedMount(name: string, opts: { writeBehind?: boolean }, instrument: (dev: EncryptedBlockDevice) => void) {
  const dir = tempDir(name);
  const mnt = join(dir, 'mnt');
  const m = { dir, img: join(dir, 'v.img'), file: join(mnt, VOL), key: volumeKey(), dev: null as unknown as EncryptedBlockDevice };
  const bfs = new BlockFileSystem({ logger: log, ...opts });
  const mount = new FuseMount(mnt, bfs.ops(), { logger: log });
  beforeAll(async () => {
    await makeImage(m.img, SIZE, m.key);
    m.dev = await openEncrypted(m.img, m.key, SIZE);
    instrument(m.dev);
    await mount.mount();
    bfs.add(m.dev);
  });
  afterAll(async () => {
    await mount.unmount();
    await sh('fusermount', ['-uz', mnt]).catch(() => {});
    await m.dev.close();
    await fsp.rm(dir, { recursive: true, force: true });
  });
  return m;
}

describe('FUSE block file over an EncryptedBlockDevice', () => {
  let consumed = 0;
  let behind = 0;
  const m = encryptedMount('fuse-enc', {}, (dev) => {
    const orig = dev.writeConsuming.bind(dev);
    dev.writeConsuming = (o, d) => (consumed++, orig(o, d));
    const origBehind = dev.writeBehind.bind(dev);
    dev.writeBehind = (o, d) => {
      const complete = origBehind(o, d);
      if (complete) behind++;
      return complete;
    };
  });
  const { dir, img, file, key } = m;

  it('aligned and unaligned writes via the mount: plaintext back through O_DIRECT, ciphertext on disk per node:crypto', async () => {
    const model = Buffer.alloc(SIZE);
    const fh = await fsp.open(file, 'r+');
    try {
      for (const [off, len] of [[0, 128 * 1024], [5 * SS, SS], [9 * SS + 7, 3 * SS], [64 * SS - 1, 2]] as const) {
        const d = randomBytes(len);
        await fh.write(d, 0, len, off);
        d.copy(model, off);
      }
      await fh.sync();
    } finally {
      await fh.close();
    }
    expect(consumed).toBeGreaterThan(0);
    const out = join(dir, 'out');
    await sh('dd', [`if=${file}`, `of=${out}`, 'bs=64k', 'count=8', 'iflag=direct', 'status=none']);
    const back = await fsp.readFile(out);
    expect(back.equals(model.subarray(0, 512 * 1024))).toBe(true);
    for (const s of [0, 5, 9, 10, 12, 63, 64]) {
      expect(xtsSector(key, 'dec', diskSector(img, s), BigInt(s) * 8n).equals(model.subarray(s * SS, (s + 1) * SS)), `sector ${s}`).toBe(true);
    }
  });

  it.skipIf(!readNowaitSupported)('write-behind: every O_DIRECT write is read back right after it (fio verify_backlog=1), 4 KiB and 128 KiB', async () => {
    // Aligned writes of up to 128 KiB are acknowledged before their completion runs;
    // a read of the same range straight after must still return them.
    const before = behind;
    for (const [bs, offset] of [['128k', '2m'], ['4k', '6m']] as const) {
      const out = await sh('fio', ['--name=wb', `--filename=${file}`, '--rw=randwrite', `--bs=${bs}`, '--direct=1',
        '--ioengine=psync', '--size=2m', `--offset=${offset}`, '--verify=crc32c', '--verify_backlog=1', '--do_verify=1',
        '--verify_state_save=0', '--output-format=json']);
      const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
      expect(job.error, bs).toBe(0);
      expect(job.write.io_bytes, bs).toBe(2 * 1024 * 1024);
    }
    expect(behind - before).toBeGreaterThanOrEqual(16 + 512);
    await m.dev.flush();
  });
});

describe('FUSE block file with write-behind off (ebsd daemon --no-write-behind)', () => {
  let offered = 0;
  const { dir, img, file, key } = encryptedMount('fuse-wt', { writeBehind: false }, (dev) => {
    const origBehind = dev.writeBehind.bind(dev);
    dev.writeBehind = (o, d) => (offered++, origBehind(o, d));
  });

  it('every acknowledged O_DIRECT write is already in the image (no flush), and write-behind is never offered', async () => {
    for (const [len, at] of [[SS, 3], [128 * 1024, 40]] as const) {
      const data = randomBytes(len);
      const src = join(dir, `in-${len}`);
      await fsp.writeFile(src, data);
      await sh('dd', [`if=${src}`, `of=${file}`, `bs=${len}`, 'count=1', `seek=${at * SS}`, 'oflag=direct,seek_bytes', 'conv=notrunc', 'status=none']);
      // dd has returned, so every write was acknowledged: the image must hold them now.
      for (let s = at; s < at + len / SS; s++) {
        const want = data.subarray((s - at) * SS, (s - at + 1) * SS);
        expect(xtsSector(key, 'dec', diskSector(img, s), BigInt(s) * 8n).equals(want), `sector ${s} of a ${len}-byte write`).toBe(true);
      }
    }
    expect(offered).toBe(0);
  });
});
