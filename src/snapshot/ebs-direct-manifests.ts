import type { BlockHash, SnapshotManifest, SnapshotSummary } from './types.js';

/**
 * Completed snapshots as the EBS direct read APIs use them (docs/architecture.md
 * §15, "Manifest cache"): a completed manifest never changes until it is
 * deleted, so it is read from the store and parsed once, kept as its summary
 * and its block list in two flat arrays (block indexes ascending, and the
 * 32-byte hashes in the same order: 40 bytes a block instead of a JSON array
 * of strings), and served from memory to GetSnapshotBlock, ListSnapshotBlocks,
 * ListChangedBlocks and the authorization's tag read. The cache is bounded by
 * the blocks it holds, not by manifests (one manifest may list 850,000), least
 * recently used first out; DeleteSnapshot evicts (forget). With a store other
 * daemons write (S3), an entry is read again after `maxAgeMs`, so a snapshot
 * another daemon deleted stops being served within that time.
 */

/** Blocks kept in all (40 bytes each: ~40 MiB), enough for the largest manifest the store accepts. */
export const MANIFEST_CACHE_BLOCKS = 1_000_000;
/** What a cached manifest costs besides its blocks (its summary, up to 50 tags), counted in blocks. */
const ENTRY_OVERHEAD_BLOCKS = 64;
/** Parent links and lineage answers kept for ListChangedBlocks. */
const MAX_LINKS = 100_000;
const HASH_BYTES = 32;

/** A completed snapshot's blocks: ascending by index, each with its content hash. */
export class BlockList {
  readonly length: number;
  private readonly indexes: Float64Array;
  private readonly hashes: Buffer;
  /** `hashes` as 32-bit words (8 a hash): a comparison in JS, without a Buffer.compare call per block. */
  private readonly words: Uint32Array;

  constructor(blocks: readonly [number, BlockHash][]) {
    this.length = blocks.length;
    this.indexes = new Float64Array(blocks.length);
    this.hashes = Buffer.allocUnsafeSlow(blocks.length * HASH_BYTES);
    for (let i = 0; i < blocks.length; i++) {
      const [x, h] = blocks[i]!;
      this.indexes[i] = x;
      this.hashes.write(h, i * HASH_BYTES, HASH_BYTES, 'hex');
    }
    // allocUnsafeSlow: its own ArrayBuffer at offset 0, so the words are aligned.
    this.words = new Uint32Array(this.hashes.buffer, this.hashes.byteOffset, blocks.length * (HASH_BYTES / 4));
  }

  indexAt(pos: number): number {
    return this.indexes[pos]!;
  }

  hashAt(pos: number): BlockHash {
    return this.hashes.toString('hex', pos * HASH_BYTES, (pos + 1) * HASH_BYTES);
  }

  /** First position whose index is >= `index` (binary search). */
  lowerBound(index: number): number {
    let lo = 0;
    let hi = this.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.indexes[mid]! < index) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The hash of block `index`, undefined when the snapshot does not list it. */
  find(index: number): BlockHash | undefined {
    const at = this.lowerBound(index);
    return at < this.length && this.indexes[at] === index ? this.hashAt(at) : undefined;
  }

  /** Block at `pos` here and at `otherPos` in `other` have the same content hash. */
  sameHash(pos: number, other: BlockList, otherPos: number): boolean {
    const a = this.words;
    const b = other.words;
    const x = pos * (HASH_BYTES / 4);
    const y = otherPos * (HASH_BYTES / 4);
    for (let k = 0; k < HASH_BYTES / 4; k++) if (a[x + k] !== b[y + k]) return false;
    return true;
  }
}

/** A snapshot read through the cache: `blocks` only when it is completed (a pending or error one is not kept). */
export interface ReadSnapshot {
  summary: SnapshotSummary;
  blocks?: BlockList;
}

interface Entry {
  summary: SnapshotSummary;
  blocks: BlockList;
  cost: number;
  loadedAt: number;
}

export class CompletedManifests {
  private readonly entries = new Map<string, Entry>();
  private readonly loading = new Map<string, Promise<ReadSnapshot | undefined>>();
  private held = 0;
  /** snapshot id -> its lineage links (lineageLinks: none, one or two), completed snapshots only. */
  private readonly parents = new Map<string, readonly string[]>();
  private readonly lineage = new Map<string, boolean>();
  /** Counts forget() calls: a read begun before one is not kept (it may have raced the delete). */
  private forgets = 0;

