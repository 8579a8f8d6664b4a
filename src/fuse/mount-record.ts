import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { atomicWrite } from '../util/atomic-write.js';
import type { Logger } from '../util/logger.js';
import { mountEntries } from './mount.js';

/**
 * Where the daemons of a state dir served their FUSE mount (`<state>/mount.json`, docs/format.md
 * "State dir"). A daemon killed under a loop device and started again with another `--mount` leaves
 * its dead mount attached at the old path (only a start at the same path takes it away,
 * recoverStaleMount), and every loop device over one of its files is then named
 * `<old mount>/<vol>` by the kernel, which no other record ties to this state dir: without this
 * file such loop devices were reported nowhere (README "State directory").
 */
export const MOUNT_RECORD_FILE = 'mount.json';

/** A mount of this state dir: the directory the kernel lists it at (symlinks resolved) and its device (major:minor). */
export interface RecordedMount { MountDir: string; Device: string }

/** `mount.json`: the mount served last, and earlier ones still attached (dead) when it was made. */
export interface MountRecord extends RecordedMount { Earlier: RecordedMount[] }

/** How long a stat of an earlier mount dir may take (another daemon's live mount that is stuck would never answer). */
const DEAD_CHECK_MS = 2_000;

/** The record, or undefined when there is none (a state dir from before it existed) or it cannot be read as one. */
export async function readMountRecord(stateDir: string): Promise<MountRecord | undefined> {
  let text: string;
  try {
    text = await fsp.readFile(join(stateDir, MOUNT_RECORD_FILE), 'utf8');
  } catch {
    return undefined;
  }
  try {
    const r = JSON.parse(text) as Partial<MountRecord>;
    const ok = (m: unknown): m is RecordedMount => typeof (m as RecordedMount)?.MountDir === 'string' && typeof (m as RecordedMount)?.Device === 'string';
    const earlier = Array.isArray(r.Earlier) ? r.Earlier.filter(ok) : [];
    if (!ok(r)) return undefined;
    return { MountDir: r.MountDir, Device: r.Device, Earlier: earlier };
  } catch {
    return undefined; // torn by hand; atomicWrite never leaves half a file
  }
}

export async function writeMountRecord(stateDir: string, r: MountRecord): Promise<void> {
  await atomicWrite(join(stateDir, MOUNT_RECORD_FILE), `${JSON.stringify(r)}\n`, 0o600);
}

/**
 * The mounts a previous daemon of this state dir left attached and dead, other than `mountedAt`
 * (the one just made): for each mount dir of `record` (the last one and its earlier ones), the
 * fuse.ebsd mount still listed there with the recorded device, whose directory answers ENOTCONN.
 *
 * Both are needed to call it this state dir's: mount ids and anonymous device numbers are handed out
 * lowest-free first, so a record alone cannot tell the previous daemon's mount from one another
 * daemon made later at the same path with the same device number; a live one answers the stat.
 * The stat is async (a thread of the pool), bounded by DEAD_CHECK_MS: no answer is not dead.
 *
 * Every other fuse.ebsd mount found dead at those dirs is logged with how to remove it. None is
 * unmounted here: a dead mount costs nothing but ENOTCONN to whoever looks at it, the new daemon
 * needs nothing at the old path, and while it stays the kernel keeps naming the loop devices over
 * its files `<old mount>/<vol>` (what `ebsd status` names them by, and `losetup -j` finds); after a
 * lazy unmount they would be `/<vol>`, which no longer says whose they are. The operator removes it
 * (`fusermount -u -z`) once they are detached, or a daemon started again at that path does
 * (recoverStaleMount).
 */
export async function earlierDeadMounts(record: MountRecord | undefined, mountedAt: string, log: Logger): Promise<RecordedMount[]> {
  if (!record) return [];
  const candidates = [record, ...record.Earlier].filter((m, i, all) => m.MountDir !== mountedAt && all.findIndex((x) => x.MountDir === m.MountDir) === i);
  if (candidates.length === 0) return [];
  const entries = mountEntries(await fsp.readFile('/proc/self/mountinfo', 'utf8'));
  const found: RecordedMount[] = [];
  for (const c of candidates) {
    const there = entries.filter((e) => e.at === c.MountDir && e.type === 'fuse.ebsd');
    if (there.length === 0 || !(await answersEnotconn(c.MountDir))) continue;
    const ours = there.some((e) => e.device === c.Device);
    if (ours) found.push({ MountDir: c.MountDir, Device: c.Device });
    log.warn({ mount: c.MountDir, earlierDaemon: ours },
      `a dead FUSE mount of ${ours ? 'a previous daemon of this state dir' : 'an ebsd daemon'} is left at ${c.MountDir} (ENOTCONN): nothing is served there any more; `
      + `once the loop devices over its files are detached (losetup -l lists them), remove it with: fusermount -u -z ${c.MountDir}`);
  }
  return found;
}

/** Whether the mounts `mounts` are still listed in mountinfo (an operator may have removed them since). */
export async function stillMounted(mounts: readonly RecordedMount[]): Promise<RecordedMount[]> {
  if (mounts.length === 0) return [];
  const entries = mountEntries(await fsp.readFile('/proc/self/mountinfo', 'utf8'));
  return mounts.filter((m) => entries.some((e) => e.at === m.MountDir && e.device === m.Device && e.type === 'fuse.ebsd'));
}

/** A stat of `dir` fails with ENOTCONN (ECONNABORTED once aborted: a FUSE mount whose daemon is gone) within DEAD_CHECK_MS. */
async function answersEnotconn(dir: string): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((r) => { timer = setTimeout(() => r('late'), DEAD_CHECK_MS); timer.unref(); });
  const stat = fsp.stat(dir).then(() => 'answers' as const, (e: NodeJS.ErrnoException) => e.code ?? 'error');
  try {
    const answer = await Promise.race([stat, late]);
    return answer === 'ENOTCONN' || answer === 'ECONNABORTED';
  } finally {
    clearTimeout(timer);
  }
}
