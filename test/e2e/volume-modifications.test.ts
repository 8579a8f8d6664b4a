import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt, rawControlCall } from './helpers.js';

/**
 * EC2's DescribeVolumesModifications through the real daemon and CLI
 * (`ebsd volume modifications`): the latest modification of each volume, EC2's
 * errors for a volume never modified, its filters and pages, and its
 * authorization (no resource types: only a statement on "*" allows it).
 * The crash cases (completed from the header, failed when rolled back) are in
 * volume-state.test.ts.
 */
const ALICE = 1000;
const MiB = 1024 * 1024;

describe('DescribeVolumesModifications (real daemon)', () => {
  const env = new Env('volmods');
  const vols: string[] = [];
  let plain = ''; // never modified

  const alice = (args: string[]) => env.cli([...args, '--output', 'json'], { uid: ALICE });
  const putPolicy = (doc: unknown): Promise<unknown> =>
    env.api('ebsd.IamPutPolicy', { Principal: 'user/alice', PolicyName: 'p', PolicyDocument: JSON.stringify(doc) });

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    for (let i = 0; i < 6; i++) {
      const id = (await rawControlCall(env.state, 'ebsd.CreateVolume', { Size: '16MiB' })).body.VolumeId as string;
      await rawControlCall(env.state, 'ebsd.ModifyVolume', { VolumeId: id, Size: '32MiB' });
      vols.push(id);
    }
    // The first one grows twice: only the latest modification is shown.
    await env.ok(['volume', 'modify', vols[0]!, '--size', '2GiB']);
    plain = (await env.api('ebsd.CreateVolume', { Size: '16MiB' })).VolumeId;
    await env.api('ebsd.IamCreateUser', { UserName: 'alice' });
    await env.api('ebsd.IamMapUid', { Uid: ALICE, Principal: 'user/alice' });

  }, 180_000);
  afterAll(() => env.cleanup());

  it('shows the latest modification of each volume, with EC2\'s members; ModifyVolume answers the same shape', async () => {
    const res = await env.ok(['volume', 'modifications', vols[0]!]);
    expect(res.VolumesModifications).toEqual([{
      VolumeId: vols[0], ModificationState: 'completed',
      OriginalSize: 1, TargetSize: 2, OriginalSizeBytes: 32 * MiB, TargetSizeBytes: 2048 * MiB,
      OriginalIops: 3000, TargetIops: 3000, OriginalThroughput: 125, TargetThroughput: 125,
      OriginalVolumeType: 'gp3', TargetVolumeType: 'gp3', OriginalMultiAttachEnabled: false, TargetMultiAttachEnabled: false,
      Progress: 100, StartTime: expect.any(String), EndTime: expect.any(String),
    }]);
    const m = res.VolumesModifications[0];
    expect(Date.parse(m.EndTime)).toBeGreaterThanOrEqual(Date.parse(m.StartTime));

    // Without ids: every modified volume, and not the one never modified.
    const all = (await env.ok(['volume', 'modifications'])).VolumesModifications.map((x: { VolumeId: string }) => x.VolumeId);
    expect(all.sort()).toEqual([...vols].sort());
    expect(all).not.toContain(plain);

    const table = await env.cli(['volume', 'modifications', vols[1]!, '--output', 'table']);
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout).toMatch(new RegExp(`${vols[1]}\\s+completed\\s+16MiB\\s+32MiB`));
  });

  it('a volume never modified is InvalidVolumeModification.NotFound, an unknown one InvalidVolume.NotFound; both exit 5', async () => {
    const never = await env.cli(['volume', 'modifications', plain]);
    expect(never.code, never.stderr).toBe(5);
    expect(never.stderr).toContain(`InvalidVolumeModification.NotFound: Modification for volume '${plain}' does not exist.`);
    const unknown = await env.cli(['volume', 'modifications', 'vol-0123456789abcdef0']);
    expect(unknown.code, unknown.stderr).toBe(5);
    expect(unknown.stderr).toContain('InvalidVolume.NotFound');
  });

  it('filters by EC2\'s names; an unknown filter is refused by name', async () => {
    const by = async (...f: string[]): Promise<string[]> =>
      (await env.ok(['volume', 'modifications', ...f.flatMap((x) => ['--filters', x])])).VolumesModifications.map((x: { VolumeId: string }) => x.VolumeId).sort();
    expect(await by('Name=target-size,Values=2')).toEqual([vols[0]]);
    expect(await by('Name=modification-state,Values=completed', 'Name=original-size,Values=1')).toEqual([...vols].sort());
    expect(await by('Name=modification-state,Values=modifying,failed')).toEqual([]);
    expect(await by(`Name=volume-id,Values=${vols[2]},${vols[3]}`)).toEqual([vols[2], vols[3]].sort());
    expect(await by('Name=targetMultiAttachEnabled,Values=false', 'Name=target-volume-type,Values=gp3')).toHaveLength(6);
    const bad = await env.cli(['volume', 'modifications', '--filters', 'Name=size,Values=1']);
    expect(bad.code, bad.stderr).not.toBe(0);
    expect(bad.stderr).toContain("The filter 'size' is invalid");
  });

  it('pages in volume-id order with MaxResults and NextToken, each volume once', async () => {
    const seen: string[] = [];
    let token: string | undefined;
    let pages = 0;
    do {
      const r = await rawControlCall(env.state, 'ebsd.DescribeVolumesModifications', { MaxResults: 5, ...(token ? { NextToken: token } : {}) });
      expect(r.status).toBe(200);
      seen.push(...r.body.VolumesModifications.map((x: { VolumeId: string }) => x.VolumeId));
      token = r.body.NextToken;
      pages++;
    } while (token);
    expect(pages).toBe(2);
    expect(seen).toEqual([...vols].sort());
    // Unlike DescribeVolumes, EC2's reference sets no minimum for MaxResults here (only "up to a
    // limit of 500") and no rule against VolumeIds: the named volumes page the same way.
    const named = [vols[4]!, vols[1]!, vols[2]!];
    const first = await rawControlCall(env.state, 'ebsd.DescribeVolumesModifications', { VolumeIds: named, MaxResults: 2 });
    expect(first.status, JSON.stringify(first.body)).toBe(200);
    const second = await rawControlCall(env.state, 'ebsd.DescribeVolumesModifications', { VolumeIds: named, MaxResults: 2, NextToken: first.body.NextToken });
    expect(second.status, JSON.stringify(second.body)).toBe(200);
    expect(second.body.NextToken).toBeUndefined();
    expect([...first.body.VolumesModifications, ...second.body.VolumesModifications].map((x: { VolumeId: string }) => x.VolumeId)).toEqual([...named].sort());
    const zero = await rawControlCall(env.state, 'ebsd.DescribeVolumesModifications', { MaxResults: 0 });
    expect(zero.body.__type).toBe('InvalidParameterValue');
    // DescribeVolumes keeps its own rules: MaxResults 5..500, not with VolumeIds.
    const mixed = await rawControlCall(env.state, 'ebsd.DescribeVolumes', { VolumeIds: [vols[0]], MaxResults: 5 });
    expect(mixed.status).not.toBe(200);
    expect(JSON.stringify(mixed.body)).toContain('cannot be used together');
  });

  it('is authorized on "*" only, as EC2 (no resource types); a DryRun says DryRunOperation', async () => {
    await putPolicy({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'ec2:DescribeVolumesModifications', Resource: 'arn:aws:ec2:*:*:volume/*' }] });
    const refused = await alice(['volume', 'modifications']);
    expect(refused.code, refused.stderr).toBe(4);
    expect(refused.stderr).toMatch(/UnauthorizedOperation: .*user\/alice is not authorized to perform: ec2:DescribeVolumesModifications on resource: \*/);
    await putPolicy({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'ec2:DescribeVolumesModifications', Resource: '*' }] });
    const allowed = await alice(['volume', 'modifications']);
    expect(allowed.code, allowed.stderr).toBe(0);
    expect(allowed.json().VolumesModifications).toHaveLength(6);
    const dry = await alice(['volume', 'modifications', '--dry-run']);
    expect(dry.stderr).toContain('DryRunOperation');
    const events = env.auditText().trim().split('\n').map((l) => JSON.parse(l) as { eventName: string; errorCode?: string; userIdentity?: { arn?: string } });
    const mine = events.filter((e) => e.eventName === 'DescribeVolumesModifications' && String(e.userIdentity?.arn).endsWith(':user/alice'));
    // Refusals and dry runs are audited; a Describe that succeeds is not (as every Describe here).
    expect(mine.map((e) => e.errorCode ?? 'ok')).toEqual(['Client.UnauthorizedOperation', 'Client.DryRunOperation']);
  });
});

