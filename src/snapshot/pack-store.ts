import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { atomicWrite, fsyncDir, removeAtomicWriteTemps } from '../util/atomic-write.js';
import { faultPoint } from '../util/fault-point.js';
import { sha256HexOffLoop } from '../util/sha256.js';
import { SnapshotError } from './errors.js';
import { checkBlockHash, isBlockHash } from './manifest-check.js';
import type { BlockBatch, BlockHash } from './types.js';

/**
 * Pack files of the directory store (docs/architecture.md §13.4): a block
 * batch (one snapshot's new blocks) appended to one file, `packs/<id>.pack`,
 * and made visible by its index, `packs/<id>.idx`, written atomically after
 * the pack's bytes are durable. A pack without its index is an interrupted
 * batch and is never read; a block in a pack is trusted only once its bytes
 * hash to its name, as a block file is.
 *
 * Which blocks are live is kept in memory: freeing a block of a pack that
 * still holds others forgets it here only (its bytes stay on disk), and the
 * pack and its index go when its last block is freed. A restart forgets the
 * forgetting: such a block is listed again, unreferenced, and the next sweep
 * frees it again. That is a lost delete, which the collector already allows
 * (docs/architecture.md §13.3).
 */

/** Index file format: JSON, `formatVersion` 1, `blocks` as [hash, offset, length] in pack order. */
interface PackIndexFile {
  formatVersion: 1;
  blocks: [BlockHash, number, number][];
}

interface Pack {
  id: string;
  /** The index's mtime: the age of every block in the pack (touchBlock renews it). */
  modifiedMs: number;
  entries: Map<BlockHash, { offset: number; length: number }>;
  /** Blocks not freed. */
  live: Set<BlockHash>;
  /** Frees counted, and the count the index on disk reflects (its rewrites are coalesced). */
  version: number;
  written: number;
  writing?: Promise<void>;
}

/** Where a block lives inside a pack. */
export interface PackedBlock {
  packId: string;
  path: string;
  offset: number;
  length: number;
}

const PACK_ID = /^[0-9a-f]{16}$/;
/** A batch's pack is fdatasync'd in the background each time this much more was written. */
const EARLY_SYNC_BYTES = 64 * 1024 * 1024;
/** Hashing a block this size or larger goes to libuv's pool; smaller ones are cheaper on the loop. */
const OFF_LOOP_BYTES = 64 * 1024;

export async function sha256Hex(data: Uint8Array): Promise<string> {
  return data.length >= OFF_LOOP_BYTES ? sha256HexOffLoop(data) : createHash('sha256').update(data).digest('hex');
}

export class PackSet {
  private readonly packs = new Map<string, Pack>();
  /** hash -> the packs holding it live (usually one). */
  private readonly where = new Map<BlockHash, Set<string>>();
  /**
   * Packs remove() has dropped from memory and is deleting: load() leaves
   * them out until their files are gone, or a refresh() in between (a
   * getBlock miss) would read the index still on disk and bring the freed
   * blocks back into memory after their files went.
   */
  private readonly removing = new Set<string>();
  /** Index reads under way, per pack id: one at a time, and remove() waits for them before it deletes the files. */
  private readonly loading = new Map<string, Promise<void>>();

  private constructor(readonly dir: string) {}

  /**
   * Reads every index in `dir`. With `removeTemps` (only while nothing else
   * writes to the store, as under the daemon's state-dir lock), also removes
   * what interrupted batches left: index temps, and packs without an index.
   */
  static async open(dir: string, opts: { removeTemps?: boolean } = {}): Promise<PackSet> {
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    const s = new PackSet(dir);
    if (opts.removeTemps) await removeAtomicWriteTemps(dir);
    const names = new Set(await fsp.readdir(dir));
    for (const name of [...names].sort()) {
      const id = name.endsWith('.pack') ? name.slice(0, -5) : '';
      if (!PACK_ID.test(id)) continue;
      if (!names.has(`${id}.idx`)) {
        if (opts.removeTemps) await fsp.rm(join(dir, name), { force: true });
        continue;
      }
      await s.load(id);
    }
    return s;
  }

