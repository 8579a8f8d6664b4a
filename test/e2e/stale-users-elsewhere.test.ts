import { spawnSync } from 'node:child_process';
import { readFileSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseMetrics } from '../../src/cli/top.js';
import { Env, ensureBuilt } from './helpers.js';

/**
 * Stale users of volume files the daemon could not see before (README "State directory"):
 * - a daemon killed under a loop device and started again with another --mount: its dead mount
 *   stays at the old path, the kernel names the loop device's file `<old>/<vol>`, and neither the
 *   start log, `ebsd status` nor /metrics said anything (only `/<vol>` was looked for);
 * - a volume deleted while something still holds its file (detach --force, then DeleteVolume, or
 *   deleted after a restart elsewhere): no volume row shows it, so nothing was said at all.
 * A real daemon, real loop devices, a real SIGKILL.
 */

interface VolumeStatus { VolumeId: string; StaleLoopDevices?: string[]; CutOffHandles?: number; Problem?: string }
interface DeletedUsers { VolumeId: string; LoopDevices?: string[]; CutOffHandles?: number }
interface Status { Daemon: { Problem?: string; MetricsUrl: string; DeletedVolumeUsers?: DeletedUsers[] }; Volumes: VolumeStatus[] }

async function scrape(env: Env): Promise<Map<string, number>> {
  const url = ((await env.api('ebsd.Status')) as Status).Daemon.MetricsUrl;
  return parseMetrics(await (await fetch(url)).text());
}

/** Poll status (sysfs is read once a second at most; the kernel sends RELEASE after losetup -d returns) until `ok` holds; the last status either way. */
async function untilStatus(env: Env, ok: (st: Status) => boolean): Promise<Status> {
  let st = (await env.api('ebsd.Status')) as Status;
  for (let i = 0; i < 500 && !ok(st); i++) {
    await new Promise((r) => setTimeout(r, 20));
    st = (await env.api('ebsd.Status')) as Status;
  }
  return st;
}

function logLine(log: string, text: string): any {
  const line = log.split('\n').find((l) => l.includes(text));
  expect(line, log).toBeDefined();
  return JSON.parse(line!);
}

function readDevice(dev: string, block: number): number | null {
  return spawnSync('dd', [`if=${dev}`, 'of=/dev/null', 'bs=4096', 'count=1', `skip=${block}`, 'iflag=direct']).status;
}

