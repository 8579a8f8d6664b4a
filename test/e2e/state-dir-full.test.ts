import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, fdatasyncSync, mkdirSync, openSync, readFileSync, readSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt, untilText } from './helpers.js';

// A daemon restarted while the disk of its state dir is full (README, "Security model", Full
// disk; "State directory"): the watchdog's restart, an upgrade's, a crash's. The state dir is a
// small tmpfs of its own; "full" is a filler file written until ENOSPC, "space freed" its removal.

const MiB = 1024 * 1024;

/** The port of --metrics-listen 127.0.0.1:0, from the daemon's log. */
async function metricsPort(env: Env): Promise<number> {
  const m = /"metrics":"http:\/\/127\.0\.0\.1:(\d+)\/metrics"/.exec(await env.untilLog(/"metrics":"http:\/\/127\.0\.0\.1:\d+\/metrics"/));
  expect(m).not.toBeNull();
  return Number(m![1]);
}

/** One sample of a scrape, or undefined when the series is absent. */
async function sample(port: number, series: string): Promise<number | undefined> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

/** Write `path` (appending) until the filesystem refuses with ENOSPC: not a byte of data space left. */
function fill(path: string): void {
  const fd = openSync(path, 'a');
  try {
    for (const chunk of [MiB, 64 * 1024, 4096, 512, 1]) {
      const b = Buffer.alloc(chunk, 0x5a);
      try {
        for (;;) writeSync(fd, b);
      } catch (e) {
        expect((e as NodeJS.ErrnoException).code).toBe('ENOSPC');
      }
    }
  } finally {
    closeSync(fd);
  }
}

