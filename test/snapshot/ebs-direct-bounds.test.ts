import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { KmsService } from '../../src/kms/kms-core.js';
import type { Caller } from '../../src/kms/types.js';
import { KmsCoreKeyService } from '../../src/volume/key-service.js';
import { selectXtsEngine } from '../../src/crypto/xts-engine.js';
import type { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { SnapshotGc } from '../../src/snapshot/gc.js';
import { EbsDirect, MAX_SNAPSHOT_BLOCKS, type Scheduler } from '../../src/snapshot/ebs-direct.js';
import { parseListChangedBlocks, parseListSnapshotBlocks, parseStartSnapshot } from '../../src/snapshot/ebs-direct-input.js';
import type { SnapshotStore } from '../../src/snapshot/types.js';
import { MANIFEST_MAX_BYTES } from '../../src/snapshot/manifest-check.js';
import type { EbsDirectError } from '../../src/snapshot/ebs-direct-errors.js';
import { EbsApi } from '../../src/daemon/ebs-api.js';
import { silentLogger } from '../../src/util/logger.js';
import { ACCOUNT, BLOCK, REGION, T0, ebsDirectWorld, putReq, refused, type EbsDirectWorld } from './ebs-direct-world.js';

/**
 * The EBS direct APIs' bounds in memory, size and time: the read APIs over
 * cached completed manifests (src/snapshot/ebs-direct-manifests.ts: paging and
 * lookups answer as the manifest says, a deleted snapshot is not found, the
 * manifest is read from the store once, not per call), the block count a
 * snapshot may reach, and StartSnapshot's Timeout on a timer. Real KMS core,
 * real directory store; the store's getManifest is counted through a proxy of
 * the real object.
 */
const world = ebsDirectWorld('ebsd-ebs-cache-');
let dir = '';
let kms: KmsService;
let root: Caller;
let authz: EbsDirectWorld['authz'];
let store: DirSnapshotStore;
let now = T0;
const xts = selectXtsEngine('auto');

/** The real store, its getManifest calls counted per snapshot id. */
function counted(s: SnapshotStore, o: { shared?: boolean } = {}): { store: SnapshotStore; reads: Map<string, number> } {
  const reads = new Map<string, number>();
  const proxy = new Proxy(s, {
    get(target, key) {
      if (key === 'getManifest') {
        return (id: string) => {
          reads.set(id, (reads.get(id) ?? 0) + 1);
          return target.getManifest(id);
        };
      }
      if (key === 'singleWriter' && o.shared) return undefined;
      const v = Reflect.get(target, key, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { store: proxy, reads };
}

const direct = (s: SnapshotStore, o: { gc?: SnapshotGc; manifestCacheBlocks?: number; maxSnapshotBlocks?: number; sweepSchedule?: Scheduler } = {}): EbsDirect =>
  new EbsDirect({
    store: s, pendingDir: join(dir, 'pending'), keys: new KmsCoreKeyService(kms), xts, accountId: ACCOUNT, region: REGION, now: () => now,
    ...(o.gc ? { pin: (h: Iterable<string>) => o.gc!.pin(h) } : {}),
    ...(o.manifestCacheBlocks !== undefined ? { manifestCacheBlocks: o.manifestCacheBlocks } : {}),
    ...(o.maxSnapshotBlocks !== undefined ? { maxSnapshotBlocks: o.maxSnapshotBlocks } : {}),
    ...(o.sweepSchedule ? { sweepSchedule: o.sweepSchedule } : {}),
  });

/** Timers the test fires: each scheduled call kept with its delay until fired or cancelled. */
function testTimers(): { schedule: Scheduler; live: () => { fn: () => Promise<void>; ms: number }[]; fire: () => Promise<void> } {
  const calls: { fn: () => Promise<void>; ms: number; done: boolean }[] = [];
  const live = () => calls.filter((c) => !c.done);
  return {
    schedule: (fn, ms) => {
      const c = { fn, ms, done: false };
      calls.push(c);
      return { cancel: () => { c.done = true; } };
    },
    live,
    fire: async () => {
      for (const c of live()) {
        c.done = true;
        await c.fn();
      }
    },
  };
}
type Listed = { BlockIndex: number; BlockToken: string };
type Changed = { BlockIndex: number; FirstBlockToken?: string; SecondBlockToken?: string };

/** A completed snapshot with `blocks` (index -> data) written, on `parent` if given. */
async function snapshot(d: EbsDirect, blocks: Map<number, Buffer>, parent?: string): Promise<string> {
  const id = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1, ...(parent ? { ParentSnapshotId: parent } : {}) }), root)).SnapshotId as string;
  for (const [i, b] of blocks) await d.putSnapshotBlock(putReq(id, i, b), root);
  await d.completeSnapshot({ SnapshotId: id, ChangedBlocksCount: blocks.size }, root);
  return id;
}

beforeAll(() => {
  ({ dir, authz, kms, root, store } = world);
});

describe('EbsDirect: cached completed manifests', () => {
  it('N GetSnapshotBlock and listing calls read the manifest from the store once; paging, StartingBlockIndex and lookups answer as the manifest says', async () => {
    now = T0;
    const { store: s, reads } = counted(store);
    const d = direct(s);
    try {
      const data = new Map<number, Buffer>();
      // Sparse, unordered indexes: 250 blocks between 0 and 2047.
      const shared = randomBytes(BLOCK);
      for (let k = 0; k < 250; k++) data.set((k * 797) % 2048, k % 50 === 0 ? randomBytes(BLOCK) : shared);
      const snap = await snapshot(d, data);
      const sorted = [...data.keys()].sort((x, y) => x - y);
      reads.clear();

      // Every page, in order, with NextToken; then StartingBlockIndex between two listed indexes.
      const seen: Listed[] = [];
      let next: string | undefined;
      do {
        const page = await d.listSnapshotBlocks({ SnapshotId: snap, MaxResults: 100, ...(next ? { NextToken: next } : {}) });
        seen.push(...(page.Blocks as Listed[]));
        next = page.NextToken as string | undefined;
      } while (next);
      expect(seen.map((b) => b.BlockIndex)).toEqual(sorted);
      const from = sorted[120]! + 1;
      const tail = await d.listSnapshotBlocks({ SnapshotId: snap, MaxResults: 100, StartingBlockIndex: from });
      expect((tail.Blocks as Listed[]).map((b) => b.BlockIndex)).toEqual(sorted.slice(121, 221));

      // Gets of every block return what was put; an index the snapshot does not list is refused.
      for (const b of seen) {
        const got = await d.getSnapshotBlock({ SnapshotId: snap, BlockIndex: b.BlockIndex, BlockToken: b.BlockToken }, root);
        expect((got.BlockData as Buffer).equals(data.get(b.BlockIndex)!)).toBe(true);
      }
      await refused(d.getSnapshotBlock({ SnapshotId: snap, BlockIndex: sorted[0]! + 1, BlockToken: seen[0]!.BlockToken }, root), 'ValidationException', 'INVALID_BLOCK_TOKEN');
      // MaxResults under 100: "the API will return at least 100 results" (EBS direct APIs FAQ), as the wire parses it.
      for (const MaxResults of [0, 1, 99]) {
        const few = await d.listSnapshotBlocks(parseListSnapshotBlocks({ SnapshotId: snap, MaxResults }));
        expect((few.Blocks as Listed[]).map((b) => b.BlockIndex), `MaxResults ${MaxResults}`).toEqual(sorted.slice(0, 100));
        const fewChanged = await d.listChangedBlocks(parseListChangedBlocks({ SecondSnapshotId: snap, MaxResults }));
        expect((fewChanged.ChangedBlocks as Changed[]).map((b) => b.BlockIndex), `MaxResults ${MaxResults}`).toEqual(sorted.slice(0, 100));
      }
      for (const MaxResults of [-1, 10_001, 1.5]) expect(() => parseListSnapshotBlocks({ SnapshotId: snap, MaxResults }), `MaxResults ${MaxResults}`).toThrow(/MaxResults/);
      const all = await d.listChangedBlocks({ SecondSnapshotId: snap, MaxResults: 10_000 });
      expect((all.ChangedBlocks as Changed[]).map((b) => b.BlockIndex)).toEqual(sorted);

      // 250 gets, 11 listings: one read of the manifest.
      expect(reads.get(snap)).toBe(1);
    } finally {
      await d.close();
    }
  });

  it('ListChangedBlocks pages over a parent and its child name exactly the changed indexes, with the right tokens', async () => {
    now = T0;
    const d = direct(store);
    try {
      const parentData = new Map<number, Buffer>();
      for (let i = 0; i < 300; i++) parentData.set(i * 3, randomBytes(BLOCK));
      const parent = await snapshot(d, parentData);
      // The child rewrites some (one with the same bytes: no change), adds others.
      const childData = new Map<number, Buffer>([[0, parentData.get(0)!], [3, randomBytes(BLOCK)], [4, randomBytes(BLOCK)], [600, randomBytes(BLOCK)], [897, randomBytes(BLOCK)], [2000, randomBytes(BLOCK)]]);
      const child = await snapshot(d, childData, parent);
      const expected = [3, 4, 600, 897, 2000];

      const got: Changed[] = [];
      let next: string | undefined;
      do {
        const page = await d.listChangedBlocks({ FirstSnapshotId: parent, SecondSnapshotId: child, MaxResults: 100, ...(next ? { NextToken: next } : {}) });
        got.push(...(page.ChangedBlocks as Changed[]));
        next = page.NextToken as string | undefined;
      } while (next);
      expect(got.map((b) => b.BlockIndex)).toEqual(expected);
      expect(got.map((b) => [b.FirstBlockToken !== undefined, b.SecondBlockToken !== undefined])).toEqual([[true, true], [false, true], [true, true], [true, true], [false, true]]);
      const b600 = got.find((b) => b.BlockIndex === 600)!;
      expect(((await d.getSnapshotBlock({ SnapshotId: parent, BlockIndex: 600, BlockToken: b600.FirstBlockToken! }, root)).BlockData as Buffer).equals(parentData.get(600)!)).toBe(true);
      expect(((await d.getSnapshotBlock({ SnapshotId: child, BlockIndex: 600, BlockToken: b600.SecondBlockToken! }, root)).BlockData as Buffer).equals(childData.get(600)!)).toBe(true);

      // Paging by MaxResults over the child alone (every block: 300 inherited or rewritten, plus 3 new).
      const alone: number[] = [];
      next = undefined;
      do {
        const page = await d.listChangedBlocks({ SecondSnapshotId: child, MaxResults: 100, ...(next ? { NextToken: next } : {}) });
        expect((page.ChangedBlocks as Changed[]).length).toBeLessThanOrEqual(100);
        alone.push(...(page.ChangedBlocks as Changed[]).map((b) => b.BlockIndex));
        next = page.NextToken as string | undefined;
      } while (next);
      expect(alone).toEqual([...new Set([...parentData.keys(), ...childData.keys()])].sort((x, y) => x - y));
      // StartingBlockIndex skips to the first change at or past it.
      const fromMid = await d.listChangedBlocks({ FirstSnapshotId: parent, SecondSnapshotId: child, StartingBlockIndex: 601 });
      expect((fromMid.ChangedBlocks as Changed[]).map((b) => b.BlockIndex)).toEqual([897, 2000]);
    } finally {
      await d.close();
    }
  });

  it('after DeleteSnapshot (the collector removes the manifest) the cached snapshot is ResourceNotFoundException, its tokens too', async () => {
    now = T0;
    const gc = new SnapshotGc(store, { graceMs: 0 });
    const d = direct(store, { gc });
    const unsubscribe = gc.onManifestDeleted((id) => d.forgetSnapshot(id));
    try {
      const snap = await snapshot(d, new Map([[5, randomBytes(BLOCK)]]));
      const listed = (await d.listSnapshotBlocks({ SnapshotId: snap })).Blocks as Listed[];
      expect((await d.snapshotSummary(snap))?.state).toBe('completed');
      expect((await gc.deleteSnapshot(snap)).deleted).toBe(true);
      await refused(d.getSnapshotBlock({ SnapshotId: snap, BlockIndex: 5, BlockToken: listed[0]!.BlockToken }, root), 'ResourceNotFoundException', 'SNAPSHOT_NOT_FOUND');
      await refused(d.listSnapshotBlocks({ SnapshotId: snap }), 'ResourceNotFoundException', 'SNAPSHOT_NOT_FOUND');
      await refused(d.listChangedBlocks({ SecondSnapshotId: snap }), 'ResourceNotFoundException', 'SNAPSHOT_NOT_FOUND');
      expect(await d.snapshotSummary(snap)).toBeUndefined();
    } finally {
      unsubscribe();
      await d.close();
    }
  });

  it('the cache holds at most its block budget (least recently used out); a store other daemons write is read again after a minute', async () => {
    now = T0;
    const { store: s, reads } = counted(store);
    const d = direct(s, { manifestCacheBlocks: 64 + 3 + 64 + 3 }); // two 3-block manifests and their overhead
    const { store: shared, reads: sharedReads } = counted(store, { shared: true });
    const ds = direct(shared);
    try {
      const ids: string[] = [];
      for (let k = 0; k < 3; k++) ids.push(await snapshot(d, new Map([[0, randomBytes(BLOCK)], [1, randomBytes(BLOCK)], [2, randomBytes(BLOCK)]])));
      reads.clear();
      for (const id of ids) await d.listSnapshotBlocks({ SnapshotId: id });
      for (const id of ids.slice(1)) await d.listSnapshotBlocks({ SnapshotId: id }); // the two last are held
      await d.listSnapshotBlocks({ SnapshotId: ids[0]! }); // the first was evicted: read again
      expect(ids.map((id) => reads.get(id))).toEqual([2, 1, 1]);

      await ds.listSnapshotBlocks({ SnapshotId: ids[0]! });
      now += 59_000;
      await ds.listSnapshotBlocks({ SnapshotId: ids[0]! });
      expect(sharedReads.get(ids[0]!)).toBe(1);
      now += 2_000;
      await ds.listSnapshotBlocks({ SnapshotId: ids[0]! });
      expect(sharedReads.get(ids[0]!)).toBe(2);
    } finally {
      await d.close();
      await ds.close();
    }
  });
});

describe('EbsDirect: lineage of unencrypted snapshots (ListChangedBlocks)', () => {
  it('siblings of one parent and cousins are of one lineage; snapshots with no common ancestor are UNRELATED_SNAPSHOTS', async () => {
    now = T0;
    const { store: s, reads } = counted(store);
    const d = direct(s);
    try {
      const base = randomBytes(BLOCK);
      const parent = await snapshot(d, new Map([[0, base]]));
      const a = await snapshot(d, new Map([[1, randomBytes(BLOCK)]]), parent);
      const b = await snapshot(d, new Map([[2, randomBytes(BLOCK)]]), parent);
      const aChild = await snapshot(d, new Map([[3, randomBytes(BLOCK)]]), a);
      const other = await snapshot(d, new Map([[0, base]]));
      const changed = async (x: string, y: string) => ((await d.listChangedBlocks({ FirstSnapshotId: x, SecondSnapshotId: y })).ChangedBlocks as Changed[]).map((c) => c.BlockIndex);
      expect(await changed(a, b)).toEqual([1, 2]);
      expect(await changed(aChild, b)).toEqual([1, 2, 3]);
      expect(await changed(parent, aChild)).toEqual([1, 3]);
      await refused(d.listChangedBlocks({ FirstSnapshotId: other, SecondSnapshotId: a }), 'ValidationException', 'UNRELATED_SNAPSHOTS');
      // The answer and the parent links are kept: asking again reads no manifest.
      reads.clear();
      expect(await changed(a, b)).toEqual([1, 2]);
      await refused(d.listChangedBlocks({ FirstSnapshotId: other, SecondSnapshotId: a }), 'ValidationException', 'UNRELATED_SNAPSHOTS');
      expect(reads.size).toBe(0);
    } finally {
      await d.close();
    }
  });
});

describe('EbsDirect: blocks per snapshot', () => {
  it('MAX_SNAPSHOT_BLOCKS leaves a manifest of that many blocks at the widest indexes within the store\'s limit', () => {
    const widest = `[${65536 * 2048 - 1},"${'f'.repeat(64)}"],`;
    expect(widest.length * MAX_SNAPSHOT_BLOCKS + 1024 * 1024).toBeLessThanOrEqual(MANIFEST_MAX_BYTES);
  });

  it('the block counts ebs-direct.ts and docs/architecture.md give are the ones the limit makes (836,206 at the widest index, ~858,000 below 10^7)', () => {
    const root = join(import.meta.dirname, '..', '..');
    const narrow = Math.floor((MANIFEST_MAX_BYTES - 1024 * 1024) / `[${10 ** 7 - 1},"${'f'.repeat(64)}"],`.length);
    expect(narrow).toBe(857_925);
    for (const f of ['src/snapshot/ebs-direct.ts', 'docs/architecture.md']) {
      const text = readFileSync(join(root, f), 'utf8');
      expect(text, f).toContain(MAX_SNAPSHOT_BLOCKS.toLocaleString('en-US'));
      expect(text, f).toContain(`~${Math.round(narrow / 1000)},000`);
      expect(text, f).not.toMatch(/858 Ki/);
    }
  });

  it('a put of a new index past the limit (parent blocks + written, in flight included) is ServiceQuotaExceededException 402; rewrites still go, and it completes', async () => {
    now = T0;
    const d = direct(store, { maxSnapshotBlocks: 4 });
    try {
      const parent = await snapshot(d, new Map([[0, randomBytes(BLOCK)], [1, randomBytes(BLOCK)]]));
      const child = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1, ParentSnapshotId: parent }), root)).SnapshotId as string;
      await d.putSnapshotBlock(putReq(child, 0, randomBytes(BLOCK)), root); // held already: 2
      await d.putSnapshotBlock(putReq(child, 5, randomBytes(BLOCK)), root); // 3
      // Two new indexes at once for the one place left: one is refused.
      const two = await Promise.allSettled([d.putSnapshotBlock(putReq(child, 6, randomBytes(BLOCK)), root), d.putSnapshotBlock(putReq(child, 7, randomBytes(BLOCK)), root)]);
      expect(two.map((r) => r.status).sort()).toEqual(['fulfilled', 'rejected']);
      const e = (two.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason as EbsDirectError;
      expect([e.awsName, e.httpStatus, e.reason]).toEqual(['ServiceQuotaExceededException', 402, 'DEPENDENCY_SERVICE_QUOTA_EXCEEDED']);
      expect(e.message).toMatch(/at most 4/);
      await refused(d.putSnapshotBlock(putReq(child, 9, randomBytes(BLOCK)), root), 'ServiceQuotaExceededException');
      const last = randomBytes(BLOCK);
      await d.putSnapshotBlock(putReq(child, 5, last), root); // a rewrite
      expect(await d.completeSnapshot({ SnapshotId: child, ChangedBlocksCount: 3 }, root)).toEqual({ Status: 'completed' });
      expect((await store.getManifest(child))?.blocks.length).toBe(4);
    } finally {
      await d.close();
    }
  });
  it('a child whose completed manifest (the parent\'s blocks, its own description and tags) would pass the store\'s limit is refused at StartSnapshot (ServiceQuotaExceededException 402), nothing written; one that fits completes within it', async () => {
    now = T0;
    const d = direct(store);
    const parent = await snapshot(d, new Map([[0, randomBytes(BLOCK)], [1, randomBytes(BLOCK)], [7, randomBytes(BLOCK)]]));
    await d.close();
    // A limit just above the parent's manifest: room for a child's parentSnapshotId and a longer changedBlocks, not for a long Description.
    const limit = readFileSync(join(dir, 'snapshots', 'manifests', `${parent}.json`)).length + 200;
    const d2 = new EbsDirect({ store, pendingDir: join(dir, 'pending'), keys: new KmsCoreKeyService(kms), xts, accountId: ACCOUNT, region: REGION, now: () => now, maxManifestBytes: limit });
    try {
      const manifests = async (): Promise<string[]> => (await store.listManifests()).map((m) => m.snapshotId).sort();
      const blocks = async (): Promise<number> => {
        let n = 0;
        for await (const _ of store.listBlocks()) n++;
        return n;
      };
      const before = { manifests: await manifests(), blocks: await blocks(), markers: readdirSync(join(dir, 'pending')).sort() };
      const e = (await d2.startSnapshot(parseStartSnapshot({ VolumeSize: 1, ParentSnapshotId: parent, Description: 'd'.repeat(255) }), root)
        .then(() => undefined, (x: unknown) => x)) as EbsDirectError | undefined;
      expect([e?.awsName, e?.httpStatus, e?.reason]).toEqual(['ServiceQuotaExceededException', 402, 'DEPENDENCY_SERVICE_QUOTA_EXCEEDED']);
      expect(e?.message).toMatch(new RegExp(`${parent}.*${limit}-byte limit`));
      expect({ manifests: await manifests(), blocks: await blocks(), markers: readdirSync(join(dir, 'pending')).sort() }).toEqual(before);
      // Tags count as the Description does.
      await refused(d2.startSnapshot(parseStartSnapshot({ VolumeSize: 1, ParentSnapshotId: parent, Tags: [{ Key: 'k', Value: 'v'.repeat(255) }] }), root), 'ServiceQuotaExceededException');

      const child = (await d2.startSnapshot(parseStartSnapshot({ VolumeSize: 1, ParentSnapshotId: parent }), root)).SnapshotId as string;
      await d2.putSnapshotBlock(putReq(child, 1, randomBytes(BLOCK)), root); // a rewrite
      expect(await d2.completeSnapshot({ SnapshotId: child, ChangedBlocksCount: 1 }, root)).toEqual({ Status: 'completed' });
      const size = readFileSync(join(dir, 'snapshots', 'manifests', `${child}.json`)).length;
      expect(size).toBeLessThanOrEqual(limit);
      // Counted exactly, with the widest changedBlocks (16 digits where this child wrote 1): refused one byte short of that.
      const at = async (max: number): Promise<Record<string, unknown>> => {
        const x = new EbsDirect({ store, pendingDir: join(dir, 'pending'), keys: new KmsCoreKeyService(kms), xts, accountId: ACCOUNT, region: REGION, now: () => now, maxManifestBytes: max });
        try {
          const started = await x.startSnapshot(parseStartSnapshot({ VolumeSize: 1, ParentSnapshotId: parent }), root);
          return await x.completeSnapshot({ SnapshotId: started.SnapshotId as string, ChangedBlocksCount: 0 }, root);
        } finally {
          await x.close();
        }
      };
      await refused(at(size + 15 - 1), 'ServiceQuotaExceededException');
      expect(await at(size + 15)).toEqual({ Status: 'completed' });
    } finally {
      await d2.close();
    }
  });
  it('a child of a CreateSnapshot parent holding more than MAX_SNAPSHOT_BLOCKS blocks takes new indexes below its VolumeSize while its manifest fits the store; past that, ServiceQuotaExceededException', async () => {
    now = T0;
    // What CreateSnapshot stores for a 1 TiB plaintext volume with 840,000 written blocks of one content
    // (blocks are content-addressed): a manifest of 61 MiB, within the store's limit, past MAX_SNAPSHOT_BLOCKS.
    const data = randomBytes(BLOCK);
    const hash = createHash('sha256').update(data).digest('hex');
    await store.putBlock(hash, data);
    const n = 840_000;
    expect(n).toBeGreaterThan(MAX_SNAPSHOT_BLOCKS);
    const parent = 'snap-0c0ffee0000000001';
    await store.putManifest({
      formatVersion: 1, snapshotId: parent, volumeId: 'vol-0c0ffee0000000001', volumeSize: 1024, state: 'completed', progress: 100,
      startTime: new Date(T0).toISOString(), completionTime: new Date(T0).toISOString(), description: '', tags: [], ownerId: ACCOUNT,
      encrypted: false, kmsKeyId: '', dataOffset: 4096, blocks: Array.from({ length: n }, (_, i) => [i, hash] as [number, string]), changedBlocks: n,
    });
    const d = new EbsDirect({ store, pendingDir: join(dir, 'pending'), keys: new KmsCoreKeyService(kms), xts, accountId: ACCOUNT, region: REGION, now: () => now, allowUnencrypted: true });
    try {
      // EBS bounds a child's blocks by its VolumeSize (BlockIndex below VolumeSize x 2048); the store's manifest limit is ebsd's.
      const child = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1024, ParentSnapshotId: parent }), root)).SnapshotId as string;
      const written = new Map<number, Buffer>([[n + 10, randomBytes(BLOCK)], [1024 * 2048 - 1, randomBytes(BLOCK)], [5, randomBytes(BLOCK)]]);
      for (const [i, b] of written) await d.putSnapshotBlock(putReq(child, i, b), root);
      expect(await d.completeSnapshot({ SnapshotId: child, ChangedBlocksCount: written.size }, root)).toEqual({ Status: 'completed' });
      const m = (await store.getManifest(child))!;
      expect(m.blocks.length).toBe(n + 2);
      expect(m.blocks.at(-1)![0]).toBe(1024 * 2048 - 1);

      // A child whose manifest would pass the store's limit (here a lower one: room for a few hundred more blocks)
      // is refused at the put, not at CompleteSnapshot; rewrites still go.
      const limit = readFileSync(join(dir, 'snapshots', 'manifests', `${parent}.json`)).length + 20_000;
      const d2 = new EbsDirect({ store, pendingDir: join(dir, 'pending'), keys: new KmsCoreKeyService(kms), xts, accountId: ACCOUNT, region: REGION, now: () => now, allowUnencrypted: true, maxManifestBytes: limit });
      try {
        const full = (await d2.startSnapshot(parseStartSnapshot({ VolumeSize: 1024, ParentSnapshotId: parent }), root)).SnapshotId as string;
        let added = 0;
        let refusal: EbsDirectError | undefined;
        for (let i = n; !refusal; i++) {
          await d2.putSnapshotBlock(putReq(full, i, data), root).then(() => added++, (e: EbsDirectError) => (refusal = e));
        }
        expect([refusal.awsName, refusal.httpStatus, refusal.reason]).toEqual(['ServiceQuotaExceededException', 402, 'DEPENDENCY_SERVICE_QUOTA_EXCEEDED']);
        expect(added).toBeGreaterThan(0);
        await d2.putSnapshotBlock(putReq(full, 0, randomBytes(BLOCK)), root); // a rewrite
        expect(await d2.completeSnapshot({ SnapshotId: full, ChangedBlocksCount: added + 1 }, root)).toEqual({ Status: 'completed' });
        const text = readFileSync(join(dir, 'snapshots', 'manifests', `${full}.json`));
        expect(text.length).toBeLessThanOrEqual(limit);
        expect(added).toBeGreaterThan(100);
      } finally {
        await d2.close();
      }
    } finally {
      await d.close();
    }
  }, 120_000);
});

