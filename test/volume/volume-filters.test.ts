import { describe, expect, test } from 'vitest';
import { FILTER_STEPS_PER_REQUEST, FilterBudget, filterMatcher } from '../../src/util/ec2-filter.js';
import { matchesVolumeFilters, type FilterableVolume } from '../../src/volume/volume-filters.js';

// EC2 filter values and DescribeVolumes' filter names (src/util/ec2-filter.ts,
// src/volume/volume-filters.ts); the manager's use of them is in volume-manager.test.ts.

describe('EC2 filter values', () => {
  test.each([
    ['n*', 'name', true], ['n*', 'n', true], ['n*', 'xn', false], ['*', '', true], ['', '', true], ['', 'a', false],
    ['a?c', 'abc', true], ['a?c', 'ac', false], ['*-db-?', 'prod-db-1', true], ['*-db-?', 'prod-db-10', false],
    ['N*', 'name', false], // case-sensitive
    ['a.c', 'abc', false], ['(x)|y', '(x)|y', true], ['[ab]', 'a', false], // regex metacharacters are literal
    ['\\*amazon\\?\\\\', '*amazon?\\', true], ['\\*amazon\\?\\\\', 'xamazonx\\', false], // EC2's escapes
    ['a\\', 'a\\', true], // a trailing lone backslash is literal
  ])('%j matches %j: %s', (value, subject, want) => {
    expect(filterMatcher([value])(subject)).toBe(want);
  });

  test('the values of one filter are ORed; no values match nothing', () => {
    expect(filterMatcher(['x', 'b*'])('bee')).toBe(true);
    expect(filterMatcher([])('bee')).toBe(false);
  });

  test('a value that makes a backtracking regex run for minutes is answered at once', () => {
    // `*a` x 12 then `b` over 40 `a`s: the RegExp this replaced took over a minute at 30.
    const v = '*a'.repeat(12) + 'b';
    expect(filterMatcher([v])('a'.repeat(40))).toBe(false);
    expect(filterMatcher([v])('a'.repeat(40) + 'b')).toBe(true);
    expect(filterMatcher(['*?'.repeat(120) + 'z'])('y'.repeat(255))).toBe(false);
  });

  test('a request\'s filters share one step budget: the worst values within EC2\'s limits are refused, not run for seconds', () => {
    // 200 values of `*a` x 127 + `b` against 50 tag keys of 128 `a`s: every value is walked against every key, on
    // every volume of the request. Counted in one budget, the request stops past it, refused naming what to change.
    const costly = Array.from({ length: 200 }, () => '*a'.repeat(127) + 'b');
    const tags = Array.from({ length: 50 }, (_, i) => ({ Key: 'a'.repeat(127) + String.fromCharCode(0x41 + (i % 26)), Value: 'v' }));
    const v: FilterableVolume = { VolumeId: 'vol-0123456789abcdef2', Size: 1, State: 'available', CreateTime: '2024-06-01T10:00:00.000Z', SnapshotId: '', Encrypted: false, VolumeType: 'gp3', AvailabilityZone: 'us-east-1a', Attachments: [], Tags: tags };
    const filters = [{ Name: 'tag-key', Values: costly }];
    const budget = new FilterBudget();
    let volumes = 0;
    expect(() => { for (;;) { matchesVolumeFilters(v, filters, budget); volumes++; } }).toThrow(expect.objectContaining({ awsName: 'InvalidParameterValue', message: expect.stringMatching(/matching steps/) }));
    expect(volumes).toBeGreaterThan(0); // whole volumes were matched before the budget ran out
    expect(budget.left).toBeLessThan(0);
    // Ordinary filters spend a handful of steps: a thousand volumes' worth stays far inside one request's budget.
    const small = new FilterBudget();
    for (let i = 0; i < 1000; i++) matchesVolumeFilters(v, [{ Name: 'tag-key', Values: ['a*B', 'team'] }, { Name: 'volume-id', Values: ['vol-*'] }], small);
    expect(FILTER_STEPS_PER_REQUEST - small.left).toBeLessThan(FILTER_STEPS_PER_REQUEST / 10);
  });
});

describe('DescribeVolumes filters', () => {
  const attached: FilterableVolume = {
    VolumeId: 'vol-0123456789abcdef0', Size: 8, State: 'in-use', CreateTime: '2024-05-01T10:00:00.000Z', SnapshotId: 'snap-0123456789abcdef0', Encrypted: true,
    KmsKeyId: 'arn:aws:kms:us-east-1:111122223333:key/k1', VolumeType: 'gp3', AvailabilityZone: 'us-east-1a',
    Attachments: [{ InstanceId: 'i-0123456789abcdef0', Device: '/dev/sdf', State: 'attached', AttachTime: '2024-05-02T10:00:00.000Z', DeleteOnTermination: false }],
    Tags: [{ Key: 'Name', Value: 'data' }, { Key: 'team', Value: 'blue' }],
  };
  const plain: FilterableVolume = {
    VolumeId: 'vol-0123456789abcdef1', Size: 1, State: 'available', CreateTime: '2024-06-01T10:00:00.000Z', SnapshotId: '', Encrypted: false,
    VolumeType: 'gp3', AvailabilityZone: 'us-east-1a', Attachments: [], Tags: [],
  };
  const which = (Name: string, ...Values: string[]): string[] =>
    [attached, plain].filter((v) => matchesVolumeFilters(v, [{ Name, Values }])).map((v) => v.VolumeId.slice(-1));

  test.each([
    ['tag:Name', ['d*'], ['0']], ['tag:Name', ['x*'], []], ['tag-key', ['te?m'], ['0']],
    ['size', ['8'], ['0']], ['size', ['1', '8'], ['0', '1']], // GiB, as Size shows it
    ['encrypted', ['false'], ['1']], ['encrypted', ['true'], ['0']],
    ['status', ['in-*'], ['0']], ['volume-id', ['*1'], ['1']],
    ['create-time', ['2024-06-*'], ['1']], ['volume-type', ['gp3'], ['0', '1']], ['availability-zone', ['us-east-1?'], ['0', '1']],
    ['attachment.device', ['/dev/sd*'], ['0']], ['attachment.status', ['attached'], ['0']], ['attachment.instance-id', ['i-*'], ['0']],
    ['attachment.attach-time', ['2024-05-02*'], ['0']], ['attachment.delete-on-termination', ['false'], ['0']], // a detached volume matches no attachment.* filter
    ['kms-key-id', ['*'], ['0']], // an unencrypted volume has no key to match
    ['multi-attach-enabled', ['false'], ['0', '1']], ['fast-restored', ['true'], []],
  ])('%s %j -> %j', (name, values, want) => {
    expect(which(name, ...values)).toEqual(want);
  });

  test('filters are ANDed', () => {
    expect([attached, plain].filter((v) => matchesVolumeFilters(v, [{ Name: 'volume-type', Values: ['gp3'] }, { Name: 'tag:team', Values: ['b*'] }]))).toEqual([attached]);
  });

  test('an unknown name is InvalidParameterValue "The filter … is invalid"', () => {
    expect(() => which('nope', 'x')).toThrow(expect.objectContaining({ awsName: 'InvalidParameterValue', message: "The filter 'nope' is invalid" }));
    expect(() => which('tag:', 'x')).toThrow(expect.objectContaining({ awsName: 'InvalidParameterValue' }));
  });

  test('snapshot-id matches the snapshot a volume was created from ("" for one that was not)', () => {
    expect(which('snapshot-id', 'snap-0123*')).toEqual(['0']);
    expect(which('snapshot-id', '')).toEqual(['1']);
  });
});
