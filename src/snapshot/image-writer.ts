import { constants, writev } from 'node:fs';
import { openBackingFile, type FdBackingFile } from '../volume/backing-file.js';
import { startWriteback } from '../native/addon.js';
import type { BlockSink } from './block-pipeline.js';
import { SNAPSHOT_BLOCK_BYTES } from './types.js';

/**
 * The write side of a restore (docs/architecture.md §14.5): blocks taken in
 * manifest order are gathered into runs of consecutive blocks and written
 * with one writev(2) per run (no copy into a bigger buffer), at most
 * `maxWrites` runs at once. Each run written is handed to the kernel's
 * writeback at once (sync_file_range WRITE, native/src/writeback.c), so the
 * disk writes while the next blocks are read and re-encrypted, and the one
 * fdatasync at the end (finish) finds little left: without it the kernel
 * would hold the whole image dirty in the page cache until that fdatasync
 * (a restore is far below the dirty thresholds) and the disk would sit idle
 * until then. Durability is still the fdatasync's alone.
 */
export interface ImageWriterOptions {
  /** Bytes gathered into one writev; default 8 MiB. */
  runBytes?: number;
  /** Runs written at once; default 2. */
  maxWrites?: number;
  /** Start the kernel's writeback of each run written; default true (when the addon offers it). */
  earlyWriteback?: boolean;
}

export interface ImageWriterStats {
  writes: number;
  /** Summed over writes (they overlap each other and the other stages). */
  writeMs: number;
  /** The final fdatasync. */
  syncMs: number;
}

export class ImageWriter implements BlockSink {
  readonly stats: ImageWriterStats = { writes: 0, writeMs: 0, syncMs: 0 };
  private run: Buffer[] = [];
  private runBytes = 0;
  private runStart = 0;
  private nextIndex = -1;
  private readonly inFlight = new Set<Promise<void>>();
  private readonly writebacks = new Set<Promise<void>>();
  private failure: unknown;
  private readonly maxRun: number;
  private readonly maxWrites: number;
  private readonly writeback: boolean;

  private constructor(
    private readonly f: FdBackingFile,
    private readonly dataOffset: number,
    o: ImageWriterOptions,
  ) {
    this.maxRun = Math.max(SNAPSHOT_BLOCK_BYTES, o.runBytes ?? 8 * 1024 * 1024);
    this.maxWrites = Math.max(1, o.maxWrites ?? 2);
    this.writeback = (o.earlyWriteback ?? true) && startWriteback !== null;
  }

  /** Opens an existing image (its header already written) for the data segment at `dataOffset`. */
  static async open(path: string, dataOffset: number, o: ImageWriterOptions = {}): Promise<ImageWriter> {
    return new ImageWriter(await openBackingFile(path, constants.O_RDWR), dataOffset, o);
  }

  async put(index: number, data: Buffer): Promise<void> {
    if (this.failure !== undefined) throw this.failure;
    // A block that is not the next one, or a full run, closes the run.
    if (this.run.length && (index !== this.nextIndex || this.runBytes + data.length > this.maxRun)) this.flush();
    if (!this.run.length) this.runStart = this.dataOffset + index * SNAPSHOT_BLOCK_BYTES;
    this.run.push(data);
    this.runBytes += data.length;
    // A short block (the snapshot's last) ends a run: the next block does not follow it on disk.
    this.nextIndex = data.length === SNAPSHOT_BLOCK_BYTES ? index + 1 : -1;
    while (this.inFlight.size >= this.maxWrites) await Promise.race(this.inFlight);
    if (this.failure !== undefined) throw this.failure;
  }

  /** Writes what is gathered, waits for every write, fdatasyncs and closes. */
  async finish(): Promise<void> {
    this.flush();
    await this.drain();
    if (this.failure !== undefined) throw this.failure;
    const s0 = performance.now();
    await this.f.datasync();
    this.stats.syncMs = performance.now() - s0;
    await this.f.close();
  }

  /** After a failure elsewhere: waits for the writes under way and closes, without syncing. */
  async abort(): Promise<void> {
    this.run = [];
    await this.drain();
    await this.f.close();
  }

  private flush(): void {
    if (!this.run.length) return;
    const bufs = this.run;
    const pos = this.runStart;
    const len = this.runBytes;
    this.run = [];
    this.runBytes = 0;
    const w0 = performance.now();
    const p = writevFully(this.f.fd, bufs, pos)
      .then(() => {
        this.stats.writes++;
        this.stats.writeMs += performance.now() - w0;
        if (this.writeback) {
          // A failure here only ends the overlap: the final fdatasync reports any I/O error of these pages.
          const wb = startWriteback!(this.f.fd, pos, len).catch(() => {});
          this.writebacks.add(wb);
          void wb.finally(() => this.writebacks.delete(wb));
        }
      })
      .catch((e) => {
        this.failure ??= e;
      })
      .finally(() => this.inFlight.delete(p));
    this.inFlight.add(p);
  }

  private async drain(): Promise<void> {
    while (this.inFlight.size) await Promise.all(this.inFlight);
    while (this.writebacks.size) await Promise.all(this.writebacks);
  }
}

/** writev(2) at `pos` until every buffer is written (a short write continues where it stopped). */
async function writevFully(fd: number, bufs: Buffer[], pos: number): Promise<void> {
  let rest = bufs;
  while (rest.length) {
    const n = await new Promise<number>((res, rej) => writev(fd, rest, pos, (e, w) => (e ? rej(e) : res(w))));
    if (n <= 0) throw new Error(`writev wrote ${n} bytes at ${pos}`);
    pos += n;
    let skip = n;
    const left: Buffer[] = [];
    for (const b of rest) {
      if (skip >= b.length) {
        skip -= b.length;
        continue;
      }
      left.push(skip ? b.subarray(skip) : b);
      skip = 0;
    }
    rest = left;
  }
}
