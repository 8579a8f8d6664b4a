import { describe, expect, it } from 'vitest';
import { Ec2RequestError, parseEc2Request } from '../../src/daemon/ec2-requests.js';

/** The EC2 request parser on its own: what it refuses, with which name and member, and what it hands on. */
function refusal(op: Parameters<typeof parseEc2Request>[0], body: unknown): Ec2RequestError {
  try {
    parseEc2Request(op, body);
  } catch (e) {
    expect(e).toBeInstanceOf(Ec2RequestError);
    return e as Ec2RequestError;
  }
  throw new Error(`accepted: ${JSON.stringify(body)}`);
}

const tags = (n: number) => Array.from({ length: n }, (_, i) => ({ Key: `k${i}`, Value: 'v' }));

describe('parseEc2Request', () => {
  it('hands on a well-formed CreateVolume, tags and all', () => {
    const r = parseEc2Request('CreateVolume', { Size: '8GiB', Name: 'data', TagSpecifications: [{ ResourceType: 'volume', Tags: [{ Key: 'team', Value: '' }] }] });
    expect(r).toEqual({ op: 'CreateVolume', input: { Size: '8GiB', Name: 'data', TagSpecifications: [{ ResourceType: 'volume', Tags: [{ Key: 'team', Value: '' }] }] } });
  });

  it.each([
    [{ Size: 4096, Name: null }, 'InvalidParameterValue', 'Name'],
    [{ Size: 4096, Name: 'x'.repeat(257) }, 'InvalidParameterValue', 'Name'],
    [{ Size: 4096, TagSpecifications: [{ ResourceType: 'volume', Tags: [{ Key: '', Value: 'v' }] }] }, 'InvalidParameterValue', 'TagSpecifications[0].Tags[0].Key'],
    [{ Size: 4096, TagSpecifications: [{ ResourceType: 'volume', Tags: [{ Key: 'AWS:x', Value: 'v' }] }] }, 'InvalidParameterValue', 'TagSpecifications[0].Tags[0].Key'],
    [{ Size: 4096, TagSpecifications: [{ ResourceType: 'volume', Tags: [{ Key: 'k', Value: 'v'.repeat(257) }] }] }, 'InvalidParameterValue', 'TagSpecifications[0].Tags[0].Value'],
    [{ Size: 4096, TagSpecifications: [{ ResourceType: 'volume', Tags: [{ Key: 'k', Value: '\ud800' }] }] }, 'InvalidParameterValue', 'TagSpecifications[0].Tags[0].Value'],
    [{ Size: 4096, TagSpecifications: [{ ResourceType: 'volume', Tags: [{ Key: 'k', Value: 'v', Extra: 1 }] }] }, 'UnknownParameter', 'TagSpecifications[0].Tags[0].Extra'],
    [{ Size: 4096, TagSpecifications: [{ Tags: [] }] }, 'MissingParameter', 'TagSpecifications[0].ResourceType'],
    [{ Size: 4096, TagSpecifications: [{ ResourceType: 'volume', Tags: tags(51) }] }, 'TagLimitExceeded', 'TagSpecifications'],
    [{ Size: 4096, Name: 'n', TagSpecifications: [{ ResourceType: 'volume', Tags: tags(50) }] }, 'TagLimitExceeded', 'TagSpecifications'],
    [{ Size: 4096, Name: 'n', TagSpecifications: [{ ResourceType: 'volume', Tags: [{ Key: 'Name', Value: 'm' }] }] }, 'InvalidParameterValue', 'TagSpecifications[0].Tags[0].Key'],
    [{ Size: 4096, Encrypted: 'yes' }, 'InvalidParameterValue', 'Encrypted'],
    [{ Size: 4096, KmsKeyId: '' }, 'InvalidParameterValue', 'KmsKeyId'],
    [{ Size: 1e300 }, 'InvalidParameterValue', 'Size'],
    [{}, 'MissingParameter', 'Size'],
    [{ Size: 4096, __proto__x: 1 }, 'UnknownParameter', '__proto__x'],
    [null, 'InvalidParameter', 'request body'],
  ])('CreateVolume %j -> %s naming %s', (body, awsName, member) => {
    const e = refusal('CreateVolume', body);
    expect(e.awsName).toBe(awsName);
    expect(e.member).toBe(member);
  });

  it('refuses a "__proto__" member as unknown instead of taking it as the prototype', () => {
    const e = refusal('DeleteVolume', JSON.parse('{"VolumeId":"vol-0123456789abcdef0","__proto__":{"Force":true}}'));
    expect(e.awsName).toBe('UnknownParameter');
    expect(e.member).toBe('__proto__');
  });

  it('DescribeVolumes: filters, ids, paging', () => {
    expect(parseEc2Request('DescribeVolumes', { Filters: [{ Name: 'tag:Name', Values: ['a'] }], MaxResults: 5 })).toEqual({
      op: 'DescribeVolumes', input: { Filters: [{ Name: 'tag:Name', Values: ['a'] }], MaxResults: 5 },
    });
    expect(refusal('DescribeVolumes', { Filters: Array.from({ length: 51 }, () => ({ Name: 'status', Values: [] })) }).awsName).toBe('InvalidFilter');
    expect(refusal('DescribeVolumes', { Filters: [{ Name: 'status', Values: Array(201).fill('x') }] }).member).toBe('Filters[0].Values');
    // An unknown name is InvalidParameterValue, as EC2 answers it; a malformed filter is InvalidFilter.
    expect(refusal('DescribeVolumes', { Filters: [{ Name: 'tag:', Values: [] }] }).awsName).toBe('InvalidParameterValue');
    expect(refusal('DescribeVolumes', { Filters: [{ Name: 'Status', Values: [] }] })).toMatchObject({ awsName: 'InvalidParameterValue', message: expect.stringMatching(/^The filter 'Status' is invalid/) });
    // EC2's documented names (volume-filters.ts).
    for (const Name of ['tag-key', 'encrypted', 'size', 'snapshot-id', 'attachment.status', 'attachment.device', 'create-time', 'volume-type', 'availability-zone']) {
      expect(parseEc2Request('DescribeVolumes', { Filters: [{ Name, Values: ['*'] }] })).toEqual({ op: 'DescribeVolumes', input: { Filters: [{ Name, Values: ['*'] }] } });
    }
    expect(refusal('DescribeVolumes', { VolumeIds: ['vol-0123456789abcdef0'], MaxResults: 5 }).awsName).toBe('InvalidParameterCombination');
    expect(refusal('DescribeVolumes', { MaxResults: 4 }).member).toBe('MaxResults');
    // EC2: a value over 500 returns 500 items (the AWS CLI sends 1000), it is not refused.
    expect(parseEc2Request('DescribeVolumes', { MaxResults: 501 })).toEqual({ op: 'DescribeVolumes', input: { MaxResults: 500 } });
    expect(parseEc2Request('DescribeVolumes', { MaxResults: 1000 })).toEqual({ op: 'DescribeVolumes', input: { MaxResults: 500 } });
    expect(refusal('DescribeVolumes', { MaxResults: 1.5 }).member).toBe('MaxResults');
    expect(refusal('DescribeVolumes', { VolumeIds: 'vol-0123456789abcdef0' }).member).toBe('VolumeIds');
    expect(refusal('DescribeVolumes', { VolumeIds: Array(501).fill('vol-0123456789abcdef0') }).member).toBe('VolumeIds');
  });

  it('volume ids, Force and Device', () => {
    expect(refusal('AttachVolume', { VolumeId: 'vol-0123456789ABCDEF0' }).awsName).toBe('InvalidVolumeID.Malformed');
    expect(refusal('AttachVolume', {}).awsName).toBe('MissingParameter');
    expect(refusal('AttachVolume', { VolumeId: 'vol-0123456789abcdef0', Device: 7 }).member).toBe('Device');
    expect(parseEc2Request('DetachVolume', { VolumeId: 'vol-0123456789abcdef0' })).toEqual({ op: 'DetachVolume', input: { VolumeId: 'vol-0123456789abcdef0', Force: false } });
    expect(refusal('DetachVolume', { VolumeId: 'vol-0123456789abcdef0', Force: 1 }).member).toBe('Force');
    expect(refusal('ModifyVolume', { VolumeId: 'vol-0123456789abcdef0', Size: [] }).member).toBe('Size');
  });

  it('a refusal quotes at most a short prefix of a long value', () => {
    const e = refusal('CreateVolume', { Size: 4096, Cipher: 'c'.repeat(100_000) });
    expect(e.message.length).toBeLessThan(300);
  });
});
