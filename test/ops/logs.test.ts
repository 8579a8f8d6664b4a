import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { CLI, Env, ensureBuilt } from '../e2e/helpers.js';

/** `ebsd daemon --log-format pretty|json`: readable lines for people, JSON for machines, both flushed at exit. */
describe('daemon log format', () => {
  let env: Env | undefined;
  let child: ChildProcess | undefined;
  beforeAll(() => ensureBuilt());
  afterEach(async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      const gone = new Promise((r) => child!.once('exit', r));
      child.kill('SIGKILL');
      await gone;
    }
    await env?.cleanup();
  }, 60_000);

  /** Run a daemon until ready, SIGTERM it, and return everything it printed. */
  async function cycle(extra: string[]): Promise<string> {
    env = new Env('logs');
    const p = spawn(process.execPath, [CLI, 'daemon', '--state-dir', env.state, '--mount', env.mnt, ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
    child = p;
    let out = '';
    p.stdout!.on('data', (c) => (out += c));
    p.stderr!.on('data', (c) => (out += c));
    // 'close', not 'exit': 'exit' may come while the last lines are still in the pipes, unread here.
    const exited = new Promise<number | null>((r) => p.once('close', (c) => r(c)));
    for (let i = 0; i < 1500 && !out.includes('ebsd daemon ready'); i++) {
      if (p.exitCode !== null) throw new Error(`daemon exited ${p.exitCode}:\n${out}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(out).toContain('ebsd daemon ready');
    p.kill('SIGTERM');
    expect(await exited).toBe(0);
    return out;
  }

  it('--log-format pretty: readable lines, no JSON, the last line written before exit', async () => {
    const out = await cycle(['--log-format', 'pretty']);
    const lines = out.split('\n').filter((l) => l.trim() !== '');
    expect(lines.length).toBeGreaterThan(2);
    for (const l of lines) expect(() => JSON.parse(l)).toThrow();
    expect(out).toMatch(/^\[\d\d:\d\d:\d\d\.\d{3}\] INFO: ebsd daemon ready$/m);
    expect(out).toMatch(/INFO: ebsd daemon stopped/);
    // Fields are still printed, one per line under the message.
    expect(out).toMatch(/^\s+mount: "/m);
  });

  it('not a terminal and no flag: JSON lines (the default for pipes and journald)', async () => {
    const out = await cycle([]);
    const lines = out.split('\n').filter((l) => l.trim() !== '');
    for (const l of lines) expect(typeof JSON.parse(l).msg).toBe('string');
    expect(lines.some((l) => JSON.parse(l).msg === 'ebsd daemon stopped')).toBe(true);
  });
});
