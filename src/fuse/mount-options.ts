import type { FuseOptions } from 'fuse-native';

/**
 * The FUSE mount options of a block-file mount, in one place: the daemon's
 * FuseMount (mount.ts) and the benchmark scripts (scripts/bench/noop-fuse.mjs,
 * fio-harness.mjs, which import this module from dist/) mount with exactly
 * these, so the no-op ceiling and the harness measure the daemon's transport.
 * No imports beyond a type: a plain .mjs script can load it.
 */

/** 128 KiB: the largest request the kernel sends once big_writes is on (FUSE protocol 7.x, libfuse2). */
export const MAX_IO = 131072;

/** The mount source of a block-file mount without an identity of its own (the benchmark scripts). */
export const FSNAME = 'ebsd';

/**
 * fuse-native's own options (it builds the `-o` string from these keys). `fsname`: the mount's
 * source, the field after the type in /proc/self/mountinfo; the daemon gives each of its mounts one
 * of its own, `ebsd:<nonce>` (mount.ts mountSource), so a mount is told from another made later at
 * the same path with the same device number (mount-record.ts).
 */
export function fuseNativeOptions(allowOther: boolean, fsname: string = FSNAME): FuseOptions {
  return {
    // A disk never times out a request on its own; neither do we.
    timeout: false,
    fsname,
    subtype: 'ebsd',
    maxRead: MAX_IO,
    allowOther,
    defaultPermissions: true,
  };
}

/**
 * Options fuse-native has no key for, appended to its `-o` string.
 * entry_timeout/negative_timeout 0: a detached volume's name vanishes and an
 * attached one appears at once (libfuse's 1 s default let a stale dentry
 * outlive DetachVolume). Lookups happen on open, never per I/O.
 * attr_timeout is not set: libfuse's default, 1 s. The kernel may show a
 * volume's old size that long after ModifyVolume (README, "Growing an
 * attached volume": stat, then `losetup -c`).
 * atomic_o_trunc: O_TRUNC reaches open() as a flag, which a block device
 * ignores, instead of a separate truncate to size 0 that must be refused
 * (`dd of=` without conv=notrunc, `cp`, `cat >` onto a volume file).
 */
export const EXTRA_MOUNT_OPTIONS: readonly string[] = Object.freeze(['big_writes', `max_write=${MAX_IO}`, 'entry_timeout=0', 'negative_timeout=0', 'atomic_o_trunc']);

/** fuse-native's `-o` string (`base`, possibly empty) with `extra` appended. */
export function appendMountOptions(base: string, extra: readonly string[]): string {
  const more = extra.join(',');
  if (!more) return base;
  return base ? `${base},${more}` : `-o${more}`;
}
