import type { FuseOps, FuseStat, FuseStatfs } from 'fuse-native';
import type { BlockDevice } from '../volume/types.js';
import { EbsdError } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { EBADF, EIO, ENOENT, ENOMEM, ENOSPC, EPERM, EISDIR, toErrno } from './errno.js';

/** One attached volume as the FUSE root sees it. */
interface Entry {
  readonly dev: BlockDevice;
  /** The device's submitWrite (one call per request, one reply), if it has one. */
  readonly submit: NonNullable<BlockDevice['submitWrite']> | null;
  /** Otherwise the device's writeConsuming (may encrypt in the request buffer), else its write. */
  readonly write: (offset: number, data: Buffer) => Promise<number>;
  /** Open file handles on this volume's file (open() minus release()). */
  open: number;
  /** FUSE requests currently running against the device. */
  inflight: number;
  /** Resolvers waiting for inflight to reach 0 (detach drains). */
  drained: (() => void)[];
  atime: number;
  mtime: number;
  readonly ctime: number;
  /** Set by remove(): no new opens; I/O on surviving handles fails with EIO. */
  removed: boolean;
  /** Requests refused on surviving handles since remove(): logged once, then counted. */
  refusedAfterRemoval: number;
  /** Metrics observer bound to this volume at add(), or null. */
  readonly obs: IoObserver | null;
  /** Requests seen by `obs`; one in LATENCY_SAMPLE is timed. */
  tick: number;
}

/**
 * Time one request in this many (per volume) for the latency histogram; all
 * are counted. A clock read costs ~0.35 µs on the machine of docs/benchmarks.md
 * ("Metrics overhead"): two per request would be a measurable share of a 4 KiB read.
 */
export const LATENCY_SAMPLE = 16;

/**
 * Told of every finished data request of one volume (metrics): the operation,
 * bytes moved, microseconds from request to reply (-1: not timed, see
 * LATENCY_SAMPLE), and 0 or the errno replied. Bound once per volume at add(), so the data path does no lookup;
 * it must not allocate or throw.
 */
export type IoObserver = (op: 'read' | 'write' | 'flush', bytes: number, micros: number, errno: number) => void;

export interface BlockFileSystemOptions {
  logger: Logger;
  /**
   * Use the devices' write-behind (default true): see DaemonConfig.writeBehind.
   * false: every write is acknowledged only once it is in the backing file.
   */
  writeBehind?: boolean;
  /** Owner of the volume files (default: the daemon's uid/gid). */
  uid?: number;
  gid?: number;
  /** Metrics: an observer per added volume (src/daemon/metrics.ts). */
  observe?: (volumeId: string) => IoObserver;
  /** First file handle number handed out (default 1); tests start it near FH_MAX to cross the wrap. */
  firstFh?: number;
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const BLOCK = 4096;
const U32_MAX = 0xffff_ffff;
/** Largest file handle number handed out; the next one after it is 1 again. */
export const FH_MAX = 0x7fff_ffff;

/**
 * The FUSE file system: a flat root holding one regular file (mode 0600) per
 * attached volume, named by volume id, whose bytes are the volume's plaintext.
 * The daemon adds and removes devices; this class turns FUSE requests into
 * BlockDevice calls and failures into errno (via ./errno.ts, the only place).
 *
 * Reads and writes are zero-copy: fuse-native hands us a Buffer over libfuse's
 * own request buffer, and we let the device read into it / write from it. A
 * device with writeConsuming() may also encrypt in that buffer (libfuse drops
 * it after our reply; the kernel never reads it back).
 */
export class BlockFileSystem {
  private readonly entries = new Map<string, Entry>();
  /** fh -> volume id. A handle outlives its entry's removal (forced detach). */
  private readonly handles = new Map<number, Entry>();
  private nextFh = 1;
  private readonly log: Logger;
  private readonly uid: number;
  private readonly gid: number;
  private readonly mountedAt = Date.now();
  private readonly writeBehind: boolean;
  private readonly observe: ((volumeId: string) => IoObserver) | null;
  /** Reads, writes and flushes received since the mount, and running now, of every volume (DataPathFirst reads them to tell a busy data path). */
  requests = 0;
  inflightAll = 0;

