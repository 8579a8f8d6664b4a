/**
 * The directory store's pack files (src/snapshot/pack-store.ts,
 * docs/architecture.md §13.4): a block batch lands in one pack made visible
 * by its index; blocks of several snapshots in several packs; a pack is
 * removed only when none of its blocks is referenced; a changed byte in a
 * pack is SNAPSHOT_CORRUPT naming the pack; block files of the older layout
 * stay readable beside packs; a crash between the pack and its index, or
 * between the index and the manifest, loses nothing a manifest names and
 * leaves only what a sweep frees.
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readSync, rmSync, writeSync, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, test, vi } from 'vitest';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { SnapshotGc } from '../../src/snapshot/gc.js';
import { SnapshotError } from '../../src/snapshot/errors.js';
import { manifestHashes } from '../../src/snapshot/manifest-check.js';
import { ensureBuilt } from '../e2e/helpers.js';
import { block, code, manifest, snapId } from './store-suite.js';

const dirs: string[] = [];
const tmp = (): string => {
  const d = mkdtempSync(join(process.env.TMPDIR ?? '/tmp', 'ebsd-pack-'));
  dirs.push(d);
  return d;
};
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const packFiles = (root: string): string[] => readdirSync(join(root, 'packs')).filter((n) => /^[0-9a-f]{16}\.(pack|idx)$/.test(n)).sort();
async function listed(store: DirSnapshotStore): Promise<string[]> {
  const out: string[] = [];
  for await (const h of store.listBlocks()) out.push(h);
  return out.sort();
}
/** A snapshot whose new blocks go through one batch (as CreateSnapshot stores them), naming `inherit` too. */
async function batchSnapshot(store: DirSnapshotStore, fresh: { hash: string; data: Buffer }[], inherit: string[] = []): Promise<string> {
  const b = store.openBlockBatch();
  await Promise.all(fresh.map((x) => b.put(x.hash, x.data)));
  await b.commit();
  const id = snapId();
  const names = [...inherit, ...fresh.map((x) => x.hash)];
  await store.putManifest(manifest(id, names.map((h, i) => [i, h])));
  return id;
}

