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
 * unlinked one gets ` (deleted)`; contrib/systemd/ebsd-loop@.service finds them the same way.
 * Only sysfs is read: the unit's DevicePolicy=closed lets the daemon open no /dev/loop*, and the
 * mount itself is never touched (its requests are served by the thread that would ask).
 */

/** The sysfs directory of block devices; a test may give another root. */
export const SYS_BLOCK = '/sys/block';

/**
 * Loop devices whose backing file is a file of one of `volumeIds` on a mount that is gone: `/<vol>`
 * (a file of this daemon's own mount cut off by a forced detach, `<mount>/<vol> (deleted)`, is
 * counted as a cut-off handle instead). Volume id -> the devices (`/dev/loopN`), in device order;
 * volumes with none are absent. A loop device that goes away while it is read is skipped.
 */
export async function staleLoopDevices(volumeIds: ReadonlySet<string>, sysBlock = SYS_BLOCK): Promise<Map<string, string[]>> {
  const found = new Map<string, string[]>();
  if (volumeIds.size === 0) return found;
  let names: string[];
  try {
    names = (await fsp.readdir(sysBlock)).filter((n) => /^loop[0-9]+$/.test(n));
  } catch {
    return found; // no sysfs (a container without it): nothing can be said
  }
  names.sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)));
  for (const n of names) {
    let backing: string;
    try {
      backing = (await fsp.readFile(join(sysBlock, n, 'loop', 'backing_file'), 'utf8')).replace(/\n$/, '');
    } catch {
      continue; // not bound (no backing_file), or gone meanwhile
    }
    const volumeId = staleVolumeOf(backing, volumeIds);
    if (volumeId === undefined) continue;
    const list = found.get(volumeId);
    if (list) list.push(`/dev/${n}`);
    else found.set(volumeId, [`/dev/${n}`]);
  }
  return found;
}

/** The volume whose stale file `backing` (a backing_file line) names, or undefined when it names none or the file served now. */
export function staleVolumeOf(backing: string, volumeIds: ReadonlySet<string>): string | undefined {
  const deleted = backing.endsWith(' (deleted)');
  const path = deleted ? backing.slice(0, -' (deleted)'.length) : backing;
  const cut = path.lastIndexOf('/');
  const dir = path.slice(0, cut);
  const name = path.slice(cut + 1);
  if (cut < 0 || !volumeIds.has(name)) return undefined;
  // `/<vol>`: the root of a mount no longer attached anywhere (the volume files are the mount's only entries).
  // `<mount>/<vol> (deleted)` is this daemon's own file, cut off by a forced detach: counted as cut-off
  // handles (BlockFileSystem.cutOffHandles), not twice.
  return dir === '' ? name : undefined;
}
