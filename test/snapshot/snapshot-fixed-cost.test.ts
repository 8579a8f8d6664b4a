import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openSync, writeSync, closeSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { api, detachWhenClosed, settled } from './helpers.js';
import { storedBlockBytes } from './stored-blocks.js';

/**
 * The incremental's fixed cost (docs/architecture.md §12.1, §12.3), through
 * the real daemon on a detached volume: the parent is the tracking's base,
 * and the header area's hash, kept while its bytes are unchanged, is never
 * the old one after the header changed (a resize rewrites the LUKS2 header).
 */
const B = 512 * 1024;
const DATA_OFFSET = 16 * 1024 * 1024;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

describe('incremental snapshot fixed cost', () => {
  const env = new Env('snap-fixed');
  const call = api(env);
  let vol = '';
  const manifestOf = (id: string): any => JSON.parse(readFileSync(join(env.state, 'snapshots', 'manifests', `${id}.json`), 'utf8'));
  const headerArea = (): Buffer => readFileSync(join(env.state, 'volumes', `${vol}.img`)).subarray(0, DATA_OFFSET);
  const writeBlock = async (i: number): Promise<void> => {
    await call('AttachVolume', { VolumeId: vol });
    const fd = openSync(env.file(vol), 'r+');
    try {
      writeSync(fd, randomBytes(B), 0, B, i * B);
    } finally {
      closeSync(fd);
    }
    await detachWhenClosed(env, vol);
  };
  const snapshot = async (): Promise<any> => {
    const s = await settled(env, (await call('CreateSnapshot', { VolumeId: vol })).SnapshotId);
    expect(s.State).toBe('completed');
    return manifestOf(s.SnapshotId);
  };

  beforeAll(async () => {
    ensureBuilt();
    await env.start(['--snapshot-gc-grace', '0']);
    vol = (await call('CreateVolume', { Size: 8 * 1024 * 1024 })).VolumeId;
    await writeBlock(0);
    await writeBlock(3);
  }, 60_000);

  afterAll(() => env.cleanup());

  it('an incremental names the tracking base as parent; an unchanged header is the same object, a changed one is hashed anew', async () => {
    const m1 = await snapshot();
    expect(m1.blocks.map((b: [number, string]) => b[0])).toEqual([0, 3]);
    expect(m1.header).toBe(sha(headerArea()));
    await writeBlock(5);
    const m2 = await snapshot();
    expect(m2.parentSnapshotId).toBe(m1.snapshotId);
    expect(m2.changedBlocks).toBe(1);
    expect(m2.header).toBe(m1.header);
    // A resize rewrites the header area: the cached hash must not be reused.
    await call('ModifyVolume', { VolumeId: vol, Size: 16 * 1024 * 1024 });
    for (let i = 0; i < 400 && (await call('DescribeVolumes', { VolumeIds: [vol] })).Volumes[0].SizeBytes !== 16 * 1024 * 1024; i++) await new Promise((r) => setTimeout(r, 25));
    const now = headerArea();
    expect(sha(now)).not.toBe(m1.header);
    const m3 = await snapshot();
    expect(m3.header).toBe(sha(now));
    expect((await storedBlockBytes(env.state, m3.header)).equals(now)).toBe(true);
    expect(m3.blocks).toEqual(m2.blocks);
    // The read of an unchanged header becomes the daemon's spare buffer, which the next read fills:
    // after a second resize, what is hashed and stored is that read's bytes, and an unchanged one keeps its hash.
    await writeBlock(6);
    const m4 = await snapshot();
    expect(m4.header).toBe(m3.header);
    await call('ModifyVolume', { VolumeId: vol, Size: 24 * 1024 * 1024 });
    for (let i = 0; i < 400 && (await call('DescribeVolumes', { VolumeIds: [vol] })).Volumes[0].SizeBytes !== 24 * 1024 * 1024; i++) await new Promise((r) => setTimeout(r, 25));
    const later = headerArea();
    const m5 = await snapshot();
    expect(m5.header).toBe(sha(later));
    expect(m5.header).not.toBe(m3.header);
    expect((await storedBlockBytes(env.state, m5.header)).equals(later)).toBe(true);
    await writeBlock(7);
    const m6 = await snapshot();
    expect(m6.header).toBe(m5.header);
    expect((await storedBlockBytes(env.state, m3.header)).equals(now)).toBe(true);
  }, 90_000);
});
