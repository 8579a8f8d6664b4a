import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from './helpers.js';

/** Whether /proc/self/mountinfo lists a mount at `dir` (field 5; the paths here have no characters it escapes). */
const mountedAt = (dir: string): boolean => readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === dir);

/**
 * `--mount` given as a path through a symlink (`/var/run/…` on Debian is one): the kernel lists
 * the mount under the resolved path and fusermount will not unmount through a symlink. A stop
 * logged "FUSE mount already gone" and left the mount behind, dead ("Transport endpoint is not
 * connected"), until the next start cleared it.
 */
describe('--mount through a symlink (real daemon)', () => {
  const env = new Env('mount-link');
  let real = '';
  let link = '';

  beforeAll(() => {
    ensureBuilt();
    real = join(env.dir, 'real-mnt');
    link = join(env.dir, 'link-mnt');
    mkdirSync(real);
    symlinkSync(real, link);
  });
  afterAll(async () => {
    await env.stop();
    if (mountedAt(real)) spawnSync('umount', ['-l', real]);
    await env.cleanup();
  });

  it('serves under the link, and a stop unmounts it', async () => {
    await env.start(['--mount', link]);
    expect(mountedAt(real)).toBe(true);
    const vol = (await env.api('ebsd.CreateVolume', { Size: '4MiB', Name: 'linked' })).VolumeId;
    const att = await env.api('ebsd.AttachVolume', { VolumeId: vol });
    expect(att.Path).toBe(join(link, vol));
    expect(existsSync(join(link, vol))).toBe(true);
    expect((await env.api('ebsd.Status')).Daemon.Problem).toBeUndefined();

    expect(await env.stop()).toBe(0);
    expect(mountedAt(real)).toBe(false);
    expect(readdirSync(real)).toEqual([]);
    expect(env.daemonLog()).toContain('"FUSE unmounted"');
    expect(env.daemonLog()).not.toContain('FUSE mount already gone');
  });
});
