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

/** The surface of native/build/Release/ebsd_native.node (native/src/*.c). */
export interface NativeAddon {
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
  /** Throws an Error with code ERR_PEERCRED, `errno` and `syscall` on failure. */
  peerCred(fd: number): PeerCred;
  /**
   * flock(fd, LOCK_EX | LOCK_NB): true when this open file now holds the lock,
   * false when another open file holds it. Throws an Error with code ERR_FLOCK,
   * `errno` and `syscall` on any other failure (EBADF, ENOLCK, ...).
   */
  flockExclusive(fd: number): boolean;
}

const here = dirname(fileURLToPath(import.meta.url));

/**
 * Where the addon may be: $EBSD_NATIVE_PATH, then native/build/{Release,Debug}
 * relative to the package root (src/crypto and dist/crypto are both two
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

const loaded = load();

/** The loaded addon, or null when it did not build or load (see nativeLoadError). */
export const nativeAddon: NativeAddon | null = loaded.addon;
/** Why the addon is unavailable; null when it loaded. */
export const nativeLoadError: Error | null = loaded.error;
/** The file the addon was loaded from, or null. */
export const nativeAddonPath: string | null = loaded.path;

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
