import type { SyncRawReader } from '../volume/write-gate.js';
import { SNAPSHOT_BLOCK_BYTES } from './types.js';
import { BlockBitmap, type BlockSet } from './block-bitmap.js';
import { COW_SECTOR, CowSpill } from './cow-spill.js';
import { CowMemory, type SessionSlots } from './cow-memory.js';
import { SnapshotError } from './errors.js';
import { BufferPool } from './block-buffers.js';

/** Reads the raw on-disk bytes [pos, pos + len) of the data segment (ciphertext for an encrypted volume) into `into`. */
export type RawReader = (pos: number, len: number, into: Buffer) => Promise<void>;
export type { SyncRawReader };

const PER_BLOCK = SNAPSHOT_BLOCK_BYTES / COW_SECTOR;

export interface CowSessionOptions {
  /**
   * The daemon's shared memory for captured sectors (cow-memory.ts); with a
   * spill file, captures go there once it (or this session's share) is used up.
   */
  memory?: CowMemory;
  /** Without `memory`: a pool of this session's own, of at most this many bytes (default 64 MiB). */
  maxMemoryBytes?: number;
  /** The spill file's path (under the state dir); opened only if the cap is reached. Without it, memory is not capped. */
  spillPath?: string;
}

/**
 * Per block with captured sectors, per sector of it: undefined = not captured
 * (no write has reached it since the point in time), null = a capture read is
 * in flight (writes to it wait), a number >= 0 = its point-in-time bytes in
 * memory slot n (SessionSlots), a number < 0 = in spill-file slot -1 - n.
 */
type SectorOld = number | null | undefined;
interface BlockCow {
  old: SectorOld[];
  /** Capture reads in flight in this block. */
  reads: Set<Promise<void>>;
  /** The copier has read the block: the session dropped it, late captures are discarded. */
  dropped: boolean;
}

/**
 * Copy-on-write at write granularity for one snapshot of an attached volume
 * (docs/architecture.md §12.2).
 *
 * Before a write reaches the disk, the old on-disk bytes of each 4 KiB
 * sector it overwrites are captured, if the sector lies in a block the
 * snapshot has not copied yet and no earlier write captured it: the first
 * write's old bytes are the point-in-time ones. A write waits only for its
 * own capture read (none at all on the page-cache path, tryPass with a
 * SyncRawReader), never for the copier. When the copier reaches a block
 * (take), it reads the whole block as it is now and patches the captured
 * sectors back in. Captured sectors beyond what memory gives the session (its
 * share of the daemon's CowMemory) go to a spill file (CowSpill). Reads of the volume are not involved at all.
 *
 * Invariant: what take(i) returns equals the on-disk bytes of block i at
 * the point in time. Why: a write to a sector of a block still `pending`
 * passes the gate only once that sector's old bytes are captured (tryPass
 * answers false, beforeWrite waits while a capture is in flight). take(i)
 * reads the block, then, in the same turn of the event loop as that read's
 * completion, marks the block taken (no longer pending) and patches in every sector
 * captured by then. A patched sector holds bytes read before any write to
 * it passed; every other sector had no write pass before the read ended, so
 * the read saw its point-in-time bytes (a capture still in flight then is
 * discarded: its write is still held, and the read's bytes are the same).
 */
export class CowSession {
  /**
   * The snapshot's blocks, as given: read, never changed (the caller does not
   * change it either while the session lives). A block is pending while it is
   * a member and not in `taken`.
   */
  private readonly members: BlockSet;
  /** Members take() has read: no longer pending. */
  private readonly taken = new BlockBitmap();
  private pendingCount: number;
  private readonly blocks = new Map<number, BlockCow>();
  /** Blocks with captured sectors not yet handed to the copier, in capture order. */
  private readonly queue = new Set<number>();
  /** Blocks nextCaptured() handed out or take() started: never queued again. */
  private readonly handed = new BlockBitmap();
  private readonly mem: SessionSlots;
  /** The pool made for this session alone (no shared CowMemory given): its slabs go when the session ends. */
  private readonly ownPool: CowMemory | undefined;
  private readonly spill: CowSpill | undefined;
  /** The synchronous capture's buffer (tryPass runs on the loop, one at a time). */
  private scratch = Buffer.allocUnsafeSlow(32 * COW_SECTOR);
  private failed: unknown;
  /** The copier's 512 KiB block buffers: take() fills one, the copier gives it back once stored (block-buffers.ts). */
  readonly buffers = new BufferPool(SNAPSHOT_BLOCK_BYTES, 16);
  /** Writes seen by the session: the copier's pacing watches it (cow-pacer.ts). */
  writes = 0;
  /** Sectors captured (each once), and how many of them went to the spill file. */
  capturedSectors = 0;
  spilledSectors = 0;
  /** Captures read on the pool (beforeWrite), not on the loop's page-cache path (tryPass with readNow). */
  poolCaptures = 0;
  /** Slabs the memory pool allocated for this session (the rest of its slots were reused). */
  get newSlabs(): number {
    return this.mem.newSlabs;
  }

