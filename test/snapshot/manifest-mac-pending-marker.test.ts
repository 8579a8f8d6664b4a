/**
 * Turning --snapshot-manifest-key on after a crash left a snapshot `pending` (README "Snapshot
 * store", Signed manifests; docs/architecture.md §13.5): its pending manifest has no MAC, so the
 * start's settling of its marker (pending-markers.ts) is refused. The warning says so, naming the
 * manifest MAC, not "the store failed" (before: the store was blamed, and an operator waited for a
 * store that was fine); once sign-manifests signs it, the marker's retry marks it `error`.
 */
import { closeSync, openSync, readFileSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { api } from './helpers.js';

describe('a snapshot left pending, then signing turned on', () => {
  const env = new Env('mac-pending');
  const call = api(env);
  let macKey = '';
  let gate = '';

  beforeAll(async () => {
    ensureBuilt();
    // The copy waits while this file exists (snapshot-manager.ts): the snapshot stays pending until the kill.
    gate = join(env.dir, 'copy-gate');
    process.env.EBSD_TEST_SNAPSHOT_COPY_GATE = gate;
    await env.start();
    delete process.env.EBSD_TEST_SNAPSHOT_COPY_GATE;
    macKey = (await env.api('TrentService.CreateKey', { KeySpec: 'HMAC_256', KeyUsage: 'GENERATE_VERIFY_MAC', Description: 'manifests' })).KeyMetadata.Arn;
  }, 60_000);

  afterAll(async () => {
    delete process.env.EBSD_TEST_SNAPSHOT_COPY_GATE;
    await env.cleanup();
  });

  it('names the refused manifest, and settles it once sign-manifests signed it', async () => {
    const vol = (await call('CreateVolume', { Size: 8 * 1024 * 1024 })).VolumeId as string;
    await call('AttachVolume', { VolumeId: vol });
    const fd = openSync(env.file(vol), 'r+');
    try {
      writeSync(fd, Buffer.alloc(512 * 1024, 0x3c), 0, 512 * 1024, 0);
    } finally {
      closeSync(fd);
    }
    writeFileSync(gate, '');
    const snap = (await call('CreateSnapshot', { VolumeId: vol })).SnapshotId as string;
    const manifest = join(env.state, 'snapshots', 'manifests', `${snap}.json`);
    expect(JSON.parse(readFileSync(manifest, 'utf8'))).toMatchObject({ state: 'pending' });
    await env.kill9();
    unlinkSync(gate);

    await env.start(['--snapshot-manifest-key', macKey]);
    const line = `snapshot ${snap}, left pending by this daemon, cannot be marked error yet`;
    const log = await env.untilLog(line);
    const warning = log.split('\n').find((l) => l.includes(line))!;
    expect(warning).toContain('its manifest in the store is refused');
    expect(warning).toContain('has no manifest MAC');
    expect(warning).not.toContain('the store failed');
    expect(JSON.parse(readFileSync(manifest, 'utf8')).manifestMac).toBeUndefined();

    // Reviewed and signed, the marker's retry (5 s, then doubling) ends it `error` as any create a crash interrupted.
    const plan = (await env.cli(['snapshot', 'sign-manifests', '--output', 'json'])).json();
    expect(plan.Unsigned.map((u: any) => u.SnapshotId)).toEqual([snap]);
    const signed = await env.cli(['snapshot', 'sign-manifests', '--confirm', plan.PlanDigest, '--output', 'json']);
    expect(signed.code).toBe(0);
    let s: any;
    for (let i = 0; i < 300; i++) {
      s = (await call('DescribeSnapshots', { SnapshotIds: [snap] })).Snapshots[0];
      if (s.State !== 'pending') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(s).toMatchObject({ SnapshotId: snap, State: 'error', StateMessage: expect.stringContaining('The daemon stopped') });
    expect(JSON.parse(readFileSync(manifest, 'utf8')).manifestMac).toMatchObject({ keyArn: macKey });
  }, 120_000);
});
