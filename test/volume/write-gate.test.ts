import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { EncryptedBlockDevice } from '../../src/volume/encrypted-block-device.js';
import { PlainBlockDevice } from '../../src/volume/plain-block-device.js';
import { SectorDevice } from '../../src/volume/sector-device.js';
import { openBackingFile } from '../../src/volume/backing-file.js';
import { nativeIo, syncWriteGuard } from '../../src/volume/native-io.js';
import { LUKS2_DATA_OFFSET } from '../../src/volume/luks2-json.js';
import type { WriteGate } from '../../src/volume/write-gate.js';
import { openImageDataReader, type ImageDataReader } from '../../src/snapshot/volume-image.js';
import { BlockFileSystem, FuseMount } from '../../src/fuse/index.js';
import { createLogger } from '../../src/util/logger.js';
import { dataSegmentBytes, tmpDir, VOL, freshImage } from './helpers/image.js';
import { openEncrypted } from './helpers/device.js';
import { printSeedOnFailure, seeded } from '../crypto/seeded.js';
import { sh } from '../fuse/helpers.js';

// The write gate a snapshot installs on an attached volume (src/volume/write-gate.ts,
// docs/architecture.md §3.7): every data write, whichever path it takes (sync
// pwrite on the loop, the pool, write-behind, read-modify-write, O_DIRECT),
// asks the gate for the sector range it is about to write before any of its
// bytes reach the backing file; a gate that answers "wait" holds the bytes
// off the disk; withWritesPaused drains accepted writes, write-behind included.

printSeedOnFailure();

const SS = 4096;
const SIZE = 4 << 20;

let t: ReturnType<typeof tmpDir>;
let img: string;
let key: Buffer;
beforeEach(async () => {
  ({ t, img, key } = await freshImage(SIZE));
});
afterEach(() => t.cleanup());

/** Data-segment bytes [pos, pos + len) of the image as they are on disk now. */
function disk(pos: number, len: number): Buffer {
  return dataSegmentBytes(img, pos, len);
}

interface Call { kind: 'try' | 'pass'; pos: number; len: number; before: Buffer }

/** Records every call with the bytes on disk at that moment; tryPass answers `fast`. */
function recordingGate(fast = true): WriteGate & { calls: Call[] } {
  const calls: Call[] = [];
  return {
    calls,
    tryPass(pos, len) {
      calls.push({ kind: 'try', pos, len, before: disk(pos, len) });
      return fast;
    },
    async pass(pos, len) {
      calls.push({ kind: 'pass', pos, len, before: disk(pos, len) });
    },
  };
}

/**
 * The image's own read handle, as a snapshot's copy opens one beside the attached device
 * (src/snapshot/snapshot-manager.ts): O_DIRECT when the device's backing file is.
 */
function imageReader(dev: SectorDevice): Promise<ImageDataReader> {
  return openImageDataReader(img, LUKS2_DATA_OFFSET, VOL, { direct: dev.backingDirect === true });
}

/** One read on the pool through `r`: a round trip a write already on its way there would not be overtaken by. */
const poolRoundTrip = (r: ImageDataReader, pos: number, len: number): Promise<void> => r.read(pos, len, Buffer.alloc(len));

const sectorRange = (off: number, len: number): [number, number] => {
  const p = Math.floor(off / SS) * SS;
  return [p, Math.ceil((off + len) / SS) * SS - p];
};

type Mode = 'write' | 'consume' | 'behind' | 'pool' | 'direct';
const makers: [string, (direct: boolean) => Promise<SectorDevice>][] = [
  ['encrypted', async (direct) => openEncrypted(img, key, SIZE, await openBackingFile(img, undefined, { direct }))],
  ['plaintext', async (direct) => new PlainBlockDevice({ volumeId: VOL, size: SIZE, dataOffset: LUKS2_DATA_OFFSET, backing: await openBackingFile(img, undefined, { direct }) })],
];

