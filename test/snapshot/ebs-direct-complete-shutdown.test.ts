/**
 * SIGTERM while an EBS direct CompleteSnapshot waits for the KMS to answer for the completed
 * manifest's MAC (--snapshot-manifest-key; putCompletedWaitingForKms, docs/architecture.md §13.5),
 * through a real daemon and its embedded KMS. The stop ends that wait first (EbsDirect.stopWaits),
 * before its listeners close: the caller is answered, InternalServerException saying the daemon shut
 * down and the snapshot stays pending, on a connection still open, and the snapshot is `error` after
 * the restart, never `completed` behind its caller's back. Before, the control server waited 10 s for
 * the request while the completion went on waiting, then cut the connection (the caller saw no
 * answer), and only then was the wait ended.
 *
 * The embedded KMS "does not answer" the way it fails when it cannot write its audit log: every call
 * is KMSInternalException (a KMS that cannot be asked, not a refusal). The daemon runs under
 * RLIMIT_FSIZE lowered (prlimit --pid) to the audit log's size once the snapshot's blocks are put, so
 * each audit append fails with EFBIG, as backing-store-full.test.ts fills a disk.
 */
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { ServiceError } from '../../src/cli/client.js';

const BLOCK = 512 * 1024;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('base64');

describe('SIGTERM during an EBS direct CompleteSnapshot waiting for the KMS', () => {
  const env = new Env('ebs-complete-stop');
  let macKey = '';

  beforeAll(async () => {
    ensureBuilt();
    await env.start(['--allow-unencrypted']);
    macKey = (await env.api('TrentService.CreateKey', { KeySpec: 'HMAC_256', KeyUsage: 'GENERATE_VERIFY_MAC', Description: 'manifests' })).KeyMetadata.Arn;
    await env.stop();
    await env.start(['--allow-unencrypted', '--snapshot-manifest-key', macKey]);
  }, 60_000);

  afterAll(() => env.cleanup(), 60_000);

  it('answers the waiting CompleteSnapshot (InternalServerException, shut down, stays pending) before the connection closes; the snapshot is error after the restart', async () => {
    const snap = (await env.api('ebs.StartSnapshot', { VolumeSize: 1, Encrypted: false })).SnapshotId as string;
    const data = randomBytes(BLOCK);
    await env.api('ebs.PutSnapshotBlock', { SnapshotId: snap, BlockIndex: 2, BlockData: data.toString('base64'), DataLength: BLOCK, Checksum: sha(data), ChecksumAlgorithm: 'SHA256' });

    // From here the daemon cannot grow its audit log: every KMS call (the manifest's GenerateMac) fails unanswered.
    const events = join(env.state, 'kms', 'audit', 'events.ndjson');
    const limit = spawnSync('prlimit', ['--pid', String(env.pid), `--fsize=${statSync(events).size}:unlimited`], { encoding: 'utf8' });
    expect(limit.status, limit.stderr).toBe(0);

    let answer: { ok?: unknown; refused?: ServiceError; cut?: Error } | undefined;
    const completing = env.api('ebs.CompleteSnapshot', { SnapshotId: snap, ChangedBlocksCount: 1 }).then(
      (ok) => { answer = { ok }; },
      (e: Error) => { answer = e instanceof ServiceError ? { refused: e } : { cut: e }; },
    );
    const waiting = 'the KMS did not answer for the completed manifest';
    expect(await env.untilLog(waiting, 30_000)).toContain(waiting);
    expect(answer).toBeUndefined();

    await env.stop();
    await completing;
    // Answered, not cut off: the wait ended before the control server closed.
    expect(answer?.cut?.message).toBeUndefined();
    expect(answer?.refused?.awsName).toBe('InternalServerException');
    expect(answer?.refused?.message).toContain(`the daemon shut down while CompleteSnapshot of ${snap} waited for the KMS; the snapshot stays pending`);

    // Restarted (no limit): the snapshot the stop left pending is error, as after any restart before CompleteSnapshot.
    await env.start(['--allow-unencrypted', '--snapshot-manifest-key', macKey]);
    const [s] = (await env.api('ebsd.DescribeSnapshots', { SnapshotIds: [snap] })).Snapshots;
    expect(s).toMatchObject({ SnapshotId: snap, State: 'error' });
  }, 120_000);
});
