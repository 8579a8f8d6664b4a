import type { Logger } from 'pino';
import { silentLogger } from '../util/logger.js';
import { checkSafeInt, ArgTypeError } from '../util/errors.js';
import type { BlockDevice } from './types.js';
import { FdBackingFile, ioError, type BackingFile } from './backing-file.js';
import { nativeIo, syncWriteGuard, syncWriteSafe, streamPoller, EAGAIN, EOPNOTSUPP } from './native-io.js';
import { SectorRangeLock } from './sector-lock.js';
import { VolumeError } from './errors.js';
import { SECTOR_SIZE } from './luks2-json.js';
import { ScratchPool } from './scratch-pool.js';
import { READ_AHEAD, ReadAheadWindow } from './read-ahead.js';
import { FreeSpaceGate } from './free-space.js';
import type { SnapshotSource, WriteGate } from './write-gate.js';
import { WritePause } from './write-pause.js';

const SS = SECTOR_SIZE;
/**
 * Runs from this size up are split into chunks that proceed independently
 * (pread, then decrypt, each on the libuv pool), so one large request keeps
 * both the disk/page-cache copy and the cipher busy on every core instead of
 * doing pread-then-decrypt serially on one (docs/architecture.md §3.1). Measured in
 * docs/benchmarks.md (Block device).
 */
export const PARALLEL_MIN = 128 * 1024;
/** Split a run into about this many chunks (the libuv pool has 4 threads by default). */
const PARALLEL_CHUNKS = 4;
const MIN_CHUNK = 64 * 1024;
/**
 * Writes up to this size (the largest FUSE request) may be written with a
 * synchronous pwrite on the event loop, under syncWriteGuard's watchdog: a
 * copy into the page cache (~5 µs for 4 KiB, ~30 µs for 128 KiB) costs less
 * than the libuv pool round trip, and O_DIRECT writes to one FUSE file are
 * serialised by the kernel, so a write's latency is the file's write
 * throughput (docs/perf-notes.md §1, §4.2, §5). Measured: 4 KiB random write
 * 11.7k -> 16.6k IOPS encrypted at 16 KiB; raising it to 128 KiB took 1 MiB
 * sequential write 615 -> 819 MB/s encrypted.
 */
export const SYNC_WRITE_MAX = 128 * 1024;
/** pwriteTimed's out-parameter: [wall ns, voluntary context switches]; one for the process (the loop is one thread). */
const writeStats = new Float64Array(2);

/** Byte length of each chunk when a `len`-byte run is split (a multiple of the sector size). */
export function chunkBytes(len: number): number {
  return Math.max(MIN_CHUNK, Math.ceil(len / PARALLEL_CHUNKS / SS) * SS);
}

export interface SectorDeviceOptions {
  volumeId: string;
  /** Volume size in bytes, a multiple of 4096. */
  size: number;
  backing: BackingFile;
  /** Byte offset of sector 0 in the backing file (LUKS2 segment offset). */
  dataOffset: number;
  logger?: Logger;
}

/**
 * The sector I/O path shared by the encrypted device and the plaintext
 * passthrough (docs/architecture.md §3): split into 4 KiB sectors, read-modify-write the
 * partial first/last sector under the sector-range lock, transform whole
 * runs in one call, one pread/pwrite per run at dataOffset + pos.
 */
