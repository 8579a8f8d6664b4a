import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { statfsSync } from 'node:fs';
import { EncryptedBlockDevice } from '../../src/volume/encrypted-block-device.js';
import { nativeIo } from '../../src/volume/native-io.js';
import { BEHIND_MIN_FREE } from '../../src/volume/free-space.js';
import { tmpDir, freshImage } from './helpers/image.js';
import { openEncrypted, diskSector } from './helpers/device.js';
import { xtsSector } from './helpers/node-xts.js';
import { printSeedOnFailure, seeded } from '../crypto/seeded.js';

// SectorDevice.submitWrite, the FUSE adapter's one call per write request
// (docs/architecture.md §3.2-§3.3): exactly one reply; a write-behind reply comes
// at once and its completion runs in the very next nextTick, before anything a
// later event-loop phase could run (another request), so the bytes are in the
// image before any other request of the device is looked at.

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

const roomForWriteBehind = (): boolean => {
  const st = statfsSync(img);
  return st.bavail * st.bsize >= BEHIND_MIN_FREE;
};

/** Calls submitWrite and records every reply with whether it came synchronously. */
function submit(dev: EncryptedBlockDevice, off: number, data: Buffer, behind: boolean) {
  const replies: { err: unknown; n: number; sync: boolean }[] = [];
  let sync = true;
  const settled = new Promise<void>((r) => dev.submitWrite(off, data, behind, (err, n) => { replies.push({ err, n, sync }); r(); }));
  sync = false;
  return { replies, settled };
}

describe.skipIf(nativeIo === null)('submitWrite', () => {
  test('write-behind: one synchronous reply, the bytes in the image after the next nextTick', async (ctx) => {
    if (!roomForWriteBehind()) ctx.skip();
    const dev = await openEncrypted(img, key, SIZE);
    try {
      const plain = seeded('submit behind').bytes(2 * SS);
      const { replies, settled } = submit(dev, 4 * SS, Buffer.from(plain), true);
      expect(replies).toEqual([{ err: null, n: 2 * SS, sync: true }]);
      await new Promise<void>((r) => process.nextTick(r)); // queued after the completion
      for (const s of [4, 5]) expect(diskSector(img, s).equals(xtsSector(key, 'enc', plain.subarray((s - 4) * SS, (s - 3) * SS), BigInt(s) * 8n))).toBe(true);
      await settled;
      expect(replies).toHaveLength(1);
      await dev.flush();
    } finally {
      await dev.close();
    }
  });

  test('without write-behind (or unaligned): writeBehind is not offered, one reply once the bytes are written', async () => {
    const dev = await openEncrypted(img, key, SIZE);
    let offered = 0;
    const orig = dev.writeBehind.bind(dev);
    dev.writeBehind = (o, d) => (offered++, orig(o, d));
    try {
      const rnd = seeded('submit through');
      for (const [off, len, behind] of [[0, SS, false], [SS + 3, 100, true]] as const) {
        const plain = rnd.bytes(len);
        const { replies, settled } = submit(dev, off, Buffer.from(plain), behind);
        await settled;
        expect(replies).toEqual([{ err: null, n: len, sync: false }]);
        const back = Buffer.alloc(len);
        await dev.read(off, len, back);
        expect(back.equals(plain)).toBe(true);
      }
      expect(offered).toBe(1); // only the request that allowed it
    } finally {
      await dev.close();
    }
  });

  test('a refused write: one reply carrying the typed error', async () => {
    const dev = await openEncrypted(img, key, SIZE);
    try {
      const { replies, settled } = submit(dev, SIZE - SS, Buffer.alloc(2 * SS), true);
      await settled;
      expect(replies).toHaveLength(1);
      expect(replies[0].err).toMatchObject({ code: 'VOLUME_OUT_OF_RANGE' });
    } finally {
      await dev.close();
    }
  });
});
