import { fstatSync } from 'node:fs';
import type { Logger } from 'pino';
import { FdBackingFile, ioError, type BackingFile } from './backing-file.js';
import { nativeIo, syncWriteGuard, syncWriteSafe, EAGAIN, EOPNOTSUPP } from './native-io.js';
import { FreeSpaceGate } from './free-space.js';
import { ScratchPool } from './scratch-pool.js';
import { SS } from './sector-geometry.js';
import type { WriteGate } from './write-gate.js';

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

/** What one filesystem answered to RWF_NOWAIT (null: not asked yet), by st_dev. */
interface NowaitCaps { read: boolean | null; write: boolean | null }
const capsByFs = new Map<bigint, NowaitCaps>();

export interface BackingIoOptions {
  volumeId: string;
  /** Byte offset of data-segment byte 0 in the file (the LUKS2 segment offset). */
  dataOffset: number;
  logger: Logger;
}

/**
 * The only door from a volume's data path to the disk (docs/architecture.md
 * §3): every byte the device reads or writes in its backing file passes
 * here. It owns the page-cache fast paths (preadv2/pwritev2 with RWF_NOWAIT,
 * remembering per filesystem whether the kernel supports them for reads and
 * for writes), the synchronous pwrite on the event loop under the watchdog
 * (syncWriteGuard), pool I/O, the free-space gate write-behind needs, the
 * write gate a snapshot installs (every write passes it before its bytes
 * reach the file) and errors as typed volume errors naming the sector.
 *
 * Positions are data-segment byte offsets. The BackingFile it wraps is the
 * raw file (tests hand in doubles); the fast paths need our own
 * FdBackingFile, not opened O_DIRECT, and the addon.
 */
export class BackingIo {
  readonly direct: boolean;
  /** Scratch buffers this file can do I/O with (aligned for O_DIRECT). */
  readonly pool: ScratchPool;
  private readonly volumeId: string;
  private readonly dataOffset: number;
  private readonly log: Logger;
  /** fd for the page-cache fast paths; -1 when there is none (O_DIRECT, test doubles, no addon). */
  private readonly fd: number;
  private readonly caps: NowaitCaps;
  /** A synchronous pwrite on the event loop is allowed on this file at all (see syncWriteSafe). */
  private readonly syncWriteOk: boolean;
  private readonly space: FreeSpaceGate | null;
  private gate: WriteGate | null = null;

  constructor(private readonly file: BackingFile, o: BackingIoOptions) {
    this.volumeId = o.volumeId;
    this.dataOffset = o.dataOffset;
    this.log = o.logger;
    this.direct = !!file.direct;
    this.pool = new ScratchPool((len) => this.allocBuffer(len));
    // Only our own FdBackingFile (a double's methods must be called), never O_DIRECT
    // (RWF_NOWAIT does not make a direct read return early: it would wait for the disk).
    let fd = file instanceof FdBackingFile && !this.direct && nativeIo !== null ? file.fd : -1;
    this.caps = { read: false, write: false };
    if (fd >= 0) {
      try {
        const dev = fstatSync(fd, { bigint: true }).dev;
        this.caps = capsByFs.get(dev) ?? { read: null, write: null };
        capsByFs.set(dev, this.caps);
      } catch {
        fd = -1; // no fast path; the pool will report what is wrong with the file
      }
    }
    this.fd = fd;
    this.syncWriteOk = this.fd >= 0 && syncWriteSafe(this.fd);
    this.space = this.fd >= 0 ? new FreeSpaceGate(this.fd) : null;
  }

  /** A buffer suited to this file's I/O (aligned when O_DIRECT, so reads go straight into it). */
  allocBuffer(len: number): Buffer {
    return this.file.allocBuffer?.(len) ?? Buffer.allocUnsafeSlow(len);
  }

  /** Whether the page-cache fast paths apply at all. */
  get cached(): boolean {
    return this.fd >= 0;
  }

  /** The gate's view of the bytes a write is about to replace: page cache only, on the loop (WriteGate.tryPass). */
  private readonly readNow = (into: Buffer, pos: number): boolean => this.readCached(into, 0, into.length, pos) === into.length;

  /** The gate every later write passes (null: none). */
  setGate(gate: WriteGate | null): void {
    this.gate = gate;
  }

  /**
   * Whether a write of `len` bytes may be acknowledged before it is written
   * (write-behind): the loop may write this file synchronously, the watchdog
   * has not tripped, the filesystem has room (FreeSpaceGate), and the write
   * gate cannot refuse it (WriteGate.mayRefuse: a refusal after the reply
   * would lose a write the application was told succeeded).
   */
  roomForBehind(len: number): boolean {
    return this.syncWriteOk && syncWriteGuard.allowed() && this.gate?.mayRefuse !== true && this.space!.allows(len);
  }