describe.skipIf(nativeIo === null).each(makers)('write gate on the %s device', (_name, make) => {
  afterEach(() => syncWriteGuard.record(0)); // undo any trip()

  test.each<Mode>(['write', 'consume', 'behind', 'pool', 'direct'])('every write via %s asks the gate for its sector range before its bytes reach the disk', async (mode) => {
    const dev = await make(mode === 'direct');
    // One write first: it learns whether the file takes RWF_NOWAIT writes (ext4 does not).
    await dev.write(SIZE - SS, Buffer.alloc(SS, 1));
    const gate = recordingGate(true);
    dev.setWriteGate(gate);
    const rnd = seeded(`write-gate ${_name} ${mode}`);
    const model = Buffer.alloc(SIZE);
    const sizes = [512, 4096, 4096 * 3, 7000, 64 * 1024, 128 * 1024, 128 * 1024 + 512, 1 << 20];
    try {
      for (const len of sizes) {
        for (const aligned of [true, false]) {
          if (mode === 'behind' && (!aligned || len > 128 * 1024 || len % SS !== 0)) continue;
          const off = aligned ? Math.floor(rnd.int(SIZE - len) / SS) * SS : 1 + rnd.int(SIZE - len - 1);
          const data = rnd.bytes(len);
          data.copy(model, off);
          gate.calls.length = 0;
          if (mode === 'pool') syncWriteGuard.trip();
          if (mode === 'behind') {
            const complete = dev.writeBehind(off, data);
            expect(complete, 'write-behind accepted').not.toBeNull();
            complete!();
            await dev.flush();
          } else if (mode === 'consume') {
            await dev.writeConsuming(off, Buffer.from(data));
          } else {
            await dev.write(off, data);
          }
          const [p, l] = sectorRange(off, len);
          expect(gate.calls.map((c) => [c.pos, c.len]), `${len} B at ${off}`).toEqual([[p, l]]);
          // The pool path and O_DIRECT never write on the loop: they wait in pass().
          if (mode === 'pool' || mode === 'direct' || len > 128 * 1024) expect(gate.calls[0].kind).toBe('pass');
          // The gate saw the old bytes: none of the new ones were on disk yet.
          expect(gate.calls[0].before.equals(disk(p, l)), 'disk changed after the gate').toBe(false);
        }
      }
      const back = Buffer.alloc(SIZE - SS);
      await dev.read(0, SIZE - SS, back);
      expect(back.equals(model.subarray(0, SIZE - SS))).toBe(true);
    } finally {
      await dev.close();
    }
  });

  test.each<Mode>(['write', 'behind', 'direct'])('a gate answering "wait" holds a write via %s off the disk until pass() resolves', async (mode) => {
    const dev = await make(mode === 'direct');
    const reader = await imageReader(dev);
    let open!: () => void;
    const calls: [number, number][] = [];
    let tries = 0;
    dev.setWriteGate({
      tryPass: () => (tries++, false),
      pass: (pos, len) => (calls.push([pos, len]), new Promise<void>((r) => (open = r))),
    });
    const rnd = seeded(`write-gate wait ${_name} ${mode}`);
    try {
      for (const [off, len] of [[8 * SS, 2 * SS], [20 * SS + 100, 5000]] as const) {
        if (mode === 'behind' && off % SS !== 0) continue;
        calls.length = 0;
        const [p, l] = sectorRange(off, len);
        const old = disk(p, l);
        const data = rnd.bytes(len);
        let settled = false;
        let done: Promise<unknown>;
        if (mode === 'behind') {
          const complete = dev.writeBehind(off, data);
          expect(complete).not.toBeNull();
          complete!();
          done = dev.flush();
        } else {
          done = dev.write(off, data);
        }
        void done.then(() => (settled = true));
        await expect.poll(() => calls.length).toBe(1);
        expect(calls[0]).toEqual([p, l]);
        // A pool round trip (a read of the same range, as a snapshot's copy reads) cannot overtake a write that is not on its way.
        await poolRoundTrip(reader, p, l);
        expect(settled).toBe(false);
        expect(disk(p, l).equals(old), 'bytes reached the disk before pass() resolved').toBe(true);
        open();
        await done;
        expect(disk(p, l).equals(old)).toBe(false);
        const back = Buffer.alloc(len);
        await dev.read(off, len, back);
        expect(back.equals(data)).toBe(true);
      }
      if (mode !== 'direct') expect(tries).toBeGreaterThan(0);
    } finally {
      await reader.close();
      await dev.close();
    }
  });

  test('withWritesPaused waits for an acknowledged write-behind, holds new writes, and lets them go after', async () => {
    const dev = await make(false);
    const reader = await imageReader(dev);
    const rnd = seeded(`write-gate pause ${_name}`);
    try {
      for (const onPool of [false, true]) {
        const fill = onPool ? 8 : 7;
        const a = rnd.bytes(4 * SS);
        const complete = dev.writeBehind(0, a);
        expect(complete).not.toBeNull();
        if (onPool) syncWriteGuard.trip(); // the completion's pwrite goes to the pool
        let seen: Buffer | null = null;
        const paused = dev.withWritesPaused(async () => {
          seen = disk(0, 4 * SS);
          // A write arriving now is held: not accepted for write-behind, and write() waits.
          expect(dev.writeBehind(8 * SS, rnd.bytes(SS))).toBeNull();
          let wrote = false;
          const later = dev.write(16 * SS, Buffer.alloc(SS, fill)).then(() => (wrote = true));
          await poolRoundTrip(reader, 16 * SS, SS);
          await new Promise((r) => setImmediate(r));
          expect(wrote).toBe(false);
          expect(disk(16 * SS, SS).equals(Buffer.alloc(SS, fill))).toBe(false);
          return { later };
        });
        // The completion has not run: the pause must not start fn yet.
        await poolRoundTrip(reader, 0, SS);
        expect(seen).toBeNull();
        complete!();
        const { later } = await paused;
        expect(seen, 'fn ran before the write-behind was on disk').not.toBeNull();
        const back = Buffer.alloc(4 * SS);
        await dev.read(0, 4 * SS, back);
        expect(back.equals(a)).toBe(true);
        // What fn saw on disk is what the write-behind put there, as a snapshot's copy reads it.
        const raw = Buffer.alloc(4 * SS);
        await reader.read(0, 4 * SS, raw);
        expect(raw.equals(seen!)).toBe(true);
        await later;
        expect(disk(16 * SS, SS).equals(Buffer.alloc(SS, fill)) === (_name === 'plaintext')).toBe(true);
        syncWriteGuard.record(0);
      }
    } finally {
      await reader.close();
      await dev.close();
    }
  });

  test.each([false, true])('the image\'s own read handle (a snapshot\'s copy) sees the device\'s writes as on disk (ciphertext when encrypted), O_DIRECT %s; zeros past the end', async (direct) => {
    const dev = await make(direct);
    const reader = await imageReader(dev); // opened before the writes, as a copy's is while the volume is written
    try {
      expect(dev.backingDirect === true).toBe(direct);
      const data = seeded(`raw ${_name} ${direct}`).bytes(3 * SS);
      await dev.write(SS, data);
      await dev.write(SIZE - SS, data.subarray(0, SS));
      for (const [pos, len] of [[0, 5 * SS], [SS + 17, 4000], [SIZE - SS, SS]] as const) {
        const raw = Buffer.alloc(len);
        await reader.read(pos, len, raw);
        expect(raw.equals(disk(pos, len)), `${len} B at ${pos}`).toBe(true);
      }
      const raw = Buffer.alloc(3 * SS);
      await reader.read(SS, 3 * SS, raw);
      expect(raw.equals(data)).toBe(dev instanceof PlainBlockDevice);
      const back = Buffer.alloc(3 * SS);
      await dev.read(SS, 3 * SS, back);
      expect(back.equals(data)).toBe(true);
      // Past the end of the file: zeros (the copy clamps to the volume size, snapshot-manager.ts clampedReader).
      const tail = Buffer.alloc(2 * SS, 0xee);
      await reader.read(SIZE - SS, 2 * SS, tail);
      expect(tail.subarray(0, SS).equals(disk(SIZE - SS, SS))).toBe(true);
      expect(tail.subarray(SS).equals(Buffer.alloc(SS))).toBe(true);
    } finally {
      await reader.close();
      await dev.close();
    }
  });
});

