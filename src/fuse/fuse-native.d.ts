/**
 * The subset of fuse-native 2.2.6 (CommonJS, untyped) that src/fuse uses.
 * Callbacks take a negative errno (`Fuse.EIO` is -5) or 0.
 */
declare module 'fuse-native' {
  type Cb<T extends unknown[] = []> = (err: number, ...res: T) => void;

  export interface FuseStat {
    mode: number; uid: number; gid: number; size: number; nlink?: number; ino?: number;
    blksize?: number; blocks?: number; dev?: number; rdev?: number;
    atime: Date | number; mtime: Date | number; ctime: Date | number;
  }

  export interface FuseStatfs {
    bsize: number; frsize: number; blocks: number; bfree: number; bavail: number;
    files: number; ffree: number; favail: number; fsid: number; flag: number; namemax: number;
  }

  export interface FuseOps {
    init?(cb: Cb): void;
    getattr?(path: string, cb: (err: number, stat?: FuseStat) => void): void;
    fgetattr?(path: string, fd: number, cb: (err: number, stat?: FuseStat) => void): void;
    readdir?(path: string, cb: (err: number, names?: string[], stats?: FuseStat[]) => void): void;
    open?(path: string, flags: number, cb: (err: number, fd?: number) => void): void;
    release?(path: string, fd: number, cb: Cb): void;
    read?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (res: number) => void): void;
    write?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (res: number) => void): void;
    flush?(path: string, fd: number, cb: Cb): void;
    fsync?(path: string, datasync: number, fd: number, cb: Cb): void;
    statfs?(path: string, cb: (err: number, statfs?: FuseStatfs) => void): void;
    utimens?(path: string, atime: number, mtime: number, cb: Cb): void;
    truncate?(path: string, size: number, cb: Cb): void;
    ftruncate?(path: string, fd: number, size: number, cb: Cb): void;
    chmod?(path: string, mode: number, cb: Cb): void;
    chown?(path: string, uid: number, gid: number, cb: Cb): void;
    create?(path: string, mode: number, cb: (err: number, fd?: number) => void): void;
    unlink?(path: string, cb: Cb): void;
    rename?(src: string, dest: string, cb: Cb): void;
    link?(src: string, dest: string, cb: Cb): void;
    symlink?(src: string, dest: string, cb: Cb): void;
    mkdir?(path: string, mode: number, cb: Cb): void;
    rmdir?(path: string, cb: Cb): void;
    mknod?(path: string, mode: number, dev: number, cb: Cb): void;
  }

  export interface FuseOptions {
    timeout?: number | false;
    force?: boolean;
    mkdir?: boolean;
    debug?: boolean;
    allowOther?: boolean;
    defaultPermissions?: boolean;
    fsname?: string;
    subtype?: string;
    maxRead?: number;
    [k: string]: unknown;
  }

  class Fuse {
    constructor(mnt: string, ops: FuseOps, opts?: FuseOptions);
    readonly mnt: string;
    readonly opts: FuseOptions;
    mount(cb: (err: Error | null) => void): void;
    unmount(cb: (err: Error | null) => void): void;
    _fuseOptions(): string;
    /** nanoresource's close step: `fusermount -uz`, then (only if that succeeded) the native release. */
    _close(cb: (err: Error | null) => void): void;
    /** The native fuse_thread_t of a mount (null before one). */
    _thread: Buffer | null;
    static unmount(mnt: string, cb: (err: Error | null) => void): void;
    static EPERM: number; static ENOENT: number; static EIO: number; static EBADF: number;
    static EINVAL: number; static ENOSPC: number; static EACCES: number; static EISDIR: number;
    static EROFS: number; static EBUSY: number;
  }
  export default Fuse;
}