export abstract class SectorDevice implements BlockDevice, SnapshotSource {
  readonly volumeId: string;
  abstract readonly unencrypted: boolean;
  protected readonly backing: BackingFile;
  protected readonly dataOffset: number;
  protected readonly log: Logger;
  private _size: number;
  private readonly lock = new SectorRangeLock();
  private readonly pool: ScratchPool;
  private inFlight = 0;
  private drainWaiters: (() => void)[] = [];
  private failure: VolumeError | null = null;
  /** Backing fd for the page-cache fast paths; -1 when there is none (O_DIRECT, test doubles, no addon). */
  private readonly fastFd: number;
  /** pwritev2(RWF_NOWAIT) works on this file (null: not tried yet). */
  private nowaitWrite: boolean | null = null;
  /** A synchronous pwrite on the event loop is allowed on this file at all (see syncWriteSafe). */
  private readonly syncWriteOk: boolean;
  /** Whether seal() changes the bytes (false for the passthrough): decides if a write may skip the copy. */
  protected abstract readonly transforms: boolean;
  /** Plaintext prefetched by sequential reads (see READ_AHEAD). */
  private readonly ra: ReadAheadWindow;
  /** Sector after the last fast-path read (-1: none): a read starting here is sequential. */
  private lastReadEnd = -1;
  /** Sector after the last write-behind (-1: none): a write starting there continues a sequential stream. */
  private lastWriteEnd = -1;
  /** Sector the scheduled read-ahead will start at; -1 when none is scheduled. */
  private raNext = -1;
  /** A write-behind completion still running on the pool (rare: see writeBehind); reads and flushes wait for it. */
  private behind: Promise<void> | null = null;
  /** The first write-behind that failed after its reply: every later flush reports it, and write-behind stops. */
  private lostWrite: VolumeError | null = null;
  /** Free space on the backing filesystem, for write-behind (see BEHIND_MIN_FREE); null without a fast fd. */
  private readonly space: FreeSpaceGate | null;
  /** Every data write passes it before its bytes reach the backing file (docs/architecture.md §3.7); null: none. */
  private gate: WriteGate | null = null;
  /** Accepted writes, and the hold withWritesPaused puts on new ones. */
  private readonly writes = new WritePause();

  constructor(o: SectorDeviceOptions) {
    checkSafeInt('size', o.size, SS);
    if (o.size % SS !== 0) throw new RangeError(`size must be a multiple of ${SS}`);
    this.volumeId = o.volumeId;
    this._size = o.size;
    this.backing = o.backing;
    this.dataOffset = o.dataOffset;
    this.log = o.logger ?? silentLogger;
    this.pool = new ScratchPool((len) => this.allocBuffer(len));
    const fd = (o.backing as { fd?: unknown }).fd;
    // Only our own FdBackingFile (a double's methods must be called), never O_DIRECT
    // (RWF_NOWAIT does not make a direct read return early: it would wait for the disk).
    this.fastFd = nativeIo !== null && typeof fd === 'number' && !o.backing.direct && o.backing instanceof FdBackingFile ? fd : -1;
    this.syncWriteOk = this.fastFd >= 0 && syncWriteSafe(this.fastFd);
    this.ra = new ReadAheadWindow((len) => this.allocBuffer(len));
    this.space = this.fastFd >= 0 ? new FreeSpaceGate(this.fastFd) : null;
  }

  /** Read-ahead counters (tests, `ebsd status` some day): windows prefetched, reads served from them. */
  get readAheadStats(): { readonly prefetched: number; readonly hits: number } {
    return this.ra.stats;
  }

  /**
   * A buffer suited to this device's I/O: aligned for O_DIRECT when the
   * backing file is opened that way, so an aligned read() into it goes
   * straight from the disk into it with no bounce copy.
   */
  allocBuffer(len: number): Buffer {
    return this.backing.allocBuffer?.(len) ?? Buffer.allocUnsafeSlow(len);
  }

  get size(): number {
    return this._size;
  }

  /** Outstanding read/write/flush calls. */
  get pending(): number {
    return this.inFlight;
  }

  /** Non-null once the device refuses I/O (impaired or closed). */
  get failed(): VolumeError | null {
    return this.failure;
  }

  /**
   * Transform a whole-sector run in place (encrypt), `first` = sector number of
   * buf[0]. Returns undefined when done synchronously (small runs), else a
   * promise: the caller then awaits it, and only then (no extra microtask otherwise).
   */
  protected abstract seal(buf: Uint8Array, first: number): Promise<void> | void;
  /** Inverse of seal; all-zero ciphertext sectors must come out as zeros. Same sync/async contract. */
  protected abstract unseal(buf: Buffer, first: number): Promise<void> | void;

