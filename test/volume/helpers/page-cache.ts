import { execFileSync } from 'node:child_process';
import { closeSync, fsyncSync, openSync } from 'node:fs';

/**
 * Drop `path`'s pages in [pos, pos+len) (len 0 = to EOF) from the page cache:
 * fsync so they are clean, then posix_fadvise(DONTNEED), which drops clean
 * unmapped pages. An O_DIRECT write alone is not enough: its invalidation of
 * cached pages is best effort (seen here: pages left cached in ~1 run of 3).
 * Node has no fadvise binding, so python3 (a set-up dependency) calls it.
 */
export function evictFromPageCache(path: string, pos = 0, len = 0): void {
  const fd = openSync(path, 'r+');
  try { fsyncSync(fd); } finally { closeSync(fd); }
  execFileSync('python3', ['-c',
    'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, int(sys.argv[2]), int(sys.argv[3]), os.POSIX_FADV_DONTNEED)',
    path, String(pos), String(len)]);
}
