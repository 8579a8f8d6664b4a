import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { callDaemon, socketPathFor, ServiceError } from '../../src/cli/client.js';
import { Env, ensureBuilt } from './helpers.js';
import { parseStartSnapshot } from '../../src/snapshot/ebs-direct-input.js';

/**
 * Tag lengths are counted in Unicode characters, as AWS counts them (EC2 Tag: Key up to 128,
 * Value up to 256; KMS TagKey 1-128, TagValue 0-256), not in UTF-16 code units: a key of 128
 * astral-plane characters (256 code units) is accepted and 129 refused, on volumes, snapshots
 * (and their manifests read back after a restart) and KMS keys, through the real daemon; and
 * EBS direct StartSnapshot's own bounds (127 / 255) the same way, through its request parser.
 */
const E = '😀'; // U+1F600: one character, two UTF-16 code units
const KEY = E.repeat(128);
const VALUE = E.repeat(256);

describe('tag lengths in Unicode characters', () => {
  const env = new Env('tag-lengths');
  const call = (target: string, body: Record<string, unknown> = {}): Promise<any> => callDaemon(socketPathFor(env.state), target, body);
  /** The refusal's AWS name and message, or undefined if the call succeeds. */
  const refusal = async (p: Promise<unknown>): Promise<string | undefined> => {
    try {
      await p;
      return undefined;
    } catch (e) {
      if (e instanceof ServiceError) return `${e.awsName}: ${e.message}`;
      throw e;
    }
  };
  const spec = (type: string, Key: string, Value = ''): unknown => [{ ResourceType: type, Tags: [{ Key, Value }] }];

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
  });
  afterAll(() => env.cleanup());

  it('EC2 volumes and snapshots: a 128-character key and 256-character value of astral characters are kept, 129 and 257 refused', async () => {
    expect(KEY.length).toBe(256); // the old count, which refused it
    const v = await call('ebsd.CreateVolume', { Size: 4 * 1024 * 1024, Name: VALUE, TagSpecifications: spec('volume', KEY, VALUE) });
    expect(v.Tags).toEqual(expect.arrayContaining([{ Key: KEY, Value: VALUE }, { Key: 'Name', Value: VALUE }]));
    expect(await refusal(call('ebsd.CreateVolume', { Size: 4 * 1024 * 1024, TagSpecifications: spec('volume', KEY + E) })))
      .toMatch(/^InvalidParameterValue: TagSpecifications\[0\]\.Tags\[0\]\.Key must be 1 to 128 characters long, got 129/);
    expect(await refusal(call('ebsd.CreateVolume', { Size: 4 * 1024 * 1024, TagSpecifications: spec('volume', 'k', VALUE + E) })))
      .toMatch(/^InvalidParameterValue: TagSpecifications\[0\]\.Tags\[0\]\.Value must be 0 to 256 characters long, got 257/);

    const s = await call('ebsd.CreateSnapshot', { VolumeId: v.VolumeId, Description: E.repeat(255), TagSpecifications: spec('snapshot', KEY, VALUE) });
    expect(await refusal(call('ebsd.CreateSnapshot', { VolumeId: v.VolumeId, TagSpecifications: spec('snapshot', KEY + E) })))
      .toMatch(/^InvalidParameterValue: TagSpecifications\[0\]\.Tags\[0\]\.Key must be 1 to 128 characters long, got 129/);
    let snap: any;
    for (;;) {
      snap = (await call('ebsd.DescribeSnapshots', { SnapshotIds: [s.SnapshotId] })).Snapshots[0];
      if (snap.State !== 'pending') break;
      await new Promise((r) => setTimeout(r, 25));
    }
    expect(snap).toMatchObject({ State: 'completed', Description: E.repeat(255), Tags: [{ Key: KEY, Value: VALUE }] });

    // After a restart the manifest is read back from the store and checked (manifest-check.ts): the same bounds.
    await env.stop();
    await env.start();
    const back = (await call('ebsd.DescribeSnapshots', { SnapshotIds: [s.SnapshotId] })).Snapshots[0];
    expect(back).toMatchObject({ State: 'completed', Description: E.repeat(255), Tags: [{ Key: KEY, Value: VALUE }] });
    expect((await call('ebsd.DescribeVolumes', { VolumeIds: [v.VolumeId] })).Volumes[0].Tags).toEqual(expect.arrayContaining([{ Key: KEY, Value: VALUE }]));
  }, 90_000);

  it('KMS CreateKey, TagResource and UntagResource: a 128-character TagKey and 256-character TagValue of astral characters are accepted, 129 and 257 refused', async () => {
    const keyId = (await call('TrentService.CreateKey', { Tags: [{ TagKey: KEY, TagValue: VALUE }] })).KeyMetadata.KeyId;
    expect((await call('TrentService.ListResourceTags', { KeyId: keyId })).Tags).toEqual([{ TagKey: KEY, TagValue: VALUE }]);
    expect(await refusal(call('TrentService.CreateKey', { Tags: [{ TagKey: KEY + E, TagValue: '' }] }))).toMatch(/^TagException: TagKey must be 1-128 characters/);
    expect(await refusal(call('TrentService.CreateKey', { Tags: [{ TagKey: 'k', TagValue: VALUE + E }] }))).toMatch(/^TagException: TagValue must be 0-256 characters/);

    const other = E.repeat(127) + 'x';
    await call('TrentService.TagResource', { KeyId: keyId, Tags: [{ TagKey: other, TagValue: VALUE }] });
    expect(await refusal(call('TrentService.TagResource', { KeyId: keyId, Tags: [{ TagKey: KEY + E, TagValue: 'v' }] }))).toMatch(/^TagException: TagKey must be 1-128 characters/);
    expect(await refusal(call('TrentService.TagResource', { KeyId: keyId, Tags: [{ TagKey: 'k', TagValue: VALUE + E }] }))).toMatch(/^TagException: TagValue must be 0-256 characters/);
    expect((await call('TrentService.ListResourceTags', { KeyId: keyId })).Tags).toHaveLength(2);

    expect(await refusal(call('TrentService.UntagResource', { KeyId: keyId, TagKeys: [KEY + E] }))).toMatch(/^ValidationException: /);
    await call('TrentService.UntagResource', { KeyId: keyId, TagKeys: [KEY] });
    expect((await call('TrentService.ListResourceTags', { KeyId: keyId })).Tags).toEqual([{ TagKey: other, TagValue: VALUE }]);
  });

  it('EBS direct StartSnapshot: Key up to 127 and Value up to 255 characters, astral letters counting one each', () => {
    const A = '𝒜'; // U+1D49C, two code units
    expect(parseStartSnapshot({ VolumeSize: 1, Tags: [{ Key: A.repeat(127), Value: A.repeat(255) }] }).Tags).toEqual([{ Key: A.repeat(127), Value: A.repeat(255) }]);
    expect(() => parseStartSnapshot({ VolumeSize: 1, Tags: [{ Key: A.repeat(128), Value: '' }] })).toThrow(/Tags\[0\] Key must be a string of 1 to 127 characters/);
    expect(() => parseStartSnapshot({ VolumeSize: 1, Tags: [{ Key: 'k', Value: A.repeat(256) }] })).toThrow(/Tags\[0\] Value must be a string of at most 255 characters/);
    // Description likewise: 255 characters, not UTF-16 units.
    expect(parseStartSnapshot({ VolumeSize: 1, Description: A.repeat(255) }).Description).toBe(A.repeat(255));
    expect(() => parseStartSnapshot({ VolumeSize: 1, Description: A.repeat(256) })).toThrow(/Description must be a string of 1 to 255 characters/);
  });
});
