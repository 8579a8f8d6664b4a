import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { flockExclusive, nativeAddonPath } from '../../src/native/addon.js';

/** The native flock(2) behind the daemon's state-dir lock (src/daemon/state-dir.ts). */
describe('flockExclusive', () => {
  let dir: string;
  let lock: string;
  const fds: number[] = [];
  const open = (): number => {
    const fd = openSync(lock, 'a');
    fds.push(fd);
    return fd;
  };
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'ebsd-flock-'));
    lock = join(dir, 'ebsd.lock');
  });
  afterEach(() => {
    for (const fd of fds.splice(0)) try { closeSync(fd); } catch { /* already closed by the test */ }
    rmSync(dir, { recursive: true, force: true });
  });

  it('one open file gets it; another open file of the same file does not until the first closes', () => {
    const a = open();
    const b = open();
    expect(flockExclusive(a)).toBe(true);
    expect(flockExclusive(a)).toBe(true); // re-locking the holder is a no-op
    expect(flockExclusive(b)).toBe(false);
    closeSync(fds.shift()!);
    expect(flockExclusive(b)).toBe(true);
  });

  it('the kernel drops a SIGKILLed holder\'s lock', async () => {
    // A child that takes the lock through the same addon, says so, then waits to be killed.
    const script = `const a = require(${JSON.stringify(nativeAddonPath)}); const fd = require('fs').openSync(${JSON.stringify(lock)}, 'a');
      process.stdout.write(a.flockExclusive(fd) ? 'locked\\n' : 'busy\\n'); setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    try {
      const said = await new Promise<string>((r) => child.stdout!.once('data', (c: Buffer) => r(c.toString().trim())));
      expect(said).toBe('locked');
      const mine = open();
      expect(flockExclusive(mine)).toBe(false);
      child.kill('SIGKILL');
      await exited;
      expect(flockExclusive(mine)).toBe(true);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    }
  });

  it('throws ERR_FLOCK with errno and syscall on a bad fd, ERR_ARG_* on bad arguments', () => {
    let err: { code?: string; errno?: number; syscall?: string } | undefined;
    try {
      flockExclusive(1_000_000); // EBADF
    } catch (e) {
      err = e as typeof err;
    }
    expect(err).toMatchObject({ code: 'ERR_FLOCK', errno: 9, syscall: 'flock' });
    expect(() => flockExclusive(-1)).toThrow(expect.objectContaining({ code: 'ERR_ARG_RANGE' }));
    expect(() => flockExclusive('3' as unknown as number)).toThrow(expect.objectContaining({ code: 'ERR_ARG_TYPE' }));
  });
});
