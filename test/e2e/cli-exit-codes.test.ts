import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, Env, ROOT, ensureBuilt, run } from './helpers.js';

/**
 * Exit codes of the real CLI (src/cli/exit-codes.ts): a throttled caller is
 * told to retry (10, a service condition), not that its request was invalid
 * (7); a bad choice on the command line is a one-line usage error (2).
 */
const NOBODY = 65534;
const CLIENT = join(ROOT, 'test', 'e2e', 'bounds-client.mjs');

describe('CLI exit codes', () => {
  const env = new Env('exitcodes');
  let holder: ChildProcess | undefined;

  beforeAll(async () => {
    ensureBuilt();
    await env.start(['--kms-only', '--kms-listen', '127.0.0.1:0']);
  }, 60_000);
  afterAll(async () => {
    if (holder && holder.exitCode === null && holder.signalCode === null) {
      const gone = new Promise<void>((r) => holder!.once('exit', () => r()));
      holder.kill('SIGKILL');
      await gone;
    }
    await env.cleanup();
  });

  it('ThrottlingException (a uid over its connection cap) exits 10 and names the exception', async () => {
    // uid 65534 holds its 64 connections (the per-uid cap) with unfinished bodies (bounds-client.mjs).
    holder = spawn('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', process.execPath, CLIENT, 'hold', join(env.state, 'ebsd.sock'), '64', '0'], { stdio: ['pipe', 'pipe', 'pipe'] });
    const ready = await new Promise<any>((resolve, reject) => {
      let buf = '';
      holder!.stdout!.on('data', (c) => { buf += c; if (buf.includes('\n')) resolve(JSON.parse(buf.slice(0, buf.indexOf('\n')))); });
      holder!.on('exit', (code) => reject(new Error(`bounds-client exited ${code}`)));
    });
    expect(ready.connected).toBe(64);
    const r = await run(process.execPath, [CLI, 'status', '--state-dir', env.state], { uid: NOBODY, gid: NOBODY });
    expect(r.stderr).toMatch(/^ebsd: ThrottlingException: too many requests/);
    expect(r.code).toBe(10);
    holder.stdin!.end();
  }, 60_000);

  it('a value outside --output choices exits 2 with a one-line usage error, no stack', async () => {
    for (const args of [['status', '--output', 'xml'], ['volume', 'ls', '--output=xml'], ['daemon', '--log-level', 'loud']]) {
      const r = await run(process.execPath, [CLI, ...args, '--state-dir', env.state]);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr.trim().split('\n'), args.join(' ')).toHaveLength(1);
      expect(r.stderr).toMatch(/^ebsd: --(output|log-level): invalid choice "(xml|loud)" \(choose from "/);
      expect(r.stderr).not.toMatch(/internal error|\n\s+at /);
    }
  }, 60_000);
});