  /**
   * `blocks`: the blocks to copy. A BlockSet is used as it is, so the
   * session's set-up costs the same for any volume size: it runs inside
   * the write pause (docs/architecture.md §12.2). A list is copied into a
   * bitmap first (tests, small sets).
   */
  constructor(blocks: BlockSet | Iterable<number>, private readonly read: RawReader, o: CowSessionOptions = {}) {
    if (isBlockSet(blocks)) {
      this.members = blocks;
    } else {
      const b = new BlockBitmap();
      for (const i of blocks) b.add(i);
      this.members = b;
    }
    this.pendingCount = this.members.size;
    // Never more than the pending blocks' bytes: a session cannot need more, so a small volume does not take the budget from the next.
    const need = this.pendingCount * SNAPSHOT_BLOCK_BYTES;
    // Without a shared pool, one of its own: maxMemoryBytes with a spill file; without one, memory is the only
    // place, so as much as it needs. It keeps its slabs while the session lives and drops them when it ends.
    const own = o.spillPath && o.memory ? undefined : new CowMemory(o.spillPath ? o.maxMemoryBytes ?? 64 * 1024 * 1024 : need, { trimAfterMs: Infinity });
    this.ownPool = own;
    this.mem = (own ?? o.memory!).session(need);
    this.spill = o.spillPath ? new CowSpill(o.spillPath) : undefined;
  }

  /** Bytes of captured sectors held in memory now. */
  get memoryBytes(): number {
    return this.mem.used * COW_SECTOR;
  }

  /** The spill file's size at its largest, in bytes. */
  get spillBytes(): number {
    return this.spill?.highWaterBytes ?? 0;
  }

  /**
   * The gate's synchronous check for a write of [pos, pos + len): true when
   * it may go to the disk now. With `readNow`, sectors to capture are read
   * from the page cache here; false means "call beforeWrite() and wait".
   */
  tryPass(pos: number, len: number, readNow?: SyncRawReader): boolean {
    this.writes++;
    if (this.pendingCount === 0 || len <= 0) return true;
    const s0 = Math.floor(pos / COW_SECTOR);
    const s1 = Math.ceil((pos + len) / COW_SECTOR);
    let need = false;
    for (let s = s0; s < s1; s++) {
      const b = Math.floor(s / PER_BLOCK);
      if (!this.isPending(b)) {
        s = (b + 1) * PER_BLOCK - 1;
        continue;
      }
      const v = this.blocks.get(b)?.old[s - b * PER_BLOCK];
      if (v === null) return false; // another write's capture is in flight
      if (v === undefined) need = true;
    }
    if (!need) return true;
    if (!readNow) return false;
    const n = (s1 - s0) * COW_SECTOR;
    if (this.scratch.length < n) this.scratch = Buffer.allocUnsafeSlow(n);
    const buf = n === this.scratch.length ? this.scratch : this.scratch.subarray(0, n);
    if (!readNow(buf, s0 * COW_SECTOR)) return false;
    for (let s = s0; s < s1; s++) {
      const b = Math.floor(s / PER_BLOCK);
      if (!this.isPending(b)) continue;
      const st = this.blockCow(b);
      const k = s - b * PER_BLOCK;
      if (st.old[k] === undefined) this.keep(b, st, k, buf, (s - s0) * COW_SECTOR);
    }
    return true;
  }

  /**
   * Before a write of [pos, pos + len): captures the old bytes of the
   * sectors it overwrites that still need it, and waits for those reads
   * (and for other writes' captures of the same sectors). A failed capture
   * read fails the snapshot, not the write.
   */
  async beforeWrite(pos: number, len: number): Promise<void> {
    this.writes++;
    if (this.pendingCount === 0 || len <= 0) return;
    const s0 = Math.floor(pos / COW_SECTOR);
    const s1 = Math.ceil((pos + len) / COW_SECTOR);
    const waits: Promise<void>[] = [];
    for (let b = Math.floor(s0 / PER_BLOCK); b * PER_BLOCK < s1; b++) {
      if (!this.isPending(b)) continue;
      const st = this.blockCow(b);
      const k0 = Math.max(s0 - b * PER_BLOCK, 0);
      const k1 = Math.min(s1 - b * PER_BLOCK, PER_BLOCK);
      let inflightHere = false;
      for (let k = k0; k < k1; k++) if (st.old[k] === null) inflightHere = true;
      if (inflightHere) waits.push(...st.reads);
      // Claim each run of uncaptured sectors and read it.
      for (let k = k0; k < k1; ) {
        if (st.old[k] !== undefined) {
          k++;
          continue;
        }
        let e = k;
        while (e < k1 && st.old[e] === undefined) st.old[e++] = null;
        waits.push(this.capture(b, st, k, e - k));
        k = e;
      }
    }
    if (waits.length) await Promise.all(waits);
  }

