import { fstatSync, statfsSync } from 'node:fs';

/**
 * Write-behind (SectorDevice.writeBehind) only while the backing filesystem
 * has at least this much free space: a sparse backing file can run out of
 * space on a pwrite, and an ENOSPC must reach the writer, not a later flush.
 * Below the margin every write is written through.
 */
export const BEHIND_MIN_FREE = 512 * 1024 * 1024;
const RECHECK_BYTES = 64 * 1024 * 1024;
const RECHECK_MS = 1000;

/** What the gates of one filesystem know: the last answer, when it was had, bytes allowed since. */
interface FsSpace {
  ok: boolean;
  checkedAt: number;
  bytes: number;
}

/**
 * One record per filesystem (st_dev), shared by the gates of every volume on it: the margin is the
 * filesystem's, so RECHECK_BYTES counts what all of them wrote behind. Per volume, eight volumes
 * writing at once could each spend 64 MiB between two looks, the whole margin.
 */
const byFs = new Map<bigint, FsSpace>();

/**
 * Whether the filesystem holding `fd` has at least BEHIND_MIN_FREE bytes
 * free, asked with statfs after every RECHECK_BYTES bytes passed through (by
 * any volume on that filesystem) and at least every RECHECK_MS (a statfs per
 * write would cost more than the write). Unknown (statfs failed) counts as full.
 * `now` is the clock in milliseconds (tests pass their own).
 */
export class FreeSpaceGate {
  private readonly space: FsSpace;

  constructor(private readonly fd: number, private readonly now: () => number = () => performance.now()) {
    let dev: bigint | undefined;
    try {
      dev = fstatSync(fd, { bigint: true }).dev;
    } catch {
      dev = undefined; // a record of its own: statfs will fail too, and say full
    }
    const fresh = (): FsSpace => ({ ok: false, checkedAt: Number.NEGATIVE_INFINITY, bytes: 0 });
    if (dev === undefined) {
      this.space = fresh();
    } else {
      this.space = byFs.get(dev) ?? fresh();
      byFs.set(dev, this.space);
    }
  }

  /** Whether `len` more bytes may be written behind. */
  allows(len: number): boolean {
    const s = this.space;
    s.bytes += len;
    const now = this.now();
    // now < checkedAt: the look was taken on another clock (a test's); look again.
    if (s.bytes >= RECHECK_BYTES || now - s.checkedAt >= RECHECK_MS || now < s.checkedAt) {
      s.bytes = 0;
      s.checkedAt = now;
      try {
        const st = statfsSync(`/proc/self/fd/${this.fd}`);
        s.ok = st.bavail * st.bsize >= BEHIND_MIN_FREE;
      } catch {
        s.ok = false;
      }
    }
    return s.ok;
  }
}
