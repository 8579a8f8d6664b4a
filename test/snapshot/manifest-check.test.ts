import { truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { SnapshotGc } from '../../src/snapshot/gc.js';
import { MANIFEST_MAX_BYTES, parseManifest } from '../../src/snapshot/manifest-check.js';
import { describingStore, toEc2Snapshot } from '../../src/snapshot/snapshot-view.js';
import { tempDirPerTest } from '../helpers/temp-dir.js';
import { manifest } from './store-suite.js';

/**
 * Issue 17, finding 3: a manifest is checked in every field a reader uses
 * and capped in size before it is parsed; DescribeSnapshots' listing leaves a
 * bad one out (and reports it), the collector's listing still refuses it.
 */
const GOOD = 'snap-0123456789abcdef1';
const BAD = 'snap-0123456789abcdef2';
const HASH = 'a'.repeat(64);
const tmp = tempDirPerTest('ebsd-manifest-check-');

const good = (over: Record<string, unknown> = {}): Record<string, unknown> => ({ ...manifest(GOOD, [[0, HASH], [2047, HASH]]), ...over });
const parse = (v: unknown): unknown => parseManifest('test', GOOD, JSON.stringify(v));

describe('parseManifest: every field a reader uses', () => {
  it('accepts a well-formed manifest (with wrapped key, tags, parent, source snapshot, completion time, a copy\'s transfer type)', () => {
    const m = good({
      tags: [{ Key: 'team', Value: '' }], completionTime: '2026-11-30T09:01:00.000Z', parentSnapshotId: BAD, sourceSnapshotId: BAD, changedBlocks: 1, transferType: 'standard',
      wrappedKey: { ciphertextBlob: 'AQID', keyArn: 'arn:aws:kms:us-east-1:123456789012:key/k', encryptionContext: { 'aws:ebs:id': 'vol-0123456789abcdef0' } },
    });
    expect(parse(m)).toEqual(m);
    expect(toEc2Snapshot(parse(m) as never)).toMatchObject({ Tags: [{ Key: 'team', Value: '' }], TransferType: 'standard' });
  });

  const cases: [string, Record<string, unknown>][] = [
    ['tags not an array', { tags: 'x' }],
    ['a tag without Key', { tags: [{ Value: 'v' }] }],
    ['a tag Value not a string', { tags: [{ Key: 'k', Value: 1 }] }],
    ['51 tags', { tags: Array.from({ length: 51 }, (_, i) => ({ Key: `k${i}`, Value: '' })) }],
    ['state unknown', { state: 'done' }],
    ['progress 101', { progress: 101 }],
    ['progress not an integer', { progress: 1.5 }],
    ['volumeSize 0', { volumeSize: 0 }],
    ['volumeSize past 64 TiB', { volumeSize: 65537 }],
    ['volumeId malformed', { volumeId: 'vol-x' }],
    ['ownerId malformed', { ownerId: '12' }],
    ['startTime not ISO', { startTime: 'yesterday' }],
    ['completionTime not ISO', { completionTime: 12 }],
    ['encrypted not a boolean', { encrypted: 'yes' }],
    ['kmsKeyId not a string', { kmsKeyId: null }],
    ['description past 255', { description: 'd'.repeat(256) }],
    ['wrappedKey without keyArn', { wrappedKey: { ciphertextBlob: 'AQID', encryptionContext: {} } }],
    ['wrappedKey blob not base64', { wrappedKey: { ciphertextBlob: '!!', keyArn: 'k', encryptionContext: {} } }],
    ['wrappedKey context value not a string', { wrappedKey: { ciphertextBlob: 'AQID', keyArn: 'k', encryptionContext: { a: 1 } } }],
    ['parentSnapshotId malformed', { parentSnapshotId: 'snap-1' }],
    ['sourceSnapshotId malformed', { sourceSnapshotId: 'vol-0123456789abcdef0' }],
    ['transferType time-based (ebsd makes standard copies only)', { transferType: 'time-based' }],
    ['dataOffset negative', { dataOffset: -1 }],
    ['a block index past volumeSize (1 GiB = 2048 blocks)', { blocks: [[2048, HASH]] }],
    ['blocks out of order', { blocks: [[2, HASH], [1, HASH]] }],
  ];
  for (const [title, over] of cases) {
    it(`refuses ${title} (SNAPSHOT_CORRUPT)`, () => {
      expect(() => parse(good(over))).toThrow(expect.objectContaining({ code: 'SNAPSHOT_CORRUPT' }));
    });
  }
});

describe('a bad manifest in the store', () => {
  it('DescribeSnapshots\' listing leaves it out and reports it; the collector\'s listing and sweep refuse it', async () => {
    const dir = tmp();
    const store = await DirSnapshotStore.open(dir);
    await store.putManifest(manifest(GOOD, []));
    // The review's repro: a shared store holding a manifest with a non-array `tags`.
    writeFileSync(join(dir, 'manifests', `${BAD}.json`), JSON.stringify({ ...manifest(BAD, []), tags: 'x' }));
    await expect(store.getManifest(BAD)).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT' });
    await expect(store.listManifests()).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT' });
    await expect(new SnapshotGc(store, { graceMs: 0 }).sweep()).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT' });
    const reported: string[] = [];
    const listed = await describingStore(store, (id, err) => reported.push(`${id}:${err.code}`)).listManifests();
    expect(listed.map((m) => m.snapshotId)).toEqual([GOOD]);
    expect(listed.map(toEc2Snapshot)[0]!.Tags).toEqual([]);
    expect(reported).toEqual([`${BAD}:SNAPSHOT_CORRUPT`]);
    // DescribeSnapshots lists summaries: the same, without block lists.
    const summaries = await describingStore(store, (id, err) => reported.push(`${id}:${err.code}`)).listManifestSummaries();
    expect(summaries.map((m) => m.snapshotId)).toEqual([GOOD]);
    expect(summaries[0]).not.toHaveProperty('blocks');
    expect(reported).toEqual([`${BAD}:SNAPSHOT_CORRUPT`, `${BAD}:SNAPSHOT_CORRUPT`]);
  });

  it('one over MANIFEST_MAX_BYTES is refused on its size, unread (a sparse file), and never written', async () => {
    const dir = tmp();
    const store = await DirSnapshotStore.open(dir);
    const p = join(dir, 'manifests', `${BAD}.json`);
    writeFileSync(p, '{');
    truncateSync(p, MANIFEST_MAX_BYTES + 1); // sparse: no 64 MiB written to disk
    await expect(store.getManifest(BAD)).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT', message: expect.stringContaining(`over the ${MANIFEST_MAX_BYTES}-byte limit`) });
    const huge = manifest(GOOD, [], { stateMessage: 'x'.repeat(MANIFEST_MAX_BYTES) });
    await expect(store.putManifest(huge)).rejects.toMatchObject({ code: 'SNAPSHOT_STORE', message: expect.stringContaining('over the') });
    expect(await store.getManifest(GOOD)).toBeUndefined();
  });
});
