import { promises as fsp, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { createExclusive } from '../util/exclusive-create.js';
import { VolumeError } from './errors.js';

/**
 * One attachment per image (docs/architecture.md §4): `<image>.lock`, created with
 * O_CREAT|O_EXCL and holding the owner's pid, process start time and boot id.
 *
 * Why not flock/fcntl: Node has no binding for either without a native
 * addon, and both vanish silently on some network filesystems. O_EXCL
 * creation is atomic on local filesystems and NFSv3+. A daemon that crashed
 * leaves the file behind, so the lock is judged stale (and broken) when the
 * recorded process is gone: a different boot id (reboot), no such pid, or a
 * pid whose start time differs (pid reused). The break is unlink + retry
 * O_EXCL once; two breakers racing cannot both win the second O_EXCL.
 */
export interface LockOwner {
  pid: number;
  startTime: string | null;
  bootId: string | null;
  host: string;
  volumeId: string;
  since: string;
}

function procStartTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 22 (starttime); fields after the parenthesised comm, which may contain spaces.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

function bootId(): string | null {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return null;
  }
}

export function isStale(o: LockOwner): boolean {
  if (o.host !== hostname()) return false; // another host's lock: never ours to judge
  const b = bootId();
  if (o.bootId && b && o.bootId !== b) return true;
  try {
    process.kill(o.pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ESRCH') return true;
  }
  const st = procStartTime(o.pid);
  return o.startTime !== null && st !== null && st !== o.startTime;
}

export class AttachLock {
  private constructor(readonly path: string) {}

  static async acquire(imagePath: string, volumeId: string): Promise<AttachLock> {
    const path = `${imagePath}.lock`;
    const me: LockOwner = { pid: process.pid, startTime: procStartTime(process.pid), bootId: bootId(), host: hostname(), volumeId, since: new Date().toISOString() };
    for (let attempt = 0; attempt < 2; attempt++) {
      if (await createExclusive(path, JSON.stringify(me)).catch((e: unknown) => { throw lockFileError(e, path, volumeId); })) return new AttachLock(path);
      const owner = await readOwner(path);
      // An unreadable lock younger than 10 s may be a live owner between O_EXCL and its write.
      const fresh = owner === null && (await fsp.stat(path).then((s) => Date.now() - s.mtimeMs < 10_000, () => false));
      if (fresh) throw new VolumeError('VOLUME_LOCKED', `volume ${volumeId} is being attached by another process`, { awsName: 'VolumeInUse' });
      if (owner && !isStale(owner)) {
        throw new VolumeError('VOLUME_LOCKED', `volume ${volumeId} is attached by pid ${owner.pid} on ${owner.host} since ${owner.since}`, { awsName: 'VolumeInUse' });
      }
      await fsp.rm(path, { force: true }); // stale or unreadable (crash mid-write): break it
    }
    throw new VolumeError('VOLUME_LOCKED', `volume ${volumeId}: lost the race for the attach lock`, { awsName: 'VolumeInUse' });
  }

  async release(): Promise<void> {
    await fsp.rm(this.path, { force: true });
  }
}

/** The lock file could not be made: say which file and why; a full disk is VOLUME_NO_SPACE (resume-retry.ts retries it). */
function lockFileError(e: unknown, path: string, volumeId: string): VolumeError {
  const code = (e as NodeJS.ErrnoException).code;
  const why = code === 'ENOSPC' ? 'no space left on device (ENOSPC)' : code === 'EDQUOT' ? 'disk quota exceeded (EDQUOT)' : (e as Error).message;
  return new VolumeError(code === 'ENOSPC' || code === 'EDQUOT' ? 'VOLUME_NO_SPACE' : 'VOLUME_IO', `volume ${volumeId}: could not create its attach lock ${path}: ${why}`, { cause: e });
}

export async function readOwner(path: string): Promise<LockOwner | null> {
  try {
    return JSON.parse(await fsp.readFile(path, 'utf8')) as LockOwner;
  } catch {
    return null;
  }
}
