/**
 * An S3 outage never keeps volumes from being served (docs/architecture.md
 * §13.1, §12.4), not even when the previous run left snapshots to settle:
 * the real daemon, restarted with `--snapshot-store s3://…` on a closed
 * loopback port and a create's and a copy's pending markers left in its
 * state dir, starts, serves a volume, warns naming the snapshot for each
 * marker, and keeps the markers for when the store answers.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { unusedPort } from '../helpers/ports.js';

const LEFT = 'snap-0123456789abcdef0';
/** Where a run killed mid-create, mid-copy and mid-StartSnapshot leaves its marker. */
const MARKER_DIRS = ['snapshots-local/pending', 'snapshots-local/copies', 'ebs-direct-pending'];

describe('daemon start with the S3 store down and pending markers left', () => {
  const env = new Env('s3-down-start');
  const saved = Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('AWS_')));
  const setAwsEnv = (vars: Record<string, string>): void => {
    for (const k of Object.keys(process.env)) if (k.startsWith('AWS_')) delete process.env[k];
    Object.assign(process.env, vars);
  };

  beforeAll(async () => {
    ensureBuilt();
    // A first run makes the state dir; the markers are what a run killed mid-create and mid-copy leaves.
    await env.start();
    await env.stop();
    for (const d of MARKER_DIRS) {
      mkdirSync(join(env.state, d), { recursive: true, mode: 0o700 });
      writeFileSync(join(env.state, d, LEFT), '', { mode: 0o600 });
    }
  }, 120_000);

  afterAll(async () => {
    await env.cleanup();
    setAwsEnv(saved as Record<string, string>);
  });

  it('starts, serves a volume, warns naming the snapshot per marker, and keeps the markers', async () => {
    const port = await unusedPort();
    setAwsEnv({
      AWS_ENDPOINT_URL_S3: `http://127.0.0.1:${port}`, AWS_ACCESS_KEY_ID: 'AKIDEXAMPLE', AWS_SECRET_ACCESS_KEY: 'secret', AWS_REGION: 'us-east-1',
      AWS_CONFIG_FILE: '/nonexistent', AWS_SHARED_CREDENTIALS_FILE: '/nonexistent',
    });
    await env.start(['--snapshot-store', 's3://ebsd-snapshots/down']);
    const vol = (await env.api('ebsd.CreateVolume', { Size: '4MiB' })).VolumeId as string;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    expect(existsSync(env.file(vol))).toBe(true);
    await env.api('ebsd.DetachVolume', { VolumeId: vol, Force: false });
    const warnings = (log: string) => log.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { level: number; snapshotId?: string; component?: string; msg: string })
      .filter((l) => l.level === 40 && l.snapshotId === LEFT);
    // Written before the ready line, but the log file takes the daemon's output through a pipe and a write
    // stream: polled (bounded) until a warning of each part is there.
    const parts = (log: string): string => [...new Set(warnings(log).map((l) => l.component))].sort().join();
    const warned = warnings(await env.untilLog((log) => parts(log) === 'ebs-direct,snapshot,snapshot-copy'));
    // Each marker warned at least once (the background retry, 5 s on, may have warned again).
    expect([...new Set(warned.map((l) => l.component))].sort()).toEqual(['ebs-direct', 'snapshot', 'snapshot-copy']);
    for (const l of warned) expect(l.msg).toContain(`snapshot ${LEFT}`);
    for (const d of MARKER_DIRS) expect(existsSync(join(env.state, d, LEFT)), d).toBe(true);
  }, 120_000);
});
