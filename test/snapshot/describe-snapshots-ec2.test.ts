import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { api, refusal, settled } from './helpers.js';

/**
 * DescribeSnapshots as EC2 answers it (Amazon EC2 API Reference: DescribeSnapshots,
 * Snapshot), through the real daemon and CLI: SnapshotIds scopes the listing to a
 * set of snapshots, and the `transfer-type` filter matches the TransferType EC2
 * shows on copies only.
 */
describe('DescribeSnapshots: SnapshotIds and transfer-type as EC2', () => {
  const env = new Env('describe-snaps');
  const call = api(env);
  let snap = '';
  let copy = '';
  const ids = (r: { Snapshots: { SnapshotId: string }[] }): string[] => r.Snapshots.map((s) => s.SnapshotId).sort();

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    const vol = (await call('CreateVolume', { Size: 4 * 1024 * 1024, Name: 'describe-src' })).VolumeId as string;
    snap = (await settled(env, (await call('CreateSnapshot', { VolumeId: vol })).SnapshotId)).SnapshotId;
    const region = (await call('Status')).Daemon.Region as string;
    const c = await settled(env, (await call('CopySnapshot', { SourceSnapshotId: snap, SourceRegion: region })).SnapshotId);
    expect(c.State).toBe('completed');
    copy = c.SnapshotId;
  }, 60_000);

  afterAll(() => env.cleanup());

  it('lists a snapshot named twice in SnapshotIds once (API and CLI); an unknown id among them is still NotFound', async () => {
    expect((await call('DescribeSnapshots', { SnapshotIds: [snap, snap] })).Snapshots.map((s: { SnapshotId: string }) => s.SnapshotId)).toEqual([snap]);
    expect(ids(await call('DescribeSnapshots', { SnapshotIds: [snap, copy, snap, copy] }))).toEqual([snap, copy].sort());
    expect((await env.ok(['snapshot', 'describe', snap, snap])).Snapshots.map((s: { SnapshotId: string }) => s.SnapshotId)).toEqual([snap]);
    expect(await refusal(call('DescribeSnapshots', { SnapshotIds: [snap, 'snap-00000000000000000', snap] }))).toBe('InvalidSnapshot.NotFound');
  }, 60_000);

  it('shows a copy\'s VolumeId as EC2 does (vol-ffffffff), so volume-id lists the volume\'s own snapshots, never the copies made of them', async () => {
    const byId = new Map(((await call('DescribeSnapshots', { SnapshotIds: [snap, copy] })).Snapshots as { SnapshotId: string; VolumeId: string }[]).map((s) => [s.SnapshotId, s.VolumeId]));
    expect(byId.get(snap)).toMatch(/^vol-[0-9a-f]{17}$/);
    expect(byId.get(copy)).toBe('vol-ffffffff');
    expect(ids(await call('DescribeSnapshots', { Filters: [{ Name: 'volume-id', Values: [byId.get(snap)!] }] }))).toEqual([snap]);
    // The copy's manifest still names the source's volume: its lineage (ListChangedBlocks) is unchanged.
    expect(JSON.parse(readFileSync(join(env.state, 'snapshots', 'manifests', `${copy}.json`), 'utf8')).volumeId).toBe(byId.get(snap));
  }, 60_000);

  it('shows TransferType standard on a copy only, and transfer-type matches it (the copy\'s manifest records it)', async () => {
    const [s, c] = (await call('DescribeSnapshots', { SnapshotIds: [snap, copy] })).Snapshots as Record<string, unknown>[];
    const byId = new Map([s, c].map((x) => [x!.SnapshotId, x!]));
    expect(byId.get(copy)!.TransferType).toBe('standard');
    expect(byId.get(snap)).not.toHaveProperty('TransferType');
    const manifest = JSON.parse(readFileSync(join(env.state, 'snapshots', 'manifests', `${copy}.json`), 'utf8'));
    expect(manifest.transferType).toBe('standard');

    const filtered = async (values: string[]): Promise<string[]> => ids(await call('DescribeSnapshots', { Filters: [{ Name: 'transfer-type', Values: values }] }));
    expect(await filtered(['standard'])).toEqual([copy]);
    expect(await filtered(['time-based'])).toEqual([]);
    expect(await filtered(['*'])).toEqual([copy]);
    expect(await filtered(['time-based', 'stand*'])).toEqual([copy]);
    // With SnapshotIds the filter still applies (EC2 ANDs them); and through the CLI's shorthand.
    expect(ids(await call('DescribeSnapshots', { SnapshotIds: [snap, copy], Filters: [{ Name: 'transfer-type', Values: ['standard'] }] }))).toEqual([copy]);
    expect(ids(await env.ok(['snapshot', 'describe', '--filters', 'Name=transfer-type,Values=standard']))).toEqual([copy]);
  }, 60_000);
});
