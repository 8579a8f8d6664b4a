import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseMetrics } from '../../src/cli/top.js';
import { Env, ensureBuilt } from './helpers.js';

/**
 * What `ebsd status`, the daemon log and /metrics say about what still holds a volume file that is
 * no longer served (README "State directory"). Before, a loop device left over a daemon killed (or
 * stopped) under it, and one over a file a forced detach took away, answered EIO to everything while
 * status showed the volume attached, its key cached, no open handle and no Problem, the restart's log
 * said nothing, and no metric moved; and the FUSE mount unmounted from outside was shown by status
 * only, the log and /metrics silent. A real daemon, real loop devices, a real SIGKILL.
 */

interface VolumeStatus { VolumeId: string; OpenHandles?: number; StaleLoopDevices?: string[]; CutOffHandles?: number; Problem?: string }

async function volumeStatus(env: Env, volumeId: string): Promise<VolumeStatus> {
  const st = (await env.api('ebsd.Status')) as { Volumes: VolumeStatus[] };
  const v = st.Volumes.find((x) => x.VolumeId === volumeId);
  expect(v, volumeId).toBeDefined();
  return v!;
}

async function scrape(env: Env): Promise<Map<string, number>> {
  const url = ((await env.api('ebsd.Status')) as { Daemon: { MetricsUrl: string } }).Daemon.MetricsUrl;
  return parseMetrics(await (await fetch(url)).text());
}

/**
 * One direct read of 4 KiB block `block` of a block device: its exit status and what it said. Each
 * check reads a block not read before: the loop device reads its file through that file's page
 * cache, which still holds what it read while the file was served.
 */
function readDevice(dev: string, block: number): { status: number | null; stderr: string } {
  const r = spawnSync('dd', [`if=${dev}`, 'of=/dev/null', 'bs=4096', 'count=1', `skip=${block}`, 'iflag=direct'], { encoding: 'utf8' });
  return { status: r.status, stderr: r.stderr };
}

/** Poll status (the kernel sends FUSE RELEASE after losetup -d returns) until `ok` holds of the volume; its last status either way. */
async function untilVolume(env: Env, volumeId: string, ok: (v: VolumeStatus) => boolean): Promise<VolumeStatus> {
  let v = await volumeStatus(env, volumeId);
  for (let i = 0; i < 500 && !ok(v); i++) {
    await new Promise((r) => setTimeout(r, 20));
    v = await volumeStatus(env, volumeId);
  }
  return v;
}