  constructor(private readonly o: {
    load: (id: string) => Promise<SnapshotManifest | undefined>;
    now: () => number;
    /** MANIFEST_CACHE_BLOCKS by default. */
    maxBlocks?: number;
    /** How long an entry is served before it is read again; Infinity when only this daemon writes the store. */
    maxAgeMs: number;
  }) {}

  /** Blocks held now (tests, status). */
  get heldBlocks(): number {
    return this.held;
  }

  /** The snapshot, from memory when completed and cached; concurrent misses share one store read. */
  get(id: string): Promise<ReadSnapshot | undefined> {
    const hit = this.entries.get(id);
    if (hit && this.o.now() - hit.loadedAt < this.o.maxAgeMs) {
      this.entries.delete(id); // most recently used last
      this.entries.set(id, hit);
      return Promise.resolve(hit);
    }
    const running = this.loading.get(id);
    if (running) return running;
    const load = this._load(id).finally(() => {
      if (this.loading.get(id) === load) this.loading.delete(id);
    });
    this.loading.set(id, load);
    return load;
  }

  /** The snapshot was deleted (DeleteSnapshot): never served from memory again, nor a read in flight kept. */
  forget(id: string): void {
    this.forgets++;
    this._drop(id);
    this.loading.delete(id);
    this.parents.delete(id);
    this.lineage.clear();
  }

  /** The lineage links of a completed snapshot (lineageLinks), from memory when known; undefined when it is not there (any more). */
  async linksOf(id: string): Promise<readonly string[] | undefined> {
    const known = this.parents.get(id);
    if (known !== undefined) return known;
    const m = this.entries.get(id)?.summary ?? await this.o.load(id);
    if (!m) return undefined;
    const links = lineageLinks(m);
    if (m.state === 'completed') this._link(id, links);
    return links;
  }

  /** A lineage answer for the unordered pair, computed once by `decide` (snapshots' links never change). */
  async related(a: string, b: string, decide: () => Promise<boolean>): Promise<boolean> {
    const key = a < b ? `${a}\0${b}` : `${b}\0${a}`;
    const known = this.lineage.get(key);
    if (known !== undefined) return known;
    const answer = await decide();
    if (this.lineage.size >= MAX_LINKS) this.lineage.delete(this.lineage.keys().next().value!);
    this.lineage.set(key, answer);
    return answer;
  }

  private async _load(id: string): Promise<ReadSnapshot | undefined> {
    const forgets = this.forgets;
    const m = await this.o.load(id);
    if (!m) {
      this._drop(id);
      return undefined;
    }
    const { blocks, ...summary } = m;
    if (m.state !== 'completed') return { summary };
    const entry: Entry = { summary, blocks: new BlockList(blocks), cost: blocks.length + ENTRY_OVERHEAD_BLOCKS, loadedAt: this.o.now() };
    // Kept only if no forget() came meanwhile.
    if (forgets !== this.forgets) return entry;
    this._link(id, lineageLinks(m));
    if (entry.cost <= (this.o.maxBlocks ?? MANIFEST_CACHE_BLOCKS)) {
      this._drop(id);
      this.entries.set(id, entry);
      this.held += entry.cost;
      for (const [k, v] of this.entries) {
        if (this.held <= (this.o.maxBlocks ?? MANIFEST_CACHE_BLOCKS)) break;
        this.entries.delete(k);
        this.held -= v.cost;
      }
    }
    return entry;
  }

  private _drop(id: string): void {
    const old = this.entries.get(id);
    if (!old) return;
    this.entries.delete(id);
    this.held -= old.cost;
  }

  private _link(id: string, links: readonly string[]): void {
    if (this.parents.size >= MAX_LINKS && !this.parents.has(id)) this.parents.delete(this.parents.keys().next().value!);
    this.parents.set(id, links);
  }
}

/**
 * The snapshots one step up a snapshot's lineage: its parent (the snapshot it
 * is incremental to, or StartSnapshot's ParentSnapshotId) and the snapshot
 * its volume was created from (a restored volume's first snapshot has no
 * parent, yet is of its source's lineage). Both, not the parent alone: once
 * a restored volume's first snapshot is deleted, its later snapshots reach
 * their source only through their own `sourceSnapshotId`.
 */
export function lineageLinks(m: SnapshotSummary): readonly string[] {
  const links: string[] = [];
  if (m.parentSnapshotId) links.push(m.parentSnapshotId);
  if (m.sourceSnapshotId && m.sourceSnapshotId !== m.parentSnapshotId) links.push(m.sourceSnapshotId);
  return links;
}
