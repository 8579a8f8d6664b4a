import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from './helpers.js';

/**
 * What the daemon's mount-lost watch costs, seen from outside with strace on the real daemon: it read
 * /proc/self/mountinfo every 5 s for ever, and every Status, scrape and attach read it again, after
 * the loss was seen (it cannot come back for that daemon). That Status and scrapes share one read of
 * sysfs is shown without timing by test/daemon/stale-users.test.ts (an injected clock).
 */

/** strace -f on `pid`, opens only; its output (unbuffered stderr) collected as it comes, and how it ended if it did. */
function traceOpens(pid: number): { proc: ChildProcess; text: () => string; ended: () => string | undefined } {
  let out = '';
  let ended: string | undefined;
  const proc = spawn('strace', ['-f', '-qq', '-e', 'trace=openat', '-p', String(pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
  proc.stderr!.on('data', (c: Buffer) => { out += c.toString(); });
  proc.on('error', (e) => { ended = `strace could not be started: ${e.message}`; });
  proc.on('exit', (code, signal) => { ended ??= `strace ended (${signal ?? `exit ${code}`})`; });
  return { proc, text: () => out, ended: () => (ended === undefined ? undefined : `${ended}: ${out.trim().split('\n').slice(-3).join(' | ') || 'no output'}`) };
}

const count = (text: string, re: RegExp): number => text.split('\n').filter((l) => re.test(l)).length;
const MOUNTINFO = /"\/proc\/self\/mountinfo"/;

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
    const t = traceOpens(env.pid!);
    trace = t;
    // Attached once the watch's next tick (5 s) shows up: strace -qq says nothing when it attaches. A refused ptrace
    // (no CAP_SYS_PTRACE, Yama ptrace_scope) ends strace at once: said as that, not as a count of 0 later.
    await until(() => count(t.text(), MOUNTINFO) > 0 || t.ended() !== undefined, 15_000);
    if (t.ended() !== undefined) throw new Error(`cannot trace the daemon: ${t.ended()}`);
    if (count(t.text(), MOUNTINFO) === 0) throw new Error(`strace saw no read of /proc/self/mountinfo in 15 s (a watch tick is 5 s): ${t.text().slice(-500)}`);
  }, 60_000);
  afterAll(async () => {
    if (trace && trace.proc.exitCode === null && trace.proc.signalCode === null) {
      const gone = new Promise<void>((r) => trace!.proc.once('exit', () => r()));
      trace.proc.kill('SIGTERM');
      await gone;
    }
    await env.cleanup();
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
    // Still tracing (a strace that died meanwhile would count nothing either).
    expect(t.ended()).toBeUndefined();
    expect(count(t.text(), MOUNTINFO) - mark, t.text().split('\n').filter((l) => MOUNTINFO.test(l)).slice(-5).join('\n')).toBe(0);
    expect(env.daemonLog().slice(logBefore).split('was unmounted from outside').length - 1).toBe(1);
  }, 90_000);
});
