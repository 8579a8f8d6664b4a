/**
 * `ebsd daemon --snapshot-store` with a value that is not a store: the real
 * CLI refuses it (exit 2) before the daemon touches anything, naming the value. (A daemon with an
 * S3 store and its status: test/snapshot/s3-restore.test.ts.)
 */
import { existsSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CLI, Env, ensureBuilt, run } from '../e2e/helpers.js';

const envs: Env[] = [];
beforeAll(() => ensureBuilt());
afterAll(async () => {
  for (const e of envs) await e.cleanup();
});

describe('ebsd daemon --snapshot-store', () => {
  test('a value that is not a store: a usage error (exit 2) naming it, before the state dir or the mount is touched', async () => {
    const b = new Env('s3store-bad');
    envs.push(b);
    const r = await run(process.execPath, [CLI, 'daemon', '--state-dir', b.state, '--mount', b.mnt, '--snapshot-store', 'ftp://host/snaps'], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toContain('--snapshot-store "ftp://host/snaps" is not a snapshot store');
    expect(existsSync(b.state)).toBe(false);
    expect(r.stderr).toContain('s3://BUCKET[/PREFIX]');
    expect(readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(b.mnt);
  });
});