describe('EbsDirect: StartSnapshot Timeout on a timer', () => {
  it('an abandoned snapshot becomes error at its deadline with no other EBS call; a put moves the timer on; close stops it', async () => {
    now = T0;
    const timers = testTimers();
    const d = direct(store, { sweepSchedule: timers.schedule });
    try {
      const idle = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1, Timeout: 10 }), root)).SnapshotId as string;
      const busy = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1, Timeout: 10 }), root)).SnapshotId as string;
      // One timer, at the earliest deadline.
      expect(timers.live().map((c) => c.ms)).toEqual([10 * 60_000]);
      now = T0 + 5 * 60_000;
      await d.putSnapshotBlock(putReq(busy, 0, randomBytes(BLOCK)), root); // busy's deadline: T0 + 15 min
      now = T0 + 10 * 60_000;
      await timers.fire();
      expect((await store.getManifest(idle))?.state).toBe('error');
      expect(d.pendingManifest(idle)).toBeUndefined();
      expect(d.pendingManifest(busy)).toBeDefined();
      // Re-armed for busy's deadline.
      expect(timers.live().map((c) => c.ms)).toEqual([5 * 60_000]);
      now = T0 + 15 * 60_000;
      await timers.fire();
      expect((await store.getManifest(busy))).toMatchObject({ state: 'error', stateMessage: expect.stringMatching(/Timeout/) });
      expect(timers.live()).toHaveLength(0); // nothing pending: no timer

      await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1, Timeout: 10 }), root);
      expect(timers.live()).toHaveLength(1);
    } finally {
      await d.close();
    }
    expect(timers.live()).toHaveLength(0);
  });
});

