import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { CLI, Env, ROOT, ensureBuilt, run } from '../e2e/helpers.js';
import { DEFAULT_STOP_TIMEOUT_MS } from '../../src/daemon/stop-deadline.js';

/**
 * systemd integration: the shipped units pass `systemd-analyze verify`, and
 * the daemon speaks the sd_notify(3) datagram protocol to a socket this test
 * listens on (python3: Node has no AF_UNIX datagram sockets). The listener
 * reads SCM_CREDENTIALS, so the sender PID the service manager would see is
 * checked too (NotifyAccess=main needs it to be the daemon's).
 */

const LISTENER = String.raw`
import os, socket, struct, sys
addr, probe, mount = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind('\0' + addr[1:] if addr.startswith('@') else addr)
# Real-time, so the mount table is read the moment a datagram arrives, not when a loaded 2-core
# machine next schedules us: the daemon goes on with its shutdown right after STOPPING=1.
# Tests run as root; without the right, as before.
try:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
except (PermissionError, AttributeError):
    pass
print('LISTENING', flush=True)
while True:
    msg, anc, flags, _ = s.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = -1
    for lvl, typ, data in anc:
        if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
            pid = struct.unpack('iII', data[:12])[0]
    # At the moment the datagram arrives: is the FUSE mount still in the mount table (no round
    # trip to the daemon), and does the probe file exist (a lookup the daemon answers, in its own
    # time: after STOPPING=1 its shutdown goes on, so only READY=1 can rely on this one).
    with open('/proc/self/mounts') as f:
        mounted = any(line.split()[1] == mount for line in f)
    print('MSG %d %d %d %s' % (pid, 1 if mounted else 0, 1 if os.path.exists(probe) else 0, msg.decode().replace('\n', '|')), flush=True)
`;

interface Notice { pid: number; mounted: boolean; probe: boolean; fields: Record<string, string> }

class NotifyListener {
  readonly notices: Notice[] = [];
  private proc: ChildProcess | undefined;

  async start(address: string, probe: string): Promise<void> {
    const p = spawn('python3', ['-c', LISTENER, address, probe, dirname(probe)], { stdio: ['ignore', 'pipe', 'inherit'] });
    this.proc = p;
    const lines = createInterface({ input: p.stdout! });
    await new Promise<void>((ok, fail) => {
      p.once('exit', (c) => fail(new Error(`notify listener exited ${c}`)));
      lines.on('line', (l) => {
        if (l === 'LISTENING') return ok();
        const m = /^MSG (-?\d+) ([01]) ([01]) (.*)$/.exec(l);
        if (!m) return;
        const fields: Record<string, string> = {};
        for (const kv of m[4]!.split('|')) if (kv.includes('=')) fields[kv.slice(0, kv.indexOf('='))] = kv.slice(kv.indexOf('=') + 1);
        this.notices.push({ pid: Number(m[1]), mounted: m[2] === '1', probe: m[3] === '1', fields });
      });
    });
  }

  /** Poll (no fixed sleep) until a notice has `key`; bounded. */
  async waitFor(key: string, timeoutMs = 30_000): Promise<Notice> {
    for (let waited = 0; waited < timeoutMs; waited += 20) {
      const n = this.notices.find((x) => key in x.fields);
      if (n) return n;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`no ${key} notification; got ${JSON.stringify(this.notices)}`);
  }

  stop(): void {
    if (this.proc && this.proc.exitCode === null) this.proc.kill('SIGKILL');
  }
}

