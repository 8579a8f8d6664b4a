/**
 * The I/O tests with TMPDIR on a tmpfs (issue: the suite must pass on tmpfs
 * as on ext4). Mounts a tmpfs of its own, runs the volume and FUSE I/O test
 * files in a child vitest with TMPDIR there, and unmounts it, also when the
 * run fails. On tmpfs the page-cache fast paths are off (no RWF_NOWAIT
 * reads: test/volume/helpers/fs-caps.ts) and every read takes the pool.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '..', '..');
/** The files whose images, backing files and page-cache behaviour live under TMPDIR. */
const FILES = [
  'test/volume/native-io.test.ts',
  'test/volume/block-device.test.ts',
  'test/volume/block-device-fastpath.test.ts',
  'test/volume/read-ahead-write-behind.test.ts',
  'test/volume/plain-volume.test.ts',
];

describe('TMPDIR on tmpfs', () => {
  it('the volume I/O tests pass with their files on a tmpfs', () => {
    const at = mkdtempSync('/tmp/ebsd-tmpfs-');
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=512m,mode=1777', 'ebsd-test-tmpfs', at], { encoding: 'utf8' });
    expect(m.status, m.stderr).toBe(0);
    try {
      const mounted = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === at);
      expect(mounted).toMatch(/ - tmpfs /);
      const r = spawnSync(process.execPath, [join(ROOT, 'node_modules', 'vitest', 'vitest.mjs'), 'run', '--reporter=verbose', ...FILES], {
        cwd: ROOT, env: { ...process.env, TMPDIR: at, NO_COLOR: '1', FORCE_COLOR: '0' }, encoding: 'utf8', timeout: 240_000, maxBuffer: 64 << 20,
      });
      const out = (r.stdout + r.stderr).replace(/\x1b\[[0-9;]*m/g, '');
      expect(r.status, out.slice(-4000)).toBe(0);
      expect(out).not.toMatch(/\d+ failed/);
      // Every file ran (read-ahead-write-behind's fast-path suites skip as a whole on tmpfs), and the
      // tmpfs-only assertion with them: preadNowait reports EOPNOTSUPP there.
      expect(Number(/Test Files\s+(\d+) passed/.exec(out)?.[1])).toBeGreaterThanOrEqual(FILES.length - 1);
      expect(out).toMatch(/preadNowait answers EOPNOTSUPP where the filesystem has no RWF_NOWAIT reads/);
    } finally {
      const u = spawnSync('umount', [at]);
      if (u.status !== 0) spawnSync('umount', ['-l', at]);
      rmSync(at, { recursive: true, force: true });
    }
    expect(readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(at);
  }, 300_000);
});
