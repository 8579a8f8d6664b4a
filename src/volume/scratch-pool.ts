/**
 * Reusable scratch buffers by exact length. FUSE sends the same few sizes
 * (4 KiB .. 128 KiB) over and over; reusing them keeps the hot path free of
 * per-call allocations. Not pooled through Buffer.allocUnsafe's shared slab,
 * so a buffer never shares memory with unrelated data.
 */
export class ScratchPool {
  private readonly free = new Map<number, Buffer[]>();
  constructor(private readonly alloc: (len: number) => Buffer) {}
  take(len: number): Buffer {
    const l = this.free.get(len);
    return l?.pop() ?? this.alloc(len);
  }
  give(b: Buffer): void {
    if (b.length > 4 * 1024 * 1024) return;
    let l = this.free.get(b.length);
    if (!l) this.free.set(b.length, (l = []));
    if (l.length < 64) l.push(b);
  }
  clear(): void {
    for (const l of this.free.values()) for (const b of l) b.fill(0);
    this.free.clear();
  }
}
