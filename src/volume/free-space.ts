import { statfsSync } from 'node:fs';

/**
 * Write-behind (SectorDevice.writeBehind) only while the backing filesystem
 * has at least this much free space: a sparse backing file can run out of
 * space on a pwrite, and an ENOSPC must reach the writer, not a later flush.
 * Below the margin every write is written through.
 */
export const BEHIND_MIN_FREE = 512 * 1024 * 1024;
const RECHECK_BYTES = 64 * 1024 * 1024;
const RECHECK_MS = 1000;

/**
 * Whether the filesystem holding `fd` has at least BEHIND_MIN_FREE bytes
 * free, asked with statfs after every RECHECK_BYTES bytes passed through and
 * at least every RECHECK_MS (a statfs per write would cost more than the
 * write). Unknown (statfs failed) counts as full.
 */
export class FreeSpaceGate {
  private ok = false;
  private checkedAt = Number.NEGATIVE_INFINITY;
  private bytes = 0;

  constructor(private readonly fd: number) {}

  /** Whether `len` more bytes may be written behind. */
  allows(len: number): boolean {
    this.bytes += len;
    const now = performance.now();
    if (this.bytes >= RECHECK_BYTES || now - this.checkedAt >= RECHECK_MS) {
      this.bytes = 0;
      this.checkedAt = now;
      try {
        const st = statfsSync(`/proc/self/fd/${this.fd}`);
        this.ok = st.bavail * st.bsize >= BEHIND_MIN_FREE;
      } catch {
        this.ok = false;
      }
    }
    return this.ok;
  }
}
