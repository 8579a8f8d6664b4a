import { spawnSync } from 'node:child_process';
import { closeSync, fdatasyncSync, openSync, readSync, statfsSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BEHIND_MIN_FREE } from '../../src/volume/free-space.js';
import { LUKS2_DATA_OFFSET } from '../../src/volume/luks2-json.js';
import { Env, ensureBuilt } from './helpers.js';

// The backing store refuses a write (README, "Durability and the data path"). The daemon runs
// under RLIMIT_FSIZE (prlimit), so every pwrite of its image past LIMIT fails with EFBIG, as a
// full filesystem fails it with ENOSPC (both are "no room" to ebsd): deterministic, on the real
// filesystem of the test dir, and "space comes back" is `prlimit --pid` raising the limit.

const MiB = 1024 * 1024;
const SS = 4096;
/** The image may grow to 8 MiB of data; a volume offset of 8 MiB or more cannot be written. */
const LIMIT = LUKS2_DATA_OFFSET + 8 * MiB;
const FULL_AT = 32 * MiB;
const LOST_AT = 40 * MiB;

const block = (b: number): Buffer => Buffer.alloc(SS, b);

function errnoOf(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e);
  }
}

function readBlock(file: string, pos: number): Buffer {
  const fd = openSync(file, 'r');
  try {
    const b = Buffer.alloc(SS);
    readSync(fd, b, 0, SS, pos);
    return b;
  } finally {
    closeSync(fd);
  }
}

/** Whether the daemon writes behind on this directory's filesystem (BackingIo.roomForBehind: not loop, nbd or an anonymous device, 512 MiB free). */
function writeBehindPossible(dir: string): boolean {
  const dev = statSync(dir, { bigint: true }).dev;
  const major = Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn));
  const st = statfsSync(dir);
  return major !== 0 && major !== 7 && major !== 43 && st.bavail * st.bsize >= BEHIND_MIN_FREE;
}

describe('a backing store with no room (real daemon under RLIMIT_FSIZE, FUSE mount)', () => {
  const env = new Env('store-full');
  let vol = '';

  /** The daemon's limit on file size, as a running process: raised is "space freed". */
  const setLimit = (fsize: string): void => {
    const r = spawnSync('prlimit', ['--pid', String(env.pid), `--fsize=${fsize}`], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
  };

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    vol = (await env.api('ebsd.CreateVolume', { Size: '64MiB', Name: 'store-full' })).VolumeId;
    await env.stop();
  });
  afterAll(() => env.cleanup());

  it('write-through: the write fails with ENOSPC, acknowledged blocks stay, the daemon serves on and writes again once there is room', async () => {
    await env.start(['--no-write-behind'], { wrap: ['prlimit', `--fsize=${LIMIT}:unlimited`] });
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    const fd = openSync(env.file(vol), 'r+');
    try {
      expect(writeSync(fd, block(1), 0, SS, 0)).toBe(SS);
      fdatasyncSync(fd);
      expect(errnoOf(() => writeSync(fd, block(2), 0, SS, FULL_AT))).toBe('ENOSPC');
      // A write straddling the limit: refused, and the block inside it keeps what was acknowledged.
      expect(writeSync(fd, block(3), 0, SS, 8 * MiB - SS)).toBe(SS);
      expect(errnoOf(() => writeSync(fd, Buffer.alloc(2 * SS, 4), 0, 2 * SS, 8 * MiB - SS))).toBe('ENOSPC');
      fdatasyncSync(fd);
    } finally {
      closeSync(fd);
    }
    const log = await env.untilLog(/"volumeId":"vol-[0-9a-f]+","sector":\d+,"err":\{[^}]*no space left on the backing store \(EFBIG\)/);
    expect(log).toContain(vol);
    expect(readBlock(env.file(vol), 0).equals(block(1))).toBe(true);
    // As on a disk, a failed write leaves each block of its range either as it was or as written, never a mix.
    const straddled = readBlock(env.file(vol), 8 * MiB - SS);
    expect(straddled.equals(block(3)) || straddled.equals(block(4)), `block below the limit holds ${straddled.subarray(0, 8).toString('hex')}…`).toBe(true);
    expect(readBlock(env.file(vol), FULL_AT).equals(Buffer.alloc(SS))).toBe(true);

    setLimit('unlimited');
    const again = openSync(env.file(vol), 'r+');
    try {
      expect(writeSync(again, block(5), 0, SS, FULL_AT)).toBe(SS);
      fdatasyncSync(again);
    } finally {
      closeSync(again);
    }
    expect(readBlock(env.file(vol), FULL_AT).equals(block(5))).toBe(true);
    await env.untilClosed(vol);
    await env.api('ebsd.DetachVolume', { VolumeId: vol });
    await env.stop();
  }, 60_000);

  it('write-behind: a write acknowledged and then lost makes every later flush fail with EIO (not the ENOSPC of the moment), until a re-attach', async (ctx) => {
    if (!writeBehindPossible(env.dir)) ctx.skip();
    await env.start([], { wrap: ['prlimit', `--fsize=${LIMIT}:unlimited`] });
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    const fd = openSync(env.file(vol), 'r+');
    let closeErr: string | undefined;
    let lostAt = -1;
    try {
      expect(writeSync(fd, block(6), 0, SS, 0)).toBe(SS);
      fdatasyncSync(fd);
      // Aligned, 4 KiB, free space aplenty: written behind, acknowledged before its pwrite fails.
      // Unless the sync-write watchdog has just moved writes to the pool (a loaded machine): then
      // it is written through and refused at once (ENOSPC); try the next block until one is taken.
      for (let i = 0; lostAt < 0 && i < 200; i++) {
        const at = LOST_AT + i * SS;
        const err = errnoOf(() => writeSync(fd, block(7), 0, SS, at));
        if (err === undefined) lostAt = at;
        else {
          expect(err).toBe('ENOSPC');
          await new Promise((r) => setTimeout(r, 50));
        }
      }
      expect(lostAt).toBeGreaterThanOrEqual(0);
      await env.untilLog('write-behind failed after its reply');
      // README: "every later flush of the volume fails with EIO". The loss is permanent: it is
      // no "no space" answer, which would be wrong once the space is back.
      expect(errnoOf(() => fdatasyncSync(fd))).toBe('EIO');
      setLimit('unlimited');
      expect(errnoOf(() => fdatasyncSync(fd))).toBe('EIO');
    } finally {
      closeErr = errnoOf(() => closeSync(fd));
    }
    expect(closeErr).toBe('EIO'); // close(2) flushes too
    await env.untilClosed(vol);
    const detach = await env.cli(['detach', vol]);
    expect(detach.code, detach.stderr).toBe(10);
    expect(detach.stderr).toMatch(/last flush failed/);
    // Attached again, the volume is whole: what was fsync'd is there, the lost block holds what it held.
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    expect(readBlock(env.file(vol), 0).equals(block(6))).toBe(true);
    expect(readBlock(env.file(vol), FULL_AT).equals(block(5))).toBe(true);
    expect(readBlock(env.file(vol), lostAt).equals(Buffer.alloc(SS))).toBe(true);
    const fd2 = openSync(env.file(vol), 'r+');
    try {
      expect(writeSync(fd2, block(8), 0, SS, FULL_AT)).toBe(SS);
      fdatasyncSync(fd2);
    } finally {
      closeSync(fd2);
    }
    expect(readBlock(env.file(vol), FULL_AT).equals(block(8))).toBe(true);
    expect(statSync(join(env.state, 'volumes', `${vol}.img`)).size).toBe(LUKS2_DATA_OFFSET + 64 * MiB);
  }, 60_000);
});
