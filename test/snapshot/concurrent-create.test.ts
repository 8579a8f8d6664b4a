import { afterEach, expect, test } from 'vitest';
import { randomBytes } from 'node:crypto';
import { SnapshotError } from '../../src/snapshot/errors.js';
import { openImageDataReader } from '../../src/snapshot/volume-image.js';
import { EXIT, exitCodeFor } from '../../src/cli/exit-codes.js';
import { openSnapshotHarness, type SnapshotHarness } from './in-process.js';

/**
 * One pending snapshot per volume (docs/architecture.md §12.1): a second
 * CreateSnapshot of a volume whose snapshot is still pending is refused at
 * once with EC2's ConcurrentSnapshotLimitExceeded (exit 6 in the CLI), naming
 * the volume and the pending snapshot, and changes nothing; it is not queued
 * behind the copy, where a client that timed out and retried would queue one
 * snapshot per retry. Once the first is no longer pending, the next is taken.
 */
const B = 512 * 1024;
const SIZE = 4 * B;

let h: SnapshotHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

test.each([['attached'], ['detached']] as const)('a second create of the volume (%s) while its snapshot is pending is refused at once, nothing changed; the next after it completes is taken', async (mode) => {
  let holding = true;
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  h = await openSnapshotHarness({
    // The first snapshot's block reads wait: it stays pending for as long as the test needs.
    openReader: async (...a) => {
      const r = await openImageDataReader(...a);
      return {
        read: async (pos, len, into) => {
          if (holding && len === B) await released;
          return r.read(pos, len, into);
        },
        close: () => r.close(),
      };
    },
  });
  const hh = h;
  const vol = (await hh.mgr.createVolume({ Size: SIZE }, hh.caller)).VolumeId;
  await hh.mgr.attachVolume({ VolumeId: vol }, hh.caller);
  await hh.mgr.getBlockDevice(vol)!.write(0, randomBytes(SIZE));
  if (mode === 'detached') await hh.mgr.detachVolume({ VolumeId: vol }, hh.caller);

  const first = await hh.snaps.createSnapshot({ VolumeId: vol }, hh.caller);
  expect(first.State).toBe('pending');
  const manifests = (await hh.store.listManifestIds()).sort();
  const refused = await hh.snaps.createSnapshot({ VolumeId: vol }, hh.caller).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(refused).toBeInstanceOf(SnapshotError);
  const err = refused as SnapshotError;
  expect(err.awsName).toBe('ConcurrentSnapshotLimitExceeded');
  expect(err.message).toContain(vol);
  expect(err.message).toContain(first.SnapshotId);
  expect(err.message).toMatch(/one pending snapshot per volume/);
  expect(exitCodeFor(err.awsName), 'a conflict with the volume\'s state, as the other EC2 state refusals').toBe(EXIT.CONFLICT);
  expect((await hh.store.listManifestIds()).sort(), 'the refusal wrote nothing').toEqual(manifests);
  expect((await hh.snaps.getManifest(first.SnapshotId))?.state).toBe('pending');

  holding = false;
  release();
  expect((await hh.settled(first.SnapshotId)).state).toBe('completed');
  // Right after DescribeSnapshots shows it completed: taken, after the first let go of what it held.
  const next = await hh.snapshot(vol);
  expect(next.state).toBe('completed');
  expect(next.parentSnapshotId).toBe(first.SnapshotId);
}, 60_000);
