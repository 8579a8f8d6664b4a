import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { SnapshotError } from './errors.js';

/** One captured sector: the unit a CowSession keeps (docs/architecture.md §12.2). */
export const COW_SECTOR = 4096;

/**
 * Where a CowSession puts captured sectors once its memory cap is reached
 * (docs/architecture.md §12.2): a file of 4 KiB slots, written through the
 * page cache, never fsynced (its bytes matter only while the snapshot runs).
 *
 * The file is unlinked as soon as it is open, so it has no name while in
 * use: a crash or SIGKILL leaves nothing behind, and close() frees its
 * space. The snapshot manager also sweeps the directory at start-up, for a
 * crash between the open and the unlink.
 *
 * A slot is written in the background; until the write is done its bytes
 * are served from memory, and a released slot is reused only once its
 * write has finished (two writes of one slot never race).
 */
export class CowSpill {
  private fh: Promise<FileHandle> | undefined;
  private nextSlot = 0;
  private readonly free: number[] = [];
  /** Slots whose write is in flight, with their bytes. */
  private readonly writing = new Map<number, Buffer>();
  /** Slots released while their write was in flight: freed when it ends. */
  private readonly freeLater = new Set<number>();
  private readonly inflight = new Set<Promise<void>>();
  private failure: unknown;
  private closed = false;
  /** Slots in use now, and the most ever (the file's size in slots). */
  used = 0;
  highWater = 0;

  constructor(private readonly path: string) {}

  /** The first write error, if any (the snapshot then fails: its bytes may be missing). */
  get error(): unknown {
    return this.failure;
  }

  /** Keeps a 4 KiB sector; returns its slot. `sector` must not be changed afterwards. */
  put(sector: Buffer): number {
    if (sector.length !== COW_SECTOR) throw new RangeError(`sector must be ${COW_SECTOR} bytes, got ${sector.length}`);
    if (this.closed) throw new SnapshotError('SNAPSHOT_INCORRECT_STATE', `copy-on-write spill file ${this.path} is closed`);
    const slot = this.free.pop() ?? this.nextSlot++;
    this.used++;
    this.highWater = Math.max(this.highWater, this.used);
    this.writing.set(slot, sector);
    const w = this.open()
      .then((fh) => writeAll(fh, sector, slot * COW_SECTOR))
      .then(
        () => {
          this.writing.delete(slot);
          if (this.freeLater.delete(slot)) this.free.push(slot);
        },
        // The bytes stay in `writing` (readable); the snapshot fails on this error.
        (e: unknown) => void (this.failure ??= e),
      )
      .finally(() => this.inflight.delete(w));
    this.inflight.add(w);
    return slot;
  }

  /** Copies slot `slot` into into[off, off + 4096). */
  async get(slot: number, into: Buffer, off: number): Promise<void> {
    const mem = this.writing.get(slot);
    if (mem) {
      mem.copy(into, off);
      return;
    }
    const fh = await this.open();
    let done = 0;
    while (done < COW_SECTOR) {
      const { bytesRead } = await fh.read(into, off + done, COW_SECTOR - done, slot * COW_SECTOR + done);
      if (bytesRead === 0) throw new SnapshotError('SNAPSHOT_CORRUPT', `copy-on-write spill file ${this.path}: slot ${slot} is past its end`);
      done += bytesRead;
    }
  }

  /** The slot's bytes are no longer needed. */
  release(slot: number): void {
    this.used--;
    if (this.writing.has(slot)) this.freeLater.add(slot);
    else this.free.push(slot);
  }

  /** Waits for writes in flight, closes (and so frees) the file. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.inflight]);
    this.writing.clear();
    const fh = this.fh;
    this.fh = undefined;
    if (fh) await (await fh.catch(() => undefined))?.close().catch(() => {});
  }

  private open(): Promise<FileHandle> {
    this.fh ??= (async () => {
      await fsp.mkdir(dirname(this.path), { recursive: true, mode: 0o700 });
      const fh = await fsp.open(this.path, 'w+', 0o600);
      // Nameless from here on: nothing to leak.
      await fsp.rm(this.path, { force: true });
      return fh;
    })();
    return this.fh;
  }
}

async function writeAll(fh: FileHandle, buf: Buffer, pos: number): Promise<void> {
  let off = 0;
  while (off < buf.length) off += (await fh.write(buf, off, buf.length - off, pos + off)).bytesWritten;
}
