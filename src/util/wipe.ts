/**
 * Best-effort zeroization. In JavaScript this only clears the bytes of this
 * particular buffer: the GC may have copied them, strings cannot be wiped,
 * and OpenSSL keeps its own schedules. It still shortens the window in which
 * a key sits in memory, which is all it claims to do.
 */
export function wipe(...bufs: (Uint8Array | undefined | null)[]): void {
  for (const b of bufs) if (b) b.fill(0);
}

/**
 * A zero-filled buffer for a secret, whose bytes live outside V8's heap at any size.
 * `Buffer.alloc`/`allocUnsafeSlow` of up to 64 bytes is a typed array V8 keeps on its own heap,
 * where a garbage collection moves it (leaving the old bytes behind, unwiped) and reading
 * `.buffer` or handing it to native code moves it out (the same); an ArrayBuffer's backing store
 * never moves. docs/architecture.md §6.5.
 */
export function secretBuffer(n: number): Buffer {
  return Buffer.from(new ArrayBuffer(n));
}
