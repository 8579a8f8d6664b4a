import { SS } from './sector-geometry.js';
import { streamPoller } from './native-io.js';

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

export interface ReadAheadHost {
  /** A buffer for the window (the device's allocBuffer). */
  alloc(len: number): Buffer;
  /**
   * Whether a prefetch may run now: the device is live and no write is in
   * progress (a write may be half in the page cache) or still behind.
   */
  quiet(): boolean;
  /** Volume size in sectors now (it may grow). */
  sectors(): number;
  /**
   * Read sectors [s, s + buf.length / SS) from the page cache into `buf` and
   * decrypt them on the loop; false when that cannot be done at once (a miss,
   * an error: the request itself will meet and report it).
   */
  fill(buf: Buffer, s: number): boolean;
}

/**
 * Read-ahead scheduling for one device (docs/architecture.md §3.4): tells a
 * sequential read from a random one, serves reads from the window, and
 * prefetches the next READ_AHEAD bytes once the current reply is on its way:
 * setImmediate runs after the FUSE adapter's callback has posted the reply
 * (fuse-native signals from process.nextTick), so the work overlaps the
 * kernel's transport instead of delaying the reply. Also nudges the stream
 * poller between two requests of a sequential stream (native-io.ts).
 */
export class ReadAhead {
  private readonly window: ReadAheadWindow;
  /** Sector after the last fast-path read (-1: none): a read starting here is sequential. */
  private lastEnd = -1;
  /** Sector the scheduled prefetch will start at; -1 when none is scheduled. */
  private next = -1;

  constructor(private readonly host: ReadAheadHost) {
    this.window = new ReadAheadWindow((len) => host.alloc(len));
  }

  get stats(): { readonly prefetched: number; readonly hits: number } {
    return this.window.stats;
  }

  /**
   * A whole-sector read of [s0, s1) begins: whether it continues the
   * previous one. Then serve() it from the window, or after() once it was
   * read and decrypted on the loop.
   */
  begin(s0: number, s1: number): boolean {
    const sequential = s0 === this.lastEnd;
    this.lastEnd = s1;
    return sequential;
  }

  /** Serve the read from the window if it holds all of it (true), scheduling the next prefetch when it ran out. */
  serve(s0: number, length: number, into: Buffer, off: number, sequential: boolean): boolean {
    const hit = this.window.serve(s0, length, into, off);
    if (hit < 0) return false;
    if (hit === 1) this.schedule(s0 + length / SS);
    if (sequential) streamPoller.request();
    return true;
  }

  /** The read ending at sector s1 was served from the page cache. */
  after(s1: number, length: number, sequential: boolean): void {
    // Only for FUSE-sized requests: a larger one would not fit in what we prefetch.
    if (sequential && length <= READ_AHEAD) {
      this.schedule(s1);
      streamPoller.request();
    }
  }

  /** Forget what the window holds (every write calls this). */
  invalidate(): void {
    this.window.invalidate();
  }

  /** Forget and wipe (the device stops). */
  wipe(): void {
    this.window.wipe();
  }

  private schedule(s: number): void {
    if (this.next < 0) setImmediate(this.run);
    this.next = s;
  }

  private readonly run = (): void => {
    const s = this.next;
    this.next = -1;
    const total = this.host.sectors();
    if (s < 0 || s >= total || !this.host.quiet()) return;
    const n = Math.min(READ_AHEAD, (total - s) * SS);
    const buf = this.window.claim();
    if (this.host.fill(buf.subarray(0, n), s)) this.window.commit(s, n);
  };
}
