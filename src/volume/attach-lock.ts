import { promises as fsp, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { createExclusive } from '../util/exclusive-create.js';
import { VolumeError } from './errors.js';
import { noSpaceWhat } from '../util/errors.js';

/**
 * One attachment per image (docs/architecture.md §4): `<image>.lock`, created with
 * O_CREAT|O_EXCL and holding the owner's pid, process start time and boot id.
 *
 * Why not flock/fcntl: Node has no binding for either without a native
 * addon, and both vanish silently on some network filesystems. O_EXCL
 * creation is atomic on local filesystems and NFSv3+. A daemon that crashed
 * leaves the file behind, so the lock is judged stale (and broken) when the
 * recorded process is gone: a different boot id (reboot), no such pid, a
 * pid whose start time differs (pid reused), or a process that has exited
 * and waits to be reaped (a zombie: kill(pid, 0) still succeeds on it, but it
 * holds no file and serves nothing: its /proc/<pid>/stat state is Z or X). A
 * daemon restarted at once after a crash meets that last case whenever the
 * dead one's parent is slow to reap it. A lock naming another host is left
 * alone, unless its boot id is this kernel's (the host was renamed, or a
 * container came back under a new name). The break is unlink + retry O_EXCL
 * once; two breakers racing cannot both win the second O_EXCL.
 */
export interface LockOwner {
  pid: number;
  startTime: string | null;
  bootId: string | null;
  host: string;
  volumeId: string;
  since: string;
}

/** Fields 3 (state) and 22 (starttime) of /proc/<pid>/stat; null when it cannot be read. */
function procStat(pid: number): { state: string; startTime: string | null } | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The fields after the parenthesised comm, which may contain spaces: [0] is field 3.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { state: f[0] ?? '', startTime: f[19] ?? null };
  } catch {
    return null;
  }
}

function procStartTime(pid: number): string | null {
  return procStat(pid)?.startTime ?? null;
}

function bootId(): string | null {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return null;
  }
}

export function isStale(o: LockOwner): boolean {
  const b = bootId();
  // Another host's lock is never ours to judge. One written under this very kernel (its boot id) is
  // this machine's whatever the host was called then: a container started again under a new host
  // name, a renamed host. Judged by name alone, it named a live owner forever after a crash.
  const thisKernel = o.bootId !== null && b !== null && o.bootId === b;
  if (o.host !== hostname() && !thisKernel) return false;
  if (o.bootId && b && o.bootId !== b) return true;
  try {
    process.kill(o.pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ESRCH') return true;
  }
  const st = procStat(o.pid);
  if (st === null) return false;
  if (st.state === 'Z' || st.state === 'X') return true; // exited, not yet reaped: its files are closed
  return o.startTime !== null && st.startTime !== null && st.startTime !== o.startTime;
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
        // Another host's: say how to free it should that host be gone (or renamed and rebooted since).
        const gone = owner.host !== hostname() ? `; if ${owner.host} no longer runs that daemon, remove ${path}` : '';
        throw new VolumeError('VOLUME_LOCKED', `volume ${volumeId} is attached by pid ${owner.pid} on ${owner.host} since ${owner.since}${gone}`, { awsName: 'VolumeInUse' });
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
  const full = noSpaceWhat(e);
  const why = full !== undefined ? `${full} (${(e as NodeJS.ErrnoException).code})` : (e as Error).message;
  return new VolumeError(full !== undefined ? 'VOLUME_NO_SPACE' : 'VOLUME_IO', `volume ${volumeId}: could not create its attach lock ${path}: ${why}`, { cause: e });
}

export async function readOwner(path: string): Promise<LockOwner | null> {
  try {
    return JSON.parse(await fsp.readFile(path, 'utf8')) as LockOwner;
  } catch {
    return null;
  }
}
