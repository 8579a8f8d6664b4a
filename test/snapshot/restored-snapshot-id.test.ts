import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openSnapshotHarness, type SnapshotHarness } from './in-process.js';

/**
 * A volume created from a snapshot names it, as EC2's DescribeVolumes does
 * (`SnapshotId`, "" for a volume not created from one), and the
 * `snapshot-id` filter finds it. Real KMS core, VolumeManager and store.
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
});
