import { disableCoreDumps, scrubEnv, setIoFlusher } from '../native/addon.js';
import { HSM_PASSPHRASE_ENV } from '../kms/hsm/protocol.js';
import type { Logger } from '../util/logger.js';

/** What the daemon takes from its environment at start and passes on explicitly. */
export interface StartSecrets {
  /** The HSM domain's passphrase (EBSD_HSM_PASSPHRASE), for the KMS core only. */
  hsmPassphrase?: string;
}

/**
 * Run once at daemon start, before anything is spawned (docs/architecture.md
 * §5.10):
 *
 *   - EBSD_HSM_PASSPHRASE is read once and removed from the environment, its
 *     value zeroed in place (native/src/harden.c): no child process (fusermount,
 *     umount, systemd-notify) and no worker thread inherits it, and
 *     /proc/<pid>/environ no longer shows it. The KMS core gets it explicitly.
 *   - RLIMIT_CORE 0 and PR_SET_DUMPABLE 0: a crash or `kill -ABRT` leaves no
 *     core file holding volume keys, the HSM domain key or plaintext, and no
 *     other process of the same uid may ptrace the daemon or read its memory
 *     (CAP_SYS_PTRACE still may).
 *
 * The passphrase lives on as a JS string (the caller drops it once the KMS is
 * open); strings cannot be wiped.
 */
export function hardenProcess(log: Logger, env: NodeJS.ProcessEnv = process.env): StartSecrets {
  const hsmPassphrase = env[HSM_PASSPHRASE_ENV];
  scrubEnv(HSM_PASSPHRASE_ENV);
  const { coreLimit, dumpable } = disableCoreDumps();
  log.debug({ coreLimit, dumpable, hsmPassphraseFromEnvironment: hsmPassphrase !== undefined }, 'core dumps disabled (RLIMIT_CORE 0, PR_SET_DUMPABLE 0); secrets taken out of the environment');
  return hsmPassphrase !== undefined ? { hsmPassphrase } : {};
}

/** libuv's pool size: UV_THREADPOOL_SIZE read as libuv reads it (default 4, 1..1024). */
export function uvThreadpoolSize(env: NodeJS.ProcessEnv = process.env): number {
  const v = env.UV_THREADPOOL_SIZE;
  if (v === undefined) return 4;
  const n = Number.parseInt(v, 10) || 0; // atoi(3)
  if (n === 0) return 1;
  return n < 0 || n > 1024 ? 1024 : n; // libuv holds it in an unsigned int
}

/**
 * PR_SET_IO_FLUSHER (prctl(2), Linux >= 5.6, CAP_SYS_RESOURCE): the daemon is
 * in the write-back path of the loop device and file system on its volume
 * files, so its threads allocate without starting I/O (PF_MEMALLOC_NOIO) and
 * are throttled only on their own dirty pages (PF_LOCAL_THROTTLE); without it,
 * balance_dirty_pages or direct reclaim in a daemon thread can wait on the very
 * write-back only the daemon can finish (NBD clients and FUSE block servers set
 * it for this reason). Set on the JS thread, so every thread started from now
 * on inherits it (the FUSE thread, the KMS workers), and on each libuv pool
 * thread, which an ES module entry has started before any of our code runs.
 * Not on the V8 platform threads Node starts before JS runs. Run once at start,
 * before anything is mounted; a refusal is a warning, not a failure.
 */
export async function setIoFlusherAtStart(log: Logger, env: NodeJS.ProcessEnv = process.env): Promise<boolean> {
  const poolSize = uvThreadpoolSize(env);
  const { main, poolThreads, errno } = await setIoFlusher(poolSize);
  if (main === 1 && poolThreads === poolSize) {
    log.info({ poolThreads }, 'PR_SET_IO_FLUSHER set on the daemon\'s threads (no I/O from its memory reclaim, throttled on its own dirty pages only)');
    return true;
  }
  const why = errno === 1 ? 'needs CAP_SYS_RESOURCE' : errno === 22 ? 'needs Linux >= 5.6' : errno !== 0 ? `errno ${errno}` : 'pool threads busy';
  log.warn({ errno, main, poolThreads, poolSize }, `PR_SET_IO_FLUSHER refused (${why}): a loop device or file system on a volume file may deadlock the daemon under memory or dirty-page pressure`);
  return false;
}