  constructor(opts: BlockFileSystemOptions) {
    this.log = opts.logger;
    this.uid = opts.uid ?? process.getuid?.() ?? 0;
    this.gid = opts.gid ?? process.getgid?.() ?? 0;
    this.writeBehind = opts.writeBehind ?? true;
    this.observe = opts.observe ?? null;
    const first = opts.firstFh ?? 1;
    if (!Number.isInteger(first) || first < 1 || first > FH_MAX) throw new RangeError(`firstFh must be 1..${FH_MAX}`);
    this.nextFh = first;
  }

  /** Expose an attached volume as `/<volumeId>`. */
  add(dev: BlockDevice): void {
    if (this.entries.has(dev.volumeId)) {
      throw new EbsdError('FUSE_FILE_EXISTS', `${dev.volumeId} is already exposed in the mount`, { awsName: 'VolumeInUse' });
    }
    const now = Date.now();
    // fuse-native's write buffer is libfuse's request memory, dropped after our
    // reply and never read back by the kernel: the device may encrypt in it.
    const submit = dev.submitWrite ? dev.submitWrite.bind(dev) : null;
    const write: BlockDevice['write'] = dev.writeConsuming ? dev.writeConsuming.bind(dev) : dev.write.bind(dev);
    this.entries.set(dev.volumeId, {
      dev, submit, write, open: 0, inflight: 0, drained: [], atime: now, mtime: now, ctime: now, removed: false, refusedAfterRemoval: 0,
      obs: this.observe ? this.observe(dev.volumeId) : null, tick: 0,
    });
  }

  has(volumeId: string): boolean {
    return this.entries.has(volumeId);
  }

  volumeIds(): string[] {
    return [...this.entries.keys()];
  }

  /** Number of open handles on the volume's file (0 when not exposed). */
  openCount(volumeId: string): number {
    return this.entries.get(volumeId)?.open ?? 0;
  }

  /**
   * Handles still open on a file of the volume that remove() took away while they were open (a
   * forced detach, or a stop): each request on them fails with EIO until they are closed. A loop
   * device over the file keeps its handle until `losetup -d`, so this is what tells an operator
   * that one is still there, also once the volume is attached again under the same path.
   */
  cutOffHandles(volumeId: string): number {
    let n = 0;
    for (const e of this.handles.values()) if (e.removed && e.dev.volumeId === volumeId) n++;
    return n;
  }

  /** Volumes with handles cut off by remove() still open (see cutOffHandles). */
  cutOffVolumeIds(): string[] {
    const ids = new Set<string>();
    for (const e of this.handles.values()) if (e.removed) ids.add(e.dev.volumeId);
    return [...ids];
  }

  /** FUSE requests running against the volume now (0 when not exposed). */
  inflightCount(volumeId: string): number {
    return this.entries.get(volumeId)?.inflight ?? 0;
  }

  /**
   * Take the volume's file out of the mount and wait for running requests to
   * finish. Refused while the file is open unless `force` (then surviving
   * handles get EIO from now on). Returns the device so the caller can
   * flush and close it. `shutdown`: the daemon is stopping (said so in the log, not "forced detach").
   */
  async remove(volumeId: string, opts: { force?: boolean; shutdown?: boolean } = {}): Promise<BlockDevice | undefined> {
    const e = this.entries.get(volumeId);
    if (!e) return undefined;
    if (e.open > 0 && !opts.force) {
      throw new EbsdError(
        'VOLUME_FILE_OPEN',
        `${volumeId} is open (${e.open} handle${e.open === 1 ? '' : 's'}); close it (losetup -d, umount) or detach with --force`,
        { awsName: 'VolumeInUse' },
      );
    }
    e.removed = true;
    this.entries.delete(volumeId);
    // Said once here, not once per request: a loop device or fio on a surviving
    // handle would otherwise log a line per request (hundreds per second).
    if (e.open > 0 && opts.shutdown) {
      // A stop with the file still open (README "State directory"): not a detach; the volume stays recorded
      // attached and comes back at the next start, but a loop device over this file does not.
      this.log.warn({ volumeId, openHandles: e.open }, 'volume file removed while open (daemon stopping): I/O on its surviving handles now fails with EIO; a loop device over it answers EIO until detached (losetup -d), also after the restart');
    } else if (e.open > 0) {
      this.log.warn({ volumeId, openHandles: e.open }, 'volume file removed while open (forced detach): I/O on its surviving handles now fails with EIO');
    }
    if (e.inflight > 0) await new Promise<void>((r) => e.drained.push(r));
    return e.dev;
  }