/**
 * EC2's limit on ModifyVolume: at most 4 modifications of a volume in a
 * rolling 24-hour period (README, "How often a volume can be modified"). The fifth
 * is VolumeModificationRateExceeded and changes nothing; the count is kept in
 * the catalog, so a restart does not give it back; once the oldest of the four
 * leaves the window (here `--volume-modification-window 3s`) a modify passes again.
 */
describe('ModifyVolume\'s limit of modifications in a rolling window (real daemon)', () => {
  const env = new Env('volmodrate');
  const catalog = (): string => readFileSync(join(env.state, 'volumes', 'catalog.json'), 'utf8');
  const image = (id: string): string => join(env.state, 'volumes', `${id}.img`);
  const digest = (id: string): string => createHash('sha256').update(readFileSync(image(id))).digest('hex');
  const modify = (id: string, size: string) => rawControlCall(env.state, 'ebsd.ModifyVolume', { VolumeId: id, Size: size });
  /** Four modifications that pass (16 -> 20 -> 24 -> 28 -> 32 MiB); their StartTimes. */
  const fourModifications = async (id: string): Promise<string[]> => {
    const starts: string[] = [];
    for (const size of ['20MiB', '24MiB', '28MiB', '32MiB']) {
      const r = await modify(id, size);
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      starts.push(r.body.VolumeModification.StartTime);
    }
    return starts;
  };
  const rateRefusal = (again: string) =>
    new RegExp(`VolumeModificationRateExceeded: You've reached the maximum modification rate per volume limit: volume 'vol-[0-9a-f]{17}' was modified 4 times in a rolling \\S+ period\\. You can modify it again after ${again.replace(/[.]/g, '\\.')}\\.`);

  beforeAll(() => ensureBuilt());
  afterAll(() => env.cleanup(), 60_000);

  it('the fifth modify in the window is VolumeModificationRateExceeded (exit 6) and changes nothing; a restart keeps the count', async () => {
    await env.start(['--volume-modification-window', '1h']);
    const id = (await rawControlCall(env.state, 'ebsd.CreateVolume', { Size: '16MiB' })).body.VolumeId as string;
    const starts = await fourModifications(id);
    const again = new Date(Date.parse(starts[0]!) + 3_600_000).toISOString();

    const before = { catalog: catalog(), image: digest(id), stat: statSync(image(id)) };
    const fifth = await env.cli(['volume', 'modify', id, '--size', '36MiB']);
    expect(fifth.code, fifth.stderr).toBe(6);
    expect(fifth.stderr).toMatch(rateRefusal(again));
    expect(fifth.stderr).toContain('in a rolling 1-hour period');
    // Nothing changed: catalog, image (header and data) and its size; DescribeVolumes and
    // DescribeVolumesModifications still tell the fourth modification.
    expect(catalog()).toBe(before.catalog);
    expect(digest(id)).toBe(before.image);
    expect(statSync(image(id)).size).toBe(before.stat.size);
    expect((await env.api('ebsd.DescribeVolumes', { VolumeIds: [id] })).Volumes[0].SizeBytes).toBe(32 * MiB);
    expect((await env.api('ebsd.DescribeVolumesModifications', { VolumeIds: [id] })).VolumesModifications).toEqual([
      expect.objectContaining({ ModificationState: 'completed', OriginalSizeBytes: 28 * MiB, TargetSizeBytes: 32 * MiB, StartTime: starts[3] }),
    ]);

    // The count is in the catalog: a restarted daemon refuses the fifth the same way.
    await env.stop();
    await env.start(['--volume-modification-window', '1h']);
    const r = await modify(id, '36MiB');
    expect(r.status).toBe(400);
    expect(r.body.__type).toBe('VolumeModificationRateExceeded');
    expect(`${r.body.__type}: ${r.body.message}`).toMatch(rateRefusal(again));
    expect(catalog()).toBe(before.catalog);
    expect(digest(id)).toBe(before.image);
    await env.stop();
  }, 180_000);

  it('once the oldest of the four leaves the window, a modify passes again', async () => {
    await env.start(['--volume-modification-window', '3s']);
    const id = (await rawControlCall(env.state, 'ebsd.CreateVolume', { Size: '16MiB' })).body.VolumeId as string;
    const starts = await fourModifications(id);
    const again = Date.parse(starts[0]!) + 3000;
    const refused = await modify(id, '36MiB');
    // The four took well under 3 s (the refusal names when the window lets the next one in).
    expect(refused.body.__type, JSON.stringify(refused.body)).toBe('VolumeModificationRateExceeded');
    expect(`${refused.body.__type}: ${refused.body.message}`).toMatch(rateRefusal(new Date(again).toISOString()));
    expect(refused.body.message).toContain('in a rolling 3-second period');
    await new Promise((res) => setTimeout(res, Math.max(0, again - Date.now()) + 50));
    const passed = await modify(id, '36MiB');
    expect(passed.status, JSON.stringify(passed.body)).toBe(200);
    expect(passed.body.VolumeModification).toMatchObject({ ModificationState: 'completed', OriginalSizeBytes: 32 * MiB, TargetSizeBytes: 36 * MiB });
    expect((await env.api('ebsd.DescribeVolumes', { VolumeIds: [id] })).Volumes[0].SizeBytes).toBe(36 * MiB);
    await env.stop();
  }, 120_000);
});
