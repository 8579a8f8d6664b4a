import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, rmSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt, rawControlCall } from './helpers.js';

/**
 * `<state>/volumes` on a tmpfs of its own (1 MiB), filled to the last block: the catalog and
 * the image locks cannot be written, while the audit log (in `<state>/kms`, on the test's
 * filesystem) still takes every event, so what answers is the volume operation's own failure.
 * Every such answer names the disk-full condition and its file, and leaves nothing behind that
 * a retry once there is room would trip over.
 */
describe('the volumes directory full (real daemon, tmpfs)', () => {
  const env = new Env('volumes-full');
  let volumes = '';
  let vol = '';
  let mounted = false;

  const fill = (): void => {
    const st = statfsSync(volumes);
    const r = spawnSync('fallocate', ['-l', String(st.bavail * st.bsize), join(volumes, 'filler')], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const after = statfsSync(volumes);
    expect(after.bavail).toBe(0);
  };

  beforeAll(async () => {
    ensureBuilt();
    volumes = join(env.state, 'volumes');
    mkdirSync(volumes, { recursive: true, mode: 0o700 });
    const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m,mode=0700', 'tmpfs', volumes], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    mounted = true;
    await env.start();
    vol = (await env.api('ebsd.CreateVolume', { Size: '4MiB', Name: 'full' })).VolumeId;
  });
  afterAll(async () => {
    await env.stop();
    if (mounted) spawnSync('umount', [volumes]);
    await env.cleanup();
  });

  it('CreateVolume and AttachVolume name ENOSPC and the file; a retry with room attaches at once', async () => {
    fill();
    const create = await rawControlCall(env.state, 'ebsd.CreateVolume', { Size: '4MiB', Name: 'no-room' });
    expect(create.status).toBe(500);
    expect(create.body.__type).toBe('InternalFailure');
    expect(create.body.message).toMatch(new RegExp(`no space left on device \\(ENOSPC\\) writing ${volumes}/`));
    const listed = (await env.api('ebsd.DescribeVolumes', {})).Volumes.map((v: { VolumeId: string }) => v.VolumeId);
    expect(listed).toEqual([vol]);
    expect(readdirSync(volumes).filter((f) => f.endsWith('.img'))).toEqual([`${vol}.img`]);

    const attach = await rawControlCall(env.state, 'ebsd.AttachVolume', { VolumeId: vol });
    expect(attach.status).toBe(500);
    expect(attach.body.message).toBe(`volume ${vol}: could not create its attach lock ${volumes}/${vol}.img.lock: no space left on device (ENOSPC)`);
    // The lock the failed attach began is gone: left empty, it read as another attach under way.
    expect(readdirSync(volumes).filter((f) => f.endsWith('.lock'))).toEqual([]);

    rmSync(join(volumes, 'filler'));
    const retry = await rawControlCall(env.state, 'ebsd.AttachVolume', { VolumeId: vol });
    expect(retry.body.__type).toBeUndefined();
    expect(retry.body).toMatchObject({ VolumeId: vol, State: 'attached' });
    await env.api('ebsd.DetachVolume', { VolumeId: vol });
  });
});