  /**
   * Fill into[off, off + len) from the page cache at `pos` with
   * preadv2(RWF_NOWAIT) on the event loop; returns how many bytes it got
   * (len, or less on a miss). Bytes past the end of a short file read as
   * zeros (never written).
   */
  readCached(into: Buffer, off: number, len: number, pos: number): number {
    if (this.fd < 0 || this.caps.read === false) return 0;
    const at = this.dataOffset + pos;
    let done = 0;
    try {
      while (done < len) {
        const n = nativeIo!.preadNowait(this.fd, into, off + done, len - done, at + done);
        if (n < 0) {
          if (n === EOPNOTSUPP) this.caps.read = false; // this filesystem never will
          else this.caps.read = true;
          return done;
        }
        this.caps.read = true;
        if (n === 0) {
          // EOF: the sparse file is shorter than the volume (never written), zeros.
          into.fill(0, off + done, off + len);
          return len;
        }
        done += n;
      }
    } catch (e) {
      throw ioError(e, `volume ${this.volumeId} sector ${Math.floor(pos / SS)}: read`);
    }
    return done;
  }

  /**
   * Try to put a sealed run at `pos` into the page cache without leaving the
   * event loop: pwritev2(RWF_NOWAIT) where the filesystem supports it, else
   * (ext4) a plain pwrite for runs up to SYNC_WRITE_MAX under the watchdog.
   * Returns bytes written, or -1 when the write gate was not passed (not
   * asked, or it answered "wait"); the caller hands the rest to writeFull
   * with that value, so the gate is asked exactly once per write.
   */
  writeCached(buf: Uint8Array, pos: number): number {
    if (this.fd < 0) return -1;
    const at = this.dataOffset + pos;
    let passed = this.gate === null;
    try {
      if (this.caps.write !== false) {
        if (!passed) {
          if (!this.gate!.tryPass(pos, buf.length, this.readNow)) return -1;
          passed = true;
        }
        const n = nativeIo!.pwriteNowait(this.fd, buf, 0, buf.length, at);
        if (n >= 0) { this.caps.write = true; return n; }
        if (n === EAGAIN) return 0;
        if (n === EOPNOTSUPP) this.caps.write = false; // ext4 buffered writes: never will
      }
      if (!this.syncWriteOk || buf.length > SYNC_WRITE_MAX) return passed ? 0 : -1;
      if (!syncWriteGuard.allowed()) {
        syncWriteGuard.held++;
        return passed ? 0 : -1;
      }
      if (!passed) {
        if (!this.gate!.tryPass(pos, buf.length, this.readNow)) return -1;
        passed = true;
      }
      const n = nativeIo!.pwriteTimed(this.fd, buf, 0, buf.length, at, writeStats);
      syncWriteGuard.record(writeStats[0] / 1e6, writeStats[1] > 0);
      return n;
    } catch {
      // Let the pool path retry and report the error with its sector (ENOSPC, EIO ...).
      return passed ? 0 : -1;
    }
  }

  /** One pread of the run on the pool; bytes past EOF (never written, beyond a short file) read as zero. */
  async readFull(buf: Buffer, pos: number): Promise<void> {
    let off = 0;
    try {
      while (off < buf.length) {
        const n = await this.file.read(buf, off, buf.length - off, this.dataOffset + pos + off);
        if (n === 0) break;
        off += n;
      }
    } catch (e) {
      throw ioError(e, `volume ${this.volumeId} sector ${Math.floor((pos + off) / SS)}: read`);
    }
    if (off < buf.length) buf.fill(0, off);
  }

  /** pwrite the rest of a run from `from` on the pool; from = -1 (see writeCached): pass the write gate first. */
  async writeFull(buf: Uint8Array, pos: number, from: number): Promise<void> {
    if (from < 0) {
      from = 0;
      const gate = this.gate;
      if (gate !== null) await gate.pass(pos, buf.length);
    }
    let off = from;
    try {
      while (off < buf.length) off += await this.file.write(buf, off, buf.length - off, this.dataOffset + pos + off);
    } catch (e) {
      const sector = Math.floor((pos + off) / SS);
      const err = ioError(e, `volume ${this.volumeId} sector ${sector}: write`);
      this.log.warn({ volumeId: this.volumeId, sector, err: { code: err.code, message: err.message } }, 'backing write failed');
      throw err;
    }
  }

  /**
   * The on-disk bytes of [pos, pos + len) into `into` (for snapshots:
   * ciphertext as stored), zeros past the end of a short file; whole sectors
   * through an aligned buffer when the file is O_DIRECT.
   */
  async readRaw(into: Buffer, pos: number, len: number): Promise<void> {
    if (!this.direct) return this.readFull(len === into.length ? into : into.subarray(0, len), pos);
    const p0 = Math.floor(pos / SS) * SS;
    const n = Math.ceil((pos + len) / SS) * SS - p0;
    const buf = this.pool.take(n);
    try {
      await this.readFull(buf, p0);
      buf.copy(into, 0, pos - p0, pos - p0 + len);
    } finally {
      this.pool.give(buf);
    }
  }

  datasync(): Promise<void> {
    return this.file.datasync();
  }

  /** Wipe the scratch buffers and close the file. */
  async close(): Promise<void> {
    this.pool.clear();
    await this.file.close();
  }
}
