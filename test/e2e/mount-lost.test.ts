import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt, rawControlCall } from './helpers.js';

/**
 * The daemon's FUSE mount unmounted from outside (an operator's `fusermount -u`, a cleanup
 * script): the kernel tells the daemon nothing. Before, AttachVolume still answered "attached"
 * with a Path that did not exist (grant made, key unwrapped, catalog written) and `ebsd status`
 * showed nothing wrong. Now status names the problem and an attach is refused, changing nothing;
 * a restart mounts again and brings back the volumes recorded as attached.
 */
describe('the FUSE mount unmounted from outside (real daemon)', () => {
  const env = new Env('mount-lost');
  let first = '';
  let second = '';

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    first = (await env.api('ebsd.CreateVolume', { Size: '4MiB', Name: 'first' })).VolumeId;
    second = (await env.api('ebsd.CreateVolume', { Size: '4MiB', Name: 'second' })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: first });
  });
  afterAll(() => env.cleanup());

  it('status names it, AttachVolume is refused and changes nothing; a restart serves again', async () => {
    expect((await env.api('ebsd.Status')).Daemon.Problem).toBeUndefined();
    const u = spawnSync('fusermount', ['-u', env.mnt], { encoding: 'utf8' });
    expect(u.status, u.stderr).toBe(0);
    expect(existsSync(env.file(first))).toBe(false);

    const st = await env.api('ebsd.Status');
    expect(st.Daemon.Problem).toContain(`the FUSE mount ${env.mnt} was unmounted from outside`);

    const attach = await rawControlCall(env.state, 'ebsd.AttachVolume', { VolumeId: second });
    expect(attach.status).toBe(503);
    expect(attach.body.__type).toBe('ServiceUnavailable');
    expect(attach.body.message).toContain(`the FUSE mount ${env.mnt} was unmounted from outside`);
    const v = (await env.api('ebsd.DescribeVolumes', { VolumeIds: [second] })).Volumes[0];
    expect(v.State).toBe('available');
    expect(v.Attachments).toEqual([]);
    const cli = await env.cli(['attach', second]);
    expect(cli.code).toBe(10);
    expect(cli.stderr).toContain('ServiceUnavailable');

    await env.stop();
    await env.start();
    expect((await env.api('ebsd.Status')).Daemon.Problem).toBeUndefined();
    expect(existsSync(env.file(first))).toBe(true);
    await env.api('ebsd.AttachVolume', { VolumeId: second });
    expect(existsSync(env.file(second))).toBe(true);
  });
});