  /**
   * Read `length` bytes at `offset` into `into`. Fast path (aligned whole
   * sectors, backing file in the page cache): one preadv2(RWF_NOWAIT) on the
   * event loop straight into the caller's buffer, decrypt in place, and the
   * returned promise is already resolved: no thread hop and no await. A miss
   * (EAGAIN) or anything else takes the general path on the libuv pool.
   */
  read(offset: number, length: number, into: Buffer, intoOffset = 0): Promise<number> {
    // A write-behind finishing on the pool (rare) is not in the page cache yet: wait for it.
    if (this.behind !== null) return this.behind.then(() => this.read(offset, length, into, intoOffset));
    if (this.fastFd >= 0 && this.failure === null && offset % SS === 0 && length % SS === 0 && length > 0 && Buffer.isBuffer(into) &&
        Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && offset + length <= this._size &&
        Number.isSafeInteger(intoOffset) && intoOffset >= 0 && intoOffset + length <= into.length) {
      const s0 = offset / SS;
      const s1 = s0 + length / SS;
      const sequential = s0 === this.lastReadEnd;
      this.lastReadEnd = s1;
      const hit = this.ra.serve(s0, length, into, intoOffset);
      if (hit >= 0) {
        if (hit === 1) this.scheduleReadAhead(s1);
        if (sequential) streamPoller.request();
        return Promise.resolve(length);
      }
      let got: number;
      try {
        got = this.preadCached(into, intoOffset, length, s0);
      } catch (e) {
        return Promise.reject(ioError(e, `volume ${this.volumeId} sector ${s0}: read`));
      }
      if (got === length) {
        this.inFlight++;
        let r: Promise<void> | void;
        // (FUSE hands over a buffer of exactly the request's size: no subarray object then.)
        const target = intoOffset === 0 && length === into.length ? into : into.subarray(intoOffset, intoOffset + length);
        try {
          r = this.unseal(target, s0);
        } catch (e) {
          this.leave();
          return Promise.reject(e);
        }
        // Only for FUSE-sized requests: a larger one would not fit in what we prefetch.
        if (sequential && length <= READ_AHEAD) {
          this.scheduleReadAhead(s1);
          streamPoller.request();
        }
        if (r === undefined) {
          this.leave();
          return Promise.resolve(length);
        }
        return r.then(() => (this.leave(), length), (e: unknown) => { this.leave(); throw e; });
      }
      // Partly cached: the general path reads the rest on the pool (it re-reads
      // the head too; a partial hit is rare enough not to bother).
    }
    return this.readSlow(offset, length, into, intoOffset);
  }

  /**
   * Fill into[off, off+len) from the page cache with preadv2(RWF_NOWAIT) at
   * sector s0; returns how many bytes it got (len, or less on a miss). Bytes
   * past the end of a short backing file read as zeros (never written).
   */
  private preadCached(into: Buffer, off: number, len: number, s0: number): number {
    const io = nativeIo!;
    const pos = this.dataOffset + s0 * SS;
    let done = 0;
    while (done < len) {
      const n = io.preadNowait(this.fastFd, into, off + done, len - done, pos + done);
      if (n < 0) return done; // EAGAIN: not (all) in the page cache
      if (n === 0) {
        // EOF: the sparse file is shorter than the volume (never written), zeros.
        into.fill(0, off + done, off + len);
        return len;
      }
      done += n;
    }
    return done;
  }

  /**
   * Prefetch and decrypt [s, s + READ_AHEAD) once the current request's reply
   * is on its way: setImmediate runs after the FUSE adapter's callback has
   * posted the reply (fuse-native signals from process.nextTick), so the work
   * overlaps the kernel's transport instead of delaying the reply.
   */
  private scheduleReadAhead(s: number): void {
    if (this.raNext < 0) setImmediate(this.runReadAhead);
    this.raNext = s;
  }

