/**
 * The SnapshotStore conformance suite, written once and run against every
 * store (test/snapshot/store.test.ts: the directory store and the S3 store
 * on a local S3 server). It pins what src/snapshot/types.ts promises: whole
 * objects or none, absent is not an error where it says so, typed errors,
 * and bytes that do not hash to their name never handed out.
 */
import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, test } from 'vitest';
import { SnapshotError } from '../../src/snapshot/errors.js';
import type { CollectableStore } from '../../src/snapshot/gc.js';
import { SNAPSHOT_BLOCK_BYTES, type SnapshotManifest } from '../../src/snapshot/types.js';

export interface StoreUnderTest {
  store: CollectableStore;
  /** Replaces a stored block's bytes behind the store's back (bit rot, a bad disk, another writer). */
  corruptBlock(hash: string, bytes: Buffer): Promise<void>;
  /** Stores raw text as the manifest of `id`, behind the store's back. */
  writeRawManifest(id: string, text: string): Promise<void>;
  close(): Promise<void>;
}

export const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

export function block(bytes = SNAPSHOT_BLOCK_BYTES): { data: Buffer; hash: string } {
  const data = randomBytes(bytes);
  return { data, hash: sha256(data) };
}

let snapCounter = 0;
export function snapId(): string {
  return `snap-${(0x10000000000000000n + BigInt(Date.now()) * 4096n + BigInt(snapCounter++)).toString(16).slice(-17)}`;
}

export function manifest(id: string, blocks: [number, string][], over: Partial<SnapshotManifest> = {}): SnapshotManifest {
  return {
    formatVersion: 1, snapshotId: id, volumeId: 'vol-0123456789abcdef0', volumeSize: 1, state: 'completed', progress: 100,
    startTime: '2026-11-30T09:00:00.000Z', description: '', tags: [], ownerId: '123456789012', encrypted: true,
    kmsKeyId: 'arn:aws:kms:us-east-1:123456789012:key/00000000-0000-4000-8000-000000000000', dataOffset: 16 * 1024 * 1024,
    blocks, ...over,
  };
}

/** The SnapshotError code a promise rejects with, or 'resolved'. */
export async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(SnapshotError);
    return (e as SnapshotError).code;
  }
  return 'resolved';
}

