import type { Logger } from 'pino';
import { silentLogger } from '../util/logger.js';
import { checkSafeInt, ArgTypeError } from '../util/errors.js';
import type { BlockDevice } from './types.js';
import { ioError, type BackingFile } from './backing-file.js';
import { BackingIo, SYNC_WRITE_MAX } from './backing-io.js';
import { SectorRangeLock } from './sector-lock.js';
import { VolumeError } from './errors.js';
import { SS, PARALLEL_MIN, chunkBytes, endSector, firstSector, isWholeSectors, settleAll } from './sector-geometry.js';
import { ReadAhead } from './read-ahead.js';
import { WriteBehind } from './write-behind.js';
import type { SnapshotSource, WriteGate } from './write-gate.js';
import { WritePause } from './write-pause.js';

export interface SectorDeviceOptions {
  volumeId: string;
  /** Volume size in bytes, a multiple of 4096. */
  size: number;
  backing: BackingFile;
  /** Byte offset of sector 0 in the backing file (LUKS2 segment offset). */
  dataOffset: number;
  logger?: Logger;
}

/** How the FUSE adapter learns a write's outcome: once, with an error or the bytes written. */
export type WriteReply = (err: unknown, written: number) => void;

/**
 * The sector I/O path shared by the encrypted device and the plaintext
 * passthrough (docs/architecture.md §3): split into 4 KiB sectors,
 * read-modify-write the partial first/last sector under the sector-range
 * lock, transform whole runs in one call, one pread/pwrite per run. Reads
 * and writes reach the disk only through BackingIo; read-ahead and
 * write-behind are collaborators (read-ahead.ts, write-behind.ts).
 */
export abstract class SectorDevice implements BlockDevice, SnapshotSource {
  readonly volumeId: string;
  abstract readonly unencrypted: boolean;
  protected readonly log: Logger;
  /** Whether seal() changes the bytes (false for the passthrough): decides if a write may skip the copy. */
  protected abstract readonly transforms: boolean;
  private _size: number;
  private readonly io: BackingIo;
  private readonly lock = new SectorRangeLock();
  private inFlight = 0;
  private drainWaiters: (() => void)[] = [];
  private failure: VolumeError | null = null;
  private readonly ra: ReadAhead;
  private readonly behind: WriteBehind;
  /** Accepted writes, and the hold withWritesPaused puts on new ones. */
  private readonly writes = new WritePause();
  /** The first close(): later calls answer the same. */
  private closing: Promise<void> | null = null;

  constructor(o: SectorDeviceOptions) {
    checkSafeInt('size', o.size, SS);
    if (o.size % SS !== 0) throw new RangeError(`size must be a multiple of ${SS}`);
    this.volumeId = o.volumeId;
    this._size = o.size;
    this.log = o.logger ?? silentLogger;
    this.io = new BackingIo(o.backing, { volumeId: o.volumeId, dataOffset: o.dataOffset, logger: this.log });
    this.ra = new ReadAhead({
      alloc: (len) => this.allocBuffer(len),
      quiet: () => this.failure === null && this.behind.pending === null && this.lock.size === 0,
      sectors: () => this._size / SS,
      fill: (buf, s) => this.fillCached(buf, s),
    });
    this.behind = new WriteBehind({
      volumeId: o.volumeId, io: this.io, lock: this.lock, logger: this.log,
      seal: (buf, first) => this.seal(buf, first),
      settled: () => this.leaveWrite(),
    });
  }

  /** Read-ahead counters (tests, `ebsd status` some day): windows prefetched, reads served from them. */
  get readAheadStats(): { readonly prefetched: number; readonly hits: number } {
    return this.ra.stats;
  }

