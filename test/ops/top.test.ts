import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { createInterface } from 'node:readline';
import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { CLI, Env, ensureBuilt, run } from '../e2e/helpers.js';
import type { TopFigures } from '../../src/cli/top.js';

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
    keyId = (await env.api('TrentService.CreateKey', { Description: 'top' })).KeyMetadata.KeyId;
    vol = (await env.api('ebsd.CreateVolume', { Size: '16MiB', KmsKeyId: keyId, Name: 'hot' })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
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
    await env.api('TrentService.DisableKey', { KeyId: keyId });
    const red = await until('an impaired row', (s) => s.includes('IMPAIRED'));
    const row = red.split('\n').find((l) => l.includes(vol))!;
    expect(row).toMatch(/\x1b\[[0-9;]*41m/);
    expect(row).toContain('DisabledException');

    tmux('send-keys', '-t', session, 'q');
    for (let i = 0; i < 400 && tmux('has-session', '-t', session).code === 0; i++) await new Promise((r) => setTimeout(r, 25));
    expect(tmux('has-session', '-t', session).code).not.toBe(0); // top exited, so its session closed
  });
});

/**
 * `ebsd top --output json` against a real daemon with metrics: no screen, one JSON
 * document per line and refresh carrying the screen's figures under the metrics' names,
 * --once stops after one, and a reader that goes away (`| head -1`) ends it with exit 0.
 */
describe('ebsd top --output json', () => {
  const env = new Env('top-json');
  let vol = '';

  beforeAll(async () => {
    ensureBuilt();
    await env.start(['--metrics-listen', '127.0.0.1:0']);
    vol = (await env.api('ebsd.CreateVolume', { Size: '16MiB', Name: 'piped' })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });

  }, 90_000);
  afterAll(() => env.cleanup(), 60_000);

  const top = (...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> =>
    run(process.execPath, [CLI, 'top', '--output', 'json', '--interval', '0.2', ...args], { env: { EBSD_STATE_DIR: env.state }, timeoutMs: 30_000 });

  it('--once prints one JSON line with the figures named as the metrics are, and exits 0', async () => {
    const r = await top('--once');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).not.toContain('\x1b');
    const lines = r.stdout.split('\n');
    expect(lines).toHaveLength(2); // one document, then the final newline
    expect(lines[1]).toBe('');
    const doc = JSON.parse(lines[0]!) as TopFigures;
    expect(doc.interval_seconds).toBeGreaterThan(0);
    expect(doc.kms_requests_per_second).toBeGreaterThanOrEqual(0);
    expect(doc.kms_requests_failed_per_second).toBeGreaterThanOrEqual(0);
    expect(doc.volumes).toHaveLength(1);
    expect(doc.volumes[0]).toMatchObject({
      volume_id: vol, name: 'piped', volume_open_handles: 0, key_cache_state: 'cached', key_cache_impaired_by: null,
      volume_operations_per_second: { read: expect.any(Number), write: expect.any(Number) },
      volume_bytes_per_second: { read: expect.any(Number), write: expect.any(Number) },
    });
  });

  it('--query applies to each document', async () => {
    const r = await top('--once', '--query', 'volumes[].volume_id');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`${JSON.stringify([vol])}\n`);
  });

  it('one line per refresh shows real writes, and exits 0 when its reader goes away (EPIPE)', async () => {
    const p = spawn(process.execPath, [CLI, 'top', '--output', 'json', '--interval', '0.2'], { env: { ...process.env, EBSD_STATE_DIR: env.state }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    p.stderr.on('data', (c) => (stderr += c));
    const exited = new Promise<number | null>((r) => p.once('exit', (c) => r(c)));
    const fd = openSync(env.file(vol), 'r+');
    try {
      const block = randomBytes(4096);
      let seen = 0;
      let wrote = false;
      for await (const line of createInterface({ input: p.stdout })) {
        const doc = JSON.parse(line) as TopFigures; // each line is a whole document
        const v = doc.volumes.find((x) => x.volume_id === vol)!;
        expect(v.volume_open_handles).toBe(1);
        if (v.volume_operations_per_second!.write > 0) {
          expect(v.volume_bytes_per_second!.write).toBeGreaterThan(0);
          wrote = true;
          break;
        }
        if (++seen > 200) break;
        for (let i = 0; i < 64; i++) writeSync(fd, block, 0, 4096, ((seen * 64 + i) % 4096) * 4096);
        fsyncSync(fd);
      }
      expect(wrote, 'a refresh showed the writes').toBe(true);
    } finally {
      closeSync(fd);
    }
    // As `| head -1` does: close our end of the pipe; top's next write fails with EPIPE.
    p.stdout.destroy();
    const code = await Promise.race([exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 20_000))]);
    if (code === 'hung') p.kill('SIGKILL');
    expect(code).toBe(0);
    expect(stderr).toBe('');
  });

  it('a daemon that accepts but does not answer (SIGSTOP): SIGTERM ends top at once; alone it gives up after --status-timeout (10 s unless given) with exit 3', async () => {
    const pid = env.pid!;
    // top runs (its first line printed: its signal handlers are in place), then the daemon stops answering.
    const p = spawn(process.execPath, [CLI, 'top', '--output', 'json', '--interval', '0.2'], { env: { ...process.env, EBSD_STATE_DIR: env.state } });
    let lines = 0;
    const firstLine = new Promise<void>((r) => p.stdout.on('data', (c: Buffer) => { lines += c.toString().split('\n').length - 1; if (lines > 0) r(); }));
    const exited = new Promise<number | null>((r) => p.on('close', (code) => r(code)));
    await Promise.race([firstLine, exited]);
    expect(lines).toBeGreaterThan(0);
    process.kill(pid, 'SIGSTOP');
    try {
      const seen = lines;
      await new Promise((r) => setTimeout(r, 1_000)); // a few refreshes' time: top now waits on a Status call
      p.kill('SIGTERM');
      const code = await Promise.race([exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 5_000))]);
      if (code === 'hung') p.kill('SIGKILL');
      expect(code).toBe(0);
      expect(lines - seen).toBeLessThanOrEqual(1); // at most the refresh under way when the daemon stopped

      const t0 = performance.now();
      const r = await top('--once', '--status-timeout', '2');
      expect(r.code, r.stderr).toBe(3);
      expect(r.stderr).toContain('no answer to Status within 2 s: the daemon is stopped or stuck');
      expect(performance.now() - t0).toBeGreaterThanOrEqual(2_000); // it waited that long, not less
      expect(r.stderr).not.toContain('Is the daemon running?');
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    expect((await top('--once')).code).toBe(0); // and the daemon answers again
  }, 60_000);

  it('works in a shell pipeline: `ebsd top --output json | head -1` exits 0 on both sides', async () => {
    const r = await run('bash', ['-o', 'pipefail', '-c', `"${process.execPath}" "${CLI}" top --output json --interval 0.2 | head -1`], { env: { EBSD_STATE_DIR: env.state }, timeoutMs: 30_000 });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect((JSON.parse(r.stdout) as TopFigures).volumes[0]!.volume_id).toBe(vol);
  });
});