  /**
   * The copier's next block: one with captured sectors (taking it frees
   * them), else undefined (the copier goes on in index order). A block is
   * handed out once.
   */
  nextCaptured(): number | undefined {
    for (const i of this.queue) {
      this.queue.delete(i);
      if (this.isPending(i) && !this.handed.has(i)) {
        this.handed.add(i);
        return i;
      }
    }
    return undefined;
  }

  /**
   * The point-in-time bytes of block `i` (see the class comment); undefined
   * if `i` is not part of this snapshot or was taken already.
   */
  async take(i: number): Promise<Buffer | undefined> {
    if (this.failed) throw this.failed;
    if (!this.isPending(i)) return undefined;
    this.handed.add(i);
    this.queue.delete(i);
    const buf = this.buffers.take();
    await this.read(i * SNAPSHOT_BLOCK_BYTES, SNAPSHOT_BLOCK_BYTES, buf);
    if (this.failed) throw this.failed;
    if (!this.isPending(i)) return undefined; // taken twice: the caller's bug, never silently wrong
    // Same turn as the read's completion: from here writes to block i pass at once.
    this.taken.add(i);
    this.pendingCount--;
    const st = this.blocks.get(i);
    if (!st) return buf;
    this.blocks.delete(i);
    st.dropped = true;
    const slots: [k: number, slot: number][] = [];
    for (let k = 0; k < PER_BLOCK; k++) {
      const v = st.old[k];
      if (typeof v !== 'number') continue;
      if (v >= 0) {
        this.mem.get(v, buf, k * COW_SECTOR);
        this.mem.release(v);
      } else if (!this.spill!.getNow(-1 - v, buf, k * COW_SECTOR)) {
        // Not in memory nor the page cache: read on the pool below, the only await per sector.
        slots.push([k, -1 - v]);
      } else {
        this.spill!.release(-1 - v);
      }
    }
    try {
      for (const [k, slot] of slots) await this.spill!.get(slot, buf, k * COW_SECTOR);
    } finally {
      for (const [, slot] of slots) this.spill!.release(slot);
    }
    if (this.spill?.error) this.fail(this.spill.error);
    if (this.failed) throw this.failed;
    return buf;
  }

  /** Ends the session: every write passes from now on, captured sectors are freed (memory slots back to the pool), the spill file closed. */
  async end(): Promise<void> {
    this.fail(new SnapshotError('SNAPSHOT_INCORRECT_STATE', 'the snapshot ended'));
    this.buffers.clear();
    await this.spill?.close();
  }

  /** Block `b` is part of the snapshot and the copier has not read it yet. */
  private isPending(b: number): boolean {
    return this.members.has(b) && !this.taken.has(b);
  }

  private blockCow(b: number): BlockCow {
    let st = this.blocks.get(b);
    if (!st) {
      st = { old: new Array<SectorOld>(PER_BLOCK), reads: new Set(), dropped: false };
      this.blocks.set(b, st);
    }
    return st;
  }

  /** Reads sectors [k, k + n) of block b (claimed: null) and keeps them. */
  private capture(b: number, st: BlockCow, k: number, n: number): Promise<void> {
    this.poolCaptures++;
    const buf = Buffer.allocUnsafeSlow(n * COW_SECTOR);
    const r = this.read(b * SNAPSHOT_BLOCK_BYTES + k * COW_SECTOR, n * COW_SECTOR, buf).then(
      () => {
        if (st.dropped || this.failed) return;
        for (let j = 0; j < n; j++) this.keep(b, st, k + j, buf, j * COW_SECTOR);
      },
      (e: unknown) => this.fail(e),
    ).finally(() => st.reads.delete(r));
    st.reads.add(r);
    return r;
  }

  /** Keeps sector k of block b, the 4 KiB at buf[off] (copied: buf may be reused). */
  private keep(b: number, st: BlockCow, k: number, buf: Buffer, off: number): void {
    this.capturedSectors++;
    const slot = this.mem.alloc();
    if (slot >= 0) {
      this.mem.put(slot, buf, off);
      st.old[k] = slot;
    } else {
      st.old[k] = -1 - this.spill!.put(buf, off);
      this.spilledSectors++;
    }
    if (!this.handed.has(b)) this.queue.add(b);
  }

  /** The snapshot cannot complete: release every write, free what was captured. */
  private fail(e: unknown): void {
    this.failed ??= e;
    for (const st of this.blocks.values()) st.dropped = true;
    this.blocks.clear();
    this.queue.clear();
    this.pendingCount = 0;
    this.mem.close();
    this.ownPool?.trim();
  }
}

function isBlockSet(x: BlockSet | Iterable<number>): x is BlockSet {
  return typeof (x as BlockSet).has === 'function' && typeof (x as BlockSet).size === 'number';
}