  /** A buffer suited to this device's I/O (aligned for O_DIRECT: reads go straight into it). */
  allocBuffer(len: number): Buffer {
    return this.io.allocBuffer(len);
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
   * sectors, backing file in the page cache): the read-ahead window, or one
   * preadv2(RWF_NOWAIT) on the event loop straight into the caller's buffer,
   * decrypt in place, and the returned promise is already resolved. A miss
   * or anything else takes the general path on the libuv pool.
   */
  read(offset: number, length: number, into: Buffer, intoOffset = 0): Promise<number> {
    // A write-behind finishing on the pool (rare) is not in the page cache yet: wait for it.
    if (this.behind.pending !== null) return this.behind.pending.then(() => this.read(offset, length, into, intoOffset));
    if (this.io.cached && this.failure === null && isWholeSectors(offset, length) && length > 0 && Buffer.isBuffer(into) &&
        Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && offset + length <= this._size &&
        Number.isSafeInteger(intoOffset) && intoOffset >= 0 && intoOffset + length <= into.length) {
      const s0 = offset / SS;
      const s1 = s0 + length / SS;
      const sequential = this.ra.begin(s0, s1);
      if (this.ra.serve(s0, length, into, intoOffset, sequential)) return Promise.resolve(length);
      let got: number;
      try {
        got = this.io.readCached(into, intoOffset, length, offset);
      } catch (e) {
        return Promise.reject(e);
      }
      if (got === length) return this.unsealCached(into, intoOffset, length, s0, s1, sequential);
      // Partly cached: the general path reads the rest on the pool (it re-reads
      // the head too; a partial hit is rare enough not to bother).
    }
    return this.readSlow(offset, length, into, intoOffset);
  }

  private unsealCached(into: Buffer, intoOffset: number, length: number, s0: number, s1: number, sequential: boolean): Promise<number> {
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
    this.ra.after(s1, length, sequential);
    if (r === undefined) {
      this.leave();
      return Promise.resolve(length);
    }
    return r.then(() => (this.leave(), length), (e: unknown) => { this.leave(); throw e; });
  }

  /** Read-ahead's fill: page cache + decrypt on the loop, or false. */
  private fillCached(buf: Buffer, s: number): boolean {
    try {
      if (this.io.readCached(buf, 0, buf.length, s * SS) !== buf.length) return false;
      const r = this.unseal(buf, s);
      if (r === undefined) return true;
      r.catch(() => {}); // only runs larger than any FUSE request decrypt off the loop
    } catch {
      // the request itself will meet (and report) the error
    }
    return false;
  }

  private async readSlow(offset: number, length: number, into: Buffer, intoOffset: number): Promise<number> {
    this.enter();
    try {
      this.checkRange(offset, length);
      if (!Buffer.isBuffer(into)) throw new ArgTypeError('into', 'a Buffer', into);
      checkSafeInt('intoOffset', intoOffset, 0, into.length - length);
      if (length === 0) return 0;
      const s0 = firstSector(offset);
      const s1 = endSector(offset, length);
      if (isWholeSectors(offset, length)) {
        // Aligned: read ciphertext straight into the caller's buffer, decrypt in place.
        try {
          await this.readRun(into.subarray(intoOffset, intoOffset + length), s0);
          return length;
        } catch (e) {
          // O_DIRECT and a caller buffer the kernel cannot DMA into: bounce through ours.
          if (!(this.io.direct && (e as { cause?: { code?: string } }).cause?.code === 'EINVAL')) throw e;
        }
      }
      const buf = this.io.pool.take((s1 - s0) * SS);
      try {
        await this.readRun(buf, s0);
        const start = offset - s0 * SS;
        buf.copy(into, intoOffset, start, start + length);
      } finally {
        buf.fill(0); // plaintext of whole sectors; the caller only asked for part of it
        this.io.pool.give(buf);
      }
      return length;
    } finally {
      this.leave();
    }
  }

  /** pread + unseal of whole sectors; large runs in parallel chunks (see PARALLEL_MIN). */
  private readRun(buf: Buffer, s0: number): Promise<void> {
    if (buf.length < PARALLEL_MIN) return this.io.readFull(buf, s0 * SS).then(() => this.unseal(buf, s0));
    const step = chunkBytes(buf.length);
    const jobs: Promise<void>[] = [];
    for (let off = 0; off < buf.length; off += step) {
      const part = buf.subarray(off, Math.min(off + step, buf.length));
      const first = s0 + off / SS;
      jobs.push(this.io.readFull(part, first * SS).then(() => this.unseal(part, first)));
    }
    return settleAll(jobs);
  }

  /** Write `data` at `offset`. `data` is left as it was (see writeConsuming). */
  write(offset: number, data: Buffer): Promise<number> {
    return this.writeAny(offset, data, false);
  }