  private readonly runReadAhead = (): void => {
    const s = this.raNext;
    this.raNext = -1;
    // Never while a write is in progress (it may be half in the page cache) or behind.
    if (s < 0 || this.failure !== null || this.behind !== null || this.lock.size > 0 || s * SS >= this._size) return;
    const n = Math.min(READ_AHEAD, this._size - s * SS);
    const buf = this.ra.claim();
    try {
      if (this.preadCached(buf, 0, n, s) !== n) return; // not in the page cache: the request reads it itself
      const run = buf.subarray(0, n);
      const r = this.unseal(run, s);
      if (r !== undefined) {
        // Only runs larger than any FUSE request decrypt off the loop; READ_AHEAD is not one.
        r.catch(() => {});
        return;
      }
    } catch {
      return; // the request itself will meet (and report) the error
    }
    this.ra.commit(s, n);
  };

  private async readSlow(offset: number, length: number, into: Buffer, intoOffset: number): Promise<number> {
    this.enter();
    try {
      this.checkRange(offset, length);
      if (!Buffer.isBuffer(into)) throw new ArgTypeError('into', 'a Buffer', into);
      checkSafeInt('intoOffset', intoOffset, 0, into.length - length);
      if (length === 0) return 0;
      const s0 = Math.floor(offset / SS);
      const s1 = Math.ceil((offset + length) / SS);
      if (offset % SS === 0 && length % SS === 0) {
        // Aligned: read ciphertext straight into the caller's buffer, decrypt in place.
        const target = into.subarray(intoOffset, intoOffset + length);
        try {
          await this.readRun(target, s0);
          return length;
        } catch (e) {
          // O_DIRECT and a caller buffer the kernel cannot DMA into: bounce through ours.
          if (!(this.backing.direct && (e as { cause?: { code?: string } }).cause?.code === 'EINVAL')) throw e;
        }
      }
      const n = (s1 - s0) * SS;
      const buf = this.pool.take(n);
      try {
        await this.readRun(buf, s0);
        const start = offset - s0 * SS;
        buf.copy(into, intoOffset, start, start + length);
      } finally {
        buf.fill(0); // plaintext of whole sectors; the caller only asked for part of it
        this.pool.give(buf);
      }
      return length;
    } finally {
      this.leave();
    }
  }

  /** Write `data` at `offset`. `data` is left as it was (see writeConsuming). */
  write(offset: number, data: Buffer): Promise<number> {
    return this.writeAny(offset, data, false);
  }

  /**
   * As write(), but `data` is the caller's to discard afterwards: its bytes are
   * undefined once this settles (an aligned write is encrypted in place in it,
   * saving a copy of up to 128 KiB per request). For the FUSE adapter, whose
   * write buffer is libfuse's request memory, dropped after the reply; the
   * kernel never reads it back, so ciphertext left there by a failed pwrite
   * does not matter either.
   */
  writeConsuming(offset: number, data: Buffer): Promise<number> {
    return this.writeAny(offset, data, true);
  }

  /**
   * Write-behind, for the FUSE adapter: accept an aligned write of up to
   * SYNC_WRITE_MAX bytes by copying it, so the caller can post its reply
   * before the write is sealed and written. Returns the completion (seal +
   * pwrite into the page cache), or null when this write must take write()
   * instead (unaligned, contended, too large, O_DIRECT or a filesystem where
   * the loop may not write, watchdog tripped, low free space, an earlier
   * write-behind failed).
   *
   * The caller must run the completion before any other request of this
   * device can run: the FUSE adapter calls it from process.nextTick right
   * after fuse-native's own nextTick that posts the reply, so it runs on the
   * event loop while the libfuse thread replies, and every later request
   * (read, write, flush) sees the data. A write that acknowledged O_DIRECT
   * caller thus overlaps the kernel's transport; like a disk's volatile write
   * cache, it is durable only after a flush (fsync), which waits for it. If a
   * completion fails (the pwrite that normally cannot: ENOSPC is kept away by
   * BEHIND_MIN_FREE), the error is logged, reported by every later flush,
   * and write-behind stops for this device.
   */
  writeBehind(offset: number, data: Uint8Array): (() => void) | null {
    const len = data.length;
    if (this.failure !== null || this.lostWrite !== null || this.behind !== null || this.writes.held !== null || this.fastFd < 0 || !this.syncWriteOk ||
        len === 0 || len > SYNC_WRITE_MAX || offset % SS !== 0 || len % SS !== 0 ||
        !Number.isSafeInteger(offset) || offset < 0 || offset + len > this._size || !syncWriteGuard.allowed() || !this.space!.allows(len)) {
      return null;
    }
    const s0 = offset / SS;
    const s1 = s0 + len / SS;
    if (this.lock.overlaps(s0, s1)) return null;
    const release = this.lock.acquire(s0, s1) as () => void;
    if (s0 === this.lastWriteEnd) streamPoller.request();
    this.lastWriteEnd = s1;
    this.inFlight++;
    this.writes.begin();
    this.ra.invalidate();
    const buf = this.pool.take(len) as Buffer;
    buf.set(data);
    return () => this.completeBehind(buf, s0, release);
  }

