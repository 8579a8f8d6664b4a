import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, resolve } from 'node:path';

/** Opaque handle to a keyed native XTS context (an N-API external). */
export type NativeXtsHandle = { readonly __brand: 'NativeXtsHandle' };

/** Peer credentials of a connected AF_UNIX socket (SO_PEERCRED, socket(7)). */
export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

/**
 * Non-blocking positioned I/O (native/src/io.c), the page-cache fast path of
 * the volume data path (docs/perf-notes.md §4). The first two return bytes
 * transferred (>= 0), or a negative errno for "would block" (EAGAIN) and "not
 * supported here" (EOPNOTSUPP); other errors throw like node:fs (code, errno,
 * syscall).
 */
export interface NativeIo {
  /** preadv2(fd, …, RWF_NOWAIT): only what the page cache holds; never waits for the disk. */
  preadNowait(fd: number, buf: Uint8Array, off: number, len: number, pos: number): number;
  /** pwritev2(fd, …, RWF_NOWAIT): ext4 answers EOPNOTSUPP for buffered writes; XFS and btrfs accept it. */
  pwriteNowait(fd: number, buf: Uint8Array, off: number, len: number, pos: number): number;
  /**
   * pwrite(2), which may block; `stats` gets [0] wall ns, [1] voluntary context
   * switches of the calling thread during the call (did it sleep in the kernel?).
   * Errors throw, EAGAIN included.
   */
  pwriteTimed(fd: number, buf: Uint8Array, off: number, len: number, pos: number, stats: Float64Array): number;
  /**
   * Busy-wait up to maxUs µs for the next uv_async wake-up of the main event
   * loop (see native/src/io.c): 1 = one arrived, 0 = one was already pending
   * (no wait), -1 = none within maxUs. Absent when it could not be verified
   * safe at load (see loopPollCheck).
   */
  awaitLoopEvent?(maxUs: number): number;
}

/** io.c's "would block" and "not supported here" answers (negative errno). */
export const EAGAIN = -11;
export const EOPNOTSUPP = -95;

