import type { Logger } from 'pino';
import { ioError } from './backing-file.js';
import type { BackingIo } from './backing-io.js';
import { SYNC_WRITE_MAX } from './backing-io.js';
import { VolumeError } from './errors.js';
import { streamPoller } from './native-io.js';
import type { SectorRangeLock } from './sector-lock.js';
import { SS } from './sector-geometry.js';

export interface WriteBehindOptions {
  volumeId: string;
  io: BackingIo;
  lock: SectorRangeLock;
  /** The device's encrypt step (seal), for a whole-sector run whose first sector is `first`. */
  seal(buf: Uint8Array, first: number): Promise<void> | void;
  /** Called once per accepted write when it is in the backing file, or lost. */
  settled(): void;
  logger: Logger;
}

/**
 * Write-behind for one device (docs/architecture.md §3.3): an aligned write
 * of up to SYNC_WRITE_MAX bytes that no other write contends with is copied
 * and acknowledged; its completion (seal + pwrite into the page cache) runs
 * right after the reply. Like a disk's volatile write cache, it is durable
 * only after a flush, which waits for it. If a completion fails (the pwrite
 * that normally cannot: ENOSPC is kept away by the free-space gate), the
 * error is logged, reported by every later flush, and write-behind stops.
 */
export class WriteBehind {
  /** A completion still running on the pool (rare: the page cache did not take it at once); reads and flushes wait for it. */
  pending: Promise<void> | null = null;
  /** The first completion that failed after its reply. */
  lost: VolumeError | null = null;
  /** Sector after the last write-behind (-1: none): a write starting there continues a sequential stream. */
  private lastEnd = -1;

  constructor(private readonly o: WriteBehindOptions) {}

  /**
   * Accept [offset, offset + data.length) of a volume of `size` bytes: copy
   * it, take its sectors in the range lock, and return the completion to run
   * before any other request of the device; null when this write must be
   * written through (unaligned, contended, too large, a completion still
   * pending or lost, no synchronous writes on this file, low free space, a
   * write gate that may refuse it).
   */
  accept(offset: number, data: Uint8Array, size: number): (() => void) | null {
    const len = data.length;
    if (this.lost !== null || this.pending !== null || !this.o.io.cached ||
        len === 0 || len > SYNC_WRITE_MAX || offset % SS !== 0 || len % SS !== 0 ||
        !Number.isSafeInteger(offset) || offset < 0 || offset + len > size || !this.o.io.roomForBehind(len)) {
      return null;
    }
    const s0 = offset / SS;
    const s1 = s0 + len / SS;
    if (this.o.lock.overlaps(s0, s1)) return null;
    const release = this.o.lock.acquire(s0, s1) as () => void;
    if (s0 === this.lastEnd) streamPoller.request();
    this.lastEnd = s1;
    const buf = this.o.io.pool.take(len);
    buf.set(data);
    return () => this.complete(buf, s0, release);
  }

  private complete(buf: Buffer, s0: number, release: () => void): void {
    let sealed = false;
    let put = -1;
    let sealing: Promise<void> | void;
    const finish = (): void => {
      if (!sealed) buf.fill(0); // may still hold plaintext
      this.o.io.pool.give(buf);
      release();
      this.o.settled();
    };
    try {
      sealing = this.o.seal(buf, s0);
      if (sealing === undefined) {
        sealed = true;
        put = this.o.io.writeCached(buf, s0 * SS);
        if (put === buf.length) return finish();
      }
    } catch (e) {
      this.lose(e, s0);
      return finish();
    }
    // Rare (the page cache did not take it all at once, or the write gate
    // said wait): finish on the pool; reads, flushes and further
    // write-behinds wait for it.
    this.pending = (async () => {
      try {
        if (!sealed) { await sealing; sealed = true; }
        await this.o.io.writeFull(buf, s0 * SS, put);
      } catch (e) {
        this.lose(e, s0);
      } finally {
        this.pending = null;
        finish();
      }
    })();
  }

  private lose(e: unknown, s0: number): void {
    const cause = ioError(e, `volume ${this.o.volumeId} sector ${s0}: write`);
    // Its cause is named in the message, not chained: the FUSE boundary reads errno from the
    // cause chain (src/fuse/errno.ts), and a lost write is EIO at every later flush (README,
    // "Durability and the data path"), not the ENOSPC of the moment it was lost, which no
    // longer holds once space is freed while the data is still gone.
    this.lost ??= new VolumeError('VOLUME_IO', `volume ${this.o.volumeId}: a write acknowledged earlier could not be written (${cause.message})`);
    this.o.logger.error({ volumeId: this.o.volumeId, sector: s0, err: { code: cause.code, message: cause.message } }, 'write-behind failed after its reply; every later flush reports it');
  }
}
