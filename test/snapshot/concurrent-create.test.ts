import { afterEach, expect, test } from 'vitest';
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { SnapshotError } from '../../src/snapshot/errors.js';
import { EXIT, exitCodeFor } from '../../src/cli/exit-codes.js';
import type { SnapshotManifest } from '../../src/snapshot/types.js';
import { openSnapshotHarness, overrideStore, readerBefore, type SnapshotHarness } from './in-process.js';

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
    openReader: readerBefore(async (pos, len, into) => {
      if (holding && len === B) await released;
    }),
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
  // EC2's message for the error first, then ebsd's limit (README.md, "Snapshots").
  expect(err.message).toMatch(/^Maximum allowed in-progress snapshots for a single volume exceeded\. The volume '/);
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

test('a create that waited for the volume\'s lock while the previous one failed waits for it to let go (its tracking undone), then is an incremental on the last completed snapshot', async () => {
  const gate = { holding: false, fail: false, released: Promise.resolve() };
  let release = (): void => {};
  const events: { eventName: string; snapshotId: string; details?: Record<string, unknown> }[] = [];
  h = await openSnapshotHarness({
    openReader: readerBefore(async (pos, len, into) => {
      if (gate.holding && len === B) await gate.released;
      if (gate.fail && len === B) throw new Error('injected read failure');
    }),
    onAudit: (ev) => void events.push(ev as (typeof events)[number]),
  });
  const hh = h;
  const vol = (await hh.mgr.createVolume({ Size: SIZE }, hh.caller)).VolumeId;
  await hh.mgr.attachVolume({ VolumeId: vol }, hh.caller);
  const dev = hh.mgr.getBlockDevice(vol)!;
  await dev.write(0, randomBytes(SIZE));
  const s0 = await hh.snapshot(vol);
  expect(s0.state).toBe('completed');
  await dev.write(0, randomBytes(4096)); // block 0 changed since s0

  // A: held, then failing; its failure undoes the tracking (s0 as base, block 0 changed), which takes the volume's lock.
  gate.holding = true;
  gate.released = new Promise<void>((r) => (release = r));
  const a = await hh.snaps.createSnapshot({ VolumeId: vol }, hh.caller);
  // Someone holds the volume's lock (an attach or a modify would): B waits for it with A still pending.
  let unlock!: () => void;
  const held = new Promise<void>((r) => (unlock = r));
  let inLock!: () => void;
  const entered = new Promise<void>((r) => (inLock = r));
  const other = hh.mgr.withVolumeForSnapshot(vol, async () => { inLock(); await held; });
  await entered;
  const b = hh.snaps.createSnapshot({ VolumeId: vol }, hh.caller);
  await new Promise((r) => setTimeout(r, 50));
  gate.fail = true;
  gate.holding = false;
  release();
  expect((await hh.settled(a.SnapshotId)).state).toBe('error'); // terminal; its undo now waits behind B for the lock
  gate.fail = false;
  unlock();
  await other;
  const answered = await b;
  const done = await hh.settled(answered.SnapshotId);
  expect(done.state).toBe('completed');
  expect(done.parentSnapshotId).toBe(s0.snapshotId);
  // Incremental on s0, reading the one changed block: A's undo came first (started beside A's, B would copy every block).
  const completed = events.find((e) => e.eventName === 'SnapshotCompleted' && e.snapshotId === answered.SnapshotId);
  expect(completed?.details).toMatchObject({ incremental: true, changedBlocks: 1 });
  await hh.mgr.detachVolume({ VolumeId: vol }, hh.caller);
}, 60_000);

test('a create whose set-up fails after its pending manifest is written ends error at once (the refusal is the caller\'s answer); the next create is taken', async () => {
  let failList = true;
  const events: { eventName: string; snapshotId: string; details?: Record<string, unknown> }[] = [];
  h = await openSnapshotHarness({
    onAudit: (ev) => void events.push(ev as (typeof events)[number]),
    // The parent's look-up lists every manifest (no tracking base yet): that listing fails once.
    wrapStore: (s) => overrideStore(s, {
      listManifestIds: async () => {
        if (failList) { failList = false; throw new Error('injected listing failure'); }
        return s.listManifestIds();
      },
    }),
  });
  const hh = h;
  const vol = (await hh.mgr.createVolume({ Size: SIZE }, hh.caller)).VolumeId;
  await hh.mgr.attachVolume({ VolumeId: vol }, hh.caller);
  await hh.mgr.getBlockDevice(vol)!.write(0, randomBytes(SIZE));
  await expect(hh.snaps.createSnapshot({ VolumeId: vol }, hh.caller)).rejects.toThrow(/injected listing failure/);
  // Its manifest says error already, not pending until the marker's retry.
  const listed = await hh.snaps.describeSnapshots({});
  expect(listed.map((x) => x.state)).toEqual(['error']);
  expect(listed[0]!.stateMessage).toMatch(/could not be created: injected listing failure/);
  // Its end is audited, with the reason; its marker is gone (nothing left for a retry or the next start).
  expect(events.filter((e) => e.snapshotId === listed[0]!.snapshotId)).toEqual([
    expect.objectContaining({ eventName: 'SnapshotFailed', details: { reason: expect.stringMatching(/injected listing failure/) } }),
  ]);
  expect(readdirSync(join(hh.t.dir, 'snapshots-local', 'pending'))).toEqual([]);
  const next = await hh.snapshot(vol);
  expect(next.state).toBe('completed');
  await hh.mgr.detachVolume({ VolumeId: vol }, hh.caller);
}, 60_000);

test('a create whose completed and error manifests the store refuses is ended error by its marker\'s retry with its own reason, audited SnapshotFailed once', async () => {
  let refuse = true;
  const events: { eventName: string; snapshotId: string; details?: Record<string, unknown> }[] = [];
  h = await openSnapshotHarness({
    markerRetryMs: 50,
    onAudit: (ev) => void events.push(ev as (typeof events)[number]),
    wrapStore: (s) => overrideStore(s, {
      putManifest: async (m: SnapshotManifest) => {
        if (refuse && m.state !== 'pending') throw new Error('injected store outage');
        await s.putManifest(m);
      },
    }),
  });
  const hh = h;
  const vol = (await hh.mgr.createVolume({ Size: SIZE }, hh.caller)).VolumeId;
  await hh.mgr.attachVolume({ VolumeId: vol }, hh.caller);
  await hh.mgr.getBlockDevice(vol)!.write(0, randomBytes(SIZE));
  const { SnapshotId: id } = await hh.snaps.createSnapshot({ VolumeId: vol }, hh.caller);
  const named = () => events.filter((e) => e.snapshotId === id).map((e) => e.eventName);
  for (let i = 0; !named().includes('SnapshotFailed'); i++) {
    if (i > 1000) throw new Error('no SnapshotFailed');
    await new Promise((r) => setTimeout(r, 10));
  }
  expect((await hh.store.getManifest(id))?.state).toBe('pending'); // the store refused both writes
  refuse = false;
  const done = await hh.settled(id);
  expect(done.state).toBe('error');
  // The run's own reason, not a restart's.
  expect(done.stateMessage).toMatch(/^The snapshot could not be completed: .*injected store outage/);
  await new Promise((r) => setTimeout(r, 200)); // a second SnapshotFailed from the retry would be in by now
  expect(named().filter((n) => n === 'SnapshotFailed')).toHaveLength(1);
  await hh.mgr.detachVolume({ VolumeId: vol }, hh.caller);
}, 60_000);
