import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt, rawControlCall } from './helpers.js';

/**
 * DryRun answers what the call would (README, "EC2 request members": checked and authorized as
 * it would be). CreateVolume and ModifyVolume with a Size the real call refuses (`abc`, 4097,
 * 65TiB, not a multiple of 4 KiB) answered DryRunOperation, "Request would have succeeded",
 * and so did a ModifyVolume that does not grow the volume or is past the rate limit; now each
 * gets the real call's refusal, word for word, and nothing is created or changed.
 */
describe('DryRun of CreateVolume and ModifyVolume checks Size as the call does (real daemon)', () => {
  const env = new Env('dry-size');
  let vol = '';

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    vol = (await env.api('ebsd.CreateVolume', { Size: '4MiB', Name: 'dry' })).VolumeId;
  });
  afterAll(() => env.cleanup());

  it('a Size the call refuses is refused by its dry run with the same error', async () => {
    for (const Size of ['abc', '4097', 4097, '65TiB', '1049088', '1.5GiB', '8 MB']) {
      const real = await rawControlCall(env.state, 'ebsd.CreateVolume', { Size });
      expect(real.body.__type, String(Size)).toBe('InvalidParameterValue');
      const dry = await rawControlCall(env.state, 'ebsd.CreateVolume', { Size, DryRun: true });
      expect(dry.body, String(Size)).toEqual(real.body);
      expect(dry.status).toBe(real.status);

      const modReal = await rawControlCall(env.state, 'ebsd.ModifyVolume', { VolumeId: vol, Size });
      expect(modReal.body.__type, String(Size)).toBe('InvalidParameterValue');
      const modDry = await rawControlCall(env.state, 'ebsd.ModifyVolume', { VolumeId: vol, Size, DryRun: true });
      expect(modDry.body, String(Size)).toEqual(modReal.body);
    }
    expect((await env.api('ebsd.DescribeVolumes', {})).Volumes.map((v: { VolumeId: string }) => v.VolumeId)).toEqual([vol]);
    expect((await env.api('ebsd.DescribeVolumes', { VolumeIds: [vol] })).Volumes[0].SizeBytes).toBe(4 * 1024 * 1024);
  });

  it('a Size the call takes still answers DryRunOperation', async () => {
    const dry = await rawControlCall(env.state, 'ebsd.CreateVolume', { Size: '8MiB', DryRun: true });
    expect(dry).toMatchObject({ status: 412, body: { __type: 'DryRunOperation' } });
    const mod = await rawControlCall(env.state, 'ebsd.ModifyVolume', { VolumeId: vol, Size: '8MiB', DryRun: true });
    expect(mod).toMatchObject({ status: 412, body: { __type: 'DryRunOperation' } });
  });

  it('a modify the volume as it is refuses (no growth, past the rate limit) is refused by its dry run too', async () => {
    for (const Size of ['4MiB', '1MiB']) {
      const real = await rawControlCall(env.state, 'ebsd.ModifyVolume', { VolumeId: vol, Size });
      expect(real.body.message, Size).toMatch(/must be larger than the current size/);
      expect(await rawControlCall(env.state, 'ebsd.ModifyVolume', { VolumeId: vol, Size, DryRun: true })).toEqual(real);
    }
    for (const mib of [8, 12, 16, 20]) await env.api('ebsd.ModifyVolume', { VolumeId: vol, Size: `${mib}MiB` });
    const real = await rawControlCall(env.state, 'ebsd.ModifyVolume', { VolumeId: vol, Size: '24MiB' });
    expect(real.body.__type).toBe('VolumeModificationRateExceeded');
    expect(await rawControlCall(env.state, 'ebsd.ModifyVolume', { VolumeId: vol, Size: '24MiB', DryRun: true })).toEqual(real);
    expect((await env.api('ebsd.DescribeVolumes', { VolumeIds: [vol] })).Volumes[0].SizeBytes).toBe(20 * 1024 * 1024);
  });

  it('a restore smaller than its snapshot is refused by its dry run too', async () => {
    const snap = (await env.api('ebsd.CreateSnapshot', { VolumeId: vol })).SnapshotId;
    for (let i = 0; i < 600; i++) {
      const state = (await env.api('ebsd.DescribeSnapshots', { SnapshotIds: [snap] })).Snapshots[0].State;
      if (state !== 'pending') break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const before = (await env.api('ebsd.DescribeVolumes', {})).Volumes.length;
    const real = await rawControlCall(env.state, 'ebsd.CreateVolume', { SnapshotId: snap, Size: '8MiB' });
    expect(real.body.message).toMatch(/is smaller than snapshot/);
    expect(await rawControlCall(env.state, 'ebsd.CreateVolume', { SnapshotId: snap, Size: '8MiB', DryRun: true })).toEqual(real);
    expect(await rawControlCall(env.state, 'ebsd.CreateVolume', { SnapshotId: snap, Size: '20MiB', DryRun: true })).toMatchObject({ status: 412, body: { __type: 'DryRunOperation' } });
    expect((await env.api('ebsd.DescribeVolumes', {})).Volumes.length).toBe(before);
  });
});
