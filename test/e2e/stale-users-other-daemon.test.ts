import { spawnSync } from 'node:child_process';
import { readFileSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseMetrics } from '../../src/cli/top.js';
import { Env, ensureBuilt, sh } from './helpers.js';

/**
 * Two state dirs, one mount path (README "State directory"): daemon A killed under a loop device at m1
 * and restarted with --mount m2 records m1 in mount.json; the operator detaches the loop device and
 * removes the dead mount; daemon B (another state dir) then mounts at m1. FUSE device numbers are
 * handed out lowest-free first, so B's mount may well get the device A recorded: A named B's loop
 * devices as its own (DeletedVolumeUsers, Problem, the metric), and after a restart claimed B's dead
 * mount too. Each mount now has a source of its own (`ebsd:<nonce>`), recorded and matched.
 * Real daemons, real loop devices, real SIGKILLs.
 */

interface DeletedUsers { VolumeId: string; LoopDevices?: string[]; CutOffHandles?: number }
interface Status { Daemon: { Problem?: string; MetricsUrl: string; DeletedVolumeUsers?: DeletedUsers[] } }

interface MountJson { MountDir: string; Device: string; Source: string; Earlier: { MountDir: string; Device: string; Source: string }[] }
const record = (env: Env): MountJson => JSON.parse(readFileSync(join(env.state, 'mount.json'), 'utf8')) as MountJson;
const fuseSourceAt = (dir: string): string[] =>
  readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')).filter((f) => f[4] === dir)
    .map((f) => { const sep = f.indexOf('-', 6); return `${f[2]} ${f[sep + 1]} ${f[sep + 2]}`; });

describe('a mount path reused by a daemon of another state dir (real daemons)', () => {
  const a = new Env('other-daemon-a');
  const b = new Env('other-daemon-b');
  const args = ['--metrics-listen', '127.0.0.1:0'];
  let m1 = '';
  let m2 = '';
  let loopB = '';

  beforeAll(async () => {
    ensureBuilt();
    m2 = join(a.dir, 'mnt2');
  }, 60_000);
  afterAll(async () => {
    if (loopB) spawnSync('losetup', ['-d', loopB]);
    await b.stop().catch(() => {});
    await a.stop().catch(() => {});
    spawnSync('fusermount', ['-uz', m2]);
    spawnSync('fusermount', ['-uz', a.mnt]);
    await b.cleanup();
    await a.cleanup();
  }, 60_000);

  it('each mount has a source of its own, recorded in mount.json and listed in mountinfo', async () => {
    await a.start(args);
    m1 = realpathSync(a.mnt);
    const r = record(a);
    expect(r.MountDir).toBe(m1);
    expect(r.Source).toMatch(/^ebsd:[0-9a-f]{16}$/);
    expect(fuseSourceAt(m1)).toEqual([`${r.Device} fuse.ebsd ${r.Source}`]);
  }, 60_000);

  it("A restarted elsewhere does not take B's loop devices at A's old path for its own, nor B's dead mount after another restart", async () => {
    const volA = (await a.api('ebsd.CreateVolume', { Size: '16MiB', Name: 'a' })).VolumeId;
    await a.api('ebsd.AttachVolume', { VolumeId: volA });
    const loopA = await a.losetup(volA);
    const first = record(a);
    await a.kill9();
    await a.start(args, { mount: m2 });
    expect(record(a).Earlier).toEqual([{ MountDir: m1, Device: first.Device, Source: first.Source }]);

    // The operator cleans up what A left at m1.
    await a.detachLoop(loopA);
    await sh('fusermount', ['-u', '-z', m1]);

    // B mounts at m1 (likely with A's old device number: said below, the test holds either way) with a loop device of its own.
    await b.start(args, { mount: m1 });
    const atB = record(b);
    expect(atB.MountDir).toBe(m1);
    expect(atB.Source).not.toBe(first.Source);
    // eslint-disable-next-line no-console
    console.log(`A's earlier mount at ${m1}: ${first.Device}; B's mount there: ${atB.Device}`);
    const volB = (await b.api('ebsd.CreateVolume', { Size: '16MiB', Name: 'b' })).VolumeId;
    await b.api('ebsd.AttachVolume', { VolumeId: volB });
    loopB = (await sh('losetup', ['-f', '--show', join(m1, volB)])).trim();
    expect(loopB).toMatch(/^\/dev\/loop\d+$/);

    // Nothing of B's in A's status or metrics (sysfs is read afresh after a second: status asked past that).
    const waitScan = async (): Promise<void> => { await new Promise((r) => setTimeout(r, 1_100)); };
    await waitScan();
    const st = (await a.api('ebsd.Status')) as Status;
    expect(st.Daemon.DeletedVolumeUsers).toBeUndefined();
    expect(st.Daemon.Problem).toBeUndefined();
    const m = parseMetrics(await (await fetch(st.Daemon.MetricsUrl)).text());
    expect(m.has(`ebsd_volume_stale_loop_devices{volume_id="${volB}"}`)).toBe(false);
    expect((await b.api('ebsd.Status') as Status).Daemon.DeletedVolumeUsers).toBeUndefined();

    // B killed under its loop device, A started again at m2: B's dead mount at m1 is not A's.
    await b.kill9();
    await a.stop();
    const logBefore = a.daemonLog().length;
    await a.start(args, { mount: m2 });
    expect(record(a).Earlier).toEqual([]);
    await waitScan();
    const again = (await a.api('ebsd.Status')) as Status;
    expect(again.Daemon.DeletedVolumeUsers).toBeUndefined();
    expect(again.Daemon.Problem).toBeUndefined();
    const log = a.daemonLog().slice(logBefore);
    expect(log).not.toContain('a dead FUSE mount');
    expect(log).not.toContain(volB);
  }, 120_000);
});

describe('the advice to remove a dead mount quotes its path (real daemon)', () => {
  const env = new Env('dead-mount-quoted');
  let spaced = '';
  let other = '';

  afterAll(async () => {
    await env.stop().catch(() => {});
    if (other) spawnSync('fusermount', ['-uz', other]);
    if (spaced) spawnSync('fusermount', ['-uz', spaced]);
    await env.cleanup();
  }, 60_000);

  it("a mount dir with a space and a quote: `fusermount -u -z '<dir>'`, a command a shell runs as one argument", async () => {
    ensureBuilt();
    spaced = join(realpathSync(env.dir), "old mnt's");
    other = join(env.dir, 'mnt-other');
    await env.start([], { mount: spaced });
    await env.kill9();
    const logBefore = env.daemonLog().length;
    await env.start([], { mount: other });
    const log = (await env.untilLog((l) => l.slice(logBefore).includes('a dead FUSE mount'))).slice(logBefore);
    const line = JSON.parse(log.split('\n').find((l) => l.includes('a dead FUSE mount'))!);
    expect(line.mount).toBe(spaced);
    const advice = /remove it with: (fusermount -u -z .*)$/.exec(line.msg as string)?.[1];
    expect(advice).toBe(`fusermount -u -z '${spaced.replace(/'/g, `'\\''`)}'`);
    // The shell reads it as the one path: `printf` in place of fusermount prints it back whole.
    const words = spawnSync('sh', ['-c', advice!.replace(/^fusermount -u -z /, "printf '%s\\n' ")], { encoding: 'utf8' }).stdout;
    expect(words).toBe(`${spaced}\n`);
  }, 60_000);
});
