import { constants, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { atomicWrite } from '../util/atomic-write.js';
import type { Logger } from '../util/logger.js';
import { shellQuote } from '../util/shell-quote.js';
import { mountEntries, sameMount } from './mount.js';

/**
 * Where the daemons of a state dir served their FUSE mount (`<state>/mount.json`, docs/format.md
 * "State dir"). A daemon killed under a loop device and started again with another `--mount` leaves
 * its dead mount attached at the old path (only a start at the same path takes it away,
 * recoverStaleMount), and every loop device over one of its files is then named
 * `<old mount>/<vol>` by the kernel, which no other record ties to this state dir: without this
 * file such loop devices were reported nowhere (README "State directory").
 */
export const MOUNT_RECORD_FILE = 'mount.json';

/**
 * A mount of this state dir: the directory the kernel lists it at (symlinks resolved), its device
 * (major:minor) and its source (`ebsd:<nonce>`, its own: mount.ts mountSource).
 */
export interface RecordedMount { MountDir: string; Device: string; Source: string }

/** `mount.json`: the mount served last, and earlier ones still attached (dead) when it was made. */
export interface MountRecord extends RecordedMount { Earlier: RecordedMount[] }

/** The most mount.json may hold: a record is well under 1 KiB per mount. */
export const MOUNT_RECORD_MAX_BYTES = 64 * 1024;
/** The most earlier mounts kept: more dead mounts than that of one state dir still attached is no case worth reading on. */
export const MOUNT_RECORD_MAX_EARLIER = 16;

/**
 * The record, or undefined when there is none (a state dir from before it existed) or it cannot be
 * read as one (said on `log`, with why). Read defensively, as any file of the state dir someone may
 * have replaced: not through a symlink (O_NOFOLLOW), never waiting on a FIFO (O_NONBLOCK), a regular
 * file of at most MOUNT_RECORD_MAX_BYTES; its earlier mounts each once, at most MOUNT_RECORD_MAX_EARLIER.
 */
export async function readMountRecord(stateDir: string, log?: Logger): Promise<MountRecord | undefined> {
  const path = join(stateDir, MOUNT_RECORD_FILE);
  const unread = (why: string): undefined => {
    log?.warn({ file: path }, `${path} is not read (${why}): the start does not look for loop devices left under an earlier --mount; it is written afresh at this mount`);
    return undefined;
  };
  let text: string;
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    return unread(code === 'ELOOP' ? 'it is a symbolic link' : String(code ?? (e as Error).message));
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) return unread('not a regular file');
    if (st.size > MOUNT_RECORD_MAX_BYTES) return unread(`${st.size} bytes, more than ${MOUNT_RECORD_MAX_BYTES}`);
    const buf = Buffer.alloc(MOUNT_RECORD_MAX_BYTES + 1);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    if (bytesRead > MOUNT_RECORD_MAX_BYTES) return unread(`more than ${MOUNT_RECORD_MAX_BYTES} bytes`);
    text = buf.subarray(0, bytesRead).toString('utf8');
  } catch (e) {
    return unread(String((e as NodeJS.ErrnoException).code ?? (e as Error).message));
  } finally {
    await fh.close();
  }
  try {
    const r = JSON.parse(text) as Partial<MountRecord>;
    const ok = (m: unknown): m is RecordedMount => ['MountDir', 'Device', 'Source'].every((k) => typeof (m as Record<string, unknown> | null)?.[k] === 'string');
    const listed: unknown[] = Array.isArray(r.Earlier) ? r.Earlier : [];
    if (!ok(r)) return unread('not a mount record');
    const seen = new Set<string>();
    const earlier: RecordedMount[] = [];
    for (const m of listed) {
      if (earlier.length === MOUNT_RECORD_MAX_EARLIER) break;
      if (!ok(m)) continue;
      const key = JSON.stringify([m.MountDir, m.Device, m.Source]);
      if (seen.has(key)) continue;
      seen.add(key);
      earlier.push({ MountDir: m.MountDir, Device: m.Device, Source: m.Source });
    }
    return { MountDir: r.MountDir, Device: r.Device, Source: r.Source, Earlier: earlier };
  } catch {
    return unread('not JSON'); // torn by hand; atomicWrite never leaves half a file
  }
}

export async function writeMountRecord(stateDir: string, r: MountRecord): Promise<void> {
  const record: MountRecord = { ...r, Earlier: r.Earlier.slice(0, MOUNT_RECORD_MAX_EARLIER) };
  await atomicWrite(join(stateDir, MOUNT_RECORD_FILE), `${JSON.stringify(record)}\n`, 0o600);
}

/**
 * The mounts a previous daemon of this state dir left attached, other than `mountedAt` (the one just
 * made): each mount of `record` (the last one and its earlier ones) still listed in mountinfo at its
 * dir with its device and its source. The source is the mount's own (mount.ts mountSource): device
 * numbers and mount ids are handed out lowest-free first, so another daemon (another state dir)
 * mounting later at the same path gets the same device, never the same source. A mount found is dead:
 * only one daemon runs on a state dir (the pid lock), and this one just made its own mount; so its
 * dir is never stat'ed (a stat of a live mount that is stuck would hold a thread of the pool).
 *
 * Each one found is logged with how to remove it. None is unmounted here: a dead mount costs
 * nothing but ENOTCONN to whoever looks at it, the new daemon needs nothing at the old path, and
 * while it stays the kernel keeps naming the loop devices over its files `<old mount>/<vol>` (what
 * `ebsd status` names them by, and `losetup -j` finds); after a lazy unmount they would be `/<vol>`,
 * which no longer says whose they are. The operator removes it (`fusermount -u -z`) once they are
 * detached, or a daemon started again at that path does (recoverStaleMount).
 */
export async function earlierDeadMounts(record: MountRecord | undefined, mountedAt: string, log: Logger): Promise<RecordedMount[]> {
  if (!record) return [];
  const candidates = [record, ...record.Earlier].filter((m) => m.MountDir !== mountedAt);
  if (candidates.length === 0) return [];
  const found = await stillMounted(candidates);
  for (const m of found) {
    log.warn({ mount: m.MountDir, source: m.Source },
      `a dead FUSE mount of a previous daemon of this state dir is left at ${m.MountDir}: nothing is served there any more; `
      + `once the loop devices over its files are detached (losetup -l lists them), remove it with: fusermount -u -z ${shellQuote(m.MountDir)}`);
  }
  return found;
}

/**
 * Those of `mounts` still listed in mountinfo, by dir, device and source (an operator may have removed
 * them since, and another daemon may have mounted at the dir again), each once.
 */
export async function stillMounted(mounts: readonly RecordedMount[]): Promise<RecordedMount[]> {
  if (mounts.length === 0) return [];
  const entries = mountEntries(await fsp.readFile('/proc/self/mountinfo', 'utf8')).filter((e) => e.type === 'fuse.ebsd');
  const seen = new Set<string>();
  return mounts.filter((m) => {
    const key = `${m.MountDir}\0${m.Device}\0${m.Source}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return entries.some((e) => sameMount(e, { at: m.MountDir, device: m.Device, source: m.Source }));
  }).map(({ MountDir, Device, Source }) => ({ MountDir, Device, Source }));
}
