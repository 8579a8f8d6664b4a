import { constants as fsConstants, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { nativeIo } from '../volume/native-io.js';
import { SnapshotError } from './errors.js';
import { BufferPool } from './block-buffers.js';

/** One captured sector: the unit a CowSession keeps (docs/architecture.md §12.2). */
export const COW_SECTOR = 4096;

/** Slots per chunk: the spill file is written 256 KiB at a time. */
const CHUNK_SLOTS = 64;
const CHUNK_BYTES = CHUNK_SLOTS * COW_SECTOR;

interface Chunk {
  /** Slots of this chunk still holding a sector someone needs. */
  live: number;
  /** Slots filled so far (the chunk is written when full). */
  filled: number;
  /** Its bytes while being filled or written; null once they are in the file. */
  buf: Buffer | null;
  writing: boolean;
}

/**
 * Where a CowSession puts captured sectors once its memory cap is reached
 * (docs/architecture.md §12.2): a file of 4 KiB slots, written through the
 * page cache in 256 KiB chunks (one write per 64 sectors, not one per
 * sector), never fsynced (its bytes matter only while the snapshot runs).
 * A chunk is reused once every slot in it was released.
 *
 * The file never has a name (O_TMPFILE in its directory), so a crash or
 * SIGKILL leaves nothing behind, and close() frees its space. On a
 * filesystem without O_TMPFILE it is unlinked as soon as it is open, and the
 * snapshot manager sweeps the directory at start-up for a crash between the
 * open and the unlink.
 *
 * Until a chunk's write is done its bytes are served from memory; a chunk is
 * reused only once its write has finished (two writes of one place never race).
 */
export class CowSpill {
  private fh: Promise<FileHandle> | undefined;
  private readonly chunks = new Map<number, Chunk>();
  private nextChunk = 0;
  private readonly freeChunks: number[] = [];
  private current = -1;
  private readonly inflight = new Set<Promise<void>>();
  private failure: unknown;
  private closed = false;
  /** The open file's descriptor, once open (the synchronous read in getNow). */
  private fd = -1;
  /** Chunk buffers whose write is done, reused for the next chunks (block-buffers.ts says why). */
  private readonly bufs = new BufferPool(CHUNK_BYTES, 16);
  /** Slots in use now, and the file's size at its largest, in chunks. */
  used = 0;
  highWaterChunks = 0;

  constructor(private readonly path: string) {}

  /** The first write error, if any (the snapshot then fails: its bytes may be missing). */
  get error(): unknown {
    return this.failure;
  }

  /** The file's size at its largest, in bytes. */
  get highWaterBytes(): number {
    return this.highWaterChunks * CHUNK_BYTES;
  }

  /** Keeps the 4 KiB sector src[off, off + 4096); returns its slot. */
  put(src: Buffer, off: number): number {
    if (this.closed) throw new SnapshotError('SNAPSHOT_INCORRECT_STATE', `copy-on-write spill file ${this.path} is closed`);
    if (this.current < 0) {
      this.current = this.freeChunks.pop() ?? this.nextChunk++;
      this.highWaterChunks = Math.max(this.highWaterChunks, this.nextChunk);
      this.chunks.set(this.current, { live: 0, filled: 0, buf: this.bufs.take(), writing: false });
    }
    const id = this.current;
    const c = this.chunks.get(id)!;
    src.copy(c.buf!, c.filled * COW_SECTOR, off, off + COW_SECTOR);
    const slot = id * CHUNK_SLOTS + c.filled;
    c.filled++;
    c.live++;
    this.used++;
    if (c.filled === CHUNK_SLOTS) {
      this.current = -1;
      this.write(id, c);
    }
    return slot;
  }

  /**
   * Copies slot `slot` into into[off, off + 4096) without waiting: from the
   * chunk's memory, or from the page cache (preadv2 RWF_NOWAIT). False when
   * neither has it now; then get() reads it.
   */
  getNow(slot: number, into: Buffer, off: number): boolean {
    const c = this.chunks.get(Math.floor(slot / CHUNK_SLOTS));
    if (!c) return false;
    const at = (slot % CHUNK_SLOTS) * COW_SECTOR;
    if (c.buf) {
      c.buf.copy(into, off, at, at + COW_SECTOR);
      return true;
    }
    if (this.fd < 0 || !nativeIo) return false;
    return nativeIo.preadNowait(this.fd, into, off, COW_SECTOR, slot * COW_SECTOR) === COW_SECTOR;
  }

  /** Copies slot `slot` into into[off, off + 4096). */
  async get(slot: number, into: Buffer, off: number): Promise<void> {
    const c = this.chunks.get(Math.floor(slot / CHUNK_SLOTS));
    if (!c) throw new SnapshotError('SNAPSHOT_CORRUPT', `copy-on-write spill file ${this.path}: slot ${slot} is not in use`);
    const at = (slot % CHUNK_SLOTS) * COW_SECTOR;
    if (c.buf) {
      c.buf.copy(into, off, at, at + COW_SECTOR);
      return;
    }
    const fh = await this.open();
    let done = 0;
    // Written moments ago and never fsynced: the page cache has it, and a read there costs less on the loop than a pool round trip.
    if (nativeIo) done = Math.max(0, nativeIo.preadNowait(fh.fd, into, off, COW_SECTOR, slot * COW_SECTOR));
    while (done < COW_SECTOR) {
      const { bytesRead } = await fh.read(into, off + done, COW_SECTOR - done, slot * COW_SECTOR + done);
      if (bytesRead === 0) throw new SnapshotError('SNAPSHOT_CORRUPT', `copy-on-write spill file ${this.path}: slot ${slot} is past its end`);
      done += bytesRead;
    }
  }

  /** Chunk buffers allocated so far (the others were reused). */
  get chunkBuffersAllocated(): number {
    return this.bufs.allocated;
  }

  /** Resolves once every chunk write started so far has ended. */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.inflight]);
  }

  /** The slot's bytes are no longer needed. */
  release(slot: number): void {
    const id = Math.floor(slot / CHUNK_SLOTS);
    const c = this.chunks.get(id);
    if (!c) return;
    this.used--;
    c.live--;
    this.maybeFree(id, c);
  }

  /** Waits for writes in flight, closes (and so frees) the file. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.inflight]);
    this.chunks.clear();
    this.bufs.clear();
    const fh = this.fh;
    this.fh = undefined;
    this.fd = -1;
    if (fh) await (await fh.catch(() => undefined))?.close().catch(() => {});
  }

  private write(id: number, c: Chunk): void {
    c.writing = true;
    const buf = c.buf!;
    const w = this.open()
      .then((fh) => writeAll(fh, buf, id * CHUNK_BYTES))
      .then(
        () => {
          c.writing = false;
          c.buf = null;
          this.bufs.give(buf);
          this.maybeFree(id, c);
        },
        // The bytes stay in c.buf (readable); the snapshot fails on this error.
        (e: unknown) => void (this.failure ??= e),
      )
      .finally(() => this.inflight.delete(w));
    this.inflight.add(w);
  }

  private maybeFree(id: number, c: Chunk): void {
    if (c.live > 0 || c.writing || id === this.current) return;
    this.chunks.delete(id);
    this.freeChunks.push(id);
  }

  private open(): Promise<FileHandle> {
    this.fh ??= (async () => {
      await fsp.mkdir(dirname(this.path), { recursive: true, mode: 0o700 });
      const fh = await openNameless(this.path);
      if (!this.closed) this.fd = fh.fd;
      return fh;
    })();
    return this.fh;
  }
}

/**
 * Linux's O_TMPFILE: __O_TMPFILE (the same on x86 and arm64) | O_DIRECTORY
 * (which differs between them: taken from fs.constants). Node's
 * fs.constants does not carry O_TMPFILE itself.
 */
const O_TMPFILE = 0o20000000 | fsConstants.O_DIRECTORY;

/** An unnamed file in path's directory; open-then-unlink where the filesystem has no O_TMPFILE. */
async function openNameless(path: string): Promise<FileHandle> {
  try {
    return await fsp.open(dirname(path), O_TMPFILE | fsConstants.O_RDWR, 0o600);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'EOPNOTSUPP' && code !== 'EISDIR' && code !== 'EINVAL') throw e;
  }
  const fh = await fsp.open(path, 'w+', 0o600);
  await fsp.rm(path, { force: true });
  return fh;
}

async function writeAll(fh: FileHandle, buf: Buffer, pos: number): Promise<void> {
  let off = 0;
  while (off < buf.length) off += (await fh.write(buf, off, buf.length - off, pos + off)).bytesWritten;
}