/** The surface of native/build/Release/ebsd_native.node (native/src/*.c). */
export interface NativeAddon extends NativeIo {
  /** The libuv version (major.minor.patch) the addon's headers described when it was built. */
  readonly libuvBuiltAgainst?: string;
  /** The XTS cipher library, e.g. "libgcrypt 1.10.1"; null if the one found at run time is older than the build's. */
  readonly cipherLibrary: string | null;
  createContext(key: Uint8Array): NativeXtsHandle;
  destroyContext(ctx: NativeXtsHandle): void;
  /** For tests: true once the context's native key copy is zero and its handles are closed. */
  keyWiped(ctx: NativeXtsHandle): boolean;
  encryptSync(ctx: NativeXtsHandle, data: Uint8Array, firstTweak: bigint, unitSize: number, tweakStep: number): void;
  decryptSync(ctx: NativeXtsHandle, data: Uint8Array, firstTweak: bigint, unitSize: number, tweakStep: number): void;
  /** Runs on the libuv thread pool; `data` stays referenced until the promise settles. */
  encrypt(ctx: NativeXtsHandle, data: Uint8Array, firstTweak: bigint, unitSize: number, tweakStep: number): Promise<void>;
  decrypt(ctx: NativeXtsHandle, data: Uint8Array, firstTweak: bigint, unitSize: number, tweakStep: number): Promise<void>;
  /**
   * AES-256-CTR over `buf` in place (native/src/aes-ctr.c, libgcrypt): the
   * 16-byte `counter` is the first counter block, incremented big-endian;
   * `key` (32 bytes) and `counter` are left as they were. Absent in an addon
   * built before aes-ctr.c.
   */
  aesCtrInPlace?(key: Uint8Array, counter: Uint8Array, buf: Uint8Array): void;
  /**
   * AES-256-GCM decryption of `buf` in place (native/src/aes-gcm.c, libgcrypt):
   * 32-byte `key`, 12-byte `iv`, 16-byte `tag`. True if the tag authenticates
   * `aad` and `buf`; false with `buf` zeroed otherwise. Absent in an addon
   * built before aes-gcm.c.
   */
  aesGcmDecryptInPlace?(key: Uint8Array, iv: Uint8Array, aad: Uint8Array, buf: Uint8Array, tag: Uint8Array): boolean;
  /**
   * AES-256-GCM encryption of `buf` in place (native/src/aes-gcm.c, libgcrypt):
   * 32-byte `key`, 12-byte `iv`; returns the 16-byte tag over `aad` and the
   * ciphertext, in a new Buffer. On a failure it throws with `buf` zeroed.
   * Absent in an addon built before it.
   */
  aesGcmEncryptInPlace?(key: Uint8Array, iv: Uint8Array, aad: Uint8Array, buf: Uint8Array): Buffer;
  /** Throws an Error with code ERR_PEERCRED, `errno` and `syscall` on failure. */
  peerCred(fd: number): PeerCred;
  /**
   * The uid owning the client's socket of a local TCP connection (its address
   * and port, then the server's), by one exact sock_diag lookup; -1 when the
   * kernel has no such connected socket, -2 when netlink could not be asked.
   * Throws on malformed arguments.
   */
  tcpPeerUid(clientAddress: string, clientPort: number, serverAddress: string, serverPort: number): number;
  /**
   * flock(fd, LOCK_EX | LOCK_NB): true when this open file now holds the lock,
   * false when another open file holds it. Throws an Error with code ERR_FLOCK,
   * `errno` and `syscall` on any other failure (EBADF, ENOLCK, ...).
   */
  flockExclusive(fd: number): boolean;
  /**
   * sync_file_range(fd, pos, len, SYNC_FILE_RANGE_WRITE) on the libuv pool
   * (native/src/writeback.c): starts writing the range's dirty pages to the
   * device without waiting for them. No durability promise (fdatasync still
   * owes that). Rejects like node:fs (code, errno, syscall). Absent in an
   * addon built before writeback.c.
   */
  startWriteback?(fd: number, pos: number, len: number): Promise<void>;
  /**
   * setrlimit(RLIMIT_CORE, 0) and prctl(PR_SET_DUMPABLE, 0), both read back
   * (native/src/harden.c). Throws (code ERR_HARDEN, errno, syscall) when either
   * fails. Absent in an addon built before harden.c.
   */
  disableCoreDumps?(): { coreLimit: number; dumpable: number };
  /**
   * Zero the value of environment variable `name` in place, then unsetenv(3) it;
   * false when it was not set. Absent in an addon built before harden.c.
   */
  scrubEnv?(name: string): boolean;
  /**
   * prctl(PR_SET_IO_FLUSHER, 1) on the calling thread, read back (native/src/harden.c):
   * ioFlusher 1 when it holds; errno why it was refused (EPERM, EINVAL), else 0.
   * Absent in an addon built before it.
   */
  setIoFlusher?(): { ioFlusher: 0 | 1; errno: number };
  /**
   * The same on `n` distinct libuv pool threads (n jobs held until all run, 5 s
   * at most): how many threads now hold it, and the first refusal's errno.
   */
  setIoFlusherOnPool?(n: number): Promise<{ threads: number; errno: number }>;
}

const here = dirname(fileURLToPath(import.meta.url));

/**
 * Where the addon may be: $EBSD_NATIVE_PATH, then native/build/{Release,Debug}
 * relative to the package root (src/native and dist/native are both two
 * levels below it).
 */
export function nativeAddonCandidates(): string[] {
  const root = resolve(here, '..', '..');
  const list = [resolve(root, 'native/build/Release/ebsd_native.node'), resolve(root, 'native/build/Debug/ebsd_native.node')];
  const env = process.env.EBSD_NATIVE_PATH;
  return env ? [resolve(env), ...list] : list;
}

