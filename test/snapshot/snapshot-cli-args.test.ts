import { describe, expect, it } from 'vitest';
import { parseFilters, parseTagSpecifications, progressBar } from '../../src/cli/snapshot-commands.js';
import { parseSnapshotRequest } from '../../src/daemon/snapshot-api.js';
import { matchesFilters, page, toEc2Snapshot } from '../../src/snapshot/snapshot-view.js';
import type { SnapshotManifest } from '../../src/snapshot/types.js';

/** The snapshot CLI's argument forms (AWS CLI shorthand and JSON), the request checks, filters and paging. */
describe('snapshot arguments, requests and views', () => {
  it('reads --tag-specifications and --filters as the AWS CLI shorthand or JSON', () => {
    expect(parseTagSpecifications('ResourceType=snapshot,Tags=[{Key=a,Value=1},{Key=b,Value=x=y}]')).toEqual([{ ResourceType: 'snapshot', Tags: [{ Key: 'a', Value: '1' }, { Key: 'b', Value: 'x=y' }] }]);
    expect(parseTagSpecifications('[{"ResourceType":"snapshot","Tags":[{"Key":"k","Value":"v"}]}]')).toEqual([{ ResourceType: 'snapshot', Tags: [{ Key: 'k', Value: 'v' }] }]);
    expect(() => parseTagSpecifications('Tags=a')).toThrow(/ResourceType=snapshot/);
    expect(parseFilters(['Name=status,Values=completed,pending', '{"Name":"tag:team","Values":["blue"]}'])).toEqual([
      { Name: 'status', Values: ['completed', 'pending'] },
      { Name: 'tag:team', Values: ['blue'] },
    ]);
    expect(() => parseFilters(['status=completed'])).toThrow(/Name=NAME,Values=/);
    expect(progressBar(50, 10)).toBe('[#####.....]  50%');
    expect(progressBar(140, 4)).toBe('[####] 100%');
  });

  it('checks requests with EC2 names before anything runs', () => {
    const code = (f: () => unknown): string | undefined => {
      try { f(); return undefined; } catch (e) { return (e as { awsName?: string }).awsName; }
    };
    expect(code(() => parseSnapshotRequest('CreateSnapshot', {}))).toBe('MissingParameter');
    expect(code(() => parseSnapshotRequest('CreateSnapshot', { VolumeId: 'vol-1' }))).toBe('InvalidVolumeID.Malformed');
    expect(code(() => parseSnapshotRequest('DeleteSnapshot', { SnapshotId: 'snap-1' }))).toBe('InvalidSnapshotID.Malformed');
    expect(code(() => parseSnapshotRequest('DescribeSnapshots', { SnapshotIds: ['snap-0123456789abcdef0'], MaxResults: 5 }))).toBe('InvalidParameterCombination');
    // "This value can be between 5 and 1000; if MaxResults is given a value larger than 1000, only 1000 results are returned."
    expect(code(() => parseSnapshotRequest('DescribeSnapshots', { MaxResults: 4 }))).toBe('InvalidParameterValue');
    expect(code(() => parseSnapshotRequest('DescribeSnapshots', { MaxResults: 1.5 }))).toBe('InvalidParameterValue');
    expect(parseSnapshotRequest('DescribeSnapshots', { MaxResults: 5000 })).toEqual({ op: 'DescribeSnapshots', input: { MaxResults: 1000 } });
    const tags = Array.from({ length: 51 }, (_, i) => ({ Key: `k${i}`, Value: '' }));
    expect(code(() => parseSnapshotRequest('CreateSnapshot', { VolumeId: 'vol-0123456789abcdef0', TagSpecifications: [{ ResourceType: 'snapshot', Tags: tags }] }))).toBe('TagLimitExceeded');
    expect(code(() => parseSnapshotRequest('CreateSnapshot', { VolumeId: 'vol-0123456789abcdef0', TagSpecifications: [{ ResourceType: 'snapshot', Tags: [{ Key: 'aws:x', Value: '' }] }] }))).toBe('InvalidParameterValue');
  });

  it('filters as EC2 does (AND across filters, OR across values, * and ? wildcards) and pages by NextToken', () => {
    const m = (id: string, state: SnapshotManifest['state'], tags: { Key: string; Value: string }[]): SnapshotManifest => ({
      formatVersion: 1, snapshotId: id, volumeId: 'vol-0123456789abcdef0', volumeSize: 1, state, progress: state === 'completed' ? 100 : 40,
      startTime: '2026-11-30T10:00:00.000Z', description: 'nightly', tags, ownerId: '111122223333', encrypted: true, kmsKeyId: 'arn:k', dataOffset: 16777216, blocks: [],
    });
    const a = m('snap-0000000000000000a', 'completed', [{ Key: 'team', Value: 'blue' }]);
    const b = m('snap-0000000000000000b', 'pending', []);
    expect(matchesFilters(a, [{ Name: 'tag:team', Values: ['bl?e'] }, { Name: 'status', Values: ['completed', 'error'] }])).toBe(true);
    expect(matchesFilters(b, [{ Name: 'tag-key', Values: ['*'] }])).toBe(false);
    expect(matchesFilters(b, [{ Name: 'progress', Values: ['40%'] }, { Name: 'description', Values: ['night*'] }])).toBe(true);
    expect(toEc2Snapshot(b)).toMatchObject({ Progress: '40%', State: 'pending', StorageTier: 'standard', KmsKeyId: 'arn:k' });
    // EC2's storage-tier (archive | standard) and owner-alias (Amazon's list: no ebsd snapshot has one) are filters too.
    const tierOrAlias = [{ Name: 'storage-tier', Values: ['standard'] }, { Name: 'owner-alias', Values: ['amazon'] }];
    expect(parseSnapshotRequest('DescribeSnapshots', { Filters: tierOrAlias })).toEqual({ op: 'DescribeSnapshots', input: { Filters: tierOrAlias } });
    expect(matchesFilters(a, [{ Name: 'storage-tier', Values: ['standard'] }])).toBe(true);
    expect(matchesFilters(a, [{ Name: 'storage-tier', Values: ['archive'] }])).toBe(false);
    expect(matchesFilters(a, [{ Name: 'owner-alias', Values: ['amazon', '*'] }])).toBe(false);
    const all = [toEc2Snapshot(b), toEc2Snapshot(a)];
    const p1 = page(all, 5, undefined);
    expect(p1.Snapshots.map((s) => s.SnapshotId)).toEqual(['snap-0000000000000000a', 'snap-0000000000000000b']);
    expect(p1.NextToken).toBeUndefined();
    expect(page(all, 5, 'snap-0000000000000000a').Snapshots.map((s) => s.SnapshotId)).toEqual(['snap-0000000000000000b']);
  });
});
