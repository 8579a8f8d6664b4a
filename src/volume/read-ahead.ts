import { SECTOR_SIZE } from './luks2-json.js';

const SS = SECTOR_SIZE;

/**
 * Sequential read-ahead: when a FUSE-sized read starts where the previous one
 * ended, the next READ_AHEAD bytes are read from the page cache and decrypted
 * right after the reply has been posted, while the kernel carries the reply
 * and the next request. A FUSE direct read of 1 MiB arrives as eight 128 KiB
 * requests one after the other (no FUSE_ASYNC_DIO in libfuse 2.9), so without
 * it every request waits for its own decrypt; with it the decrypt overlaps the
 * transport and a hit is one memcpy from a buffer still in the CPU cache (for
 * the passthrough too). Measured in docs/perf-notes.md §6.
 */
export const READ_AHEAD = 128 * 1024;

/**
 * One device's read-ahead window: the plaintext of READ_AHEAD bytes (or
 * fewer at the end of the volume) from some sector, while valid. The device
 * decides when to fill it and must invalidate it on every write.
 */
export class ReadAheadWindow {
  private buf: Buffer | null = null;
  private start = 0;
  private bytes = 0;
  private valid = false;
  /** Counters (tests, `ebsd status` some day): windows filled, reads served from them. */
  readonly stats = { prefetched: 0, hits: 0 };

  constructor(private readonly alloc: (len: number) => Buffer) {}

  /**
   * Copy sectors [s0, s0 + length/SS) into `into` at `off` when the window
   * holds all of them. Returns -1 on a miss, 1 when the copy reached the
   * window's end (time to fill the next one), else 0.
   */
  serve(s0: number, length: number, into: Buffer, off: number): -1 | 0 | 1 {
    if (!this.valid || s0 < this.start || s0 * SS + length > this.start * SS + this.bytes) return -1;
    const from = (s0 - this.start) * SS;
    this.buf!.copy(into, off, from, from + length);
    this.stats.hits++;
    return from + length === this.bytes ? 1 : 0;
  }

  /** The buffer to prefetch into (READ_AHEAD bytes); what the window held is dropped. */
  claim(): Buffer {
    this.valid = false;
    return (this.buf ??= this.alloc(READ_AHEAD));
  }

  /** The claimed buffer now holds the plaintext of `bytes` bytes from sector `start`. */
  commit(start: number, bytes: number): void {
    this.start = start;
    this.bytes = bytes;
    this.valid = true;
    this.stats.prefetched++;
  }

  /** Forget what the window holds (any write may have changed it). */
  invalidate(): void {
    this.valid = false;
  }

  /** Forget and wipe (the device stops: no plaintext left behind). */
  wipe(): void {
    this.valid = false;
    this.buf?.fill(0);
    this.buf = null;
  }
}