describe('DirSnapshotStore pack files', () => {
  test('a batch is one pack, invisible until commit; blocks of several snapshots read back from their packs, also after reopening', async () => {
    const root = join(tmp(), 'snapshots');
    const store = await DirSnapshotStore.open(root);
    const a = Array.from({ length: 5 }, () => block());
    const batch = store.openBlockBatch();
    for (const x of a) await batch.put(x.hash, x.data);
    expect(await store.hasBlock(a[0]!.hash)).toBe(false);
    expect(store.hasBlockInMemory(a[0]!.hash), 'not before commit').toBe(false);
    expect(await listed(store)).toEqual([]);
    await batch.commit();
    expect(store.hasBlockInMemory(a[0]!.hash), 'a committed pack block is known without I/O').toBe(true);
    expect(store.hasBlockInMemory(block(64).hash)).toBe(false);
    await store.putManifest(manifest(snapId(), a.map((x, i) => [i, x.hash])));
    const b = Array.from({ length: 3 }, () => block());
    await batchSnapshot(store, b, [a[0]!.hash]);
    // Two packs, each with its index; no block files.
    expect(packFiles(root)).toHaveLength(4);
    expect(readdirSync(join(root, 'blocks'))).toEqual([]);
    expect(await listed(store)).toEqual([...a, ...b].map((x) => x.hash).sort());
    const reopened = await DirSnapshotStore.open(root, { removeTemps: true });
    for (const x of [...a, ...b]) {
      expect(await reopened.hasBlock(x.hash)).toBe(true);
      expect(reopened.hasBlockInMemory(x.hash)).toBe(true);
      expect((await reopened.getBlock(x.hash)).equals(x.data)).toBe(true);
    }
    expect(await reopened.blockModifiedMs(a[0]!.hash)).toBeGreaterThan(0);
    expect(await reopened.touchBlock(b[0]!.hash)).toBe(true);
    expect(await reopened.touchBlock(block(64).hash)).toBe(false);
  });

  test('delete frees a pack only when none of its blocks is referenced; a freed block of a live pack stays freed after reopening', async () => {
    const root = join(tmp(), 'snapshots');
    const store = await DirSnapshotStore.open(root);
    const gc = new SnapshotGc(store, { graceMs: 0 });
    const a = Array.from({ length: 4 }, () => block());
    const b = Array.from({ length: 2 }, () => block());
    const s1 = await batchSnapshot(store, a);
    const s2 = await batchSnapshot(store, b, [a[0]!.hash]); // inherits one block of s1's pack
    const [pack1, pack2] = [packFiles(root).slice(0, 2), packFiles(root).slice(2)];
    expect(packFiles(root)).toHaveLength(4);
    // s1 goes: its pack holds a block s2 names, so it stays, with 3 of its 4 blocks freed.
    expect(await (await gc.deleteSnapshot(s1)).collected).toMatchObject({ deleted: 3 });
    expect(packFiles(root)).toHaveLength(4);
    const left = [a[0]!, ...b].map((x) => x.hash).sort();
    expect(await listed(store)).toEqual(left);
    expect(await listed(await DirSnapshotStore.open(root))).toEqual(left);
    expect(await code(store.getBlock(a[1]!.hash))).toBe('SNAPSHOT_BLOCK_NOT_FOUND');
    expect((await store.getBlock(a[0]!.hash)).equals(a[0]!.data)).toBe(true);
    // s2 goes: nothing is referenced, both packs and their indexes are removed.
    expect(await (await gc.deleteSnapshot(s2)).collected).toMatchObject({ deleted: 3 });
    expect(packFiles(root)).toEqual([]);
    expect(await listed(store)).toEqual([]);
    expect([...pack1, ...pack2].some((n) => existsSync(join(root, 'packs', n)))).toBe(false);
  });

  test('a getBlock miss while a pack\'s last block is freed does not bring the freed block back from the index being removed', async () => {
    const root = join(tmp(), 'snapshots');
    const store = await DirSnapshotStore.open(root);
    const a = block();
    const batch = store.openBlockBatch();
    await batch.put(a.hash, a.data);
    await batch.commit();
    expect(packFiles(root)).toHaveLength(2);
    // An fs hook holds the removal between dropping the pack from memory and deleting its index.
    let reached!: () => void;
    const atIndexRm = new Promise<void>((r) => (reached = r));
    let release!: () => void;
    const go = new Promise<void>((r) => (release = r));
    const realRm = fsp.rm.bind(fsp);
    const hook = vi.spyOn(fsp, 'rm').mockImplementation(async (path, opts) => {
      if (String(path).endsWith('.idx')) {
        reached();
        await go;
      }
      return realRm(path, opts);
    });
    let freeing: Promise<void> | undefined;
    try {
      freeing = store.deleteBlocks([a.hash]);
      await atIndexRm;
      expect(store.hasBlockInMemory(a.hash)).toBe(false);
      // A miss on some other block: getBlock refreshes from the directory, where the index still is.
      expect(await code(store.getBlock(block(4096).hash))).toBe('SNAPSHOT_BLOCK_NOT_FOUND');
      expect(store.hasBlockInMemory(a.hash), 'freed block reloaded from the index being removed').toBe(false);
      release();
      await freeing;
    } finally {
      release();
      await freeing?.catch(() => {});
      hook.mockRestore();
    }
    expect(packFiles(root)).toEqual([]);
    expect(store.hasBlockInMemory(a.hash)).toBe(false);
    expect(await store.hasBlock(a.hash)).toBe(false);
    expect(await code(store.getBlock(a.hash))).toBe('SNAPSHOT_BLOCK_NOT_FOUND');
    expect(await listed(store)).toEqual([]);
  });

  test('a changed byte in a pack is SNAPSHOT_CORRUPT naming the pack and offset; the other blocks of the pack still read', async () => {
    const root = join(tmp(), 'snapshots');
    const store = await DirSnapshotStore.open(root);
    const a = Array.from({ length: 3 }, () => block());
    await batchSnapshot(store, a);
    const pack = join(root, 'packs', packFiles(root).find((n) => n.endsWith('.pack'))!);
    // Which block sits at offset 0 depends on the puts' order: flip a byte in the middle of the second 512 KiB.
    const fd = openSync(pack, 'r+');
    try {
      const one = Buffer.alloc(1);
      const at = 512 * 1024 + 1000;
      readSync(fd, one, 0, 1, at);
      one[0] ^= 0x01;
      writeSync(fd, one, 0, 1, at);
    } finally {
      closeSync(fd);
    }
    const results = await Promise.all(a.map((x) => store.getBlock(x.hash).then((d) => d.equals(x.data), (e: unknown) => e)));
    const failed = results.filter((r) => r !== true);
    expect(failed).toHaveLength(1);
    const err = failed[0] as SnapshotError;
    expect(err).toBeInstanceOf(SnapshotError);
    expect(err.code).toBe('SNAPSHOT_CORRUPT');
    expect(err.message).toContain(pack);
    expect(err.message).toContain('offset 524288');
  });

  test('block files of the one-file-per-block layout read beside packs; a block in both reads from either, and a damaged pack copy falls back to the file', async () => {
    const root = join(tmp(), 'snapshots');
    const store = await DirSnapshotStore.open(root);
    const old = block();
    await store.putBlock(old.hash, old.data); // the older layout: blocks/<2 hex>/<hash>
    expect(existsSync(join(root, 'blocks', old.hash.slice(0, 2), old.hash))).toBe(true);
    const both = block();
    await batchSnapshot(store, [both]);
    await store.putBlock(both.hash, both.data);
    const reopened = await DirSnapshotStore.open(root, { removeTemps: true });
    expect(await listed(reopened)).toEqual([old.hash, both.hash].sort());
    expect((await reopened.getBlock(old.hash)).equals(old.data)).toBe(true);
    const pack = join(root, 'packs', packFiles(root).find((n) => n.endsWith('.pack'))!);
    const fd = openSync(pack, 'r+');
    try {
      writeSync(fd, Buffer.from([0xff, 0xfe]), 0, 2, 10);
    } finally {
      closeSync(fd);
    }
    expect((await reopened.getBlock(both.hash)).equals(both.data)).toBe(true);
  });
});

