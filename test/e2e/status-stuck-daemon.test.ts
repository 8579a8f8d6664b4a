import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, Env, ROOT, ensureBuilt, run } from './helpers.js';

/**
 * `ebsd status` against a daemon that accepts connections but does not answer (stopped with SIGSTOP,
 * its event loop blocked) waited for ever: a health check or a script calling it hung with the
 * daemon. Now it gives up after --status-timeout (10 s unless given, as `ebsd top`) with exit 3,
 * saying the daemon is stopped or stuck. A real daemon, really stopped.
 */
describe('ebsd status against a stopped daemon (real daemon, SIGSTOP)', () => {
  const env = new Env('status-stuck');

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
  }, 60_000);
  afterAll(() => env.cleanup(), 60_000);

  const status = (...args: string[]) => run(process.execPath, [CLI, 'status', ...args], { env: { EBSD_STATE_DIR: env.state }, timeoutMs: 40_000 });

  it('gives up with exit 3 after --status-timeout (10 s by default), naming the cause; answers again once the daemon runs', async () => {
    const pid = env.pid!;
    process.kill(pid, 'SIGSTOP');
    try {
      const [byDefault, given] = await Promise.all([status(), status('--status-timeout', '1')]);
      // The old CLI never returned: killed by run()'s guard after 40 s (code -1).
      expect(byDefault.code, byDefault.stderr).toBe(3);
      expect(byDefault.stderr).toContain('no answer to Status within 10 s: the daemon is stopped or stuck');
      expect(given.code, given.stderr).toBe(3);
      expect(given.stderr).toContain('no answer to Status within 1 s: the daemon is stopped or stuck');
      expect(given.stdout).toBe('');
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    const r = await status('--output', 'json');
    expect(r.code, r.stderr).toBe(0);
    expect(r.json().Daemon.Pid).toBe(pid);
  }, 90_000);

  it('the exit-code help (ebsd --help) and README say exit 3 is also a daemon that did not answer in time', async () => {
    const help = await run(process.execPath, [CLI, '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('3  daemon not running / control socket unreachable, or it did not answer in time\n     (--status-timeout of ebsd status and ebsd top: stuck or overloaded)');
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8').replace(/\s+/g, ' ');
    expect(readme).toContain('3 daemon not running, or it did not answer in time (`ebsd status`, `ebsd top`: `--status-timeout`; stuck or overloaded)');
  });

  it('refuses a --status-timeout out of range, exit 2, naming it', async () => {
    const r = await status('--status-timeout', '0.5');
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--status-timeout must be a number of seconds from 1 to 600, got "0.5"');
  });
});