  private completeBehind(buf: Buffer, s0: number, release: () => void): void {
    let sealed = false;
    let put = -1;
    let sealing: Promise<void> | void;
    const finish = (): void => {
      this.recycle(buf, sealed);
      release();
      this.writes.end();
      this.leave();
    };
    try {
      sealing = this.seal(buf, s0);
      if (sealing === undefined) {
        sealed = true;
        put = this.pwriteCached(buf, s0);
        if (put === buf.length) return finish();
      }
    } catch (e) {
      this.loseWrite(e, s0);
      return finish();
    }
    // Rare (the page cache did not take it all at once): finish on the pool;
    // reads, flushes and further write-behinds wait for it.
    this.behind = (async () => {
      try {
        if (!sealed) { await sealing; sealed = true; }
        await this.pwriteFull(buf, s0, put);
      } catch (e) {
        this.loseWrite(e, s0);
      } finally {
        this.behind = null;
        finish();
      }
    })();
  }

  private loseWrite(e: unknown, s0: number): void {
    const cause = ioError(e, `volume ${this.volumeId} sector ${s0}: write`);
    this.lostWrite ??= new VolumeError('VOLUME_IO', `volume ${this.volumeId}: a write acknowledged earlier could not be written (${cause.message})`, { cause });
    this.log.error({ volumeId: this.volumeId, sector: s0, err: { code: cause.code, message: cause.message } }, 'write-behind failed after its reply; every later flush reports it');
  }

  private writeAny(offset: number, data: Uint8Array, consume: boolean): Promise<number> {
    if (this.writes.held !== null) return this.writes.held.then(() => this.writeAny(offset, data, consume));
    this.ra.invalidate();
    let r: number | Promise<number>;
    try {
      this.enter();
    } catch (e) {
      return Promise.reject(e);
    }
    this.writes.begin();
    try {
      r = this.writeEntered(offset, data, consume);
    } catch (e) {
      this.leaveWrite();
      return Promise.reject(e);
    }
    if (typeof r === 'number') {
      this.leaveWrite();
      return Promise.resolve(r);
    }
    return r.then((n) => (this.leaveWrite(), n), (e: unknown) => { this.leaveWrite(); throw e; });
  }

  private leaveWrite(): void {
    this.writes.end();
    this.leave();
  }