describe('systemd units', () => {
  // Made in beforeAll, not at collection: a run filtered with -t to another describe runs
  // neither hook, and a directory made at collection was left behind in /tmp.
  let dir = '';
  beforeAll(() => {
    ensureBuilt();
    dir = mkdtempSync('/tmp/ebsd-units-');
  });
  afterAll(() => { if (dir) rmSync(dir, { recursive: true, force: true }); });

  it('ebsd install-units copies every unit (0644) and says daemon-reload cannot run without systemd', async () => {
    // --bin: this checkout's CLI, made executable by test/global-setup.ts. The default, the machine-wide
    // /usr/local/bin/ebsd link, points at whichever checkout ran setup.sh last, or nowhere.
    accessSync(CLI, constants.X_OK);
    const r = await run(process.execPath, [CLI, 'install-units', '--dir', dir, '--bin', CLI, '--output', 'json']);
    expect(r.code, r.stderr).toBe(0);
    const res = r.json();
    const shipped = readdirSync(join(ROOT, 'contrib', 'systemd')).filter((n) => n.endsWith('.service')).sort();
    expect(res.Installed).toEqual(shipped);
    expect(shipped).toEqual(['ebsd-attach@.service', 'ebsd-loop@.service', 'ebsd.service']);
    for (const n of shipped) {
      expect(statSync(join(dir, n)).mode & 0o777).toBe(0o644);
      expect(readFileSync(join(dir, n), 'utf8')).toBe(readFileSync(join(ROOT, 'contrib', 'systemd', n), 'utf8').split('/usr/local/bin/ebsd').join(CLI));
    }
    // This machine does not boot with systemd (no /run/systemd/system): no reload attempted.
    expect(res.DaemonReload).toBe(existsSync('/run/systemd/system') ? 'done' : 'systemd-not-running');
  });

  it('--bin rewrites ExecStart, and a relative --bin is a usage error (exit 2)', async () => {
    const other = mkdtempSync('/tmp/ebsd-units-bin-');
    try {
      const bin = join(other, 'opt-ebsd');
      writeFileSync(bin, '#!/bin/sh\n', { mode: 0o755 });
      const r = await run(process.execPath, [CLI, 'install-units', '--dir', other, '--bin', bin, '--no-reload', '--output', 'json']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.json().DaemonReload).toBe('skipped');
      const unit = readFileSync(join(other, 'ebsd.service'), 'utf8');
      expect(unit).toContain(`\nExecStart=${bin} daemon `);
      expect(unit).not.toMatch(/\/usr\/local\/bin\/ebsd/);
      const bad = await run(process.execPath, [CLI, 'install-units', '--dir', other, '--bin', 'ebsd']);
      expect(bad.code).toBe(2);
      expect(bad.stderr).toMatch(/--bin must be an absolute path/);
    } finally {
      rmSync(other, { recursive: true, force: true });
    }
  });

  it('TimeoutStopSec of ebsd.service outlasts the daemon\'s own stop bound (--stop-timeout, plus 2 s for a process held after it stopped)', () => {
    const unit = readFileSync(join(ROOT, 'contrib', 'systemd', 'ebsd.service'), 'utf8');
    const m = /^TimeoutStopSec=(\d+)s?$/m.exec(unit);
    expect(m, 'TimeoutStopSec=<seconds> in ebsd.service').not.toBeNull();
    expect(Number(m![1]) * 1000).toBeGreaterThan(DEFAULT_STOP_TIMEOUT_MS + 2_000);
  });

  it('a command line the daemon refuses (exit 2) is not restarted by Restart=on-failure: ebsd.service lists 2 in RestartPreventExitStatus', async () => {
    const unit = readFileSync(join(ROOT, 'contrib', 'systemd', 'ebsd.service'), 'utf8');
    expect(unit).toMatch(/^Restart=on-failure$/m);
    const prevent = /^RestartPreventExitStatus=(.*)$/m.exec(unit)?.[1]?.split(/\s+/) ?? [];
    // The unit's own ExecStart with one flag out of range, as an edit of it could leave it: what the daemon exits with.
    const execStart = /^ExecStart=(.*)$/m.exec(unit)![1]!.split(' ');
    expect(execStart[0]).toBe('/usr/local/bin/ebsd');
    const dir = mkdtempSync('/tmp/ebsd-unit-usage-');
    try {
      const args = execStart.slice(1).map((a) => (a === '/var/lib/ebsd' ? join(dir, 'state') : a === '/mnt/ebsd' ? join(dir, 'mnt') : a));
      const r = await run(process.execPath, [CLI, ...args, '--key-cache-ttl', '600h'], { timeoutMs: 30_000 });
      expect(r.stderr).toContain('--key-cache-ttl 600h is too long');
      expect(prevent).toContain(String(r.code));
      expect(existsSync(join(dir, 'state'))).toBe(false); // refused before anything was touched: nothing a restart would change
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a --bin that is missing, a directory or not executable is refused (exit 2, naming it) and installs nothing', async () => {
    const other = mkdtempSync('/tmp/ebsd-units-nobin-');
    try {
      const plain = join(other, 'not-executable');
      writeFileSync(plain, '#!/bin/sh\n', { mode: 0o644 });
      const dest = join(other, 'units');
      mkdirSync(dest);
      for (const [bin, why] of [[join(other, 'missing'), 'does not exist'], [other, 'is not a file'], [plain, 'is not executable']] as const) {
        const r = await run(process.execPath, [CLI, 'install-units', '--dir', dest, '--bin', bin, '--no-reload']);
        expect(r.code, r.stderr).toBe(2);
        expect(r.stderr).toContain(`ebsd: --bin ${bin} ${why}`);
        expect(r.stderr).toContain('203/EXEC');
        expect(r.stderr.trim().split('\n')).toHaveLength(1);
        expect(readdirSync(dest)).toEqual([]);
      }
    } finally {
      rmSync(other, { recursive: true, force: true });
    }
  });

  it('ebsd.service puts the daemon last for the OOM killer, yet not out of its reach (OOMScoreAdjust in -999..-500)', () => {
    const unit = readFileSync(join(ROOT, 'contrib', 'systemd', 'ebsd.service'), 'utf8');
    const m = /^OOMScoreAdjust=(-?\d+)$/m.exec(unit);
    expect(m, 'OOMScoreAdjust=<n> in ebsd.service').not.toBeNull();
    expect(Number(m![1])).toBeLessThanOrEqual(-500);
    expect(Number(m![1])).toBeGreaterThan(-1000); // -1000 would exempt a leaking daemon entirely
  });

  it('systemd-analyze verify accepts every unit (templates as instances)', async () => {
    const sa = spawnSync('systemd-analyze', ['--version'], { encoding: 'utf8' });
    expect(sa.status, 'systemd-analyze is installed by scripts/setup.sh').toBe(0);
    // verify needs the ExecStart binary to exist and be executable. The shipped units name
    // /usr/local/bin/ebsd, a machine-wide link the last setup.sh of any checkout points at its
    // own dist/; so the units are verified as installed with --bin at this checkout's CLI (the
    // tests above pin that the copies are the shipped text and that --bin changes ExecStart only).
    const bin = join(dir, 'verify');
    mkdirSync(bin);
    accessSync(CLI, constants.X_OK); // made executable by scripts/setup.sh and test/global-setup.ts
    const installed = await run(process.execPath, [CLI, 'install-units', '--dir', bin, '--bin', CLI, '--no-reload']);
    expect(installed.code, installed.stderr).toBe(0);
    expect(readFileSync(join(bin, 'ebsd.service'), 'utf8')).toContain(`ExecStart=${CLI} daemon `);
    const units = ['ebsd.service', 'ebsd-attach@vol-0123456789abcdef0.service', 'ebsd-loop@vol-0123456789abcdef0.service'];
    const r = spawnSync('systemd-analyze', ['verify', ...units], { cwd: bin, encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const unit = readFileSync(join(dir, 'ebsd.service'), 'utf8');
    expect(unit).toMatch(/^Type=notify$/m);
    expect(unit).toMatch(/^DeviceAllow=\/dev\/fuse rw$/m);
    expect(unit).toMatch(/^WatchdogSec=60s$/m); // the daemon pings every half interval (sd-notify.ts)
    expect(unit).toMatch(/^LimitCORE=0$/m); // no core file of a process holding keys (test/ops/hardening.test.ts: the daemon's own RLIMIT_CORE)
    expect(unit).toMatch(/^MemorySwapMax=0$/m); // keys and plaintext never reach swap (docs/architecture.md §5.10)
    // A private mount namespace would hide the FUSE mount from the host.
    expect(unit).not.toMatch(/^(ProtectSystem|ProtectHome|PrivateTmp|PrivateDevices|ReadWritePaths|PrivateMounts)=/m);
  });
});

describe('sd_notify protocol of the daemon', () => {
  const env = new Env('sdnotify');
  const listener = new NotifyListener();
  const saved = process.env.NOTIFY_SOCKET;
  let vol = '';

  beforeAll(async () => {
    ensureBuilt();
    // A volume recorded as attached, so the next start has one to re-attach before READY=1.
    await env.start();
    vol = (await env.api('ebsd.CreateVolume', { Size: '16MiB' })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    await env.stop();
  }, 90_000);
  afterAll(async () => {
    if (saved === undefined) delete process.env.NOTIFY_SOCKET;
    else process.env.NOTIFY_SOCKET = saved;
    listener.stop();
    await env.cleanup();
  }, 60_000);

  it('READY=1 from the daemon PID once the mount is up and the volume re-attached; STOPPING=1 on SIGTERM', async () => {
    const address = `@ebsd-test-notify-${randomBytes(6).toString('hex')}`; // an abstract socket name, as systemd uses
    await listener.start(address, env.file(vol));
    process.env.NOTIFY_SOCKET = address; // inherited by the daemon child only for this start
    try {
      await env.start(['--log-level', 'debug']);
    } finally {
      delete process.env.NOTIFY_SOCKET;
    }
    const ready = await listener.waitFor('READY');
    expect(ready.fields.READY).toBe('1');
    expect(ready.pid).toBe(env.pid); // the main PID, not the helper's: NotifyAccess=main accepts it
    expect(ready.probe).toBe(true); // the re-attached volume's file was in the mount when READY=1 arrived
    expect(ready.fields.STATUS).toMatch(/1 volume/);
    expect(listener.notices.some((n) => 'STOPPING' in n.fields)).toBe(false);

    const pid = env.pid!;
    const stopped = env.stop();
    const stopping = await listener.waitFor('STOPPING');
    expect(stopping.fields.STOPPING).toBe('1');
    expect(stopping.pid).toBe(pid);
    expect(await stopped).toBe(0);
    // STOPPING=1 came while the daemon still served: its mount was up (it goes last, after the
    // drain). Whether the volume file still answered a lookup then is a race the daemon does not
    // wait for (it drains right after sending), so that is not asserted here.
    expect(stopping.mounted).toBe(true);
    expect(ready.mounted).toBe(true);
    // And the order in the daemon's own log: STOPPING=1 sent (the helper exited) before the volume file went.
    const lines = env.daemonLog().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { msg?: string; message?: string; volumeId?: string });
    const sent = lines.findIndex((l) => l.msg === 'sd_notify sent' && l.message === 'STOPPING=1');
    const hidden = lines.findIndex((l) => l.msg === 'volume file hidden for shutdown' && l.volumeId === vol);
    expect(sent).toBeGreaterThanOrEqual(0);
    expect(hidden).toBeGreaterThan(sent);
    expect(listener.notices.indexOf(stopping)).toBeGreaterThan(listener.notices.indexOf(ready));
  });

  it('with WATCHDOG_USEC, WATCHDOG=1 from the daemon PID every half interval; not when WATCHDOG_PID names another process', async () => {
    const watch = new NotifyListener();
    const address = `@ebsd-test-watchdog-${randomBytes(6).toString('hex')}`;
    await watch.start(address, env.file(vol));
    const startWith = async (vars: Record<string, string>): Promise<void> => {
      Object.assign(process.env, { NOTIFY_SOCKET: address, ...vars });
      try {
        await env.start();
      } finally {
        for (const k of ['NOTIFY_SOCKET', ...Object.keys(vars)]) delete process.env[k];
      }
    };
    const pings = (): Notice[] => watch.notices.filter((n) => 'WATCHDOG' in n.fields);
    try {
      await startWith({ WATCHDOG_USEC: '400000' }); // 0.4 s: a ping every 0.2 s
      const pid = env.pid!;
      for (let i = 0; i < 1500 && pings().length < 4; i++) await new Promise((r) => setTimeout(r, 20));
      expect(pings().length).toBeGreaterThanOrEqual(4);
      for (const p of pings()) {
        expect(p.fields.WATCHDOG).toBe('1');
        expect(p.pid).toBe(pid); // NotifyAccess=main accepts it
      }
      expect(await env.untilLog('systemd watchdog')).toMatch(/"watchdogUsec":400000,"everyMs":200/);
      expect(await env.stop()).toBe(0);

      // $WATCHDOG_PID names another process: the watchdog is not this daemon's (sd_watchdog_enabled(3)).
      const before = pings().length;
      const logBefore = env.daemonLog().length;
      await startWith({ WATCHDOG_USEC: '400000', WATCHDOG_PID: '1' });
      const readies = (): number => watch.notices.filter((n) => 'READY' in n.fields).length;
      for (let i = 0; i < 1500 && readies() < 2; i++) await new Promise((r) => setTimeout(r, 20));
      expect(readies()).toBe(2); // this start's READY=1 arrived: it would be pinging by now
      for (let i = 0; i < 50; i++) await new Promise((r) => setTimeout(r, 20)); // five intervals' worth
      expect(await env.stop()).toBe(0);
      expect(pings().length).toBe(before);
      expect(env.daemonLog().slice(logBefore)).not.toContain('systemd watchdog');
    } finally {
      watch.stop();
    }
  });
});

/**
 * The commands of contrib/systemd/ebsd-loop@.service as systemd would run them for one instance
 * (no systemd boots here): the specifiers the unit uses expanded (`%i` the instance, `%%` a
 * literal %), `$$` a literal $, and the unit's /mnt/ebsd the test daemon's mount.
 */
function loopUnitCommand(key: 'ExecStart' | 'ExecStop', volumeId: string, mount: string): string[] {
  const unit = readFileSync(join(ROOT, 'contrib', 'systemd', 'ebsd-loop@.service'), 'utf8');
  const line = new RegExp(`^${key}=(.*)$`, 'm').exec(unit)?.[1];
  expect(line, key).toBeDefined();
  const expanded = line!.replace(/%%|%i/g, (m) => (m === '%%' ? '%' : volumeId)).split('$$').join('$').split('/mnt/ebsd/').join(`${mount}/`);
  const sh = /^\/bin\/sh -c '(.*)'$/.exec(expanded);
  return sh ? ['/bin/sh', '-c', sh[1]!] : expanded.split(' ');
}

/** The loop devices whose backing file the kernel names after this volume, wherever its mount went. */
function loopsOver(volumeId: string): string[] {
  const found: string[] = [];
  for (const n of readdirSync('/sys/block').filter((x) => x.startsWith('loop'))) {
    let b = '';
    try { b = readFileSync(`/sys/block/${n}/loop/backing_file`, 'utf8').trim(); } catch { continue; }
    if (b.replace(/ \(deleted\)$/, '').endsWith(`/${volumeId}`)) found.push(`/dev/${n}`);
  }
  return found;
}

describe('ebsd-loop@.service commands', () => {
  const env = new Env('loop-unit');
  let vol = '';

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    vol = (await env.api('ebsd.CreateVolume', { Size: '16MiB' })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
  }, 90_000);
  afterAll(async () => {
    for (const d of loopsOver(vol)) spawnSync('losetup', ['-d', d]);
    await env.cleanup();
  }, 60_000);

  const exec = (key: 'ExecStart' | 'ExecStop'): { status: number | null; stdout: string; stderr: string } => {
    const [cmd, ...args] = loopUnitCommand(key, vol, env.mnt);
    const r = spawnSync(cmd!, args, { encoding: 'utf8' });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  };

  it('ExecStop detaches the loop device ExecStart made, also after the daemon under it was killed and restarted (its backing file then named /<vol>)', async () => {
    // While the daemon serves the file.
    const a = exec('ExecStart');
    expect(a.status, a.stderr).toBe(0);
    expect(loopsOver(vol)).toEqual([a.stdout.trim()]);
    const s1 = exec('ExecStop');
    expect(s1.status, s1.stderr).toBe(0);
    expect(loopsOver(vol)).toEqual([]);

    // The daemon dies under the loop device and comes back (Restart=on-failure after a crash or
    // the watchdog): the volume file is a new one, the old loop device answers EIO and the kernel
    // names its backing file by what is left of the old mount's path.
    const b = exec('ExecStart');
    expect(b.status, b.stderr).toBe(0);
    const dev = b.stdout.trim();
    await env.kill9();
    await env.start();
    expect(existsSync(env.file(vol))).toBe(true);
    expect(readFileSync(`/sys/block/${dev.slice('/dev/'.length)}/loop/backing_file`, 'utf8').trim()).toBe(`/${vol}`);
    expect(loopsOver(vol)).toEqual([dev]);
    const s2 = exec('ExecStop');
    expect(s2.status, s2.stderr).toBe(0);
    expect(loopsOver(vol)).toEqual([]);
  }, 90_000);
});
