/**
 * The daemon process at start (docs/architecture.md §5.10): no core dumps
 * (RLIMIT_CORE 0, PR_SET_DUMPABLE 0), and EBSD_HSM_PASSPHRASE taken out of
 * the environment so that no child process inherits it. Observed from
 * outside, on real daemons:
 *
 *   - /proc/<pid>/limits: "Max core file size 0 0";
 *   - dumpable 0 has no field in /proc, but the kernel shows it: the files of
 *     a non-dumpable process belong to root, and a process of the same uid can
 *     no longer read its /proc/<pid>/environ (proc(5), PR_SET_DUMPABLE in
 *     prctl(2)); checked on a --kms-only daemon run as uid 65534;
 *   - the environment systemd-notify runs with (a stand-in on PATH writes it
 *     to a file), and the daemon's own /proc/<pid>/environ, lack the
 *     passphrase, while the HSM domain was still sealed under it; the FUSE
 *     mount serves a volume as before;
 *   - the AWS SDK's secret variables (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN),
 *     which the daemon keeps for its own SDK clients (a remote KMS, an S3
 *     store), are not in systemd-notify's environment either (childEnv), nor
 *     in the `fusermount -uz` the daemon's stop runs (a stand-in on PATH writes
 *     its environment, then runs the real one).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, closeSync, existsSync, createWriteStream, mkdirSync, openSync, readFileSync, readSync, readdirSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { CLI, Env, ensureBuilt, untilReady } from '../e2e/helpers.js';

const NOBODY = 65534;
const FUSERMOUNT = ['/usr/bin/fusermount', '/bin/fusermount'].find((f) => existsSync(f)) ?? '/usr/bin/fusermount';
const coreLimits = (pid: number): string | undefined => readFileSync(`/proc/${pid}/limits`, 'utf8').split('\n').find((l) => l.startsWith('Max core file size'));

describe('a daemon started with EBSD_HSM_PASSPHRASE and NOTIFY_SOCKET (root, FUSE)', () => {
  const env = new Env('harden');
  const passphrase = `hsm-pass-${randomBytes(12).toString('hex')}`;
  // The shape of an SDK's environment credentials; nothing in this daemon uses them.
  const awsSecret = `aws-secret-${randomBytes(12).toString('hex')}`;
  const awsToken = `aws-token-${randomBytes(12).toString('hex')}`;
  const bin = join(env.dir, 'bin');
  const dumps = join(env.dir, 'notify-env');
  const unmountDumps = join(env.dir, 'fusermount-env');
  const saved = {
    PATH: process.env.PATH, NOTIFY_SOCKET: process.env.NOTIFY_SOCKET, EBSD_HSM_PASSPHRASE: process.env.EBSD_HSM_PASSPHRASE,
    AWS_SECRET_ACCESS_KEY: process.env.AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN: process.env.AWS_SESSION_TOKEN,
  };

  beforeAll(async () => {
    ensureBuilt();
    mkdirSync(bin);
    mkdirSync(dumps);
    mkdirSync(unmountDumps);
    // A stand-in for systemd-notify(1): it writes the environment it was given, one file per run.
    // Written aside and renamed: the test reads only whole dumps (a file name seen while `env` still writes would read empty).
    writeFileSync(join(bin, 'systemd-notify'), `#!/bin/sh\nenv > ${dumps}/$$.tmp && mv ${dumps}/$$.tmp ${dumps}/$$.env\n`, { mode: 0o755 });
    // A stand-in for fusermount(1) that writes its environment, then does the real unmount.
    writeFileSync(join(bin, 'fusermount'), `#!/bin/sh\nenv > ${unmountDumps}/$$.tmp && mv ${unmountDumps}/$$.tmp ${unmountDumps}/$$.env\nexec ${FUSERMOUNT} "$@"\n`, { mode: 0o755 });
    Object.assign(process.env, { PATH: `${bin}:${process.env.PATH}`, NOTIFY_SOCKET: '@ebsd-test-harden-unused', EBSD_HSM_PASSPHRASE: passphrase, AWS_SECRET_ACCESS_KEY: awsSecret, AWS_SESSION_TOKEN: awsToken });
    try {
      await env.start(['--log-level', 'debug']);
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  }, 60_000);
  afterAll(() => env.cleanup(), 60_000);

  it('RLIMIT_CORE is 0 (soft and hard), and the daemon says so at debug', async () => {
    expect(coreLimits(env.pid!)).toMatch(/^Max core file size\s+0\s+0\s+bytes/);
    const said = 'core dumps disabled (RLIMIT_CORE 0, PR_SET_DUMPABLE 0)';
    expect(await env.untilLog(said)).toContain(said);
  });

  it('systemd-notify ran without the passphrase; the daemon\'s own environment no longer shows it; the domain is sealed under it', async () => {
    const whole = (): string[] => readdirSync(dumps).filter((f) => f.endsWith('.env'));
    for (let i = 0; i < 500 && whole().length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    const runs = whole().map((f) => readFileSync(join(dumps, f), 'utf8'));
    expect(runs.length).toBeGreaterThan(0);
    for (const e of runs) {
      expect(e).toContain('NOTIFY_SOCKET=@ebsd-test-harden-unused'); // it is the environment the daemon gave it
      expect(e).not.toContain('EBSD_HSM_PASSPHRASE');
      expect(e).not.toContain(passphrase);
    }
    expect(readFileSync(`/proc/${env.pid}/environ`, 'latin1')).not.toContain(passphrase);
    const domain = JSON.parse(readFileSync(join(env.state, 'kms', 'hsm', 'domain.json'), 'utf8')) as { kekSource: string };
    expect(domain.kekSource).toBe('passphrase');
    expect(env.daemonLog()).not.toContain(passphrase);
  });

  it('systemd-notify ran without the AWS SDK\'s secret variables (the daemon keeps them for its own SDK clients)', async () => {
    const whole = (): string[] => readdirSync(dumps).filter((f) => f.endsWith('.env'));
    for (let i = 0; i < 500 && whole().length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    const runs = whole().map((f) => readFileSync(join(dumps, f), 'utf8'));
    expect(runs.length).toBeGreaterThan(0);
    for (const e of runs) {
      expect(e).toContain('NOTIFY_SOCKET=@ebsd-test-harden-unused');
      expect(e).not.toMatch(/^AWS_SECRET_ACCESS_KEY=|^AWS_SESSION_TOKEN=/m);
      expect(e).not.toContain(awsSecret);
      expect(e).not.toContain(awsToken);
    }
    expect(env.daemonLog()).not.toContain(awsSecret);
  });

  it('the FUSE mount serves an attached volume as before', async () => {
    const vol = (await env.api('ebsd.CreateVolume', { Size: '16MiB' })).VolumeId as string;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    const data = randomBytes(4096);
    const fd = openSync(env.file(vol), 'r+');
    try {
      writeSync(fd, data, 0, data.length, 8192);
      const back = Buffer.alloc(4096);
      readSync(fd, back, 0, back.length, 8192);
      expect(back.equals(data)).toBe(true);
    } finally {
      closeSync(fd);
    }
    await env.untilClosed(vol);
    await env.api('ebsd.DetachVolume', { VolumeId: vol, Force: false });
  });

  // Last: it stops the daemon. fuse-native's own unmount ran `fusermount -uz` through a shell with the
  // daemon's whole environment, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN included (docs/architecture.md §5.10).
  it('the fusermount -uz its stop runs gets the environment without the AWS SDK\'s secret variables', async () => {
    expect(await env.stop()).toBe(0);
    const runs = readdirSync(unmountDumps).filter((f) => f.endsWith('.env')).map((f) => readFileSync(join(unmountDumps, f), 'utf8'));
    expect(runs.length).toBeGreaterThan(0);
    for (const e of runs) {
      expect(e).toContain(`PATH=${bin}:`); // it is the environment the daemon gave it
      expect(e).not.toMatch(/^AWS_SECRET_ACCESS_KEY=|^AWS_SESSION_TOKEN=/m);
      expect(e).not.toContain(awsSecret);
      expect(e).not.toContain(awsToken);
    }
    expect(readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(` ${env.mnt} `);
  });
});

describe('a daemon run as uid 65534 (--kms-only): not dumpable', () => {
  const env = new Env('harden-nobody');
  let p: ChildProcess | undefined;

  beforeAll(async () => {
    ensureBuilt();
    chmodSync(env.dir, 0o755);
    mkdirSync(env.state, { mode: 0o700 });
    chownSync(env.state, NOBODY, NOBODY);
    const out = createWriteStream(env.log, { flags: 'a' });
    p = spawn('setpriv', ['--reuid', String(NOBODY), '--regid', String(NOBODY), '--clear-groups', '--',
      process.execPath, CLI, 'daemon', '--state-dir', env.state, '--mount', env.mnt, '--kms-only', '--kms-listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    await untilReady(p, out);
  }, 60_000);
  afterAll(async () => {
    if (p && p.exitCode === null && p.signalCode === null) {
      const gone = new Promise((r) => p!.once('exit', r));
      p.kill('SIGTERM');
      await gone;
    }
    await env.cleanup();
  }, 60_000);

  it('its /proc files belong to root and a process of its own uid cannot read its environment', () => {
    const pid = p!.pid!;
    // The daemon itself runs as 65534 (setpriv execs it: same pid).
    expect(readFileSync(`/proc/${pid}/status`, 'utf8')).toMatch(new RegExp(`^Uid:\\s+${NOBODY}\\s`, 'm'));
    // A dumpable process's /proc/<pid>/environ belongs to its own uid; a non-dumpable one's to root.
    expect(statSync(`/proc/${pid}/environ`).uid).toBe(0);
    const r = spawnSync('setpriv', ['--reuid', String(NOBODY), '--regid', String(NOBODY), '--clear-groups', '--', 'cat', `/proc/${pid}/environ`], { encoding: 'utf8' });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/Permission denied/);
    expect(coreLimits(pid)).toMatch(/^Max core file size\s+0\s+0\s+bytes/);
  });
});