  /**
   * As write(), but `data` is the caller's to discard afterwards: its bytes are
   * undefined once this settles (an aligned write is encrypted in place in it,
   * saving a copy of up to 128 KiB per request).
   */
  writeConsuming(offset: number, data: Buffer): Promise<number> {
    return this.writeAny(offset, data, true);
  }

  /**
   * Write-behind: accept an aligned write of up to SYNC_WRITE_MAX bytes by
   * copying it and return its completion, which the caller must run before
   * any other request of this device; null when it must take write()
   * instead (see WriteBehind.accept; also while writes are paused).
   * submitWrite is the one caller that needs this.
   */
  writeBehind(offset: number, data: Uint8Array): (() => void) | null {
    if (this.failure !== null || this.writes.held !== null) return null;
    const complete = this.behind.accept(offset, data, this._size);
    if (complete === null) return null;
    this.inFlight++;
    this.writes.begin();
    this.ra.invalidate();
    return complete;
  }

  /**
   * The FUSE adapter's one call per write request, whose buffer `data` is
   * libfuse's request memory (dropped after the reply, never read back by the
   * kernel, so it may be encrypted in place). `reply` is called exactly once
   * and must post the reply synchronously (fuse-native's callback signals it
   * from process.nextTick). With `behind`, a write write-behind accepts is
   * replied to at once and completed in the nextTick queued right after that
   * signal: on the loop while the libfuse thread replies, and before any
   * other request of this device can run (requests arrive as uv_async
   * callbacks, after the nextTick queue). A flush waits for it.
   */
  submitWrite(offset: number, data: Buffer, behind: boolean, reply: WriteReply): void {
    if (behind) {
      const complete = this.writeBehind(offset, data);
      if (complete !== null) {
        reply(null, data.length);
        process.nextTick(complete);
        return;
      }
    }
    this.writeConsuming(offset, data).then((n) => reply(null, n), (e: unknown) => reply(e, 0));
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
    const s0 = firstSector(offset);
    const s1 = endSector(offset, len);
    const got = this.lock.acquire(s0, s1);
    if (typeof got !== 'function' || !isWholeSectors(offset, len)) return this.writeSlow(offset, data, s0, s1, got);
    const release = got;
    // Aligned and uncontended. Write from the caller's buffer when we may (the
    // passthrough never changes it; a consuming caller lets us encrypt in it),
    // unless O_DIRECT needs our aligned buffer.
    const inPlace = !this.io.direct && (!this.transforms || consume);
    const buf = inPlace ? data : this.io.pool.take(len);
    let handedOff = false;
    let sealed = false;
    try {
      if (!inPlace) buf.set(data);
      const sealing = this.seal(buf, s0);
      if (sealing !== undefined) {
        handedOff = true;
        return this.finishWrite(sealing, buf, inPlace, s0, release);
      }
      sealed = true;
      const put = this.io.writeCached(buf, offset);
      if (put === len) return len;
      handedOff = true;
      return this.finishWrite(undefined, buf, inPlace, s0, release, put);
    } finally {
      if (!handedOff) {
        if (!inPlace) this.recycle(buf as Buffer, sealed);
        release();
      }
    }
  }

  /** The rest of a fast-path write that has to wait: seal on the pool, and/or pwrite the remainder there. */
  private async finishWrite(sealing: Promise<void> | undefined, buf: Uint8Array, inPlace: boolean, s0: number,
    release: () => void, done = -1): Promise<number> {
    let sealed = sealing === undefined;
    try {
      if (sealing) {
        await sealing;
        sealed = true;
        done = buf.length <= SYNC_WRITE_MAX ? this.io.writeCached(buf, s0 * SS) : -1;
      }
      if (done < buf.length) await this.io.writeFull(buf, s0 * SS, done);
      return buf.length;
    } finally {
      if (!inPlace) this.recycle(buf as Buffer, sealed);
      release();
    }
  }

