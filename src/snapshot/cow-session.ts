import { SNAPSHOT_BLOCK_BYTES } from './types.js';
import { BlockBitmap } from './block-bitmap.js';

/** Reads a 512 KiB block of the raw data segment (ciphertext for an encrypted volume) into a new buffer. */
export type RawBlockReader = (index: number) => Promise<Buffer>;

/**
 * Copy-on-write for one snapshot of an attached volume (docs/architecture.md
 * §12.2). Holds the blocks the snapshot still has to copy, as they were at
 * its point in time. A write to such a block first has the block read (its
 * old on-disk bytes kept here for the copier), then proceeds; the copier
 * takes blocks that a write captured before anything else, so captured
 * memory stays bounded; writes to other blocks are not held at all.
 *
 * Invariant: a block is in at most one of `pending`, `reading`, `captured`;
 * while it is in `pending` or `reading`, no write to it reaches the disk
 * (the gate keeps it back), so what the copier gets is the point-in-time
 * content.
 */
export class CowSession {
  private readonly pending = new BlockBitmap();
  private pendingCount = 0;
  private readonly reading = new Map<number, Promise<void>>();
  private readonly captured = new Map<number, Buffer>();
  /** Resolvers of writes waiting for captured memory to drain. */
  private drainWaiters: (() => void)[] = [];
  private failed: unknown;
  /** Blocks read by a write before the copier reached them (for the log and tests). */
  cowReads = 0;

  constructor(
    indexes: Iterable<number>,
    private readonly read: RawBlockReader,
    /** At most this many bytes of captured blocks wait for the copier; further writes to uncopied blocks wait. */
    private readonly maxCapturedBytes = 64 * 1024 * 1024,
  ) {
    for (const i of indexes) {
      this.pending.add(i);
      this.pendingCount++;
    }
  }

  /** True if a write to blocks [first, last] must wait (some block not yet copied). */
  mustWait(first: number, last: number): boolean {
    if (this.pendingCount === 0 && this.reading.size === 0) return false;
    for (let i = first; i <= last; i++) if (this.pending.has(i) || this.reading.has(i)) return true;
    return false;
  }

  /** Before a write of blocks [first, last]: capture each uncopied one. Rejects if the capture read fails (the write fails). */
  async beforeWrite(first: number, last: number): Promise<void> {
    for (let i = first; i <= last; i++) {
      if (this.pending.has(i)) {
        while (this.capturedBytes() >= this.maxCapturedBytes && !this.failed) await new Promise<void>((r) => this.drainWaiters.push(r));
        if (this.pending.has(i)) {
          this.cowReads++;
          this.claim(i);
        }
      }
      const r = this.reading.get(i);
      if (r) await r;
    }
  }

  /**
   * The copier's next block: one a write captured, else undefined (the
   * copier then goes on in index order with take()).
   */
  nextCaptured(): number | undefined {
    for (const i of this.captured.keys()) return i;
    return undefined;
  }

  /** The point-in-time bytes of block `i`, read now unless a write captured them; undefined if `i` is not part of this snapshot or was taken. */
  async take(i: number): Promise<Buffer | undefined> {
    if (this.pending.has(i)) this.claim(i);
    const r = this.reading.get(i);
    if (r) await r;
    if (this.failed) throw this.failed;
    const buf = this.captured.get(i);
    if (!buf) return undefined;
    this.captured.delete(i);
    this.wakeDrainWaiters();
    return buf;
  }

  /** Ends the session: releases every waiting write (an aborted snapshot no longer needs old bytes). */
  end(): void {
    for (const i of [...this.pending.indexes()]) this.pending.delete(i);
    this.pendingCount = 0;
    this.captured.clear();
    this.failed ??= new Error('snapshot ended');
    this.wakeDrainWaiters();
  }

  private claim(i: number): void {
    this.pending.delete(i);
    this.pendingCount--;
    const r = this.read(i).then(
      (buf) => {
        if (!this.failed) this.captured.set(i, buf);
      },
      (e: unknown) => {
        this.failed ??= e;
      },
    ).finally(() => this.reading.delete(i));
    this.reading.set(i, r);
  }

  private capturedBytes(): number {
    return this.captured.size * SNAPSHOT_BLOCK_BYTES;
  }

  private wakeDrainWaiters(): void {
    const w = this.drainWaiters;
    this.drainWaiters = [];
    for (const r of w) r();
  }
}
