/**
 * SIGTERM always ends the daemon (src/daemon/stop-deadline.ts, README "Running in production"):
 * - its FUSE mount unmounted and its directories removed from outside (as a test's clean-up or
 *   an operator's rm -rf does) before the signal: fuse-native's `fusermount -uz` then fails, and
 *   fuse-native kept its native handle referenced, so the daemon logged "stopped" and never
 *   exited (two such daemons were found 80 minutes after a failed fleet test);
 * - a step of the stop that never ends: given up after --stop-timeout, exit 1, the step named;
 * - its stdout and stderr closed (the test runner that read them died): every log line is EPIPE.
 */
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CLI, Env, ensureBuilt, sh } from './helpers.js';

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('daemon stop', () => {
  let env: Env | undefined;
  beforeAll(() => ensureBuilt());
  afterEach(async () => {
    delete process.env.EBSD_TEST_FAULT;
    await env?.cleanup();
    env = undefined;
  }, 60_000);

  it('exits 0 on SIGTERM after its mount was unmounted and its mount and state dirs removed from outside', async () => {
    env = new Env('stop-gone');
    await env.start();
    const vol = (await env.api('ebsd.CreateVolume', { Size: '16MiB' })).VolumeId as string;
    expect((await env.api('ebsd.AttachVolume', { VolumeId: vol })).State).toBe('attached');
    await sh('fusermount', ['-uz', env.mnt]);
    rmSync(env.mnt, { recursive: true, force: true });
    rmSync(env.state, { recursive: true, force: true });
    // null: not exited 20 s after SIGTERM, killed (Env.stop)
    expect(await env.stop()).toBe(0);
    const log = env.daemonLog();
    expect(log).toContain('FUSE mount already gone');
    expect(log).toContain('"ebsd daemon stopped"');
    expect(log).not.toContain('still held');
  }, 60_000);

  it('a stop step that never ends is given up after --stop-timeout: exit 1, the step named in the log', async () => {
    env = new Env('stop-hang');
    process.env.EBSD_TEST_FAULT = 'stop.drain';
    await env.start(['--stop-timeout', '2s']);
    delete process.env.EBSD_TEST_FAULT;
    expect(await env.stop()).toBe(1);
    const log = env.daemonLog();
    expect(log).toContain('shutdown (SIGTERM) did not finish in 2 s: stuck at step \\"drain FUSE\\"; exiting without it');
    expect(log).not.toContain('"ebsd daemon stopped"');
  }, 60_000);

  it('exits 0 on SIGTERM when nobody reads its stdout and stderr any more (every log line EPIPE)', async () => {
    env = new Env('stop-epipe');
    const p = spawn(process.execPath, [CLI, 'daemon', '--state-dir', env.state, '--mount', env.mnt], { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<number | null>((r) => p.once('exit', (code) => r(code)));
    try {
      let out = '';
      await new Promise<void>((ok, fail) => {
        p.stdout!.on('data', (c: Buffer) => {
          out += c.toString();
          if (out.includes('"ebsd daemon ready"')) ok();
        });
        p.once('exit', (code) => fail(new Error(`daemon exited ${code} before ready:\n${out}`)));
      });
      p.stdout!.destroy();
      p.stderr!.destroy();
      await env.api('ebsd.Status'); // a request: its log lines meet the closed pipe
      p.kill('SIGTERM');
      // Polled, bounded: a daemon that ignores the signal fails here, and is killed below.
      for (let i = 0; i < 400 && p.exitCode === null; i++) await new Promise((r) => setTimeout(r, 50));
      expect(p.exitCode).toBe(0);
      expect(await exited).toBe(0);
    } finally {
      if (p.exitCode === null && p.signalCode === null && p.pid !== undefined && alive(p.pid)) p.kill('SIGKILL');
    }
  }, 60_000);
});
