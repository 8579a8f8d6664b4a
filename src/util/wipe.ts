/**
 * Best-effort zeroization. In JavaScript this only clears the bytes of this
 * particular buffer: the GC may have copied them, strings cannot be wiped,
 * and OpenSSL keeps its own schedules. It still shortens the window in which
 * a key sits in memory, which is all it claims to do.
 */
export function wipe(...bufs: (Uint8Array | undefined | null)[]): void {
  for (const b of bufs) if (b) b.fill(0);
}
