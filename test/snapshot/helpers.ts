import { join } from 'node:path';
import type { Env } from '../e2e/helpers.js';
import { ROOT, run } from '../e2e/helpers.js';
import { callDaemon, ServiceError, socketPathFor } from '../../src/cli/client.js';

/**
 * Control-API calls from the test process itself (root), where a test is not
 * about the CLI: a CLI process per call costs a Node start-up each.
 */
export function api(env: Env): (target: string, body?: Record<string, unknown>) => Promise<any> {
  return (target, body = {}) => callDaemon(socketPathFor(env.state), `ebsd.${target}`, body);
}

/** The AWS error name a call fails with, or undefined if it succeeds. */
export async function refusal(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (e) {
    if (e instanceof ServiceError) return e.awsName;
    throw e;
  }
}

/** The refusal (ServiceError: awsName, status, message) a call fails with; throws if it succeeds or fails otherwise. */
export async function serviceRefusal(p: Promise<unknown>): Promise<ServiceError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof ServiceError) return e;
    throw e;
  }
  throw new Error('expected a refusal');
}

/** Polls DescribeSnapshots until the snapshot leaves `pending`; returns its description. */
export async function settled(env: Env, snapshotId: string): Promise<any> {
  const call = api(env);
  for (;;) {
    const s = (await call('DescribeSnapshots', { SnapshotIds: [snapshotId] })).Snapshots[0];
    if (s.State !== 'pending') return s;
    await new Promise((r) => setTimeout(r, 25));
  }
}

export type UidCallResult = { ok: any } | { error: { awsName: string; message: string } };

/** Several control-API calls as another uid, in one child process (the socket judges the peer's uid). */
export async function asUid(env: Env, uid: number, calls: [target: string, body: Record<string, unknown>][]): Promise<UidCallResult[]> {
  const client = join(ROOT, 'dist', 'cli', 'client.js');
  const script = `
    const { callDaemon, socketPathFor } = await import(${JSON.stringify(client)});
    const calls = JSON.parse(process.argv[1]);
    const out = [];
    for (const [t, b] of calls) {
      try { out.push({ ok: await callDaemon(socketPathFor(${JSON.stringify(env.state)}), 'ebsd.' + t, b) }); }
      catch (e) { out.push({ error: { awsName: e.awsName, message: e.message } }); }
    }
    process.stdout.write(JSON.stringify(out));`;
  const r = await run(process.execPath, ['--input-type=module', '-e', script, JSON.stringify(calls)], { uid });
  if (r.code !== 0) throw new Error(`as uid ${uid}: exit ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as UidCallResult[];
}

/**
 * DetachVolume once the file's handles are released: FUSE sends RELEASE after
 * close() has returned, so a detach right after the test closed its own handle
 * may still see it open (VolumeInUse); polled, bounded.
 */
export async function detachWhenClosed(env: Env, volumeId: string): Promise<void> {
  const call = api(env);
  for (let i = 0; ; i++) {
    try {
      await call('DetachVolume', { VolumeId: volumeId });
      return;
    } catch (e) {
      if (!(e instanceof ServiceError) || e.awsName !== 'VolumeInUse' || i >= 200) throw e;
      await new Promise((r) => setTimeout(r, 25));
    }
  }
}