describe('stale users under an earlier mount dir, and of deleted volumes (real daemon)', () => {
  const env = new Env('stale-elsewhere');
  const args = ['--metrics-listen', '127.0.0.1:0'];
  let other = '';
  let vol = '';
  let dev = '';

  beforeAll(async () => {
    ensureBuilt();
    other = join(env.dir, 'mnt-other');
    await env.start(args);
    vol = (await env.api('ebsd.CreateVolume', { Size: '16MiB', Name: 'elsewhere' })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
  }, 60_000);
  afterAll(async () => {
    await env.stop().catch(() => {});
    spawnSync('fusermount', ['-uz', other]);
    await env.cleanup();
  }, 60_000);

  it('killed under a loop device, restarted with another --mount: the start logs the loop device and the dead mount (how to remove it), status names the old path, the metric counts it', async () => {
    dev = await env.losetup(vol);
    expect(readDevice(dev, 0)).toBe(0);
    await env.kill9();
    const logBefore = env.daemonLog().length;
    await env.start(args, { mount: other });
    const old = join(realpathSync(env.dir), 'mnt');
    expect(JSON.parse(readFileSync(join(env.state, 'mount.json'), 'utf8'))).toMatchObject({ MountDir: realpathSync(other), Earlier: [{ MountDir: old }] });
    expect(readDevice(dev, 3500)).not.toBe(0); // really stale

    const log = (await env.untilLog((l) => l.slice(logBefore).includes('still bound to a file of'))).slice(logBefore);
    const line = logLine(log, 'still bound to a file of');
    expect(line).toMatchObject({ level: 40, volumeId: vol, loopDevices: [dev], mounts: [old] });
    expect(line.msg).toContain(`loop device ${dev} still bound to a file of ${vol} that a previous daemon served at ${old}`);
    expect(line.msg).toContain(`set up a new one over ${join(other, vol)}`);
    const dead = logLine(log, 'a dead FUSE mount');
    expect(dead).toMatchObject({ level: 40, mount: old });
    expect(dead.source).toMatch(/^ebsd:[0-9a-f]{16}$/);
    expect(dead.msg).toContain(`fusermount -u -z ${old}`);

    const v = ((await env.api('ebsd.Status')) as Status).Volumes.find((x) => x.VolumeId === vol)!;
    expect(v.StaleLoopDevices).toEqual([dev]);
    expect(v.Problem).toContain(`loop device ${dev} still bound to a file of this volume that a previous daemon served at ${old}`);
    expect((await scrape(env)).get(`ebsd_volume_stale_loop_devices{volume_id="${vol}"}`)).toBe(1);
  }, 90_000);

  it('that volume detached and deleted: Daemon.DeletedVolumeUsers and Daemon.Problem name it, the metric keeps its id; a second restart elsewhere still logs it at start; gone after losetup -d', async () => {
    await env.api('ebsd.DetachVolume', { VolumeId: vol });
    await env.api('ebsd.DeleteVolume', { VolumeId: vol });
    const old = join(realpathSync(env.dir), 'mnt');
    let st = (await env.api('ebsd.Status')) as Status;
    expect(st.Volumes.find((x) => x.VolumeId === vol)).toBeUndefined();
    expect(st.Daemon.DeletedVolumeUsers).toEqual([{ VolumeId: vol, LoopDevices: [dev] }]);
    expect(st.Daemon.Problem).toContain(`loop device ${dev} still bound to a file of ${vol}, a volume no longer in the catalog (deleted), that a previous daemon served at ${old}`);
    expect((await scrape(env)).get(`ebsd_volume_stale_loop_devices{volume_id="${vol}"}`)).toBe(1);

    // Stopped and started again at the same (new) mount: the earlier dead mount was carried in mount.json.
    expect(await env.stop()).toBe(0);
    const logBefore = env.daemonLog().length;
    await env.start(args, { mount: other });
    const log = (await env.untilLog((l) => l.slice(logBefore).includes('no longer in the catalog'))).slice(logBefore);
    expect(logLine(log, 'no longer in the catalog')).toMatchObject({ level: 40, volumeId: vol, deleted: true, loopDevices: [dev], mounts: [old] });

    await env.detachLoop(dev);
    st = await untilStatus(env, (s) => s.Daemon.DeletedVolumeUsers === undefined);
    expect(st.Daemon.DeletedVolumeUsers).toBeUndefined();
    expect(st.Daemon.Problem).toBeUndefined();
    expect((await scrape(env)).has(`ebsd_volume_stale_loop_devices{volume_id="${vol}"}`)).toBe(false);
  }, 90_000);

  it('detach --force with a loop device over the file, then DeleteVolume: the daemon says so (DeletedVolumeUsers, Problem, the metric by volume id) until losetup -d', async () => {
    const gone = (await env.api('ebsd.CreateVolume', { Size: '16MiB', Name: 'deleted' })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: gone });
    const loop = (spawnSync('losetup', ['-f', '--show', join(other, gone)], { encoding: 'utf8' }).stdout ?? '').trim();
    expect(loop).toMatch(/^\/dev\/loop\d+$/);
    try {
      const forced = await env.cli(['detach', gone, '--force']);
      expect(forced.code, forced.stderr).toBe(0);
      await env.api('ebsd.DeleteVolume', { VolumeId: gone });
      expect(readDevice(loop, 100)).not.toBe(0);

      // The cut-off handle is counted at once, the loop device once sysfs is read again (at most a second later).
      const st = await untilStatus(env, (s) => s.Daemon.DeletedVolumeUsers?.[0]?.LoopDevices !== undefined);
      expect(st.Daemon.DeletedVolumeUsers).toEqual([{ VolumeId: gone, LoopDevices: [loop], CutOffHandles: 1 }]);
      expect(st.Daemon.Problem).toContain(`1 handle of the file of ${gone}, a volume no longer in the catalog (deleted), removed while open (a forced detach) still open (loop device ${loop}: unmount what is on it and losetup -d ${loop})`);
      const m = await scrape(env);
      expect(m.get(`ebsd_volume_cut_off_handles{volume_id="${gone}"}`)).toBe(1);
      expect(m.get(`ebsd_volume_stale_loop_devices{volume_id="${gone}"}`)).toBe(0);
    } finally {
      spawnSync('losetup', ['-d', loop]);
    }
    const after = await untilStatus(env, (s) => s.Daemon.DeletedVolumeUsers === undefined);
    expect(after.Daemon.DeletedVolumeUsers).toBeUndefined();
    expect(after.Daemon.Problem).toBeUndefined();
    expect((await scrape(env)).has(`ebsd_volume_cut_off_handles{volume_id="${gone}"}`)).toBe(false);
  }, 90_000);
});
