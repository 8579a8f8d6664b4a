import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { EbsdError } from '../util/errors.js';
import { createExclusive } from '../util/exclusive-create.js';

/**
 * The state directory layout (DESIGN §7):
 *   <state>/            0711  any local user may reach the socket inside, nothing else
 *   <state>/kms/        0700  keystore, sealed HSM domain, grants, audit
 *   <state>/volumes/    0700  LUKS2 images and the catalog
 *   <state>/identities.json   0600
 *   <state>/ebsd.pid          0600  one daemon per state dir
 *   <state>/ebsd.sock         0666  the control socket (callers judged by uid + policy)
 */
export const SOCKET_FILE = 'ebsd.sock';
export const PID_FILE = 'ebsd.pid';

export interface StatePaths {
  root: string;
  kms: string;
  volumes: string;
  socket: string;
  pidFile: string;
}

export function statePaths(root: string): StatePaths {
  return {
    root,
    kms: join(root, 'kms'),
    volumes: join(root, 'volumes'),
    socket: join(root, SOCKET_FILE),
    pidFile: join(root, PID_FILE),
  };
}

/** Create (or tighten) the directory skeleton. Idempotent; never loosens an existing file. */
export async function prepareStateDir(p: StatePaths): Promise<{ created: boolean }> {
  let created = false;
  try {
    await fsp.mkdir(p.root, { mode: 0o711 });
    created = true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  // mkdir's mode is filtered by the umask; chmod states the mode exactly.
  await fsp.chmod(p.root, 0o711);
  for (const d of [p.kms, p.volumes]) {
    await fsp.mkdir(d, { recursive: true, mode: 0o700 });
    await fsp.chmod(d, 0o700);
  }
  return { created };
}

/**
 * One daemon per state dir: a pid file created with O_EXCL. A file whose pid
 * is no longer alive (crash, SIGKILL) is stale and taken over. Pid reuse can
 * make a stale file look alive; the message then says which pid to check.
 */
export class PidLock {
  private constructor(readonly path: string) {}

  static async acquire(path: string): Promise<PidLock> {
    for (let attempt = 0; attempt < 3; attempt++) {
      if (await createExclusive(path, `${process.pid}\n`)) return new PidLock(path);
      const holder = await readPid(path);
      if (holder !== undefined && holder !== process.pid && isAlive(holder)) {
        throw new EbsdError(
          'DAEMON_ALREADY_RUNNING',
          `another ebsd daemon (pid ${holder}) is already running on this state dir (lock ${path}); stop it first`,
        );
      }
      // Stale: the holder died without cleaning up. Remove and retry the exclusive create.
      await fsp.rm(path, { force: true });
    }
    throw new EbsdError('DAEMON_LOCK_FAILED', `could not take the daemon lock ${path}`);
  }

  async release(): Promise<void> {
    const holder = await readPid(this.path);
    if (holder === process.pid) await fsp.rm(this.path, { force: true });
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
