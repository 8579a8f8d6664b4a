import { afterEach, describe, expect, test } from 'vitest';
import type { CopyAuditEvent } from '../../src/snapshot/copy.js';
import type { SnapshotAuditEvent } from '../../src/snapshot/snapshot-manager.js';
import { openSnapshotHarness, type SnapshotHarness } from './in-process.js';

/**
 * A snapshot's (and a copy's) SnapshotCompleted is written before the manifest
 * that says `completed` (src/snapshot/errors.ts auditCompletion): while the
 * daemon's audit write has not resolved, DescribeSnapshots still says
 * `pending`; a write that fails ends the snapshot `error` instead of completed
 * without its event. The audit seam is held open here by a gate; everything
 * else is the daemon's wiring in this process (in-process.ts).
 */

const SIZE = 4 * 1024 * 1024;
type Ev = SnapshotAuditEvent | CopyAuditEvent;

let h: SnapshotHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/** An audit seam that holds every SnapshotCompleted until `open()` (or fails it, after `fail()`), and records what it was given. */
function gatedAudit(): { onAudit: (ev: Ev) => Promise<void>; seen: Ev[]; open: () => void; fail: () => void } {
  const seen: Ev[] = [];
  let release: (() => void) | undefined;
  let failing = false;
  const gate = new Promise<void>((r) => (release = r));
  return {
    seen,
    onAudit: async (ev) => {
      seen.push(ev);
      if (ev.eventName !== 'SnapshotCompleted') return;
      if (failing) throw new Error('EIO: the audit log cannot be written');
      await gate;
    },
    open: () => release!(),
    fail: () => void (failing = true),
  };
}

async function until<T>(what: string, f: () => T | undefined | Promise<T | undefined>): Promise<T> {
  for (let i = 0; i < 2000; i++) {
    const v = await f();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`gave up waiting for ${what}`);
}

describe('SnapshotCompleted is in the audit log before the snapshot shows completed', () => {
  test('a create and a copy stay pending while their SnapshotCompleted is being written, and complete once it is', async () => {
    const a = gatedAudit();
    h = await openSnapshotHarness({ onAudit: a.onAudit });
    const vol = (await h.mgr.createVolume({ Size: SIZE }, h.caller)).VolumeId;
    const id = (await h.snaps.createSnapshot({ VolumeId: vol }, h.caller)).SnapshotId;
    await until('SnapshotCompleted handed to the audit', () => (a.seen.some((e) => e.eventName === 'SnapshotCompleted' && e.snapshotId === id) ? true : undefined));
    expect((await h.snaps.describeSnapshots({ SnapshotIds: [id] }))[0]!.state).toBe('pending');
    a.open();
    expect((await h.settled(id)).state).toBe('completed');

    const { SnapshotId: copyId } = await h.copier.copySnapshot({ SourceSnapshotId: id, SourceRegion: 'us-east-1' }, h.caller);
    // The gate is open now: this one is written at once, and it is there when the copy shows completed.
    expect((await h.settled(copyId)).state).toBe('completed');
    expect(a.seen.filter((e) => e.eventName === 'SnapshotCompleted').map((e) => e.snapshotId)).toEqual([id, copyId]);
  });

  test('a SnapshotCompleted that cannot be written ends the create and the copy error, naming the audit log', async () => {
    const a = gatedAudit();
    h = await openSnapshotHarness({ onAudit: a.onAudit });
    const vol = (await h.mgr.createVolume({ Size: SIZE }, h.caller)).VolumeId;
    a.open();
    const source = await h.snapshot(vol);
    expect(source.state).toBe('completed');
    a.fail();
    const failed = await h.snapshot(vol);
    expect(failed.state).toBe('error');
    expect(failed.stateMessage).toMatch(/SnapshotCompleted event could not be written to the audit log: EIO/);
    const copy = await h.copy({ SourceSnapshotId: source.snapshotId });
    expect(copy.state).toBe('error');
    expect(copy.stateMessage).toMatch(/SNAPSHOT_NOT_AUDITED: its SnapshotCompleted event could not be written to the audit log/);
    expect(a.seen.filter((e) => e.eventName === 'SnapshotFailed').map((e) => e.snapshotId)).toEqual([failed.snapshotId, copy.snapshotId]);
  });
});
