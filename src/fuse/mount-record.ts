import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { atomicWrite } from '../util/atomic-write.js';
import type { Logger } from '../util/logger.js';
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
    const ok = (m: unknown): m is RecordedMount => ['MountDir', 'Device', 'Source'].every((k) => typeof (m as Record<string, unknown> | null)?.[k] === 'string');
    const earlier = Array.isArray(r.Earlier) ? r.Earlier.filter(ok).map(({ MountDir, Device, Source }) => ({ MountDir, Device, Source })) : [];
    if (!ok(r)) return undefined;
    return { MountDir: r.MountDir, Device: r.Device, Source: r.Source, Earlier: earlier };
  } catch {
    return undefined; // torn by hand; atomicWrite never leaves half a file
  }
}

export async function writeMountRecord(stateDir: string, r: MountRecord): Promise<void> {
  await atomicWrite(join(stateDir, MOUNT_RECORD_FILE), `${JSON.stringify(r)}\n`, 0o600);
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
      + `once the loop devices over its files are detached (losetup -l lists them), remove it with: fusermount -u -z ${m.MountDir}`);
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
