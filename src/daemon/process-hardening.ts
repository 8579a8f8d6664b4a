import { disableCoreDumps, scrubEnv } from '../native/addon.js';
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
