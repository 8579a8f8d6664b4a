/**
 * Reusable buffers of one size for a snapshot's copier and its copy-on-write
 * spill (docs/architecture.md §12.2). Each `Buffer.allocUnsafeSlow` is a new
 * ArrayBuffer whose bytes V8 counts as external memory until a garbage
 * collection frees it; a copier allocating 512 KiB per block, and a spill
 * 256 KiB per chunk, drove a full mark-compact several times a second on the
 * event loop that serves the volume's writes (docs/benchmarks.md,
 * "Snapshots"). Handed back, a buffer is used again instead.
 *
 * A buffer given back must no longer be read or written by anyone: the
 * caller gives it only once every I/O and hash of it has finished.
 */
export class BufferPool {
  private readonly free: Buffer[] = [];
  /** Buffers allocated (not taken from the free list), for tests and logs. */
  allocated = 0;

  /**
   * @param bytes the size of every buffer
   * @param keep buffers kept for reuse at most; more given back are dropped
   */
  constructor(readonly bytes: number, private readonly keep: number) {
    if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new RangeError(`bytes must be a positive integer, got ${bytes}`);
    if (!Number.isSafeInteger(keep) || keep < 0) throw new RangeError(`keep must be a non-negative integer, got ${keep}`);
  }

  /** A buffer of `bytes` bytes; its content is whatever it held before. */
  take(): Buffer {
    const b = this.free.pop();
    if (b) return b;
    this.allocated++;
    return Buffer.allocUnsafeSlow(this.bytes);
  }

  /** Hands `buf` back for reuse (a buffer of another size is ignored). */
  give(buf: Buffer): void {
    if (buf.length !== this.bytes || this.free.length >= this.keep || this.free.includes(buf)) return;
    this.free.push(buf);
  }

  /** Drops the buffers kept. */
  clear(): void {
    this.free.length = 0;
  }
}
