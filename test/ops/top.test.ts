import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { CLI, Env, ensureBuilt } from '../e2e/helpers.js';

/**
 * `ebsd top` in a real terminal (tmux): it shows the attached volume, its
 * IOPS move under real I/O, an impaired volume is highlighted in red, and
 * `q` quits. Everything is polled (capture-pane), never slept for.
 */
describe('ebsd top in tmux', () => {
  const env = new Env('top');
  const session = `ebsd-top-${randomBytes(4).toString('hex')}`;
  let vol = '';
  let keyId = '';

  const tmux = (...args: string[]): { code: number; out: string } => {
    const r = spawnSync('tmux', args, { encoding: 'utf8' });
    return { code: r.status ?? -1, out: r.stdout };
  };
  const pane = (escapes = false): string => tmux('capture-pane', '-p', ...(escapes ? ['-e'] : []), '-t', session).out;
  async function until(what: string, ok: (screen: string) => boolean, tick?: () => void): Promise<string> {
    for (let i = 0; i < 600; i++) {
      tick?.();
      const s = pane(true);
      if (ok(s)) return s;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`tmux pane never showed ${what}:\n${pane()}`);
  }
  /** The IOPS column of the volume's row (the third column). */
  const iopsOf = (screen: string): number => {
    const row = screen.replace(/\x1b\[[0-9;]*m/g, '').split('\n').find((l) => l.startsWith(vol));
    return row ? Number(row.trim().split(/\s+/)[2]) : NaN;
  };

  beforeAll(async () => {
    ensureBuilt();
    expect(spawnSync('tmux', ['-V']).status, 'tmux is installed by scripts/setup.sh').toBe(0);
    await env.start(['--metrics-listen', '127.0.0.1:0', '--key-cache-ttl', '2s']);
    keyId = (await env.ok(['kms', 'create-key', '--description', 'top'])).KeyMetadata.KeyId;
    vol = (await env.ok(['volume', 'create', '--size', '16MiB', '--kms-key', keyId, '--name', 'hot'])).VolumeId;
    await env.ok(['attach', vol]);
  }, 90_000);
  afterAll(async () => {
    tmux('kill-session', '-t', session);
    await env.cleanup();
  }, 60_000);

  it('shows the volume, IOPS under real I/O, an impaired volume in red, and quits on q', async () => {
    const cmd = `EBSD_STATE_DIR=${env.state} ${process.execPath} ${CLI} top --interval 0.5`;
    expect(tmux('new-session', '-d', '-s', session, '-x', '160', '-y', '30', cmd).code).toBe(0);
    await until('the volume row', (s) => s.includes(vol) && s.includes('cached') && s.includes('hot'));

    // Real writes with an fsync per round until a refresh shows them as IOPS (bounded rounds).
    const fd = openSync(env.file(vol), 'r+');
    try {
      const block = randomBytes(4096);
      let round = 0;
      const screen = await until('non-zero IOPS', (s) => iopsOf(s) > 0, () => {
        if (round++ > 400) throw new Error('IOPS never moved after 400 rounds of writes');
        for (let i = 0; i < 64; i++) writeSync(fd, block, 0, 4096, ((round * 64 + i) % 4096) * 4096);
        fsyncSync(fd);
      });
      expect(iopsOf(screen)).toBeGreaterThan(0);
    } finally {
      closeSync(fd);
    }

    // Withdraw the key: the volume is impaired within one TTL, and top paints its row red (SGR 41).
    await env.ok(['kms', 'disable-key', '--key-id', keyId]);
    const red = await until('an impaired row', (s) => s.includes('IMPAIRED'));
    const row = red.split('\n').find((l) => l.includes(vol))!;
    expect(row).toMatch(/\x1b\[[0-9;]*41m/);
    expect(row).toContain('DisabledException');

    tmux('send-keys', '-t', session, 'q');
    for (let i = 0; i < 400 && tmux('has-session', '-t', session).code === 0; i++) await new Promise((r) => setTimeout(r, 25));
    expect(tmux('has-session', '-t', session).code).not.toBe(0); // top exited, so its session closed
  });
});