  /**
   * Fast path: an aligned whole-sector write whose range is not locked by
   * another write is sealed and written without any await when the run is
   * small and the page cache takes it at once (then it returns a number).
   * Everything else returns a promise from the general path.
   */
  private writeEntered(offset: number, data: Uint8Array, consume: boolean): number | Promise<number> {
    if (!(data instanceof Uint8Array)) throw new ArgTypeError('data', 'a Buffer', data);
    this.checkRange(offset, data.length);
    const len = data.length;
    if (len === 0) return 0;
    const end = offset + len;
    const s0 = Math.floor(offset / SS);
    const s1 = Math.ceil(end / SS);
    const got = this.lock.acquire(s0, s1);
    if (typeof got !== 'function' || offset % SS !== 0 || end % SS !== 0) return this.writeSlow(offset, data, s0, s1, got);
    const release = got;
    // Aligned and uncontended. Write from the caller's buffer when we may (the
    // passthrough never changes it; a consuming caller lets us encrypt in it),
    // unless O_DIRECT needs our aligned buffer.
    const inPlace = !this.backing.direct && (!this.transforms || consume);
    const buf = inPlace ? data : this.pool.take(len);
    let handedOff = false;
    let sealed = false;
    try {
      if (!inPlace) buf.set(data);
      const sealing = this.seal(buf, s0);
      if (sealing !== undefined) {
        handedOff = true;
        return this.finishWrite(sealing, buf, inPlace, s0, len, release);
      }
      sealed = true;
      const put = this.pwriteCached(buf, s0);
      if (put === len) return len;
      handedOff = true;
      return this.finishWrite(undefined, buf, inPlace, s0, len, release, put);
    } finally {
      if (!handedOff) {
        if (!inPlace) this.recycle(buf as Buffer, sealed);
        release();
      }
    }
  }

  /** The rest of a fast-path write that has to wait: seal on the pool, and/or pwrite the remainder there. */
  private async finishWrite(sealing: Promise<void> | undefined, buf: Uint8Array, inPlace: boolean, s0: number, len: number,
    release: () => void, done = -1): Promise<number> {
    let sealed = sealing === undefined;
    try {
      if (sealing) {
        await sealing;
        sealed = true;
        done = len <= SYNC_WRITE_MAX ? this.pwriteCached(buf, s0) : -1;
      }
      if (done < len) await this.pwriteFull(buf, s0, done);
      return len;
    } finally {
      if (!inPlace) this.recycle(buf as Buffer, sealed);
      release();
    }
  }

  /** Back to the scratch pool; a buffer that may still hold plaintext is wiped first. */
  private recycle(buf: Buffer, sealed: boolean): void {
    if (!sealed) buf.fill(0);
    this.pool.give(buf);
  }

  /**
   * Try to put a sealed run into the page cache without leaving the event
   * loop: pwritev2(RWF_NOWAIT) where the filesystem supports it, else (ext4)
   * a plain pwrite for runs up to SYNC_WRITE_MAX under the watchdog. Returns
   * bytes written, or -1 when the write gate was not passed (not asked, or it
   * answered "wait"); the caller sends the rest to pwriteFull on the pool,
   * with that -1 so it awaits the gate first.
   */
  private pwriteCached(buf: Uint8Array, s0: number): number {
    if (this.fastFd < 0) return -1;
    const pos = this.dataOffset + s0 * SS;
    let passed = this.gate === null;
    try {
      if (this.nowaitWrite !== false) {
        if (!passed) {
          if (!this.gate!.tryPass(s0 * SS, buf.length)) return -1;
          passed = true;
        }
        const n = nativeIo!.pwriteNowait(this.fastFd, buf, 0, buf.length, pos);
        if (n >= 0) { this.nowaitWrite = true; return n; }
        if (n === EAGAIN) return 0;
        if (n === EOPNOTSUPP) this.nowaitWrite = false; // ext4 buffered writes: never will
      }
      if (!this.syncWriteOk || buf.length > SYNC_WRITE_MAX || !syncWriteGuard.allowed()) return passed ? 0 : -1;
      if (!passed) {
        if (!this.gate!.tryPass(s0 * SS, buf.length)) return -1;
        passed = true;
      }
      const n = nativeIo!.pwriteTimed(this.fastFd, buf, 0, buf.length, pos, writeStats);
      syncWriteGuard.record(writeStats[0] / 1e6, writeStats[1] > 0);
      return n;
    } catch {
      // Let the pool path retry and report the error with its sector (ENOSPC, EIO ...).
      return passed ? 0 : -1;
    }
  }

