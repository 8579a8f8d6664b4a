/**
 * Where a secret is still in this process's memory: every writable mapping of
 * /proc/self/maps read through /proc/self/mem (proc(5)). Freed memory that no
 * allocation has reused yet is still mapped and still read, so a buffer that
 * held a key and was dropped without being wiped is found, as a core dump or
 * a reader of the daemon's memory would find it.
 *
 * The caller never holds the secret itself: it passes the secret with every
 * byte inverted (`invert`), and each chunk read is inverted before it is
 * searched. The pattern in memory is the inverted secret, which an inverted
 * chunk shows as the secret itself, so the search never finds its own pattern;
 * the chunk is zeroed once searched, so it never holds the secret when its
 * own mapping is read.
 */
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';

/** `secret` with every byte inverted, in a buffer of its own. */
export function invert(secret: Uint8Array): Buffer {
  const out = Buffer.allocUnsafeSlow(secret.length);
  for (let i = 0; i < secret.length; i++) out[i] = ~secret[i]! & 0xff;
  return out;
}

/** How many times the secret whose inverse is `inverted` is in this process's writable memory. */
export function countInOwnMemory(inverted: Uint8Array): number {
  return countInMemory('self', inverted);
}

/**
 * The same in another process's memory (`pid`): root may read it even when the process made
 * itself non-dumpable, as the daemon does (CAP_SYS_PTRACE, docs/architecture.md §5.10).
 */
export function countInMemory(pid: number | 'self', inverted: Uint8Array): number {
  const CHUNK = 1 << 20;
  const chunk = Buffer.allocUnsafeSlow(CHUNK);
  const overlap = inverted.length - 1; // a copy across two reads is found in the second
  const fd = openSync(`/proc/${pid}/mem`, 'r');
  let hits = 0;
  try {
    for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
      const [range, perms, , , , path] = line.split(/\s+/);
      if (!range || !perms?.startsWith('rw') || path === '[vvar]' || path === '[vsyscall]') continue;
      const [start, end] = range.split('-').map((x) => parseInt(x, 16)) as [number, number];
      for (let at = start; at < end; at += CHUNK - overlap) {
        const len = Math.min(CHUNK, end - at);
        let n: number;
        try { n = readSync(fd, chunk, 0, len, at); } catch { break; } // unmapped since maps was read
        for (let i = 0; i < n; i++) chunk[i] = ~chunk[i]! & 0xff;
        for (let i = chunk.indexOf(inverted); i >= 0 && i + inverted.length <= n; i = chunk.indexOf(inverted, i + 1)) hits++;
        // An inverted chunk that held the caller's pattern now holds the secret itself; left
        // there, it is found again when the mapping that holds `chunk` is read: a copy that
        // is the search's own. Zeroed before the next read.
        chunk.fill(0);
        if (n < len || at + len >= end) break;
      }
    }
  } finally {
    closeSync(fd);
    chunk.fill(0);
  }
  return hits;
}