describe('stale users of a volume file: status, log and metrics say so (real daemon)', () => {
  const env = new Env('stale-users');
  const args = ['--metrics-listen', '127.0.0.1:0'];
  let vol = '';

  beforeAll(async () => {
    ensureBuilt();
    await env.start(args);
    vol = (await env.api('ebsd.CreateVolume', { Size: '16MiB', Name: 'stale' })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
  }, 60_000);
  afterAll(() => env.cleanup(), 60_000);

  it('a loop device left over a killed daemon: the restart logs it, status names it in a Problem, the metric counts it, until losetup -d', async () => {
    const dev = await env.losetup(vol);
    expect(readDevice(dev, 0).status).toBe(0);
    await env.kill9();
    const logBefore = env.daemonLog().length;
    await env.start(args);

    // Really stale: the volume is served again, the loop device answers EIO.
    const read = readDevice(dev, 3500);
    expect(read.status).not.toBe(0);
    expect(read.stderr).toContain('Input/output error');

    const log = (await env.untilLog((l) => l.slice(logBefore).includes('still bound to a file of'))).slice(logBefore);
    const line = log.split('\n').find((l) => l.includes('still bound to a file of'));
    expect(line, log).toBeDefined();
    expect(JSON.parse(line!)).toMatchObject({ level: 40, volumeId: vol, loopDevices: [dev] });
    expect(line).toContain(`set up a new one over ${env.file(vol)}`);

    const v = await volumeStatus(env, vol);
    expect(v.OpenHandles).toBe(0);
    expect(v.StaleLoopDevices).toEqual([dev]);
    expect(v.Problem).toContain(`loop device ${dev} still bound to a file of this volume that a previous daemon served`);
    expect(v.Problem).toContain(`losetup -d ${dev}`);
    const cli = await env.cli(['status', '--output', 'json']);
    expect(cli.code).toBe(0);
    expect(cli.json().Volumes.find((x: VolumeStatus) => x.VolumeId === vol).StaleLoopDevices).toEqual([dev]);
    const tbl = await env.cli(['status', '--output', 'table']);
    expect(tbl.stdout).toContain(`\nPROBLEMS\n${vol}: loop device ${dev} still bound to a file of this volume`);

    let m = await scrape(env);
    expect(m.get(`ebsd_volume_stale_loop_devices{volume_id="${vol}"}`)).toBe(1);
    expect(m.get(`ebsd_volume_cut_off_handles{volume_id="${vol}"}`)).toBe(0);

    await env.detachLoop(dev);
    // sysfs is read once a second at most (shared by status and scrapes): polled.
    const after = await untilVolume(env, vol, (x) => x.StaleLoopDevices === undefined);
    expect(after.StaleLoopDevices).toBeUndefined();
    expect(after.Problem).toBeUndefined();
    m = await scrape(env);
    expect(m.get(`ebsd_volume_stale_loop_devices{volume_id="${vol}"}`)).toBe(0);
  }, 90_000);

  it('a loop device over a file a forced detach took away, the volume attached again under the same path: CutOffHandles until losetup -d', async () => {
    const dev = await env.losetup(vol);
    const forced = await env.cli(['detach', vol, '--force']);
    expect(forced.code, forced.stderr).toBe(0);
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    // The kernel still names the same path, and the loop device answers EIO.
    expect(readDevice(dev, 2500).status).not.toBe(0);

    const v = await volumeStatus(env, vol);
    expect(v.OpenHandles).toBe(0);
    expect(v.CutOffHandles).toBe(1);
    expect(v.StaleLoopDevices).toBeUndefined();
    expect(v.Problem).toContain('1 handle of a file of this volume removed while open (a forced detach) still open');
    expect((await scrape(env)).get(`ebsd_volume_cut_off_handles{volume_id="${vol}"}`)).toBe(1);

    await env.detachLoop(dev);
    const after = await untilVolume(env, vol, (x) => x.CutOffHandles === undefined);
    expect(after.CutOffHandles).toBeUndefined();
    expect(after.Problem).toBeUndefined();
    expect((await scrape(env)).get(`ebsd_volume_cut_off_handles{volume_id="${vol}"}`)).toBe(0);
  }, 90_000);

  it('a stop (SIGTERM) with a loop device over the file: the log says the daemon was stopping, not a forced detach; the restart names the loop device', async () => {
    const dev = await env.losetup(vol);
    const logBefore = env.daemonLog().length;
    expect(await env.stop()).toBe(0);
    const stopLog = env.daemonLog().slice(logBefore);
    const line = stopLog.split('\n').find((l) => l.includes('volume file removed while open'));
    expect(line, stopLog).toBeDefined();
    expect(JSON.parse(line!)).toMatchObject({ level: 40, volumeId: vol, openHandles: 1 });
    expect(line).toContain('(daemon stopping)');
    expect(stopLog).not.toContain('forced detach');

    await env.start(args);
    expect((await volumeStatus(env, vol)).StaleLoopDevices).toEqual([dev]);
    await env.detachLoop(dev);
    expect((await untilVolume(env, vol, (x) => x.StaleLoopDevices === undefined)).StaleLoopDevices).toBeUndefined();
  }, 90_000);

  it('the FUSE mount unmounted from outside: the log says so without anyone asking, and ebsd_fuse_mount_lost is 1', async () => {
    expect((await scrape(env)).get('ebsd_fuse_mount_lost')).toBe(0);
    const logBefore = env.daemonLog().length;
    const u = spawnSync('fusermount', ['-u', env.mnt], { encoding: 'utf8' });
    expect(u.status, u.stderr).toBe(0);
    // Nobody asks the daemon anything: its own watch finds it (every 5 s).
    const log = (await env.untilLog((l) => l.slice(logBefore).includes('was unmounted from outside'), 20_000)).slice(logBefore);
    const line = log.split('\n').find((l) => l.includes('was unmounted from outside'));
    expect(line, log).toBeDefined();
    expect(JSON.parse(line!)).toMatchObject({ level: 50, mount: env.mnt });
    await env.api('ebsd.Status');
    // Said once, not once per look (not once per tick of the watch either: test/e2e/ops-watch-cost.test.ts waits
    // two ticks, with strace on the daemon).
    expect(env.daemonLog().slice(logBefore).split('was unmounted from outside').length - 1).toBe(1);
  }, 60_000);
});