  private async writeSlow(offset: number, data: Uint8Array, s0: number, s1: number, got: (() => void) | Promise<() => void>): Promise<number> {
    const end = offset + data.length;
    const n = s1 - s0;
    const release = typeof got === 'function' ? got : await got;
    const buf = this.pool.take(n * SS);
    let sealed = false;
    try {
      // Read-modify-write of the partial first and last sector, under the range lock.
      const headPartial = offset % SS !== 0;
      const tailPartial = end % SS !== 0;
      if (headPartial || (tailPartial && n === 1)) {
        const h = buf.subarray(0, SS);
        await this.preadFull(h, s0);
        await this.unseal(h, s0);
      }
      if (tailPartial && n > 1) {
        const t = buf.subarray((n - 1) * SS);
        await this.preadFull(t, s1 - 1);
        await this.unseal(t, s1 - 1);
      }
      buf.set(data, offset - s0 * SS);
      this.checkLive(); // the key may have been withdrawn while we waited for the lock
      await this.seal(buf, s0);
      sealed = true;
      const done = n * SS <= SYNC_WRITE_MAX ? this.pwriteCached(buf, s0) : -1;
      if (done < buf.length) await this.pwriteFull(buf, s0, done);
    } finally {
      if (!sealed) buf.fill(0);
      this.pool.give(buf);
      release();
    }
    return data.length;
  }

  async flush(): Promise<void> {
    this.enter();
    try {
      if (this.behind !== null) await this.behind;
      await this.backing.datasync();
    } catch (e) {
      throw ioError(e, `volume ${this.volumeId}: fdatasync`);
    } finally {
      this.leave();
    }
    if (this.lostWrite !== null) throw this.lostWrite;
  }

  /** pread + unseal of whole sectors; large runs in parallel chunks (see PARALLEL_MIN). */
  private readRun(buf: Buffer, s0: number): Promise<void> {
    if (buf.length < PARALLEL_MIN) return this.preadFull(buf, s0).then(() => this.unseal(buf, s0));
    const step = chunkBytes(buf.length);
    const jobs: Promise<void>[] = [];
    for (let off = 0; off < buf.length; off += step) {
      const part = buf.subarray(off, Math.min(off + step, buf.length));
      const first = s0 + off / SS;
      jobs.push(this.preadFull(part, first).then(() => this.unseal(part, first)));
    }
    return settleAll(jobs);
  }

  /** SnapshotSource: the gate every later write passes (undefined removes it). */
  setWriteGate(gate: WriteGate | undefined): void {
    this.gate = gate ?? null;
  }

  /** SnapshotSource: hold new writes, drain accepted ones (write-behind included), run `fn`, release. */
  withWritesPaused<T>(fn: () => Promise<T> | T): Promise<T> {
    return this.writes.run(fn);
  }

  /**
   * SnapshotSource: the on-disk bytes of the data segment [pos, pos + len)
   * (ciphertext for an encrypted volume), zeros past the end of a short file.
   * Never waits for a write: a gate's pass() may call it while a write waits.
   */
  async readRaw(pos: number, len: number, into: Buffer): Promise<void> {
    this.enter();
    try {
      this.checkRange(pos, len);
      if (!Buffer.isBuffer(into)) throw new ArgTypeError('into', 'a Buffer', into);
      if (into.length < len) throw new RangeError(`into must hold at least len (${len}) bytes, has ${into.length}`);
      if (len === 0) return;
      if (!this.backing.direct) return await this.rawRead(into, pos, len);
      // O_DIRECT wants aligned buffers and offsets: whole sectors through our own buffer.
      const s0 = Math.floor(pos / SS);
      const n = Math.ceil((pos + len) / SS) - s0;
      const buf = this.pool.take(n * SS);
      try {
        await this.rawRead(buf, s0 * SS, n * SS);
        buf.copy(into, 0, pos - s0 * SS, pos - s0 * SS + len);
      } finally {
        this.pool.give(buf);
      }
    } finally {
      this.leave();
    }
  }

  private async rawRead(into: Buffer, pos: number, len: number): Promise<void> {
    let off = 0;
    try {
      while (off < len) {
        const n = await this.backing.read(into, off, len - off, this.dataOffset + pos + off);
        if (n === 0) break;
        off += n;
      }
    } catch (e) {
      throw ioError(e, `volume ${this.volumeId} byte ${pos + off}: raw read`);
    }
    if (off < len) into.fill(0, off, len);
  }