describe('DirSnapshotStore pack files after a crash', () => {
  beforeAll(() => ensureBuilt());

  const runChild = (root: string, n: number, id: string, fault: string): Promise<{ signal: NodeJS.Signals | null; out: string }> =>
    new Promise((res, rej) => {
      const p = spawn(process.execPath, [join(import.meta.dirname, 'pack-child.mjs'), root, String(n), id], { env: { ...process.env, EBSD_TEST_FAULT: fault }, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      p.stdout.on('data', (c) => (out += c));
      p.stderr.on('data', (c) => (out += c));
      p.on('error', rej);
      // 'close', not 'exit': 'exit' may come before the last of its output (hashes, "committed") is read from the pipes.
      p.on('close', (_code, signal) => res({ signal, out }));
    });

  for (const [fault, what] of [
    ['snapshot-store.after-pack-sync', 'between the pack\'s fdatasync and its index: the pack is never read, and removed at the next open'],
    ['pack-child.after-commit', 'between the index and the manifest: the pack is an orphan, and a sweep removes it'],
  ] as const) {
    test(`killed ${what}; the earlier snapshot's blocks all read`, async () => {
      const root = join(tmp(), 'snapshots');
      const store = await DirSnapshotStore.open(root);
      const kept = Array.from({ length: 3 }, () => block());
      const s1 = await batchSnapshot(store, kept);
      const before = packFiles(root);
      const id = snapId();
      const r = await runChild(root, 6, id, fault);
      expect(r.signal, r.out).toBe('SIGKILL');
      expect(r.out).not.toContain('done');
      const written = r.out.split('\n').filter((l) => /^[0-9a-f]{64}$/.test(l));
      expect(written).toHaveLength(6);
      // What the daemon does at start under its state-dir lock.
      const after = await DirSnapshotStore.open(root, { removeTemps: true });
      expect(await after.getManifest(id)).toBeUndefined();
      const orphanPacks = packFiles(root).filter((n) => !before.includes(n));
      if (fault === 'snapshot-store.after-pack-sync') {
        expect(r.out).not.toContain('committed');
        expect(orphanPacks).toEqual([]);
        for (const h of written) expect(await after.hasBlock(h)).toBe(false);
      } else {
        expect(r.out).toContain('committed');
        expect(orphanPacks).toHaveLength(2);
        for (const h of written) expect(await after.hasBlock(h)).toBe(true);
        expect((await new SnapshotGc(after, { graceMs: 0 }).sweep()).deleted).toBe(6);
        expect(packFiles(root)).toEqual(before);
      }
      const named = manifestHashes((await after.getManifest(s1))!);
      expect(await listed(after)).toEqual([...named].sort());
      for (const x of kept) expect((await after.getBlock(x.hash)).equals(x.data)).toBe(true);
    });
  }
});