  /** Wait until no request is running against any device (shutdown). */
  async drainAll(): Promise<void> {
    const waits: Promise<void>[] = [];
    for (const e of this.entries.values()) {
      if (e.inflight > 0) waits.push(new Promise<void>((r) => e.drained.push(r)));
    }
    await Promise.all(waits);
  }

  private lookup(path: string): Entry | undefined {
    return path.length > 1 && path.indexOf('/', 1) === -1 ? this.entries.get(path.slice(1)) : undefined;
  }

  private stat(e: Entry): FuseStat {
    return {
      mode: S_IFREG | 0o600, uid: this.uid, gid: this.gid, size: e.dev.size, nlink: 1,
      blksize: BLOCK, blocks: Math.ceil(e.dev.size / 512),
      atime: e.atime, mtime: e.mtime, ctime: e.ctime,
    };
  }

  private rootStat(): FuseStat {
    return {
      mode: S_IFDIR | 0o755, uid: this.uid, gid: this.gid, size: BLOCK, nlink: 2,
      atime: this.mountedAt, mtime: this.mountedAt, ctime: this.mountedAt,
    };
  }

  /**
   * The next file handle number not in use. The counter wraps to 1 after
   * FH_MAX; a number a long-lived handle (a loop device's) still holds is
   * skipped, or its `handles` entry would be replaced and its I/O would reach
   * another volume. Terminates: a Map holds far fewer than FH_MAX entries.
   */
  private allocFh(): number {
    for (;;) {
      const fh = this.nextFh;
      this.nextFh = fh >= FH_MAX ? 1 : fh + 1;
      if (!this.handles.has(fh)) return fh;
    }
  }

  /** Request finished: the in-flight count the detach drain waits on. */
  private done(e: Entry): void {
    this.inflightAll--;
    if (--e.inflight === 0 && e.drained.length) for (const r of e.drained.splice(0)) r();
  }

  private fail(e: Entry, op: 'read' | 'write' | 'flush', offset: number, length: number, err: unknown): number {
    const errno = toErrno(err);
    if (e.obs !== null) e.obs(op, 0, -1, errno);
    const code = (err as { code?: unknown })?.code;
    const fields = { volumeId: e.dev.volumeId, op, offset, length, code, reason: (err as Error)?.message };
    // gocryptfs habit: every EIO is logged with the file and position it hit.
    if (errno === EIO || errno === ENOMEM) this.log.warn(fields, 'I/O error on volume file');
    else this.log.debug(fields, 'volume file request refused');
    return errno;
  }

  /**
   * A request on a surviving handle of a removed (force-detached) volume: EIO.
   * remove() warned once; here the first is logged at debug and the rest only
   * counted (release() of the last handle logs the count).
   */
  private refuseRemoved(e: Entry, op: 'read' | 'write' | 'flush', offset: number, length: number): number {
    if (e.obs !== null) e.obs(op, 0, -1, EIO);
    if (++e.refusedAfterRemoval === 1) {
      this.log.debug({ volumeId: e.dev.volumeId, op, offset, length }, 'request on a handle of a detached volume refused (EIO); further ones are counted');
    }
    return EIO;
  }