  private async writeSlow(offset: number, data: Uint8Array, s0: number, s1: number, got: (() => void) | Promise<() => void>): Promise<number> {
    const end = offset + data.length;
    const n = s1 - s0;
    const release = typeof got === 'function' ? got : await got;
    const buf = this.io.pool.take(n * SS);
    let sealed = false;
    try {
      // Read-modify-write of the partial first and last sector, under the range lock.
      const headPartial = offset % SS !== 0;
      const tailPartial = end % SS !== 0;
      if (headPartial || (tailPartial && n === 1)) {
        const h = buf.subarray(0, SS);
        await this.io.readFull(h, s0 * SS);
        await this.unseal(h, s0);
      }
      if (tailPartial && n > 1) {
        const t = buf.subarray((n - 1) * SS);
        await this.io.readFull(t, (s1 - 1) * SS);
        await this.unseal(t, s1 - 1);
      }
      buf.set(data, offset - s0 * SS);
      this.checkLive(); // the key may have been withdrawn while we waited for the lock
      await this.seal(buf, s0);
      sealed = true;
      const done = n * SS <= SYNC_WRITE_MAX ? this.io.writeCached(buf, s0 * SS) : -1;
      if (done < buf.length) await this.io.writeFull(buf, s0 * SS, done);
    } finally {
      this.recycle(buf, sealed);
      release();
    }
    return data.length;
  }

  /** Back to the scratch pool; a buffer that may still hold plaintext is wiped first. */
  private recycle(buf: Buffer, sealed: boolean): void {
    if (!sealed) buf.fill(0);
    this.io.pool.give(buf);
  }

  async flush(): Promise<void> {
    this.enter();
    try {
      if (this.behind.pending !== null) await this.behind.pending;
      await this.io.datasync();
    } catch (e) {
      throw ioError(e, `volume ${this.volumeId}: fdatasync`);
    } finally {
      this.leave();
    }
    if (this.behind.lost !== null) throw this.behind.lost;
  }

  /** SnapshotSource: the backing file is open O_DIRECT (a snapshot's own read handle opens it so too). */
  get backingDirect(): boolean {
    return this.io.direct;
  }

  /** SnapshotSource: the gate every later write passes (undefined removes it); docs/architecture.md §3.7. */
  setWriteGate(gate: WriteGate | undefined): void {
    this.io.setGate(gate ?? null);
  }

  /**
   * SnapshotSource: hold new writes, drain accepted ones (write-behind
   * included), run `fn`, release. A write waiting in the gate's pass() is
   * accepted, so the pause waits for it: pass() must not wait for a pause.
   */
  withWritesPaused<T>(fn: () => Promise<T> | T): Promise<T> {
    return this.writes.run(fn);
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

  /**
   * Detach path: refuse new I/O, drain, fdatasync, `wipe`, close the backing
   * fd. Rejects when the volume's last writes may be lost: the fdatasync or
   * the close failed, or a write-behind acknowledged earlier could not be
   * written (docs/architecture.md §3.3); the key is wiped and the fd closed
   * either way. Idempotent: a second call answers what the first did, and
   * never closes the fd number again (it may belong to another file by then).
   */
  close(wipeKey?: () => void): Promise<void> {
    return (this.closing ??= this.closeOnce(wipeKey));
  }

  private async closeOnce(wipeKey?: () => void): Promise<void> {
    this.failure ??= new VolumeError('VOLUME_CLOSED', `volume ${this.volumeId} is detached`);
    await this.drain();
    let error: VolumeError | null = null;
    try {
      await this.io.datasync().catch((e) => {
        error = ioError(e, `volume ${this.volumeId}: fdatasync on detach`);
      });
    } finally {
      wipeKey?.();
      this.ra.wipe();
      await this.io.close().catch((e) => {
        error ??= ioError(e, `volume ${this.volumeId}: close on detach`);
      });
    }
    // The lost write is the older failure and the one a caller must hear of: its data never reached the file.
    const lost = this.behind.lost ?? error;
    if (lost) {
      this.log.error({ volumeId: this.volumeId, err: { code: lost.code, message: lost.message } }, 'detach: the last writes may be lost');
      throw lost;
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

  private leaveWrite(): void {
    this.writes.end();
    this.leave();
  }

  private checkLive(): void {
    if (this.failure) throw this.failure;
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this._size) {
      throw new VolumeError('VOLUME_OUT_OF_RANGE', `volume ${this.volumeId}: [${offset}, +${length}) outside [0, ${this._size})`);
    }
  }
}