export function runSnapshotStoreSuite(name: string, open: () => Promise<StoreUnderTest>): void {
  describe(`SnapshotStore conformance: ${name}`, () => {
    const withStore = (title: string, fn: (t: StoreUnderTest) => Promise<void>): void => {
      test(title, async () => {
        const t = await open();
        try {
          await fn(t);
        } finally {
          await t.close();
        }
      });
    };

    withStore('a 512 KiB block reads back byte for byte; an absent one is SNAPSHOT_BLOCK_NOT_FOUND', async ({ store }) => {
      const b = block();
      expect(await store.hasBlock(b.hash)).toBe(false);
      expect(await code(store.getBlock(b.hash))).toBe('SNAPSHOT_BLOCK_NOT_FOUND');
      await store.putBlock(b.hash, b.data);
      expect(await store.hasBlock(b.hash)).toBe(true);
      expect((await store.getBlock(b.hash)).equals(b.data)).toBe(true);
      expect(await store.blockModifiedMs(b.hash)).toBeTypeOf('number');
      expect(await store.blockModifiedMs(block(16).hash)).toBeUndefined();
    });

    withStore('putting a present block again keeps one copy and does not make it older', async ({ store }) => {
      const b = block(4096);
      await store.putBlock(b.hash, b.data);
      const first = (await store.blockModifiedMs(b.hash))!;
      await store.putBlock(b.hash, b.data);
      expect(await store.blockModifiedMs(b.hash)).toBeGreaterThanOrEqual(first);
      const listed: string[] = [];
      for await (const h of store.listBlocks()) listed.push(h);
      expect(listed).toEqual([b.hash]);
    });

    withStore('touchBlock: true and the bytes unchanged for a present block, no older than before; false for an absent one', async ({ store }) => {
      const b = block(4096);
      expect(await store.touchBlock!(b.hash)).toBe(false);
      expect(await store.hasBlock(b.hash)).toBe(false);
      await store.putBlock(b.hash, b.data);
      const first = (await store.blockModifiedMs(b.hash))!;
      expect(await store.touchBlock!(b.hash)).toBe(true);
      expect(await store.blockModifiedMs(b.hash)).toBeGreaterThanOrEqual(first);
      expect((await store.getBlock(b.hash)).equals(b.data)).toBe(true);
    });

    withStore('every block is listed once, across list pages, with its age', async ({ store }) => {
      const blocks = Array.from({ length: 7 }, () => block(1024));
      await Promise.all(blocks.map((b) => store.putBlock(b.hash, b.data)));
      const listed: string[] = [];
      for await (const b of store.listBlocksWithAge()) {
        expect(Number.isFinite(b.modifiedMs)).toBe(true);
        listed.push(b.hash);
      }
      expect(listed.sort()).toEqual(blocks.map((b) => b.hash).sort());
    });

    withStore('deleting a block removes it; deleting an absent one is not an error', async ({ store }) => {
      const b = block(2048);
      await store.putBlock(b.hash, b.data);
      await store.deleteBlock(b.hash);
      await store.deleteBlock(b.hash);
      expect(await store.hasBlock(b.hash)).toBe(false);
      const listed: string[] = [];
      for await (const h of store.listBlocks()) listed.push(h);
      expect(listed).toEqual([]);
    });

    withStore('a block whose stored bytes changed is SNAPSHOT_CORRUPT, never returned', async (t) => {
      const b = block();
      await t.store.putBlock(b.hash, b.data);
      const bad = Buffer.from(b.data);
      bad[12345] ^= 1;
      await t.corruptBlock(b.hash, bad);
      expect(await code(t.store.getBlock(b.hash))).toBe('SNAPSHOT_CORRUPT');
      await t.corruptBlock(b.hash, b.data.subarray(0, 1000));
      expect(await code(t.store.getBlock(b.hash))).toBe('SNAPSHOT_CORRUPT');
    });

    withStore('manifests: put, get, replace, list in id order, delete; absent is undefined', async ({ store }) => {
      const [a, b] = [snapId(), snapId()].sort() as [string, string];
      expect(await store.getManifest(a)).toBeUndefined();
      const h = block(64).hash;
      await store.putManifest(manifest(b, [[0, h]]));
      await store.putManifest(manifest(a, [], { state: 'pending', progress: 0 }));
      expect(await store.getManifest(b)).toEqual(manifest(b, [[0, h]]));
      await store.putManifest(manifest(a, [[3, h]], { state: 'completed' }));
      expect((await store.getManifest(a))!.blocks).toEqual([[3, h]]);
      expect((await store.listManifests()).map((m) => m.snapshotId)).toEqual([a, b]);
      expect((await store.listManifestIds()).sort()).toEqual([a, b]);
      expect((await store.listManifestSummaries()).map((m) => [m.snapshotId, 'blocks' in m])).toEqual([[a, false], [b, false]]);
      await store.deleteManifest(a);
      await store.deleteManifest(a);
      expect(await store.getManifest(a)).toBeUndefined();
      expect((await store.listManifests()).map((m) => m.snapshotId)).toEqual([b]);
    });

    withStore('a manifest that is not JSON, names another id or has malformed blocks is SNAPSHOT_CORRUPT, in get and list', async (t) => {
      const id = snapId();
      for (const text of ['{"formatVersion":1,', JSON.stringify(manifest(snapId(), [])), JSON.stringify(manifest(id, [[1, 'x'] as never])),
        JSON.stringify(manifest(id, [[2, sha256(Buffer.from('a'))], [1, sha256(Buffer.from('b'))]]))]) {
        await t.writeRawManifest(id, text);
        expect(await code(t.store.getManifest(id))).toBe('SNAPSHOT_CORRUPT');
        expect(await code(t.store.listManifests())).toBe('SNAPSHOT_CORRUPT');
      }
    });

    withStore('malformed names are refused before the store is touched', async ({ store }) => {
      expect(await code(store.getBlock('../../etc/passwd'))).toBe('SNAPSHOT_INVALID_PARAMETER');
      expect(await code(store.putBlock('ABC', Buffer.alloc(1)))).toBe('SNAPSHOT_INVALID_PARAMETER');
      expect(await code(store.getManifest('snap-../x'))).toBe('SNAPSHOT_INVALID_PARAMETER');
      expect(await code(store.putManifest(manifest('snap-1', [])))).toBe('SNAPSHOT_INVALID_PARAMETER');
    });

    withStore('readers see a manifest whole, old or new, while it is replaced; a block being put is absent or whole', async ({ store }) => {
      const id = snapId();
      // Large enough (~150 KB) that a torn write would show.
      const many = (tag: string): [number, string][] => Array.from({ length: 2000 }, (_, i) => [i, sha256(Buffer.from(`${tag}${i}`))]);
      const versions = [manifest(id, many('a'), { description: 'a' }), manifest(id, many('b'), { description: 'b' })];
      await store.putManifest(versions[0]!);
      const b = block();
      let writing = true;
      const writer = (async () => {
        for (let i = 0; i < 6; i++) await store.putManifest(versions[i % 2]!);
        writing = false;
      })();
      const putting = store.putBlock(b.hash, b.data);
      let reads = 0;
      while (writing || reads < 5) {
        const m = (await store.getManifest(id))!;
        expect(m).toEqual(versions[m.description === 'a' ? 0 : 1]);
        try {
          expect((await store.getBlock(b.hash)).equals(b.data)).toBe(true);
        } catch (e) {
          expect((e as SnapshotError).code).toBe('SNAPSHOT_BLOCK_NOT_FOUND');
        }
        reads++;
      }
      await writer;
      await putting;
      expect((await store.getBlock(b.hash)).equals(b.data)).toBe(true);
    });
  });
}