  /** FUSE operation table for fuse-native. */
  ops(): FuseOps {
    return {
      getattr: (path, cb) => {
        if (path === '/') return cb(0, this.rootStat());
        const e = this.lookup(path);
        return e ? cb(0, this.stat(e)) : cb(ENOENT);
      },
      readdir: (path, cb) => {
        if (path !== '/') return cb(this.lookup(path) ? -20 /* ENOTDIR */ : ENOENT);
        const names: string[] = [];
        const stats: FuseStat[] = [];
        for (const [id, e] of this.entries) { names.push(id); stats.push(this.stat(e)); }
        return cb(0, names, stats);
      },
      // Flags are not looked at: O_TRUNC arrives here (atomic_o_trunc, mount-options.ts)
      // and is ignored, as a block device ignores it.
      open: (path, _flags, cb) => {
        if (path === '/') return cb(EISDIR);
        const e = this.lookup(path);
        if (!e) return cb(ENOENT);
        const fh = this.allocFh();
        this.handles.set(fh, e);
        e.open++;
        return cb(0, fh);
      },
      release: (_path, fh, cb) => {
        const e = this.handles.get(fh);
        if (e) {
          this.handles.delete(fh);
          e.open = Math.max(0, e.open - 1);
          if (e.removed && e.open === 0 && e.refusedAfterRemoval > 0) {
            this.log.debug({ volumeId: e.dev.volumeId, refused: e.refusedAfterRemoval }, 'last handle of a detached volume closed; requests refused on its handles since the detach');
          }
        }
        return cb(0);
      },
      read: (_path, fh, buf, len, pos, cb) => {
        const e = this.handles.get(fh);
        if (!e) return cb(EBADF);
        if (e.removed) return cb(this.refuseRemoved(e, 'read', pos, len));
        if (pos >= e.dev.size) return cb(0); // EOF, as for any file
        const n = Math.min(len, e.dev.size - pos);
        // No async wrapper or closure per request: one .then on the device's
        // promise (already resolved on the page-cache fast path).
        e.inflight++;
        this.requests++;
        this.inflightAll++;
        const t0 = e.obs !== null && ++e.tick % LATENCY_SAMPLE === 1 ? performance.now() : 0;
        let p: Promise<number>;
        try {
          p = e.dev.read(pos, n, buf, 0);
        } catch (err) {
          this.done(e);
          return cb(this.fail(e, 'read', pos, n, err));
        }
        p.then(
          (got) => { this.done(e); e.atime = Date.now(); if (e.obs !== null) e.obs('read', got, t0 === 0 ? -1 : (performance.now() - t0) * 1000, 0); cb(got); },
          (err) => { this.done(e); cb(this.fail(e, 'read', pos, n, err)); },
        );
      },
      write: (_path, fh, buf, len, pos, cb) => {
        const e = this.handles.get(fh);
        if (!e) return cb(EBADF);
        if (e.removed) return cb(this.refuseRemoved(e, 'write', pos, len));
        // A volume has a fixed size (grow it with ModifyVolume): past the end is
        // ENOSPC, as writing past the end of a block device is.
        if (pos >= e.dev.size) {
          if (len !== 0 && e.obs !== null) e.obs('write', 0, 0, ENOSPC);
          return cb(len === 0 ? 0 : ENOSPC);
        }
        const n = Math.min(len, e.dev.size - pos);
        const data = n === buf.length ? buf : buf.subarray(0, n);
        e.inflight++;
        this.requests++;
        this.inflightAll++;
        const t0 = e.obs !== null && ++e.tick % LATENCY_SAMPLE === 1 ? performance.now() : 0;
        if (e.submit !== null) {
          // One call, one reply: the device decides whether to write behind
          // (then it replies at once; flush/fsync wait for the write and report
          // its failure).
          try {
            e.submit(pos, data, this.writeBehind, (err, put) => {
              this.done(e);
              if (err !== null) return cb(this.fail(e, 'write', pos, n, err));
              e.mtime = Date.now();
              if (e.obs !== null) e.obs('write', put, t0 === 0 ? -1 : (performance.now() - t0) * 1000, 0);
              cb(put);
            });
          } catch (err) {
            this.done(e);
            cb(this.fail(e, 'write', pos, n, err));
          }
          return;
        }
        let p: Promise<number>;
        try {
          p = e.write(pos, data);
        } catch (err) {
          this.done(e);
          return cb(this.fail(e, 'write', pos, n, err));
        }
        p.then(
          (put) => { this.done(e); e.mtime = Date.now(); if (e.obs !== null) e.obs('write', put, t0 === 0 ? -1 : (performance.now() - t0) * 1000, 0); cb(put); },
          (err) => { this.done(e); cb(this.fail(e, 'write', pos, n, err)); },
        );
      },
      fsync: (_path, _datasync, fh, cb) => this.sync(fh, cb),
      // flush comes with every close(2) of a descriptor; docs/architecture.md §3.3 has it reach fdatasync too.
      flush: (_path, fh, cb) => this.sync(fh, cb),
      statfs: (_path, cb) => cb(0, this.statfs()),
      utimens: (path, atime, mtime, cb) => {
        if (path === '/') return cb(0);
        const e = this.lookup(path);
        if (!e) return cb(ENOENT);
        e.atime = atime || Date.now();
        e.mtime = mtime || Date.now();
        return cb(0);
      },
      truncate: (path, size, cb) => {
        const e = this.lookup(path);
        return cb(e ? this.resize(e, size) : ENOENT);
      },
      ftruncate: (_path, fh, size, cb) => {
        const e = this.handles.get(fh);
        return cb(e ? this.resize(e, size) : EBADF);
      },
      // The names and modes in the mount are the daemon's (attach adds a file, detach removes it):
      // every change from outside is EPERM. An op left out would answer ENOSYS, "Function not
      // implemented", which reads as a broken mount (`mv` onto a volume file, `mkdir` in the mount).
      chmod: (_path, _mode, cb) => cb(EPERM),
      chown: (_path, _uid, _gid, cb) => cb(EPERM),
      create: (_path, _mode, cb) => cb(EPERM),
      unlink: (_path, cb) => cb(EPERM),
      rename: (_src, _dest, cb) => cb(EPERM),
      link: (_src, _dest, cb) => cb(EPERM),
      symlink: (_src, _dest, cb) => cb(EPERM),
      mkdir: (_path, _mode, cb) => cb(EPERM),
      rmdir: (_path, cb) => cb(EPERM),
      mknod: (_path, _mode, _dev, cb) => cb(EPERM),
    };
  }