function load(): { addon: NativeAddon | null; error: Error | null; path: string | null } {
  const require = createRequire(import.meta.url);
  const candidates = nativeAddonCandidates();
  let firstError: Error | null = null;
  for (const p of candidates) {
    if (!existsSync(p)) continue;
    try {
      return { addon: require(p) as NativeAddon, error: null, path: p };
    } catch (e) {
      firstError ??= e instanceof Error ? e : new Error(String(e));
    }
  }
  return {
    addon: null,
    error:
      firstError ??
      new Error(`native addon not built (looked in ${candidates.join(', ')}); run \`npm run build:native\``),
    path: null,
  };
}

/**
 * Whether awaitLoopEvent may be used: it reads one of libuv's private fields,
 * so the running libuv (process.versions.uv) must be the major.minor the
 * addon was built against. The addon checks the same, and that the fd is an
 * eventfd, before it exports the function at all (native/src/io.c); this is
 * the loader's own look, and the reason it gives when it says no.
 */
export function loopPollCheck(a: Pick<NativeAddon, 'libuvBuiltAgainst' | 'awaitLoopEvent'> | null, runningUv = process.versions.uv): string | null {
  if (a === null) return 'native addon not loaded';
  if (typeof a.awaitLoopEvent !== 'function') return 'the addon did not verify the event loop\'s wake-up eventfd at load';
  const mm = (v: string | undefined): string => (v ?? '').split('.').slice(0, 2).join('.');
  if (a.libuvBuiltAgainst === undefined || mm(a.libuvBuiltAgainst) !== mm(runningUv)) {
    return `built against libuv ${a.libuvBuiltAgainst ?? 'unknown'}, running ${runningUv}`;
  }
  return null;
}

const loaded = load();

/** The loaded addon, or null when it did not build or load (see nativeLoadError). */
export const nativeAddon: NativeAddon | null = loaded.addon;
/** Why the addon is unavailable; null when it loaded. */
export const nativeLoadError: Error | null = loaded.error;
/** The file the addon was loaded from, or null. */
export const nativeAddonPath: string | null = loaded.path;

function pickIo(a: NativeAddon | null): NativeIo | null {
  // An addon built before io.c existed simply has no fast path.
  if (a === null || typeof a.preadNowait !== 'function' || typeof a.pwriteNowait !== 'function' || typeof a.pwriteTimed !== 'function') return null;
  const io: NativeIo = { preadNowait: a.preadNowait, pwriteNowait: a.pwriteNowait, pwriteTimed: a.pwriteTimed };
  if (loopPollCheck(a) === null) io.awaitLoopEvent = a.awaitLoopEvent;
  return io;
}

/** The addon's I/O functions, or null (addon missing or too old): every I/O then takes the libuv pool. */
export const nativeIo: NativeIo | null = pickIo(loaded.addon);

/** The addon's startWriteback, or null (addon missing or built before it): then the final fdatasync writes everything. */
export const startWriteback: ((fd: number, pos: number, len: number) => Promise<void>) | null =
  loaded.addon && typeof loaded.addon.startWriteback === 'function' ? loaded.addon.startWriteback.bind(loaded.addon) : null;

/**
 * The addon's in-place AES-256-CTR, or null (addon missing or built before
 * aes-ctr.c): the HSM's DRBG then keeps node's Cipher (src/kms/hsm/drbg.ts).
 */
export const aesCtrInPlace: ((key: Uint8Array, counter: Uint8Array, buf: Uint8Array) => void) | null =
  loaded.addon && typeof loaded.addon.aesCtrInPlace === 'function' ? loaded.addon.aesCtrInPlace.bind(loaded.addon) : null;

/**
 * The addon's in-place AES-256-GCM decryption, or null (addon missing or built
 * before aes-gcm.c): the HSM then keeps node's Decipher (src/kms/hsm/gcm-open.ts).
 */
export const aesGcmDecryptInPlace: ((key: Uint8Array, iv: Uint8Array, aad: Uint8Array, buf: Uint8Array, tag: Uint8Array) => boolean) | null =
  loaded.addon && typeof loaded.addon.aesGcmDecryptInPlace === 'function' ? loaded.addon.aesGcmDecryptInPlace.bind(loaded.addon) : null;

