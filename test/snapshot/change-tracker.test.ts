import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { statfsSync, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { BlockBitmap } from '../../src/snapshot/block-bitmap.js';
import { ChangeTracker, TrackingFiles, type TrackingState } from '../../src/snapshot/change-tracker.js';
import { PlainBlockDevice } from '../../src/volume/plain-block-device.js';
import { openBackingFile } from '../../src/volume/backing-file.js';
import { LUKS2_DATA_OFFSET } from '../../src/volume/luks2-json.js';
import { EIO, toErrno } from '../../src/fuse/errno.js';
import { BEHIND_MIN_FREE } from '../../src/volume/free-space.js';
import { nativeIo } from '../../src/volume/native-io.js';
import { dataSegmentBytes, freshImage, VOL } from '../volume/helpers/image.js';

/**
 * Changed-block tracking when its file cannot be written (docs/architecture.md
 * §12.3): "if tracking is lost, the next snapshot is full, never wrong" must
 * hold after a crash too, so a write never passes while the file on disk still
 * says clean. The tracking files and the data path are the real ones; the
 * failures are injected by a TrackingFiles whose writes fail as a full disk
 * (ENOSPC on atomicWrite's temp file) and whose removals fail as a broken one.
 */

const B = 512 * 1024;
const SIZE = 4 << 20;
const OLD_BASE = 'snap-0123456789abcdef0';

class FaultyTrackingFiles extends TrackingFiles {
  /** markDirty / saveClean fail as atomicWrite does on a full disk. */
  full = false;
  /** remove fails as on a read-only or failing filesystem. */
  removeFails = false;

  override async markDirty(volumeId: string): Promise<void> {
    if (this.full) throw errno('ENOSPC', 'no space left on device, write', this.path(volumeId));
    return super.markDirty(volumeId);
  }

  override async saveClean(volumeId: string, s: TrackingState): Promise<void> {
    if (this.full) throw errno('ENOSPC', 'no space left on device, write', this.path(volumeId));
    return super.saveClean(volumeId, s);
  }

  override async remove(volumeId: string): Promise<void> {
    if (this.removeFails) throw errno('EROFS', 'read-only file system, unlink', this.path(volumeId));
    return super.remove(volumeId);
  }
}

function errno(code: string, what: string, path: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: ${what} '${path}'`), { code, path });
}

let t: Awaited<ReturnType<typeof freshImage>>['t'];
let img: string;
let files: FaultyTrackingFiles;
let dev: PlainBlockDevice;

beforeEach(async () => {
  ({ t, img } = await freshImage(SIZE));
  const dir = join(t.dir, 'tracking');
  await fsp.mkdir(dir, { mode: 0o700 });
  files = new FaultyTrackingFiles(dir);
  // The tracking a clean detach left: block 3 written since OLD_BASE.
  const changed = new BlockBitmap();
  changed.addRange(3, 3);
  await files.saveClean(VOL, { base: OLD_BASE, changed });
  dev = new PlainBlockDevice({ volumeId: VOL, size: SIZE, dataOffset: LUKS2_DATA_OFFSET, backing: await openBackingFile(img) });
});

afterEach(async () => {
  await dev.close();
  t.cleanup();
});

/** What the next attach (or snapshot) after a crash reads: a new TrackingFiles on the same directory. */
const afterCrash = (): Promise<TrackingState> => new TrackingFiles(files.dir).load(VOL);

function disk(pos: number, len: number): Buffer {
  return dataSegmentBytes(img, pos, len);
}

describe('changed-block tracking whose dirty mark cannot be written', () => {
  test('the clean file is removed before any write passes: after a crash the tracking is unknown, not the old base', async () => {
    files.full = true;
    const tracker = new ChangeTracker(VOL, files);
    dev.setWriteGate(tracker);
    expect(await tracker.ready()).toMatchObject({ code: 'ENOSPC' });
    expect(tracker.base).toBeUndefined();
    // Block 5 is written: the old tracking (block 3 since OLD_BASE) does not have it.
    const data = Buffer.alloc(8192, 0xa5);
    await dev.write(5 * B, data);
    expect(disk(5 * B, 8192).equals(data)).toBe(true);
    // SIGKILL now: nothing more is written; the next snapshot must not be an incremental from OLD_BASE.
    const next = await afterCrash();
    expect(next.base).toBeUndefined();
    expect([...next.changed.indexes(SIZE / B)]).toEqual([]);
    expect(tracker.writesRefused).toBe(false);
  });

  test('an unreadable tracking file is removed too (a read that failed once may succeed after the crash)', async () => {
    const real = files.load.bind(files);
    let failReads = true;
    files.load = (id) => (failReads ? Promise.reject(errno('EIO', 'i/o error, read', files.path(id))) : real(id));
    const tracker = new ChangeTracker(VOL, files);
    expect(await tracker.ready()).toMatchObject({ code: 'EIO' });
    failReads = false;
    expect((await afterCrash()).base).toBeUndefined();
    expect(tracker.writesRefused).toBe(false);
  });

  test('when the removal fails too, writes fail with EIO and leave the disk alone until the file says unknown', async () => {
    files.full = true;
    files.removeFails = true;
    const tracker = new ChangeTracker(VOL, files);
    dev.setWriteGate(tracker);
    expect(await tracker.ready()).toMatchObject({ code: 'ENOSPC' });
    expect(tracker.writesRefused).toBe(true);
    expect(tracker.tryPass(0, 4096)).toBe(false);

    const data = Buffer.alloc(4096, 0x5a);
    const refused = await dev.write(7 * B, data).then(() => undefined, (e: unknown) => e);
    expect(refused).toMatchObject({ code: 'VOLUME_IO' });
    expect((refused as Error).message).toContain(files.path(VOL));
    expect(toErrno(refused)).toBe(EIO);
    expect(disk(7 * B, 4096).equals(Buffer.alloc(4096))).toBe(true);
    // Nothing passed, so the clean file on disk is still right.
    expect((await afterCrash()).base).toBe(OLD_BASE);

    // The removal works again: the next write removes the file (durably), then passes.
    files.removeFails = false;
    await dev.write(7 * B, data);
    expect(tracker.writesRefused).toBe(false);
    expect(disk(7 * B, 4096).equals(data)).toBe(true);
    expect((await afterCrash()).base).toBeUndefined();
    expect(tracker.tryPass(0, 4096)).toBe(true);
  });

  test('a shut gate reopens through a dirty mark when space comes back but the file still cannot be removed', async () => {
    files.full = true;
    files.removeFails = true;
    const tracker = new ChangeTracker(VOL, files);
    dev.setWriteGate(tracker);
    await tracker.ready();
    const data = Buffer.alloc(4096, 0x3c);
    await expect(dev.write(0, data)).rejects.toMatchObject({ code: 'VOLUME_IO' });
    files.full = false;
    await dev.write(0, data);
    expect(tracker.writesRefused).toBe(false);
    expect((await afterCrash()).base).toBeUndefined();
    expect(JSON.parse(await fsp.readFile(files.path(VOL), 'utf8'))).toMatchObject({ clean: false });
  });

  /** SectorDevice.submitWrite as the FUSE adapter calls it; `sync`: replied before submitWrite returned (write-behind). */
  function submit(off: number, data: Buffer, behind: boolean): Promise<{ err: unknown; n: number; sync: boolean }> {
    let sync = true;
    const r = new Promise<{ err: unknown; n: number; sync: boolean }>((res) => dev.submitWrite(off, data, behind, (err, n) => res({ err, n, sync })));
    sync = false;
    return r;
  }

  test.skipIf(nativeIo === null)('write-behind is not taken while the gate is arming or shut: the write gets EIO, nothing acknowledged is lost', async (ctx) => {
    const st = statfsSync(img);
    if (st.bavail * st.bsize < BEHIND_MIN_FREE) ctx.skip();
    const data = Buffer.alloc(4096, 0x6b);
    // Control: without a gate this device takes write-behind (replied at once).
    expect(await submit(0, data, true)).toEqual({ err: null, n: 4096, sync: true });
    await dev.flush();

    files.full = true;
    files.removeFails = true;
    const tracker = new ChangeTracker(VOL, files);
    dev.setWriteGate(tracker);
    // Submitted while arming, which ends shut: written through, so the refusal reaches the caller.
    const whileArming = await submit(7 * B, data, true);
    expect(whileArming.sync).toBe(false);
    expect(toErrno(whileArming.err)).toBe(EIO);
    expect(tracker.writesRefused).toBe(true);
    const whileShut = await submit(7 * B, data, true);
    expect(whileShut).toMatchObject({ sync: false, n: 0 });
    expect(toErrno(whileShut.err)).toBe(EIO);
    expect(disk(7 * B, 4096).equals(Buffer.alloc(4096))).toBe(true);
    await dev.flush(); // nothing acknowledged was lost

    // The disk comes back: the next write reopens the gate, then write-behind and flush work again.
    files.full = false;
    files.removeFails = false;
    expect(await submit(7 * B, data, true)).toMatchObject({ err: null, n: 4096 });
    expect(tracker.writesRefused).toBe(false);
    expect(await submit(6 * B, data, true)).toEqual({ err: null, n: 4096, sync: true });
    await dev.flush();
    expect(disk(6 * B, 4096).equals(data)).toBe(true);
  });
});
