/**
 * `ebsd daemon --snapshot-store` end to end: the real daemon (child process)
 * with an S3 store on s3rver, configured only through the standard AWS
 * environment, shows it in `ebsd status`; a value that is not a store stops
 * the daemon before it mounts anything, naming the value.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CLI, Env, ensureBuilt, run } from '../e2e/helpers.js';
import { startS3Server, type S3Server } from './s3-helpers.js';

let server: S3Server | undefined;
const envs: Env[] = [];
const saved = { ...process.env };
beforeAll(async () => {
  ensureBuilt();
  server = await startS3Server();
  // The daemons this file starts inherit the environment: the standard AWS variables point at s3rver.
  Object.assign(process.env, server.env);
});
afterAll(async () => {
  for (const e of envs) await e.cleanup();
  for (const k of Object.keys(server?.env ?? {})) if (saved[k] === undefined) delete process.env[k]; else process.env[k] = saved[k];
  await server?.stop();
});

describe('ebsd daemon --snapshot-store', () => {
  test('s3://bucket/prefix: the status shows the S3 store; without the flag, the state dir\'s', async () => {
    const a = new Env('s3store');
    envs.push(a);
    await a.start(['--snapshot-store', `s3://${server!.bucket}/fleet-a`]);
    expect((await a.ok(['status'])).Daemon.SnapshotStore).toBe(`s3://${server!.bucket}/fleet-a`);
    await a.stop();
    await a.start();
    expect((await a.ok(['status'])).Daemon.SnapshotStore).toBe(`dir:${join(a.state, 'snapshots')}`);
    expect(existsSync(join(a.state, 'snapshots', 'manifests'))).toBe(true);
  });

  test('a value that is not a store: the daemon does not start (exit 9) and names it', async () => {
    const b = new Env('s3store-bad');
    envs.push(b);
    const r = await run(process.execPath, [CLI, 'daemon', '--state-dir', b.state, '--mount', b.mnt, '--snapshot-store', 'ftp://host/snaps'], { timeoutMs: 60_000 });
    expect(r.code).toBe(9);
    expect(r.stderr).toContain('--snapshot-store "ftp://host/snaps" is not a snapshot store');
    expect(r.stderr).toContain('s3://BUCKET[/PREFIX]');
  });
});