/**
 * The addon's in-place AES-256-GCM encryption, or null (addon missing or built
 * before it): the HSM then seals with node's Cipher (src/kms/hsm/gcm-seal.ts).
 */
export const aesGcmEncryptInPlace: ((key: Uint8Array, iv: Uint8Array, aad: Uint8Array, buf: Uint8Array) => Buffer) | null =
  loaded.addon && typeof loaded.addon.aesGcmEncryptInPlace === 'function' ? loaded.addon.aesGcmEncryptInPlace.bind(loaded.addon) : null;

export function isNativeAvailable(): boolean {
  return nativeAddon !== null;
}

/** The addon, or throws the load error. */
export function requireNative(): NativeAddon {
  if (nativeAddon === null) throw nativeLoadError ?? new Error('native addon unavailable');
  return nativeAddon;
}

/**
 * Credentials of the peer of a connected Unix socket fd (the daemon reads the
 * control-socket caller's uid with it, docs/architecture.md §5.1). Needs the native addon.
 */
export function peerCred(fd: number): PeerCred {
  return requireNative().peerCred(fd);
}

/**
 * Take an exclusive, non-blocking flock(2) on an open fd; false when another
 * open file holds it. The kernel releases it when the fd closes or the process
 * dies, however it dies. Needs the native addon.
 */
export function flockExclusive(fd: number): boolean {
  return requireNative().flockExclusive(fd);
}

/**
 * No core file, whatever the signal, and no ptrace or /proc/<pid>/{mem,environ}
 * by another process of the same uid, only with CAP_SYS_PTRACE (docs/architecture.md §5.10).
 * Returns what the kernel now holds. Needs the native addon, built with harden.c.
 */
export function disableCoreDumps(): { coreLimit: number; dumpable: number } {
  const a = requireNative();
  if (typeof a.disableCoreDumps !== 'function') {
    throw new Error(`the native addon ${nativeAddonPath} predates native/src/harden.c; rebuild it (npm run build:native)`);
  }
  return a.disableCoreDumps();
}

/**
 * PR_SET_IO_FLUSHER on this (the JS) thread, and so on every thread it starts
 * afterwards, then on `poolSize` threads of the libuv pool, which an ES module
 * entry has already started (native/src/harden.c). Needs the native addon;
 * throws when it predates setIoFlusher.
 */
export async function setIoFlusher(poolSize: number): Promise<{ main: 0 | 1; poolThreads: number; errno: number }> {
  const a = requireNative();
  if (typeof a.setIoFlusher !== 'function' || typeof a.setIoFlusherOnPool !== 'function') {
    throw new Error(`the native addon ${nativeAddonPath} predates PR_SET_IO_FLUSHER in native/src/harden.c; rebuild it (npm run build:native)`);
  }
  const main = a.setIoFlusher();
  if (main.ioFlusher !== 1) return { main: 0, poolThreads: 0, errno: main.errno };
  // Each pool job waits at most 5 s at its barrier, but a pool thread stuck for good (a hung stat
  // queued earlier) would keep the last job from ever starting: the start goes on after 10 s, with
  // the threads counted so far unknown (0), and the caller warns.
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<{ threads: number; errno: number }>((r) => { timer = setTimeout(() => r({ threads: 0, errno: 0 }), 10_000); timer.unref(); });
  const pool = await Promise.race([a.setIoFlusherOnPool(poolSize), late]).finally(() => clearTimeout(timer));
  return { main: 1, poolThreads: pool.threads, errno: pool.errno };
}

/**
 * Remove environment variable `name` from this process, its value overwritten
 * in place first (native/src/harden.c), so neither a child process nor
 * /proc/<pid>/environ sees it. Falls back to `delete process.env[name]` when
 * the addon is missing or older. Returns whether it was set.
 */
export function scrubEnv(name: string): boolean {
  const was = process.env[name] !== undefined;
  if (nativeAddon !== null && typeof nativeAddon.scrubEnv === 'function') nativeAddon.scrubEnv(name);
  delete process.env[name];
  return was;
}
