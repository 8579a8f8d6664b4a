import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { KmsCoreKeyService } from '../../src/volume/key-service.js';
import { selectXtsEngine } from '../../src/crypto/xts-engine.js';
import { SnapshotGc, type CollectableStore } from '../../src/snapshot/gc.js';
import { EbsDirect } from '../../src/snapshot/ebs-direct.js';
import { parseStartSnapshot } from '../../src/snapshot/ebs-direct-input.js';
import { manifestHashes } from '../../src/snapshot/manifest-check.js';
import { ACCOUNT, BLOCK, REGION, ebsDirectWorld, putReq } from './ebs-direct-world.js';
import { overrideStore } from './in-process.js';

/**
 * PutSnapshotBlock of a block the store already holds as an orphan, on a
 * store shared with another host whose collector read that block's age just
 * before the put and deletes it just after (docs/architecture.md §13.3, rule
 * 5): CompleteSnapshot must not complete naming a block that is gone. The
 * other host is a SnapshotGc on the same directory store, without its batched
 * delete (as the S3 store); this host's EbsDirect sees the store as shared.
 */
const world = ebsDirectWorld('ebsd-ebs-direct-gc-');
const xts = selectXtsEngine('auto');
const WINDOW_MS = 100;
const RECHECK_MS = 400;

describe('EBS direct on a shared store, another host collecting', () => {
  it('an orphan block put again just after the collector read its age: the delete is never sent, CompleteSnapshot completes whole', async () => {
    const { dir, kms, root, store } = world;
    const shared = overrideStore(store, { singleWriter: undefined });
    const d = new EbsDirect({ store: shared, pendingDir: join(dir, 'pending'), keys: new KmsCoreKeyService(kms), xts, accountId: ACCOUNT, region: REGION, allowUnencrypted: true, foundRecheckMs: RECHECK_MS });
    const data = randomBytes(BLOCK);
    const hash = createHash('sha256').update(data).digest('hex');
    await store.putBlock(hash, data); // an orphan: no manifest names it
    let snap = '';
    let completed: unknown;
    const other: CollectableStore = Object.assign(Object.create(store) as CollectableStore, {
      deleteBlocks: undefined,
      blockModifiedMs: async (h: string) => {
        const age = await store.blockModifiedMs(h);
        if (h === hash && !snap) {
          // The sweep's age read just before its delete: this host writes the snapshot meanwhile.
          snap = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1, Encrypted: false }), root)).SnapshotId as string;
          await d.putSnapshotBlock(putReq(snap, 0, data), root);
          completed = await d.completeSnapshot({ SnapshotId: snap, ChangedBlocksCount: 1 }, root).catch((e: unknown) => e);
        }
        return age;
      },
    });
    const r = await new SnapshotGc(other, { graceMs: 0, deleteWindowMs: WINDOW_MS }).sweep();
    expect(snap).not.toBe('');
    // Here CompleteSnapshot outlasts the window (it waits RECHECK_MS after the put): the delete is never sent.
    expect(r.keptYoung).toBeGreaterThan(0);
    expect(completed).toEqual({ Status: 'completed' });
    const m = (await store.getManifest(snap))!;
    expect(m.state).toBe('completed');
    for (const h of manifestHashes(m)) expect(await store.hasBlock(h), `${snap} names ${h}`).toBe(true);
    d.close();
  }, 30_000);

  it('a child whose parent another host deletes while it is pending: CompleteSnapshot touches and checks the inherited blocks, and completes whole', async () => {
    const { dir, kms, root, store } = world;
    const shared = overrideStore(store, { singleWriter: undefined });
    const d = new EbsDirect({ store: shared, pendingDir: join(dir, 'pending2'), keys: new KmsCoreKeyService(kms), xts, accountId: ACCOUNT, region: REGION, allowUnencrypted: true, foundRecheckMs: RECHECK_MS });
    const parent = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1, Encrypted: false }), root)).SnapshotId as string;
    await d.putSnapshotBlock(putReq(parent, 0, randomBytes(BLOCK)), root);
    await d.putSnapshotBlock(putReq(parent, 1, randomBytes(BLOCK)), root);
    await d.completeSnapshot({ SnapshotId: parent, ChangedBlocksCount: 2 }, root);
    const child = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1, ParentSnapshotId: parent }), root)).SnapshotId as string;
    await d.putSnapshotBlock(putReq(child, 1, randomBytes(BLOCK)), root);
    // The other host deletes the parent and collects its blocks (after the delete answers, in the background): the
    // child's pending manifest names block 0 (and the header), which stay; the parent's block 1, named by it alone, goes.
    const collected = await (await new SnapshotGc(store, { graceMs: 0 }).deleteSnapshot(parent)).collected;
    expect(collected).toMatchObject({ examined: 3, deleted: 1 });
    expect(await store.getManifest(parent)).toBeUndefined();
    expect(await d.completeSnapshot({ SnapshotId: child, ChangedBlocksCount: 1 }, root)).toEqual({ Status: 'completed' });
    const m = (await store.getManifest(child))!;
    expect(m.blocks).toHaveLength(2);
    for (const h of manifestHashes(m)) expect(await store.hasBlock(h), `${child} names ${h}`).toBe(true);
    d.close();
  }, 30_000);

  it('shutdown while CompleteSnapshot waits to check its blocks: the wait ends at once, the call is refused, the snapshot stays pending', async () => {
    const { dir, kms, root, store } = world;
    const shared = overrideStore(store, { singleWriter: undefined });
    // Far longer than the test's timeout: only close() can end it.
    const d = new EbsDirect({ store: shared, pendingDir: join(dir, 'pending3'), keys: new KmsCoreKeyService(kms), xts, accountId: ACCOUNT, region: REGION, allowUnencrypted: true, foundRecheckMs: 10 * 60_000 });
    const snap = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1, Encrypted: false }), root)).SnapshotId as string;
    await d.putSnapshotBlock(putReq(snap, 0, randomBytes(BLOCK)), root);
    const completing = d.completeSnapshot({ SnapshotId: snap, ChangedBlocksCount: 1 }, root).catch((e: unknown) => e);
    await d.close();
    expect(await completing).toMatchObject({ awsName: 'InternalServerException' });
    expect((await store.getManifest(snap))?.state).toBe('pending');
  }, 30_000);
});
