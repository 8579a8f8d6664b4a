import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EbsDirect } from '../../src/snapshot/ebs-direct.js';
import { openSnapshotHarness, type SnapshotHarness } from './in-process.js';
import { testEngine } from '../volume/helpers/engine.js';

/**
 * A volume created from a snapshot names it, as EC2's DescribeVolumes does
 * (`SnapshotId`, "" for a volume not created from one), and the
 * `snapshot-id` filter finds it; its snapshots stay in that snapshot's
 * lineage for ListChangedBlocks. Real KMS core, VolumeManager and store.
 */
describe('SnapshotId of a restored volume', () => {
  let h: SnapshotHarness;
  beforeAll(async () => {
    h = await openSnapshotHarness();
  }, 60_000);
  afterAll(async () => {
    await h?.close();
  });

  it('DescribeVolumes shows the source snapshot ("" for a volume not from one) and filters on it', async () => {
    const src = (await h.mgr.createVolume({ Size: 2 * 1024 * 1024 }, h.caller)).VolumeId;
    const snap = await h.snapshot(src);
    expect(snap.state).toBe('completed');
    const restored = await h.restoreVolume({ SnapshotId: snap.snapshotId });
    expect(restored.state).toBe('available');
    const byId = (id: string) => h.mgr.describeVolumes({ VolumeIds: [id] }).Volumes[0]!;
    expect(byId(restored.volumeId).SnapshotId).toBe(snap.snapshotId);
    expect(byId(src).SnapshotId).toBe('');
    const found = h.mgr.describeVolumes({ Filters: [{ Name: 'snapshot-id', Values: [snap.snapshotId] }] }).Volumes.map((v) => v.VolumeId);
    expect(found).toEqual([restored.volumeId]);
  }, 60_000);

  it('ListChangedBlocks: an unencrypted snapshot and the snapshots of a volume restored from it are of one lineage (the changed indexes only)', async () => {
    const B = 512 * 1024;
    const src = (await h.mgr.createVolume({ Size: 4 * B, Cipher: 'none' }, h.caller)).VolumeId;
    await h.mgr.attachVolume({ VolumeId: src }, h.caller);
    await h.mgr.getBlockDevice(src)!.write(0, randomBytes(4 * B));
    await h.mgr.detachVolume({ VolumeId: src }, h.caller);
    const first = await h.snapshot(src);
    expect(first).toMatchObject({ state: 'completed', encrypted: false });
    const restored = await h.restoreVolume({ SnapshotId: first.snapshotId, Encrypted: false });
    expect(restored.state).toBe('available');
    // Block 2 of the restored volume is written, then snapshotted twice (block 3 before the second).
    await h.mgr.attachVolume({ VolumeId: restored.volumeId }, h.caller);
    await h.mgr.getBlockDevice(restored.volumeId)!.write(2 * B, randomBytes(B));
    await h.mgr.detachVolume({ VolumeId: restored.volumeId }, h.caller);
    const second = await h.snapshot(restored.volumeId);
    expect(second).toMatchObject({ state: 'completed', encrypted: false });
    await h.mgr.attachVolume({ VolumeId: restored.volumeId }, h.caller);
    await h.mgr.getBlockDevice(restored.volumeId)!.write(3 * B, randomBytes(B));
    await h.mgr.detachVolume({ VolumeId: restored.volumeId }, h.caller);
    const third = await h.snapshot(restored.volumeId);
    expect(third.parentSnapshotId).toBe(second.snapshotId);
    // A volume of no snapshot's lineage, for the refusal.
    const other = (await h.mgr.createVolume({ Size: 4 * B, Cipher: 'none' }, h.caller)).VolumeId;
    const unrelated = await h.snapshot(other);

    const d = new EbsDirect({ store: h.store, pendingDir: join(h.t.dir, 'ebs-pending'), keys: h.kms.keyService, xts: await testEngine(), accountId: '111122223333', region: 'us-east-1', allowUnencrypted: true });
    try {
      const changed = async (a: string, b: string): Promise<number[]> =>
        ((await d.listChangedBlocks({ FirstSnapshotId: a, SecondSnapshotId: b })).ChangedBlocks as { BlockIndex: number }[]).map((c) => c.BlockIndex);
      expect(await changed(first.snapshotId, second.snapshotId)).toEqual([2]);
      expect(await changed(first.snapshotId, third.snapshotId)).toEqual([2, 3]);
      expect(await changed(third.snapshotId, first.snapshotId)).toEqual([2, 3]);
      const e = (await d.listChangedBlocks({ FirstSnapshotId: unrelated.snapshotId, SecondSnapshotId: second.snapshotId }).then(() => undefined, (x: unknown) => x)) as { awsName?: string; reason?: string } | undefined;
      expect([e?.awsName, e?.reason]).toEqual(['ValidationException', 'UNRELATED_SNAPSHOTS']);
    } finally {
      await d.close();
    }

    // The restored volume's first snapshot deleted: the third still names the source, so it stays of its lineage.
    await h.snaps.deleteSnapshot(second.snapshotId, h.caller);
    const d2 = new EbsDirect({ store: h.store, pendingDir: join(h.t.dir, 'ebs-pending-2'), keys: h.kms.keyService, xts: await testEngine(), accountId: '111122223333', region: 'us-east-1', allowUnencrypted: true });
    try {
      const changed = async (a: string, b: string): Promise<number[]> =>
        ((await d2.listChangedBlocks({ FirstSnapshotId: a, SecondSnapshotId: b })).ChangedBlocks as { BlockIndex: number }[]).map((c) => c.BlockIndex);
      expect(await changed(first.snapshotId, third.snapshotId)).toEqual([2, 3]);
      expect(await changed(third.snapshotId, first.snapshotId)).toEqual([2, 3]);
      const e = (await d2.listChangedBlocks({ FirstSnapshotId: unrelated.snapshotId, SecondSnapshotId: third.snapshotId }).then(() => undefined, (x: unknown) => x)) as { awsName?: string; reason?: string } | undefined;
      expect([e?.awsName, e?.reason]).toEqual(['ValidationException', 'UNRELATED_SNAPSHOTS']);
      // A copy drops its source's parent (it names every block) and keeps the source's volume and sourceSnapshotId (copy.ts).
      const copied = await h.copy({ SourceSnapshotId: third.snapshotId });
      expect(copied).toMatchObject({ state: 'completed', encrypted: false, volumeId: third.volumeId, sourceSnapshotId: first.snapshotId });
      expect(copied.parentSnapshotId).toBeUndefined();
      expect(await changed(first.snapshotId, copied.snapshotId)).toEqual([2, 3]);
    } finally {
      await d2.close();
    }
  }, 120_000);
});
