import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from './helpers.js';

/**
 * What the daemon's own watches cost, seen from outside with strace on the real daemon:
 * - the mount-lost watch read /proc/self/mountinfo every 5 s for ever, and every Status, scrape and
 *   attach read it again, after the loss was seen (it cannot come back for that daemon);
 * - the stale loop device scan read sysfs (readdir of /sys/block, a backing_file per loop device)
 *   on every Status (`ebsd top` asks every second) and again on every scrape.
 */

/** strace -f on `pid`, opens only; its output (unbuffered stderr) collected as it comes. */
function traceOpens(pid: number): { proc: ChildProcess; text: () => string } {
  let out = '';
  const proc = spawn('strace', ['-f', '-qq', '-e', 'trace=openat', '-p', String(pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
  proc.stderr!.on('data', (c: Buffer) => { out += c.toString(); });
  return { proc, text: () => out };
}

const count = (text: string, re: RegExp): number => text.split('\n').filter((l) => re.test(l)).length;
const MOUNTINFO = /"\/proc\/self\/mountinfo"/;
const SYS_BLOCK = /"\/sys\/block",/;

async function until(ok: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!ok() && Date.now() < end) await new Promise((r) => setTimeout(r, 25));
}

describe('the daemon\'s watches, as strace sees them (real daemon)', () => {
  const env = new Env('watch-cost');
  let trace: ReturnType<typeof traceOpens> | undefined;

  beforeAll(async () => {
    ensureBuilt();
    await env.start(['--metrics-listen', '127.0.0.1:0']);
    const vol = (await env.api('ebsd.CreateVolume', { Size: '4MiB' })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    trace = traceOpens(env.pid!);
    // Attached once the watch's next tick (5 s) shows up: strace -qq says nothing when it attaches.
    await until(() => count(trace!.text(), MOUNTINFO) > 0, 15_000);
  }, 60_000);
  afterAll(async () => {
    if (trace && trace.proc.exitCode === null && trace.proc.signalCode === null) {
      const gone = new Promise<void>((r) => trace!.proc.once('exit', () => r()));
      trace.proc.kill('SIGTERM');
      await gone;
    }
    await env.cleanup();
  }, 60_000);

  it('status and scrapes together read sysfs once (one scan shared for a second), not once each', async () => {
    const t = trace!;
    expect(count(t.text(), MOUNTINFO), t.text()).toBeGreaterThan(0);
    const before = count(t.text(), SYS_BLOCK);
    const url = (await env.api('ebsd.Status')).Daemon.MetricsUrl as string;
    const calls: Promise<unknown>[] = [];
    for (let i = 0; i < 6; i++) calls.push(env.api('ebsd.Status'), fetch(url).then((r) => r.text()));
    await Promise.all(calls);
    for (let i = 0; i < 4; i++) await env.api('ebsd.Status'); // as `ebsd top` asks, in turn
    await until(() => count(t.text(), SYS_BLOCK) > before, 5_000);
    await env.api('ebsd.DescribeVolumes'); // a round trip that reads no sysfs: strace's lines of the calls above are in by now
    const scans = count(t.text(), SYS_BLOCK) - before;
    // 17 callers within about a second (two scans when a second ends among them); the old daemon read sysfs for
    // every Status (11) and for the scrapes' collect (1 or more).
    expect(scans).toBeGreaterThanOrEqual(1);
    expect(scans).toBeLessThanOrEqual(2);
  }, 60_000);

  it('once the mount is seen lost, mountinfo is read no more: not by the watch (two more ticks waited for), nor by Status or a scrape', async () => {
    const t = trace!;
    const url = (await env.api('ebsd.Status')).Daemon.MetricsUrl as string;
    const logBefore = env.daemonLog().length;
    const u = spawnSync('fusermount', ['-u', env.mnt], { encoding: 'utf8' });
    expect(u.status, u.stderr).toBe(0);
    const log = await env.untilLog((l) => l.slice(logBefore).includes('was unmounted from outside'), 20_000);
    expect(log.slice(logBefore)).toContain('was unmounted from outside');
    // strace's line of the read that found it comes through another pipe than the log: a status round trip later it is in.
    const seenAt = (await env.api('ebsd.Status')).Daemon.UptimeSeconds as number;
    const mark = count(t.text(), MOUNTINFO);
    // Two more ticks of the 5 s watch, by the daemon's own clock, asking meanwhile as `ebsd top` would.
    for (let i = 0; i < 400; i++) {
      const st = await env.api('ebsd.Status');
      expect(st.Daemon.Problem).toContain('was unmounted from outside');
      if (st.Daemon.UptimeSeconds >= seenAt + 2 * 5 + 1) break;
      expect(await (await fetch(url)).text()).toContain('ebsd_fuse_mount_lost 1');
      await new Promise((r) => setTimeout(r, 250));
    }
    expect((await env.api('ebsd.Status')).Daemon.UptimeSeconds).toBeGreaterThanOrEqual(seenAt + 11);
    expect(count(t.text(), MOUNTINFO) - mark, t.text().split('\n').filter((l) => MOUNTINFO.test(l)).slice(-5).join('\n')).toBe(0);
    expect(env.daemonLog().slice(logBefore).split('was unmounted from outside').length - 1).toBe(1);
  }, 90_000);
});
