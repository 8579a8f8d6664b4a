/**
 * EBS direct ListChangedBlocks between two snapshots whose lineage runs through a snapshot with a
 * refused manifest (docs/architecture.md §13.5; a manifest that does not read back is refused as one
 * whose MAC fails is): the walk up the ParentSnapshotId links that tells whether the two are of one
 * lineage cannot read it, and the call is refused as a named snapshot in that state is,
 * ValidationException (400) naming the snapshot in the way and why, not InternalServerException (500,
 * which the SDKs retry). A real daemon over its directory store; the two children of one parent are
 * begun with StartSnapshot (no source volume), so only their parent links relate them.
 */
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { ServiceError } from '../../src/cli/client.js';

const BLOCK = 512 * 1024;

describe('EBS direct ListChangedBlocks across a refused manifest in the lineage', () => {
  const env = new Env('ebs-lineage-refused');
  const flags = ['--allow-unencrypted'];

  /** A snapshot of `index` filled with random bytes, begun with StartSnapshot (on `parent`) and completed. */
  const upload = async (index: number, parent?: string): Promise<string> => {
    const snap = (await env.api('ebs.StartSnapshot', { VolumeSize: 1, ...(parent ? { ParentSnapshotId: parent } : { Encrypted: false }) })).SnapshotId as string;
    const data = randomBytes(BLOCK);
    await env.api('ebs.PutSnapshotBlock', { SnapshotId: snap, BlockIndex: index, BlockData: data.toString('base64'), DataLength: BLOCK, Checksum: createHash('sha256').update(data).digest('base64'), ChecksumAlgorithm: 'SHA256' });
    expect(await env.api('ebs.CompleteSnapshot', { SnapshotId: snap, ChangedBlocksCount: 1 })).toEqual({ Status: 'completed' });
    return snap;
  };

  beforeAll(async () => {
    ensureBuilt();
    await env.start(flags);
  }, 60_000);

  afterAll(() => env.cleanup(), 60_000);

  it('is ValidationException naming the snapshot in the lineage and why, not InternalServerException', async () => {
    const parent = await upload(0);
    const first = await upload(1, parent);
    const second = await upload(2, parent);
    // Related through their parent: the blocks each wrote differ, and block 0 (the parent's) is the same in both.
    const before = await env.api('ebs.ListChangedBlocks', { FirstSnapshotId: first, SecondSnapshotId: second });
    expect(before.ChangedBlocks.map((b: any) => b.BlockIndex)).toEqual([1, 2]);

    // The parent's manifest no longer reads back; restarted, so nothing of the lineage is remembered.
    await env.stop();
    writeFileSync(join(env.state, 'snapshots', 'manifests', `${parent}.json`), '{"snapshotId": not json\n');
    await env.start(flags);

    let refused: unknown;
    try {
      await env.api('ebs.ListChangedBlocks', { FirstSnapshotId: first, SecondSnapshotId: second });
    } catch (e) {
      refused = e;
    }
    expect(refused).toBeInstanceOf(ServiceError);
    const e = refused as ServiceError;
    expect([e.awsName, e.status]).toEqual(['ValidationException', 400]);
    expect(e.message).toContain(`${first} and ${second} cannot be compared: ${parent}, in the lineage between them, is in state error`);
    // The two named snapshots still read on their own.
    expect((await env.api('ebs.ListSnapshotBlocks', { SnapshotId: second })).Blocks.map((b: any) => b.BlockIndex)).toEqual([0, 2]);
  }, 90_000);
});
