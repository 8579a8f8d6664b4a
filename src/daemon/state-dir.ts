import { promises as fsp, constants as fsc } from 'node:fs';
import { join } from 'node:path';
import { EbsdError, noSpaceWhat } from '../util/errors.js';
import { atomicWrite, removeAtomicWriteTemps } from '../util/atomic-write.js';
import { flockExclusive } from '../native/addon.js';

/**
 * The state directory layout (docs/format.md "State dir"):
 *   <state>/            0711  any local user may reach the socket inside, nothing else
 *   <state>/kms/        0700  keystore, sealed HSM domain, grants, audit
 *   <state>/volumes/    0700  LUKS2 images and the catalog
 *   <state>/identities.json   0600
 *   <state>/ebsd.lock         0600  flock(2)ed by the one daemon of this state dir; never removed
 *   <state>/ebsd.pid          0600  that daemon's pid, for people and scripts only
 *   <state>/ebsd.sock         0666  the control socket (callers judged by uid + policy)
 */
export const SOCKET_FILE = 'ebsd.sock';
export const PID_FILE = 'ebsd.pid';
export const LOCK_FILE = 'ebsd.lock';

export interface StatePaths {
  root: string;
  kms: string;
  volumes: string;
  socket: string;
  pidFile: string;
  lockFile: string;
}

export function statePaths(root: string): StatePaths {
  return {
    root,
    kms: join(root, 'kms'),
    volumes: join(root, 'volumes'),
    socket: join(root, SOCKET_FILE),
    pidFile: join(root, PID_FILE),
    lockFile: join(root, LOCK_FILE),
  };
}

/** kms/ holds keys/, audit/digests/ and hsm/: two levels below it. */
const KMS_TEMP_DEPTH = 2;

/**
 * Create (or tighten) the directory skeleton, take the daemon lock, then
 * remove the temp files that interrupted atomic writes left in the state dir
 * (identities.json) and kms/. The lock comes before the cleanup: a second
 * daemon must not delete a temp file the live one is about to rename.
 * volumes/ is the volume manager's to clean. Never loosens an existing file.
 * Throws DAEMON_ALREADY_RUNNING (nothing removed, nothing written) when
 * another daemon holds the state dir.
 */
export async function prepareStateDir(p: StatePaths): Promise<{ created: boolean; lock: PidLock; removedTemps: string[] }> {
  let created = false;
  try {
    await fsp.mkdir(p.root, { mode: 0o711 });
    created = true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'EEXIST') {
      const why = code === 'ENOENT' ? 'its parent directory does not exist' : code === 'ENOTDIR' ? 'a path component is not a directory' : code === 'EACCES' ? 'permission denied' : String(code ?? (e as Error).message);
      throw new EbsdError('STATE_DIR_UNUSABLE', `cannot create the state dir ${p.root} (--state-dir, EBSD_STATE_DIR): ${why}`, { cause: e });
    }
  }
  // Before the chmod below: a --state-dir naming a file (a typo, ~/.bashrc) must not have its mode
  // changed to 0711 on the way to failing. A symlink to a directory is a directory here.
  const st = await fsp.stat(p.root);
  if (!st.isDirectory()) throw new EbsdError('STATE_DIR_UNUSABLE', `the state dir ${p.root} (--state-dir, EBSD_STATE_DIR) is not a directory; nothing was changed`);
  // mkdir's mode is filtered by the umask; chmod states the mode exactly.
  await fsp.chmod(p.root, 0o711);
  for (const d of [p.kms, p.volumes]) {
    await fsp.mkdir(d, { recursive: true, mode: 0o700 });
    await fsp.chmod(d, 0o700);
  }
  const lock = await PidLock.acquire(p);
  try {
    const removedTemps = [...(await removeAtomicWriteTemps(p.root)), ...(await removeAtomicWriteTemps(p.kms, { depth: KMS_TEMP_DEPTH }))];
    return { created, lock, removedTemps };
  } catch (e) {
    await lock.release();
    throw e;
  }
}

/**
 * One daemon per state dir: an exclusive flock(2) on `ebsd.lock`, held on an
 * open file for the daemon's whole life. The kernel drops it when the process
 * dies, however it dies, so there is no stale lock to judge: no pid to read,
 * no empty-file window, no pid reuse. The pid file is written after the lock
 * is held, for information only, and removed only by the holder. A daemon
 * that did not get the lock removes and writes nothing.
 */
export class PidLock {
  private released = false;
  private constructor(private readonly fh: fsp.FileHandle, readonly paths: Pick<StatePaths, 'lockFile' | 'pidFile'>) {}

  static async acquire(paths: Pick<StatePaths, 'lockFile' | 'pidFile'>): Promise<PidLock> {
    // O_NOFOLLOW: a symlink planted at the lock path is refused, not followed. No O_TRUNC: the file is never rewritten.
    const fh = await fsp.open(paths.lockFile, fsc.O_RDWR | fsc.O_CREAT | fsc.O_NOFOLLOW, 0o600).catch((e: NodeJS.ErrnoException) => {
      throw new EbsdError('DAEMON_LOCK_FAILED', `could not open the daemon lock ${paths.lockFile}: ${e.code ?? e.message}`, { cause: e });
    });
    let got: boolean;
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new EbsdError('DAEMON_LOCK_FAILED', `the daemon lock ${paths.lockFile} is not a regular file`);
      got = flockExclusive(fh.fd);
    } catch (e) {
      await fh.close();
      if (e instanceof EbsdError) throw e;
      throw new EbsdError('DAEMON_LOCK_FAILED', `could not lock ${paths.lockFile}: ${(e as Error).message}`, { cause: e });
    }
    if (!got) {
      await fh.close();
      const holder = await readPid(paths.pidFile);
      throw new EbsdError(
        'DAEMON_ALREADY_RUNNING',
        `another ebsd daemon (${holder !== undefined ? `pid ${holder}` : 'pid not yet written'}) is already running on this state dir (it holds ${paths.lockFile}); stop it first`,
      );
    }
    const lock = new PidLock(fh, paths);
    try {
      await atomicWrite(paths.pidFile, `${process.pid}\n`, 0o600);
    } catch (e) {
      const full = noSpaceWhat(e);
      if (full !== undefined) {
        // The pid file is for people and scripts only; the lock is held. A disk that is full must
        // not keep the daemon from starting (its audit reserve is there for this: README, "State
        // directory"); the caller logs it. A pid file a previous daemon left would name the wrong
        // process: removed (an unlink needs no space).
        await fsp.rm(paths.pidFile, { force: true }).catch(() => {});
        lock.pidFileProblem = `could not write ${paths.pidFile} (${full}, ${(e as NodeJS.ErrnoException).code}); it is informational only, the daemon runs without it`;
        return lock;
      }
      await lock.release();
      throw new EbsdError('STATE_DIR_UNUSABLE', `could not write the pid file ${paths.pidFile}: ${(e as Error).message}`, { cause: e });
    }
    return lock;
  }

  /** Why the pid file could not be written (the state dir's disk full), or undefined. */
  pidFileProblem: string | undefined;

  /**
   * Remove the pid file (the holder's by construction, whatever it now
   * says), then drop the lock by closing. The lock file stays: unlinking it
   * would let two daemons each lock an inode of their own.
   */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    try {
      await fsp.rm(this.paths.pidFile, { force: true });
    } finally {
      await this.fh.close();
    }
  }
}

export async function readPid(path: string): Promise<number | undefined> {
  try {
    const n = Number.parseInt((await fsp.readFile(path, 'utf8')).trim(), 10);
    return Number.isInteger(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