describe('EbsApi: the snapshot\'s tags for authorization', () => {
  it('a snapshot whose manifest cannot be read is refused as a snapshot in error (ValidationException INVALID_SNAPSHOT_ID), never authorized without its tags; a missing snapshot is judged on its id', async () => {
    now = T0;
    const d = direct(store);
    const api = new EbsApi({ direct: d, evaluator: authz.authorizer.evaluator, accountId: ACCOUNT, region: REGION, audit: kms.audit, manifest: (id) => d.snapshotSummary(id), log: silentLogger });
    try {
      const bad = 'snap-0badbadbadbadbad0';
      writeFileSync(join(dir, 'snapshots', 'manifests', `${bad}.json`), '{"formatVersion":1,');
      const e = (await api.call('ListSnapshotBlocks', { SnapshotId: bad }, root, { requestId: 'r1' }).then(() => undefined, (x: unknown) => x)) as EbsDirectError;
      // Its manifest is not trusted (nothing in it is read, its tags neither): the snapshot is in state error (docs/architecture.md §13).
      expect(e.awsName, e.message).toBe('ValidationException');
      expect(e.reason).toBe('INVALID_SNAPSHOT_ID');
      expect(e.message).toMatch(/snap-0badbadbadbadbad0 is in state error and cannot be used: The snapshot's manifest cannot be read/);
      await refused(api.call('ListSnapshotBlocks', { SnapshotId: 'snap-0000000000000000a' }, root, { requestId: 'r2' }), 'ResourceNotFoundException');
    } finally {
      await api.close();
    }
  });
});
