import { constants as fsc, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { atomicWrite, fsyncDir, removeAtomicWriteTemps } from '../util/atomic-write.js';
import { SnapshotError } from './errors.js';
import { MANIFEST_MAX_BYTES, checkBlockHash, checkManifestBytes, checkSnapshotId, isBlockHash, isSnapshotId, parseManifest, readListedManifests, summaryOf } from './manifest-check.js';
import type { BlockWithAge, CollectableStore } from './gc.js';
import { PackSet, sha256Hex } from './pack-store.js';
import type { BlockBatch, BlockHash, RawManifest, SnapshotManifest, SnapshotSummary } from './types.js';

/**
 * Bytes of completed manifests kept parsed, counted as 3 × their text (the
 * text itself, and the objects parsed from it: ~150 bytes on the heap per
 * listed block against ~75 of text); a manifest over a quarter of it is not kept.
 */
const KEPT_MANIFEST_BYTES = 32 * 1024 * 1024;

/**
 * Freezes what a parsed manifest holds that a caller could change: the
 * manifest, its blocks and their entries, tags, the wrapped key and its
 * context. Fields parseManifest does not know stay as they are (only the
 * known ones are walked, so no depth of nesting can overflow the stack).
 */
function freezeManifest(m: SnapshotManifest): void {
  for (const b of m.blocks) Object.freeze(b);
  Object.freeze(m.blocks);
  for (const t of m.tags) Object.freeze(t);
  Object.freeze(m.tags);
  if (m.wrappedKey) {
    Object.freeze(m.wrappedKey.encryptionContext);
    Object.freeze(m.wrappedKey);
  }
  Object.freeze(m);
}

/**
 * The default SnapshotStore: a directory (`<state>/snapshots`) holding
 * `blocks/<2 hex>/<sha256>` (putBlock: one file per block),
 * `packs/<id>.pack` + `packs/<id>.idx` (openBlockBatch: a snapshot's blocks
 * in one file, src/snapshot/pack-store.ts) and `manifests/<snap-id>.json`
 * (docs/architecture.md §13, §13.4). Every block file, index and manifest is
 * written with atomicWrite (temp, fsync, rename, fsync dir), so a crash
 * leaves an object whole or absent, and a block is durable before any
 * manifest that names it is written. A block read back is hashed before it
 * is handed out: a changed byte on disk is SNAPSHOT_CORRUPT, never data.
 */
export class DirSnapshotStore implements CollectableStore {
  readonly location: string;
  /** The daemon's state-dir lock keeps other writers out (docs/architecture.md §13.4). */
  readonly singleWriter = true;
  private readonly blocksDir: string;
  private readonly manifestsDir: string;
  private packs!: PackSet;
  /**
   * Completed manifests as last parsed, with the text they were parsed from:
   * a manifest read again with the same text is not parsed and checked again
   * (the JSON parse and the check of every block hash were most of a read;
   * docs/benchmarks.md, "Snapshots"). The text is read each time and compared
   * whole, so an edit or a corruption from outside is seen at once, whatever
   * the file's timestamps. Frozen (freezeManifest): every caller shares the
   * object. Bounded in bytes (KEPT_MANIFEST_BYTES), least recently read out.
   */
  private readonly parsed = new Map<string, { text: string; m: SnapshotManifest; bytes: number }>();
  private parsedBytes = 0;
  private readonly keptBytesMax: number;

  private constructor(readonly dir: string, keptManifestBytes = KEPT_MANIFEST_BYTES) {
    this.keptBytesMax = keptManifestBytes;
    this.location = `dir:${dir}`;
    this.blocksDir = join(dir, 'blocks');
    this.manifestsDir = join(dir, 'manifests');
  }

  /**
   * Creates the layout if missing. With `removeTemps`, also removes the temp
   * files interrupted writes left (a crash between temp and rename): only
   * while nothing else writes to `dir`, as under the daemon's state-dir lock.
   */
  static async open(dir: string, opts: { removeTemps?: boolean; keptManifestBytes?: number } = {}): Promise<DirSnapshotStore> {
    const s = new DirSnapshotStore(dir, opts.keptManifestBytes);
    await fsp.mkdir(s.blocksDir, { recursive: true, mode: 0o700 });
    await fsp.mkdir(s.manifestsDir, { recursive: true, mode: 0o700 });
    if (opts.removeTemps) {
      // blocks/<2 hex>/ is one level below blocks/.
      await removeAtomicWriteTemps(s.blocksDir, { depth: 1 });
      await removeAtomicWriteTemps(s.manifestsDir);
    }
    s.packs = await PackSet.open(join(dir, 'packs'), opts);
    return s;
  }

  private blockPath(hash: BlockHash): string {
    checkBlockHash(hash);
    return join(this.blocksDir, hash.slice(0, 2), hash);
  }

  private manifestPath(id: string): string {
    checkSnapshotId(id);
    return join(this.manifestsDir, `${id}.json`);
  }

  /**
   * Written even when present: the content is the same (content-addressed),
   * a damaged copy is replaced, and the block's mtime becomes now, which is
   * the age the collector's grace period reads (src/snapshot/gc.ts).
   */
  async putBlock(hash: BlockHash, data: Uint8Array): Promise<void> {
    const p = this.blockPath(hash);
    const sub = join(this.blocksDir, hash.slice(0, 2));
    try {
      await fsp.mkdir(sub, { mode: 0o700 });
      await fsyncDir(this.blocksDir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw this.fail('create', sub, e);
    }
    try {
      await atomicWrite(p, data);
    } catch (e) {
      throw this.fail('write', p, e);
    }
  }

  /**
   * A snapshot's blocks with one wait for the disk, in one pack file
   * (src/snapshot/pack-store.ts): sequential writes, one fdatasync, then the
   * pack's index; a block is never visible before its bytes are durable.
   * Measured against a file per block: docs/benchmarks.md ("Snapshots").
   */
  openBlockBatch(): BlockBatch {
    return this.packs.openBatch((what, path, e) => this.fail(what, path, e));
  }

  /**
   * From a pack when one holds it, else from its block file. A damaged copy
   * in a pack falls back to a block file of the same hash if there is one
   * (putBlock writes one even when a pack holds the block).
   */
  async getBlock(hash: BlockHash): Promise<Buffer> {
    const p = this.blockPath(hash);
    let packed: SnapshotError | undefined;
    if (!this.packs.has(hash)) await this.packs.refresh();
    try {
      const data = await this.packs.read(hash);
      if (data) return data;
    } catch (e) {
      if (!(e instanceof SnapshotError)) throw this.fail('read', this.packs.locate(hash)?.path ?? this.packs.dir, e);
      packed = e;
    }
    let data: Buffer;
    try {
      data = await fsp.readFile(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        throw packed ?? new SnapshotError('SNAPSHOT_BLOCK_NOT_FOUND', `block ${hash} is missing from the snapshot store ${this.location}`);
      }
      throw this.fail('read', p, e);
    }
    const got = await sha256Hex(data);
    if (got !== hash) throw packed ?? new SnapshotError('SNAPSHOT_CORRUPT', `block ${p} reads back as ${data.length} bytes hashing to ${got}`);
    return data;
  }

  hasBlockInMemory(hash: BlockHash): boolean {
    return this.packs.has(hash);
  }

  async hasBlock(hash: BlockHash): Promise<boolean> {
    if (this.hasBlockInMemory(hash)) return true;
    try {
      await fsp.access(this.blockPath(hash));
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw e instanceof SnapshotError ? e : this.fail('stat', this.blockPath(hash), e);
    }
  }

  async touchBlock(hash: BlockHash): Promise<boolean> {
    const p = this.blockPath(hash);
    if (await this.packs.touch(hash)) return true;
    try {
      const now = new Date();
      await fsp.utimes(p, now, now);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw e instanceof SnapshotError ? e : this.fail('touch', p, e);
    }
  }

  async blockModifiedMs(hash: BlockHash): Promise<number | undefined> {
    const packed = this.packs.modifiedMs(hash);
    try {
      const loose = (await fsp.stat(this.blockPath(hash))).mtimeMs;
      return packed === undefined ? loose : Math.max(loose, packed);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return packed;
      throw this.fail('stat', this.blockPath(hash), e);
    }
  }

  /**
   * Not fsynced: a delete lost to a crash leaves an orphan the next sweep
   * frees; a manifest's delete is (deleteManifest), since it must be durable
   * before its blocks go. A packed block is freed in its pack, which goes
   * with its last block (src/snapshot/pack-store.ts).
   */
  async deleteBlock(hash: BlockHash): Promise<void> {
    await fsp.rm(this.blockPath(hash), { force: true });
    await this.packs.free([hash]);
  }

  /** deleteBlock of many: each pack's index is rewritten once, not once per block (src/snapshot/gc.ts calls it). */
  async deleteBlocks(hashes: BlockHash[]): Promise<void> {
    let i = 0;
    const worker = async (): Promise<void> => {
      while (i < hashes.length) await fsp.rm(this.blockPath(hashes[i++]!), { force: true });
    };
    await Promise.all(Array.from({ length: Math.min(16, hashes.length) }, worker));
    await this.packs.free(hashes);
  }

  async *listBlocks(): AsyncIterable<BlockHash> {
    for await (const b of this.listBlocksWithAge()) yield b.hash;
  }

  /** Every block with its mtime (a packed block: its pack index's): the collector's age (src/snapshot/gc.ts). */
  async *listBlocksWithAge(): AsyncIterable<BlockWithAge> {
    await this.packs.refresh();
    const loose = new Set<BlockHash>();
    yield* this.listLooseBlocks(loose);
    for (const b of this.packs.list()) if (!loose.has(b.hash)) yield b;
  }

  private async *listLooseBlocks(seen: Set<BlockHash>): AsyncIterable<BlockWithAge> {
    for (const sub of (await fsp.readdir(this.blocksDir)).sort()) {
      if (!/^[0-9a-f]{2}$/.test(sub)) continue;
      let names: string[];
      try {
        names = await fsp.readdir(join(this.blocksDir, sub));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw e;
      }
      for (const name of names.sort()) {
        if (!isBlockHash(name)) continue;
        try {
          const st = await fsp.stat(join(this.blocksDir, sub, name));
          seen.add(name);
          const packed = this.packs.modifiedMs(name);
          yield { hash: name, modifiedMs: packed === undefined ? st.mtimeMs : Math.max(packed, st.mtimeMs) };
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e; // deleted since the readdir
        }
      }
    }
  }

  async putManifest(m: SnapshotManifest): Promise<void> {
    const p = this.manifestPath(m.snapshotId);
    const text = `${JSON.stringify(m)}\n`;
    // Never write what a reader would refuse.
    checkManifestBytes(p, Buffer.byteLength(text, 'utf8'), true);
    try {
      await atomicWrite(p, text);
    } catch (e) {
      throw this.fail('write', p, e);
    }
  }

  async getManifest(snapshotId: string): Promise<SnapshotManifest | undefined> {
    const p = this.manifestPath(snapshotId);
    const text = await this.readManifestText(p);
    if (text === undefined) {
      this.forgetParsed(snapshotId);
      return undefined;
    }
    const hit = this.parsed.get(snapshotId);
    if (hit?.text === text) {
      this.parsed.delete(snapshotId);
      this.parsed.set(snapshotId, hit);
      return hit.m;
    }
    this.forgetParsed(snapshotId);
    const m = parseManifest(p, snapshotId, text);
    const bytes = 3 * text.length;
    if (m.state !== 'completed' || bytes > this.keptBytesMax / 4) return m;
    freezeManifest(m);
    this.parsed.set(snapshotId, { text, m, bytes });
    this.parsedBytes += bytes;
    for (const [k, v] of this.parsed) {
      if (this.parsedBytes <= this.keptBytesMax) break;
      this.parsed.delete(k);
      this.parsedBytes -= v.bytes;
    }
    return m;
  }

  /**
   * The manifest's text, its size checked before it is read and the read bounded by it (a manifest is replaced by
   * rename, never grown in place: one grown since the stat is not read past it). Anything but a regular file (a
   * symlink to a device, a FIFO someone put there) is refused unread: it has no size to bound a read by.
   */
  private async readManifestText(p: string): Promise<string | undefined> {
    let fh: FileHandle;
    try {
      fh = await openManifest(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new SnapshotError('SNAPSHOT_CORRUPT', `snapshot manifest ${p} is not a regular file`);
      checkManifestBytes(p, st.size, false);
      return (await readUpTo(fh, st.size)).toString('utf8');
    } finally {
      await fh.close();
    }
  }

  private forgetParsed(snapshotId: string): void {
    const old = this.parsed.get(snapshotId);
    if (!old) return;
    this.parsed.delete(snapshotId);
    this.parsedBytes -= old.bytes;
  }

  async listManifestIds(): Promise<string[]> {
    const ids: string[] = [];
    for (const name of (await fsp.readdir(this.manifestsDir)).sort()) {
      const id = name.endsWith('.json') ? name.slice(0, -5) : '';
      if (isSnapshotId(id)) ids.push(id);
    }
    return ids;
  }

  listManifests(opts: { onCorrupt?: (snapshotId: string, err: SnapshotError) => void } = {}): Promise<SnapshotManifest[]> {
    return this.readManifests(opts, (m) => m);
  }

  listManifestSummaries(opts: { onCorrupt?: (snapshotId: string, err: SnapshotError) => void } = {}): Promise<SnapshotSummary[]> {
    return this.readManifests(opts, summaryOf);
  }

  /** Every manifest, each through `keep` as soon as it is read; one at a time (local files). */
  private async readManifests<T>(opts: { onCorrupt?: (snapshotId: string, err: SnapshotError) => void }, keep: (m: SnapshotManifest) => T): Promise<T[]> {
    return readListedManifests(await this.listManifestIds(), 1, (id) => this.getManifest(id), opts.onCorrupt, keep);
  }

  /**
   * The file's bytes as they are (a manifest is replaced by rename, so one stat and one read see the same file), at
   * most its size at the stat; over MANIFEST_MAX_BYTES, or not a regular file (no size to bound a read by), not read.
   */
  async readManifestRaw(snapshotId: string): Promise<RawManifest | undefined> {
    const p = this.manifestPath(snapshotId);
    let fh: FileHandle;
    try {
      fh = await openManifest(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw this.fail('read', p, e);
    }
    try {
      const st = await fh.stat();
      const lastModified = st.mtime.toISOString();
      if (!st.isFile() || st.size > MANIFEST_MAX_BYTES) return { bytes: st.size, lastModified };
      const data = await readUpTo(fh, st.size);
      return { data, bytes: data.length, lastModified };
    } finally {
      await fh.close();
    }
  }

  async deleteManifest(snapshotId: string): Promise<void> {
    this.forgetParsed(snapshotId);
    await fsp.rm(this.manifestPath(snapshotId), { force: true });
    await fsyncDir(this.manifestsDir);
  }

  private fail(what: string, path: string, e: unknown): SnapshotError {
    const errno = (e as NodeJS.ErrnoException)?.code;
    return new SnapshotError('SNAPSHOT_STORE', `snapshot store: cannot ${what} ${path}: ${errno ?? (e as Error)?.message ?? String(e)}`, { cause: e });
  }
}

/** Opened for reading without blocking: a FIFO put where a manifest belongs opens at once (and is then refused as not a regular file). */
function openManifest(p: string): Promise<FileHandle> {
  return fsp.open(p, fsc.O_RDONLY | fsc.O_NONBLOCK);
}

/** At most `size` bytes of the file (fewer at its end): a read bounded by the size its stat gave. */
async function readUpTo(fh: FileHandle, size: number): Promise<Buffer> {
  const buf = Buffer.alloc(size);
  let got = 0;
  while (got < size) {
    const { bytesRead } = await fh.read(buf, got, size - got, got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return buf.subarray(0, got);
}
