import { promises as fsp } from 'node:fs';
import { join } from 'node:path';

/**
 * Loop devices left bound to a volume file that is no longer the one served (README, "State
 * directory"): a daemon that stopped or was killed under a loop device (crash, watchdog restart,
 * SIGTERM with the file open) leaves the device holding a file of a FUSE mount that is gone. Every
 * request on it fails with EIO, and the file system on top with it, while the new daemon serves the
 * volume afresh; nothing in the daemon's own state says so, since the kernel never tells it.
 *
 * The kernel names each loop device's backing file in sysfs (`/sys/block/loopN/loop/backing_file`),
 * as the path of that file now: one of a mount that was detached (the stale mount a new daemon
 * takes away lazily, or one unmounted from outside) is named by what is left of it, `/<vol>`, and an
 * unlinked one gets ` (deleted)`; contrib/systemd/ebsd-loop@.service finds them the same way. A file
 * of a dead mount still attached (a daemon killed, restarted with another --mount) keeps its full
 * path, `<old mount>/<vol>`: found through the mount dirs the state dir recorded (mount-record.ts).
 * Only sysfs is read: the unit's DevicePolicy=closed lets the daemon open no /dev/loop*, and the
 * mount itself is never touched (its requests are served by the thread that would ask).
 */

/** The sysfs directory of block devices; a test may give another root. */
export const SYS_BLOCK = '/sys/block';

/** A volume file's name (the EC2 volume id, docs/format.md): what a FUSE mount of ebsd holds, nothing else. */
const VOLUME_FILE = /^vol-[0-9a-f]{17}$/;

/** A bound loop device: `/dev/loopN` and its backing_file line. */
export interface LoopBacking { device: string; backing: string }

/**
 * Every bound loop device and its backing file, in device order. A loop device that goes away (or
 * is unbound) while it is read is skipped; no sysfs (a container without it): none.
 */
export async function loopBackings(sysBlock = SYS_BLOCK): Promise<LoopBacking[]> {
  let names: string[];
  try {
    names = (await fsp.readdir(sysBlock)).filter((n) => /^loop[0-9]+$/.test(n));
  } catch {
    return [];
  }
  names.sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)));
  const out: LoopBacking[] = [];
  for (const n of names) {
    try {
      out.push({ device: `/dev/${n}`, backing: (await fsp.readFile(join(sysBlock, n, 'loop', 'backing_file'), 'utf8')).replace(/\n$/, '') });
    } catch {
      // not bound (no backing_file), or gone meanwhile
    }
  }
  return out;
}

/**
 * What a loop device's file is, for the daemon serving at `mountedAt` whose state dir's earlier
 * daemons served at `earlierMounts` (dead mounts still attached there: mount-record.ts):
 * - `detached`: `/<vol>`, a file of a mount no longer attached anywhere (whose, the path no longer
 *   says: only a volume of this state dir's catalog may be claimed from it);
 * - `earlier`: `<earlier mount>/<vol>`, deleted or not, a file a previous daemon of this state dir
 *   served (`mount` says where);
 * - `current`: `<mountedAt>/<vol>`, a file of this daemon's own mount: served now, or removed while
 *   open (a forced detach, the volume maybe deleted since; BlockFileSystem.cutOffHandles counts
 *   them). The kernel marks it ` (deleted)` only once a lookup of the name found it gone, so either
 *   name may be one removed.
 * Anything else (another program's file): undefined.
 */
export type LoopFile =
  | { kind: 'detached'; volumeId: string }
  | { kind: 'earlier'; volumeId: string; mount: string }
  | { kind: 'current'; volumeId: string };

export function loopFileOf(backing: string, mountedAt: string | undefined, earlierMounts: readonly string[]): LoopFile | undefined {
  const deleted = backing.endsWith(' (deleted)');
  const path = deleted ? backing.slice(0, -' (deleted)'.length) : backing;
  const cut = path.lastIndexOf('/');
  if (cut < 0) return undefined;
  const dir = path.slice(0, cut);
  const volumeId = path.slice(cut + 1);
  if (!VOLUME_FILE.test(volumeId)) return undefined;
  // `/<vol>`: the root of a mount no longer attached anywhere (the volume files are the mount's only entries).
  if (dir === '') return { kind: 'detached', volumeId };
  if (earlierMounts.includes(dir)) return { kind: 'earlier', volumeId, mount: dir };
  if (dir === mountedAt) return { kind: 'current', volumeId };
  return undefined;
}