  /**
   * truncate/ftruncate: a volume has the size it was given (grow it with
   * ModifyVolume). To its own size is a no-op (`truncate -s <size>`); any other
   * size is EPERM.
   */
  private resize(e: Entry, size: number): number {
    if (size === e.dev.size) return 0;
    this.log.debug({ volumeId: e.dev.volumeId, size, volumeSize: e.dev.size }, 'volume file truncate refused: a volume keeps its size');
    return EPERM;
  }

  /** fsync and flush alike (both reach fdatasync), logged and counted as 'flush'. */
  private sync(fh: number, cb: (err: number) => void): void {
    const e = this.handles.get(fh);
    if (!e) return cb(EBADF);
    if (e.removed) return cb(this.refuseRemoved(e, 'flush', 0, 0));
    e.inflight++;
    this.requests++;
    this.inflightAll++;
    const t0 = e.obs !== null ? performance.now() : 0; // every flush is timed: it costs an fdatasync anyway
    let p: Promise<void>;
    try {
      p = e.dev.flush();
    } catch (err) {
      this.done(e);
      return cb(this.fail(e, 'flush', 0, 0, err));
    }
    p.then(
      () => { this.done(e); if (e.obs !== null) e.obs('flush', 0, t0 === 0 ? -1 : (performance.now() - t0) * 1000, 0); cb(0); },
      (err) => { this.done(e); cb(this.fail(e, 'flush', 0, 0, err)); },
    );
  }

  private statfs(): FuseStatfs {
    let bytes = 0;
    for (const e of this.entries.values()) bytes += e.dev.size;
    // fuse-native passes statfs as u32: scale the fragment size so 64 TiB still fits.
    let frsize = BLOCK;
    while (bytes / frsize > U32_MAX) frsize *= 2;
    const blocks = Math.ceil(bytes / frsize);
    return {
      bsize: BLOCK, frsize, blocks, bfree: 0, bavail: 0,
      files: this.entries.size, ffree: 0, favail: 0, fsid: 0, flag: 0, namemax: 255,
    };
  }
}