  /** Picks up packs another store instance on the same directory committed since open (readers in tests, tools). */
  async refresh(): Promise<void> {
    for (const name of await fsp.readdir(this.dir)) {
      const id = name.endsWith('.idx') ? name.slice(0, -4) : '';
      if (PACK_ID.test(id) && !this.packs.has(id)) await this.load(id);
    }
  }

  private packPath(id: string): string {
    return join(this.dir, `${id}.pack`);
  }

  private indexPath(id: string): string {
    return join(this.dir, `${id}.idx`);
  }

  /** Reads the pack's index into memory, unless remove() is deleting it; concurrent loads of one pack share the read. */
  private load(id: string): Promise<void> {
    if (this.removing.has(id)) return Promise.resolve();
    let l = this.loading.get(id);
    if (!l) {
      l = this.readIndex(id).finally(() => this.loading.delete(id));
      this.loading.set(id, l);
    }
    return l;
  }

  /** An index that cannot be read leaves its pack unread, and in place (its blocks read as missing, never as wrong bytes). */
  private async readIndex(id: string): Promise<void> {
    let text: string;
    let modifiedMs: number;
    let packBytes: number;
    try {
      const st = await fsp.stat(this.indexPath(id));
      modifiedMs = st.mtimeMs;
      packBytes = (await fsp.stat(this.packPath(id))).size;
      text = await fsp.readFile(this.indexPath(id), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return; // removed meanwhile
      throw e;
    }
    let idx: PackIndexFile;
    try {
      idx = JSON.parse(text) as PackIndexFile;
    } catch {
      return;
    }
    if (idx?.formatVersion !== 1 || !Array.isArray(idx.blocks)) return;
    const entries = new Map<BlockHash, { offset: number; length: number }>();
    for (const b of idx.blocks) {
      if (!Array.isArray(b) || !isBlockHash(b[0]) || !Number.isSafeInteger(b[1]) || !Number.isSafeInteger(b[2]) || b[1] < 0 || b[2] < 0 || b[1] + b[2] > packBytes) continue;
      entries.set(b[0], { offset: b[1], length: b[2] });
    }
    // Read before remove() began, or known already (a commit of this instance): not added again.
    if (this.removing.has(id) || this.packs.has(id)) return;
    this.add({ id, modifiedMs, entries, live: new Set(entries.keys()), version: 0, written: 0 });
  }

  private add(p: Pack): void {
    this.packs.set(p.id, p);
    for (const h of p.live) (this.where.get(h) ?? this.where.set(h, new Set()).get(h)!).add(p.id);
  }

  /** The block's place in the newest pack holding it, if any. */
  locate(hash: BlockHash): PackedBlock | undefined {
    const ids = this.where.get(hash);
    if (!ids) return undefined;
    let best: Pack | undefined;
    for (const id of ids) {
      const p = this.packs.get(id)!;
      if (!best || p.modifiedMs > best.modifiedMs) best = p;
    }
    if (!best) return undefined;
    const e = best.entries.get(hash)!;
    return { packId: best.id, path: this.packPath(best.id), offset: e.offset, length: e.length };
  }

  has(hash: BlockHash): boolean {
    return this.where.has(hash);
  }

  /** The pack's bytes for `hash`, checked against it; undefined when no pack holds it (or its pack is gone). */
  async read(hash: BlockHash): Promise<Buffer | undefined> {
    const at = this.locate(hash);
    if (!at) return undefined;
    let fh: FileHandle;
    try {
      fh = await fsp.open(at.path, 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      this.drop(at.packId); // another instance freed it
      return this.read(hash);
    }
    const data = Buffer.allocUnsafeSlow(at.length);
    try {
      let done = 0;
      while (done < at.length) {
        const { bytesRead } = await fh.read(data, done, at.length - done, at.offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      if (done < at.length) throw new SnapshotError('SNAPSHOT_CORRUPT', `block ${hash} in pack ${at.path} at offset ${at.offset}: ${done} of ${at.length} bytes readable (the pack is truncated)`);
    } finally {
      await fh.close();
    }
    const got = await sha256Hex(data);
    if (got !== hash) {
      throw new SnapshotError('SNAPSHOT_CORRUPT', `block ${hash} in pack ${at.path} at offset ${at.offset} (${at.length} bytes) reads back hashing to ${got}`);
    }
    return data;
  }

  /** Makes the pack holding `hash` young (its index's mtime); false when no pack holds it. */
  async touch(hash: BlockHash): Promise<boolean> {
    const ids = this.where.get(hash);
    if (!ids) return false;
    for (const id of [...ids]) {
      const now = new Date();
      try {
        await fsp.utimes(this.indexPath(id), now, now);
        const p = this.packs.get(id);
        if (p) p.modifiedMs = now.getTime();
        return true;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        this.drop(id);
      }
    }
    return false;
  }

  modifiedMs(hash: BlockHash): number | undefined {
    const ids = this.where.get(hash);
    if (!ids) return undefined;
    return Math.max(...[...ids].map((id) => this.packs.get(id)!.modifiedMs));
  }

  /** Every live packed block with its pack's age. */
  *list(): Iterable<{ hash: BlockHash; modifiedMs: number }> {
    for (const [hash] of [...this.where].sort((a, b) => (a[0] < b[0] ? -1 : 1))) yield { hash, modifiedMs: this.modifiedMs(hash)! };
  }

  /**
   * Frees the blocks in every pack holding them. A pack left with no live
   * block is removed, its index first and durably, so a crash never leaves an
   * index naming bytes that are gone; a pack still holding live blocks gets
   * its index rewritten without the freed ones (atomically; one rewrite per
   * pack per call, and concurrent calls share rewrites). Its bytes stay:
   * docs/architecture.md §13.4 says what that costs.
   */
  async free(hashes: Iterable<BlockHash>): Promise<void> {
    const touched = new Set<Pack>();
    for (const hash of hashes) {
      const ids = this.where.get(hash);
      if (!ids) continue;
      this.where.delete(hash);
      for (const id of ids) {
        const p = this.packs.get(id);
        if (!p) continue;
        p.live.delete(hash);
        p.version++;
        touched.add(p);
      }
    }
    await Promise.all([...touched].map((p) => (p.live.size ? this.persist(p) : this.remove(p))));
  }

  /** Forgets the pack and deletes its files; no load() adds it back meanwhile (`removing`). */
  private async remove(p: Pack): Promise<void> {
    if (this.packs.get(p.id) !== p) return;
    this.removing.add(p.id);
    this.packs.delete(p.id);
    try {
      while (p.writing) await p.writing.catch(() => {});
      // A read of the index begun before this remove sees `removing` when it ends; it must end before the files go.
      await this.loading.get(p.id)?.catch(() => {});
      await fsp.rm(this.indexPath(p.id), { force: true });
      await fsyncDir(this.dir);
      await fsp.rm(this.packPath(p.id), { force: true });
    } finally {
      // Gone (a later load finds no index), or a failed rm left the index naming bytes still there.
      this.removing.delete(p.id);
    }
  }

  /** Rewrites the pack's index with its live blocks until it reflects every free counted so far. */
  private async persist(p: Pack): Promise<void> {
    const want = p.version;
    while (p.written < want && this.packs.get(p.id) === p) {
      if (p.writing) {
        await p.writing.catch(() => {});
        continue;
      }
      const v = p.version;
      const idx: PackIndexFile = { formatVersion: 1, blocks: [...p.live].map((h) => { const e = p.entries.get(h)!; return [h, e.offset, e.length]; }) };
      const w = atomicWrite(this.indexPath(p.id), `${JSON.stringify(idx)}\n`).then(() => {
        p.written = Math.max(p.written, v);
        // The rewrite made the index young: its blocks are kept longer, never shorter.
        p.modifiedMs = Math.max(p.modifiedMs, Date.now());
      });
      p.writing = w.finally(() => (p.writing = undefined));
      await p.writing;
    }
  }

  private drop(id: string): void {
    const p = this.packs.get(id);
    if (!p) return;
    this.packs.delete(id);
    for (const h of p.live) {
      const ids = this.where.get(h);
      ids?.delete(id);
      if (ids && !ids.size) this.where.delete(h);
    }
  }

  /**
   * One pack per commit: put() appends to the pack at an offset taken
   * synchronously (several puts write at once, each to its own range), so
   * the disk sees one sequential file instead of a file per block.
   * commit(): fdatasync the pack, then write its index atomically (temp,
   * fsync, rename, fsync the directory, which also makes the pack's own
   * entry durable); only then are its blocks visible. Puts after a commit
   * start a new pack.
   */
  openBatch(fail: (what: string, path: string, e: unknown) => SnapshotError): BlockBatch {
    type Open = {
      id: string;
      fh: Promise<FileHandle>;
      size: number;
      blocks: Map<BlockHash, { offset: number; length: number }>;
      writes: Promise<unknown>[];
      /** Bytes written when the last early fdatasync began, the one under way, and the first failure (commit throws it). */
      syncedAt: number;
      syncing?: Promise<void>;
      syncError?: unknown;
    };
    let cur: Open | undefined;
    const start = (): Open => {
      const id = randomBytes(8).toString('hex');
      const fh = fsp.open(this.packPath(id), 'wx', 0o600);
      fh.catch(() => {});
      return (cur = { id, fh, size: 0, blocks: new Map(), writes: [], syncedAt: 0 });
    };
    // An fdatasync every EARLY_SYNC_BYTES while the batch is written, one at a time, so the
    // disk writes the pack while blocks are still read and hashed and commit's fdatasync
    // finds little left (docs/benchmarks.md, "Snapshots"). Only commit's counts for durability.
    const syncEarly = (c: Open, fh: FileHandle): void => {
      if (c.syncing || c.size - c.syncedAt < EARLY_SYNC_BYTES) return;
      c.syncedAt = c.size;
      c.syncing = fh.datasync().then(
        () => { c.syncing = undefined; },
        (e: unknown) => { c.syncError ??= e; c.syncing = undefined; },
      );
    };
    const discard = async (c: Open): Promise<void> => {
      await Promise.allSettled(c.writes);
      await c.syncing;
      await (await c.fh.catch(() => undefined))?.close().catch(() => {});
      await fsp.rm(this.packPath(c.id), { force: true });
    };
    return {
      put: async (hash, data) => {
        checkBlockHash(hash);
        const c = cur ?? start();
        if (c.blocks.has(hash)) return;
        const at = { offset: c.size, length: data.length };
        c.size += data.length;
        c.blocks.set(hash, at);
        const w = (async () => {
          const fh = await c.fh;
          let done = 0;
          while (done < data.length) done += (await fh.write(data, done, data.length - done, at.offset + done)).bytesWritten;
          syncEarly(c, fh);
        })();
        c.writes.push(w);
        try {
          await w;
        } catch (e) {
          throw fail('write', this.packPath(c.id), e);
        }
      },
      commit: async () => {
        const c = cur;
        cur = undefined;
        if (!c) return;
        const path = this.packPath(c.id);
        try {
          await Promise.all(c.writes);
          const fh = await c.fh;
          try {
            await c.syncing;
            // An early fdatasync that failed may have dropped dirty pages: the pack is not trusted.
            if (c.syncError) throw c.syncError;
            await fh.datasync();
          } finally {
            await fh.close();
          }
        } catch (e) {
          await discard(c);
          throw fail('write', path, e);
        }
        faultPoint('snapshot-store.after-pack-sync');
        const idx: PackIndexFile = { formatVersion: 1, blocks: [...c.blocks].map(([h, e]) => [h, e.offset, e.length]) };
        try {
          await atomicWrite(this.indexPath(c.id), `${JSON.stringify(idx)}\n`);
        } catch (e) {
          await discard(c);
          throw fail('write', this.indexPath(c.id), e);
        }
        const st = await fsp.stat(this.indexPath(c.id));
        this.add({ id: c.id, modifiedMs: st.mtimeMs, entries: c.blocks, live: new Set(c.blocks.keys()), version: 0, written: 0 });
      },
      abort: async () => {
        const c = cur;
        cur = undefined;
        if (c) await discard(c);
      },
    };
  }
}
