import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeSync, openSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { api, detachWhenClosed, refusal, settled } from './helpers.js';

/**
 * As in EC2, a volume whose snapshot is pending can be detached, attached,
 * grown and deleted, and the snapshot still completes with the point-in-time
 * content (docs/architecture.md §12.1). Through the real daemon and its FUSE
 * files. The copier is held while the file EBSD_TEST_SNAPSHOT_COPY_GATE names
 * exists, so every step below surely happens while the snapshot is pending
 * (no race with the copy), and no block is copied before the volume's later
 * writes: a snapshot that took any of them (a copy-on-write session missing
 * from the new attachment's gate, a read of the new bytes) restores to
 * something other than the point-in-time bytes. A daemon killed during such
 * a copy still leaves the snapshot `error` after the restart (its pending
 * marker), and the next snapshot is complete: full, even when a completed
 * snapshot precedes the failed one (the tracking names the failed one).
 */
const B = 512 * 1024;
const SIZE = 8 * B;

describe('a volume is not held while its snapshot is pending', () => {
  const env = new Env('snap-nohold');
  const call = api(env);
  const gate = join(env.dir, 'copy-gate');

  /** The daemon, started (again after a kill) with the copy gate: it waits only while the gate's file exists. */
  const start = async (): Promise<void> => {
    process.env.EBSD_TEST_SNAPSHOT_COPY_GATE = gate;
    try {
      await env.start();
    } finally {
      delete process.env.EBSD_TEST_SNAPSHOT_COPY_GATE;
    }
  };

  beforeAll(async () => {
    ensureBuilt();
    await start();
  }, 60_000);

  afterAll(() => env.cleanup());

  const writeFile = (vol: string, bytes: Buffer, pos = 0): void => {
    const fd = openSync(env.file(vol), 'r+');
    try {
      for (let off = 0; off < bytes.length; ) off += writeSync(fd, bytes, off, bytes.length - off, pos + off);
    } finally {
      closeSync(fd);
    }
  };
  const readFile = (vol: string, len: number): Buffer => {
    const out = Buffer.alloc(len);
    const fd = openSync(env.file(vol), 'r');
    try {
      for (let off = 0; off < len; ) {
        const n = readSync(fd, out, off, len - off, off);
        if (n === 0) break;
        off += n;
      }
    } finally {
      closeSync(fd);
    }
    return out;
  };
  const stateOf = async (snapshotId: string): Promise<string> => (await call('DescribeSnapshots', { SnapshotIds: [snapshotId] })).Snapshots[0].State;
  /** A volume restored from the snapshot, its whole data read through its file; the volume is deleted after. */
  const restored = async (snapshotId: string): Promise<{ bytes: Buffer; size: number }> => {
    const v = (await call('CreateVolume', { SnapshotId: snapshotId })).VolumeId as string;
    for (let i = 0; ; i++) {
      const d = (await call('DescribeVolumes', { VolumeIds: [v] })).Volumes[0];
      if (d.State === 'available') break;
      if (d.State === 'error' || i > 2000) throw new Error(`restore of ${snapshotId}: ${JSON.stringify(d)}`);
      await new Promise((r) => setTimeout(r, 10));
    }
    const size = (await call('DescribeVolumes', { VolumeIds: [v] })).Volumes[0].SizeBytes as number;
    await call('AttachVolume', { VolumeId: v });
    const bytes = readFile(v, size);
    await detachWhenClosed(env, v);
    await call('DeleteVolume', { VolumeId: v });
    return { bytes, size };
  };

  it('attached at the point in time: detach, re-attach, overwrite every block and grow while pending; the snapshot holds the point in time', async () => {
    const vol = (await call('CreateVolume', { Size: SIZE })).VolumeId as string;
    await call('AttachVolume', { VolumeId: vol });
    const pit = randomBytes(SIZE);
    writeFile(vol, pit);
    await env.untilClosed(vol);

    writeFileSync(gate, '');
    const s = await call('CreateSnapshot', { VolumeId: vol });
    expect(s.State).toBe('pending');
    // Detach answers while the copy has not begun (it is held): the volume is not held.
    await detachWhenClosed(env, vol);
    expect((await call('DescribeVolumes', { VolumeIds: [vol] })).Volumes[0].State).toBe('available');
    expect(await stateOf(s.SnapshotId)).toBe('pending');

    // A new attachment writes every sector of every block before any block is copied: each write must be
    // captured first by the snapshot's session, installed in the new attachment's gate.
    await call('AttachVolume', { VolumeId: vol });
    const later = randomBytes(SIZE);
    writeFile(vol, later);
    await env.untilClosed(vol);
    // Grown while pending: the snapshot covers its own size only.
    const mod = await call('ModifyVolume', { VolumeId: vol, Size: 2 * SIZE });
    expect(mod.VolumeModification.ModificationState).toBe('completed');
    const tail = randomBytes(4096);
    writeFile(vol, tail, SIZE - 4096); // the snapshot's last sector, after the grow
    await env.untilClosed(vol);
    expect(await stateOf(s.SnapshotId)).toBe('pending');

    rmSync(gate);
    const done = await settled(env, s.SnapshotId);
    expect(done.StateMessage).toBeUndefined();
    expect(done.State).toBe('completed');
    expect(done.VolumeSize).toBe(1);
    const r = await restored(s.SnapshotId);
    expect(r.size, 'the snapshot has the size at its point in time, not the grown one').toBe(SIZE);
    expect(r.bytes.equals(pit), 'the restored volume holds exactly the point-in-time bytes, none written after').toBe(true);

    // The writes after the point in time are on the volume, and the next snapshot (incremental or not) has them.
    later.set(tail, SIZE - 4096);
    expect(readFile(vol, SIZE).equals(later)).toBe(true);
    await detachWhenClosed(env, vol);
    const next = await settled(env, (await call('CreateSnapshot', { VolumeId: vol })).SnapshotId);
    expect(next.State).toBe('completed');
    const r2 = await restored(next.SnapshotId);
    expect(r2.size).toBe(2 * SIZE);
    expect(r2.bytes.subarray(0, SIZE).equals(later)).toBe(true);
    expect(r2.bytes.subarray(SIZE).equals(Buffer.alloc(SIZE))).toBe(true);
    await call('DeleteVolume', { VolumeId: vol });
  }, 120_000);

  it('detached at the point in time: attach and overwrite, detach and delete the volume while pending; the snapshot holds the point in time', async () => {
    const vol = (await call('CreateVolume', { Size: SIZE })).VolumeId as string;
    await call('AttachVolume', { VolumeId: vol });
    const pit = randomBytes(SIZE);
    writeFile(vol, pit);
    await detachWhenClosed(env, vol);

    writeFileSync(gate, '');
    const s = await call('CreateSnapshot', { VolumeId: vol });
    expect(s.State).toBe('pending');
    await call('AttachVolume', { VolumeId: vol });
    writeFile(vol, randomBytes(SIZE));
    await detachWhenClosed(env, vol);
    await call('DeleteVolume', { VolumeId: vol });
    expect(await refusal(call('DescribeVolumes', { VolumeIds: [vol] }))).toBe('InvalidVolume.NotFound');
    expect(await stateOf(s.SnapshotId)).toBe('pending');

    rmSync(gate);
    const done = await settled(env, s.SnapshotId);
    expect(done.StateMessage).toBeUndefined();
    expect(done.State).toBe('completed');
    const r = await restored(s.SnapshotId);
    expect(r.bytes.equals(pit), 'the deleted volume\'s point-in-time bytes, read through the copy\'s own handle').toBe(true);
  }, 120_000);

  it('a daemon killed during the copy, after the volume was detached and written again: the snapshot ends error after the restart, and the next one is complete', async () => {
    const vol = (await call('CreateVolume', { Size: SIZE })).VolumeId as string;
    await call('AttachVolume', { VolumeId: vol });
    writeFile(vol, randomBytes(SIZE));
    await env.untilClosed(vol);
    writeFileSync(gate, '');
    const s = await call('CreateSnapshot', { VolumeId: vol });
    await detachWhenClosed(env, vol);
    await call('AttachVolume', { VolumeId: vol });
    const now = randomBytes(SIZE);
    writeFile(vol, now);
    await detachWhenClosed(env, vol);
    await env.kill9();
    rmSync(gate);
    await start(); // the gate's file is gone: nothing waits
    const failed = await settled(env, s.SnapshotId);
    expect(failed.State).toBe('error');
    // The tracking names the snapshot that never completed: the next snapshot is full, never an incremental missing writes.
    const next = await settled(env, (await call('CreateSnapshot', { VolumeId: vol })).SnapshotId);
    expect(next.State).toBe('completed');
    const r = await restored(next.SnapshotId);
    expect(r.bytes.equals(now)).toBe(true);
  }, 120_000);

  it.each([['detached'], ['attached']] as const)('a daemon killed while a snapshot with a completed parent was pending: the next snapshot (%s) copies every block, so writes before and after the failed one are in it', async (next) => {
    // S0 completed; block 0 written; S1 taken detached and held pending, its point in time naming it as the tracking's
    // base; block 1 written by a new attachment; SIGKILL. S1 ends error, and the tracking on disk names S1 (the clean file
    // of the last detach): its bits are only block 1, relative to S1. S2 must not use them against S0 (an incremental on
    // S0 with block 1 alone would miss block 0, written between S0 and S1): a base that is not completed means full.
    const vol = (await call('CreateVolume', { Size: SIZE })).VolumeId as string;
    await call('AttachVolume', { VolumeId: vol });
    const content = randomBytes(SIZE);
    writeFile(vol, content);
    await detachWhenClosed(env, vol);
    const s0 = await settled(env, (await call('CreateSnapshot', { VolumeId: vol })).SnapshotId);
    expect(s0.State).toBe('completed');
    await call('AttachVolume', { VolumeId: vol });
    const b0 = randomBytes(B);
    writeFile(vol, b0, 0);
    content.set(b0, 0);
    await detachWhenClosed(env, vol);

    writeFileSync(gate, '');
    const s1 = await call('CreateSnapshot', { VolumeId: vol });
    await call('AttachVolume', { VolumeId: vol });
    const b1 = randomBytes(B);
    writeFile(vol, b1, B);
    content.set(b1, B);
    await detachWhenClosed(env, vol);
    await env.kill9();
    rmSync(gate);
    await start();
    expect((await settled(env, s1.SnapshotId)).State).toBe('error');

    // Taken detached, S2 reads the tracking file; attached, the tracker that loaded it (both paths decide "incremental").
    if (next === 'attached') await call('AttachVolume', { VolumeId: vol });
    const s2 = await settled(env, (await call('CreateSnapshot', { VolumeId: vol })).SnapshotId);
    expect(s2.State).toBe('completed');
    if (next === 'attached') await detachWhenClosed(env, vol);
    const r = await restored(s2.SnapshotId);
    expect(r.bytes.subarray(0, B).equals(content.subarray(0, B)), 'block 0, written between S0 and S1').toBe(true);
    expect(r.bytes.subarray(B, 2 * B).equals(content.subarray(B, 2 * B)), 'block 1, written while S1 was pending').toBe(true);
    expect(r.bytes.equals(content)).toBe(true);
    await call('DeleteVolume', { VolumeId: vol });
  }, 120_000);
});