describe('a daemon (re)started on a full state dir', () => {
  const env = new Env('state-full');
  let mounted = false;
  const fillers: string[] = [];
  const filler = (): string => {
    const p = join(env.state, `filler.${fillers.length}`);
    fillers.push(p);
    return p;
  };

  beforeAll(() => {
    ensureBuilt();
    mkdirSync(env.state);
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=24m,mode=0711', 'ebsd-test-state-full', env.state], { encoding: 'utf8' });
    expect(m.status, m.stderr).toBe(0);
    mounted = true;
  });
  afterAll(async () => {
    await env.stop().catch(() => {});
    spawnSync('fusermount', ['-uz', env.mnt]);
    if (mounted) spawnSync('umount', [env.state]);
    await env.cleanup();
  });

  it('starts, says what it could not write, serves the volume recorded attached once there is room, and gets its audit reserve back', async () => {
    await env.start(['--metrics-listen', '127.0.0.1:0']);
    const port = await metricsPort(env);
    const vol = (await env.api('ebsd.CreateVolume', { Size: '8MiB', Name: 'state-full' })).VolumeId as string;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    // The series the EbsdVolumeIoErrors alert takes rate() of exists before the first error.
    const enospc = `ebsd_volume_io_errors_total{volume_id="${vol}",operation="write",errno="ENOSPC"}`;
    expect(await sample(port, enospc)).toBe(0);
    const pattern = Buffer.alloc(64 * 1024);
    for (let i = 0; i < pattern.length; i++) pattern[i] = (i * 131 + 7) & 0xff;
    const fd = openSync(env.file(vol), 'r+');
    writeSync(fd, pattern, 0, pattern.length, 0);
    fdatasyncSync(fd);
    closeSync(fd);
    await env.untilClosed(vol);

    // The disk fills up while the daemon runs: its next audited call releases the reserve and writes
    // on in the space that freed; then that space goes too.
    fill(filler());
    // A write to a block of the (sparse) image never written before has no room: ENOSPC, counted.
    const wfd = openSync(env.file(vol), 'r+');
    try {
      expect(() => { writeSync(wfd, Buffer.alloc(4096, 1), 0, 4096, 4 * MiB); fdatasyncSync(wfd); }).toThrow(/ENOSPC/);
    } finally {
      closeSync(wfd);
    }
    await env.untilClosed(vol);
    expect(await sample(port, enospc)).toBeGreaterThanOrEqual(1);
    const keyId = 'alias/aws/ebs';
    for (let i = 0; i < 200 && (await env.api('ebsd.Status')).Daemon.Audit.State === 'ok'; i++) await env.api('TrentService.DescribeKey', { KeyId: keyId });
    expect((await env.api('ebsd.Status')).Daemon.Audit.State).toBe('reserve-in-use');
    fill(filler());
    expect(await env.stop()).toBe(0);
    // What the stop freed (its pid file, the image's attach lock) is taken as well.
    fill(filler());

    // Restarted on a disk with no byte free: the pid file cannot be written (it is for people and
    // scripts only: a warning), and the daemon serves.
    await env.start();
    const log = await env.untilLog(/could not write .*ebsd\.pid \(no space left on device, ENOSPC\)/);
    expect(log).toMatch(/"level":40,[^\n]*could not write [^\n]*ebsd\.pid \(no space left on device, ENOSPC\); it is informational only/);
    expect(existsSync(join(env.state, 'ebsd.pid'))).toBe(false);
    // Nor the record of the mount dir (mount.json, for the next start's look for stale loop devices): a warning too.
    expect(log).toMatch(/"level":40,[^\n]*could not record the mount dir in mount\.json/);

    // No room for the audit reserve: shown as such, not as ok.
    let st = await env.api('ebsd.Status');
    expect(st.Daemon.Audit).toMatchObject({ State: 'reserve-in-use', ReserveBytes: 0 });
    expect(st.Daemon.Audit.LastError).toMatch(/ENOSPC/);
    expect(st.Daemon.Problem).toMatch(/^audit log: disk full \(reserve-in-use\); free space in /);

    // No room for the image's attach lock: the volume is recorded attached, not served, and says why.
    const v = st.Volumes.find((x: { VolumeId: string }) => x.VolumeId === vol);
    expect(v.Attached).toBe(false);
    expect(v.Problem).toMatch(/the state dir's disk is full \(volume vol-[0-9a-f]+: could not create its attach lock .*\.img\.lock: no space left on device \(ENOSPC\)\); retrying with back-off until there is room/);
    expect(v.Resume).toMatchObject({ DiskFull: true });
    expect(existsSync(env.file(vol))).toBe(false);
    // No empty lock file left behind by the failed create (it would read as another attacher's).
    expect(existsSync(join(env.state, 'volumes', `${vol}.img.lock`))).toBe(false);

    // Space is freed: the volume comes back by itself, with what was written before.
    for (const f of fillers) rmSync(f);
    await untilText(() => (existsSync(env.file(vol)) ? 'served' : ''), 'served', 60_000);
    st = await env.api('ebsd.Status');
    expect(st.Volumes.find((x: { VolumeId: string }) => x.VolumeId === vol)).toMatchObject({ Attached: true, KeyCache: { State: 'cached' } });
    expect(st.Volumes.find((x: { VolumeId: string }) => x.VolumeId === vol).Problem).toBeUndefined();
    const back = Buffer.alloc(pattern.length);
    const rfd = openSync(env.file(vol), 'r');
    readSync(rfd, back, 0, back.length, 0);
    closeSync(rfd);
    expect(back.equals(pattern)).toBe(true);
    expect(readFileSync(env.log, 'utf8')).toMatch(/room on the disk again: volume recorded attached is served again/);

    // The audit reserve is re-created once there is room (tried at most every 5 s, on an audited call).
    let audit: { State?: string; ReserveBytes?: number; LastError?: string } = {};
    for (let i = 0; i < 300 && audit.State !== 'ok'; i++) {
      await env.api('TrentService.DescribeKey', { KeyId: keyId });
      audit = (await env.api('ebsd.Status')).Daemon.Audit;
      if (audit.State !== 'ok') await new Promise((r) => setTimeout(r, 100));
    }
    expect(audit).toMatchObject({ State: 'ok', ReserveBytes: 4 * MiB });
    expect(audit.LastError).toBeUndefined(); // the error of the full disk is not shown once space is back
    await env.api('ebsd.DetachVolume', { VolumeId: vol });
  }, 120_000);
});

describe('an idle daemon whose state dir was full', () => {
  const env = new Env('state-full-idle');
  let mounted = false;

  beforeAll(() => {
    ensureBuilt();
    mkdirSync(env.state);
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=16m,mode=0711', 'ebsd-test-state-full-idle', env.state], { encoding: 'utf8' });
    expect(m.status, m.stderr).toBe(0);
    mounted = true;
  });
  afterAll(async () => {
    await env.stop().catch(() => {});
    spawnSync('fusermount', ['-uz', env.mnt]);
    if (mounted) spawnSync('umount', [env.state]);
    await env.cleanup();
  });

  it('gets its audit reserve back once space is freed, with nothing to audit meanwhile (status and alerts stop saying disk full)', async () => {
    // Full while it runs: an audited call releases the reserve, whose space is then taken too;
    // stopped, the last free page taken, started again: no room for a reserve at start.
    await env.start();
    const fillers = [0, 1, 2].map((i) => join(env.state, `filler.${i}`));
    fill(fillers[0]!);
    for (let i = 0; i < 200 && (await env.api('ebsd.Status')).Daemon.Audit.State === 'ok'; i++) await env.api('TrentService.ListKeys');
    fill(fillers[1]!);
    expect(await env.stop()).toBe(0);
    fill(fillers[2]!);
    await env.start();
    let audit = (await env.api('ebsd.Status')).Daemon.Audit as { State: string; ReserveBytes: number };
    expect(audit).toMatchObject({ ReserveBytes: 0 });
    expect(audit.State).not.toBe('ok');
    const eventsBefore = env.auditText().length;
    for (const f of fillers) rmSync(f);
    // Only status is asked (not audited for root): no event is written that would bring the reserve back on its way.
    for (let i = 0; i < 300 && audit.State !== 'ok'; i++) {
      await new Promise((r) => setTimeout(r, 100));
      audit = (await env.api('ebsd.Status')).Daemon.Audit;
    }
    expect(audit).toMatchObject({ State: 'ok', ReserveBytes: 4 * MiB });
    expect(env.auditText().length).toBe(eventsBefore);
    expect(await env.untilLog('audit log: disk space is back; reserve restored')).toMatch(/"was":"reserve-in-use"/);
  }, 90_000);
});