  /** Grow (ModifyVolume): the caller has already grown the file and the header. */
  resize(newSize: number): void {
    checkSafeInt('newSize', newSize, this._size);
    if (newSize % SS !== 0) throw new RangeError(`newSize must be a multiple of ${SS}`);
    this._size = newSize;
  }

  /** Resolves when no read/write/flush is in flight. */
  drain(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((r) => this.drainWaiters.push(r));
  }

  /**
   * Refuse all further I/O with `err` (impaired or closed), wait for the
   * calls already running, then run `after` (wipe the key). Idempotent:
   * the first reason wins.
   */
  async fail(err: VolumeError, after?: () => void | Promise<void>): Promise<void> {
    this.failure ??= err;
    await this.drain();
    this.ra.wipe();
    if (after) await after();
  }

  /** Detach path: refuse new I/O, drain, fdatasync, `wipe`, close the backing fd. */
  async close(wipeKey?: () => void): Promise<void> {
    const already = this.failure !== null;
    this.failure ??= new VolumeError('VOLUME_CLOSED', `volume ${this.volumeId} is detached`);
    await this.drain();
    try {
      if (!already || this.failure.code !== 'VOLUME_CLOSED') await this.backing.datasync().catch((e) => {
        this.log.warn({ volumeId: this.volumeId, err: ioError(e, 'fdatasync') }, 'fdatasync on detach failed');
      });
    } finally {
      wipeKey?.();
      this.ra.wipe();
      this.pool.clear();
      await this.backing.close().catch(() => {});
    }
  }

  private enter(): void {
    this.checkLive();
    this.inFlight++;
  }

  private leave(): void {
    if (--this.inFlight === 0 && this.drainWaiters.length) {
      const w = this.drainWaiters;
      this.drainWaiters = [];
      for (const r of w) r();
    }
  }

  private checkLive(): void {
    if (this.failure) throw this.failure;
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this._size) {
      throw new VolumeError('VOLUME_OUT_OF_RANGE', `volume ${this.volumeId}: [${offset}, +${length}) outside [0, ${this._size})`);
    }
  }

  /** One pread of the run; bytes past EOF (never written, beyond a short file) read as zero ciphertext. */
  private async preadFull(buf: Buffer, sector: number): Promise<void> {
    const pos = this.dataOffset + sector * SS;
    let off = 0;
    try {
      while (off < buf.length) {
        const n = await this.backing.read(buf, off, buf.length - off, pos + off);
        if (n === 0) break;
        off += n;
      }
    } catch (e) {
      throw ioError(e, `volume ${this.volumeId} sector ${sector + Math.floor(off / SS)}: read`);
    }
    if (off < buf.length) buf.fill(0, off);
  }

  /** pwrite the rest of a sealed run from `from` on the pool; from = -1: the write gate has not been passed yet. */
  private async pwriteFull(buf: Uint8Array, sector: number, from: number): Promise<void> {
    if (from < 0) {
      from = 0;
      const gate = this.gate;
      if (gate !== null) await gate.pass(sector * SS, buf.length);
    }
    const pos = this.dataOffset + sector * SS;
    let off = from;
    try {
      while (off < buf.length) off += await this.backing.write(buf, off, buf.length - off, pos + off);
    } catch (e) {
      const err = ioError(e, `volume ${this.volumeId} sector ${sector + Math.floor(off / SS)}: write`);
      this.log.warn({ volumeId: this.volumeId, sector: sector + Math.floor(off / SS), err: { code: err.code, message: err.message } }, 'backing write failed');
      throw err;
    }
  }
}

/**
 * Wait for every job, then fail with the first error. Unlike Promise.all it
 * never returns while a chunk is still being read or transformed in place,
 * so the caller may recycle or wipe the buffer as soon as it settles.
 */
export async function settleAll(jobs: Promise<void>[]): Promise<void> {
  const r = await Promise.allSettled(jobs);
  for (const x of r) if (x.status === 'rejected') throw x.reason;
}