describe.skipIf(nativeIo === null)('write gate through the mounted FUSE file', () => {
  test('writes through the mount (O_DIRECT, unaligned, up to 1 MiB) are all covered by gate calls made before their bytes landed', async () => {
    const dir = join(t.dir, 'mnt');
    const log = createLogger({ level: 'silent' });
    const dev: EncryptedBlockDevice = await openEncrypted(img, key, SIZE);
    const gate = recordingGate(true);
    dev.setWriteGate(gate);
    const bfs = new BlockFileSystem({ logger: log });
    const mount = new FuseMount(dir, bfs.ops(), { logger: log });
    await mount.mount();
    try {
      bfs.add(dev);
      const rnd = seeded('write-gate fuse');
      const model = Buffer.alloc(SIZE);
      const fh = await fsp.open(join(dir, VOL), 'r+');
      try {
        for (const [off, len] of [[0, 512], [SS, SS], [3 * SS + 5, 9000], [64 * SS, 128 * 1024], [1 << 20, 1 << 20], [(3 << 20) + 11, 70_000]] as const) {
          const d = rnd.bytes(len);
          await fh.write(d, 0, len, off);
          d.copy(model, off);
        }
        await fh.sync();
      } finally {
        await fh.close();
      }
      // Every written byte lies in a gated range; every gated range is whole sectors inside the volume.
      const covered = new Uint8Array(SIZE / SS);
      for (const c of gate.calls) {
        expect(c.pos % SS === 0 && c.len % SS === 0 && c.len > 0 && c.pos + c.len <= SIZE).toBe(true);
        covered.fill(1, c.pos / SS, (c.pos + c.len) / SS);
      }
      for (let s = 0; s < SIZE / SS; s++) {
        if (!model.subarray(s * SS, (s + 1) * SS).equals(Buffer.alloc(SS))) expect(covered[s], `sector ${s}`).toBe(1);
      }
      const back = Buffer.alloc(SIZE);
      await dev.read(0, SIZE, back);
      expect(back.equals(model)).toBe(true);
    } finally {
      await mount.unmount();
      await sh('fusermount', ['-uz', dir]).catch(() => {});
      await dev.close();
    }
  });
});
