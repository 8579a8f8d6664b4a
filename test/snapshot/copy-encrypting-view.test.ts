import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, test } from 'vitest';
import { toEc2Snapshot } from '../../src/snapshot/snapshot-view.js';
import { openSnapshotHarness, type SnapshotHarness } from './in-process.js';

/**
 * The copy of an unencrypted snapshot made encrypted (CopySnapshot Encrypted, or
 * encryption by default) is shown as EC2 shows it from the start: Encrypted,
 * under its key's ARN, while pending as once completed (src/snapshot/copy.ts).
 * It showed the source's Encrypted false and no key until it completed, and for
 * good when a restart interrupted it.
 */

const MiB = 1024 * 1024;

let h: SnapshotHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('CopySnapshot of an unencrypted snapshot, encrypted', () => {
  test('pending, it already shows Encrypted and its key\'s ARN; completed, the same key', async () => {
    h = await openSnapshotHarness();
    const hh = h;
    const vol = (await hh.mgr.createVolume({ Size: 2 * MiB, Cipher: 'none' }, hh.caller)).VolumeId;
    await hh.mgr.attachVolume({ VolumeId: vol }, hh.caller);
    await hh.mgr.getBlockDevice(vol)!.write(0, randomBytes(2 * MiB));
    await hh.mgr.detachVolume({ VolumeId: vol }, hh.caller);
    const src = await hh.snapshot(vol);
    expect([src.state, src.encrypted]).toEqual(['completed', false]);

    const { SnapshotId: copy } = await hh.copier.copySnapshot({ SourceSnapshotId: src.snapshotId, SourceRegion: 'us-east-1', Encrypted: true }, hh.caller);
    const running = hh.copier.runningManifest(copy);
    expect(running, 'the copy is still running').toBeDefined();
    const pending = toEc2Snapshot(running!);
    expect(pending).toMatchObject({ State: 'pending', Encrypted: true, KmsKeyId: expect.stringMatching(/^arn:aws:kms:us-east-1:\d{12}:key\//) });
    expect(pending.DataEncryptionKeyId).toBeUndefined();

    const done = await hh.settled(copy);
    expect(done).toMatchObject({ state: 'completed', encrypted: true, kmsKeyId: pending.KmsKeyId });
    expect(done.dataEncryptionKeyId).toBeDefined();
  }, 30_000);
});
