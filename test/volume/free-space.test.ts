import { spawnSync } from 'node:child_process';
import { closeSync, openSync, readFileSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BEHIND_MIN_FREE, FreeSpaceGate } from '../../src/volume/free-space.js';
import { tempDir } from '../helpers/temp-dir.js';

// FreeSpaceGate keeps write-behind off near a full filesystem, so that an ENOSPC reaches the
// writer instead of a flush after the write was acknowledged (README, "Durability and the data
// path"). It asks statfs only now and then (every RECHECK_BYTES or RECHECK_MS): the 512 MiB
// margin must cover what is written behind in between, on the whole filesystem. Real tmpfs
// (root), real statfs; the clock is injected, so nothing here depends on how fast it runs.

const MiB = 1024 * 1024;

describe('FreeSpaceGate on a real filesystem shared by several volumes', () => {
  const t = tempDir('ebsd-free-space-');
  const at = join(t.dir, 'fs');
  const fds: number[] = [];
  let mounted = false;

  beforeAll(() => {
    spawnSync('mkdir', ['-p', at]);
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=640m', 'ebsd-test-free-space', at], { encoding: 'utf8' });
    expect(m.status, m.stderr).toBe(0);
    mounted = true;
  });
  afterAll(() => {
    for (const fd of fds) closeSync(fd);
    if (mounted) {
      const u = spawnSync('umount', [at]);
      if (u.status !== 0) spawnSync('umount', ['-l', at]);
    }
    t.cleanup();
    expect(readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(at);
  });

  const open = (name: string): number => {
    const fd = openSync(join(at, name), 'w+');
    fds.push(fd);
    return fd;
  };

  it('counts the bytes written behind by every volume of the filesystem: two volumes cannot each spend a recheck\'s worth of the margin', () => {
    let now = 0;
    const clock = (): number => now;
    const a = new FreeSpaceGate(open('vol-a.img'), clock);
    const b = new FreeSpaceGate(open('vol-b.img'), clock);
    expect(statfsSync(at).bavail * statfsSync(at).bsize).toBeGreaterThanOrEqual(BEHIND_MIN_FREE);
    expect(a.allows(4096)).toBe(true);
    expect(b.allows(4096)).toBe(true);

    // Something else fills the filesystem: 100 MiB left, far below the margin.
    const st = statfsSync(at);
    const fill = spawnSync('fallocate', ['-l', String(st.bavail * st.bsize - 100 * MiB), join(at, 'filler')], { encoding: 'utf8' });
    expect(fill.status, fill.stderr).toBe(0);

    // Each volume alone stays under a recheck's worth of bytes, the two together do not:
    // the second must look again and refuse, or 80 MiB would be acknowledged into 100 MiB of room
    // (and with eight volumes, the whole margin).
    expect(a.allows(40 * MiB)).toBe(true);
    expect(b.allows(40 * MiB)).toBe(false);
    expect(a.allows(4096)).toBe(false);

    // Room again: the next look, a second later on the clock, allows it.
    spawnSync('rm', ['-f', join(at, 'filler')]);
    now += 1000;
    expect(b.allows(4096)).toBe(true);
    expect(a.allows(4096)).toBe(true);
  });
});
