import { COW_SECTOR } from './cow-spill.js';

/** Sectors per slab: slabs are 1 MiB. */
const SLAB_SECTORS = 256;

/**
 * The in-memory part of a CowSession's captured sectors (docs/architecture.md
 * §12.2): 4 KiB slots carved from 1 MiB slabs, allocated as needed up to a
 * cap and recycled through a free list. One buffer per captured sector would
 * cost an ArrayBuffer allocation on every capturing write and leave tens of
 * thousands of objects for the garbage collector; a slot is a number.
 */
export class MemSlots {
  private readonly slabs: Buffer[] = [];
  private readonly free: number[] = [];
  private readonly maxSlots: number;
  /** Slots in use. */
  used = 0;

  constructor(maxBytes: number) {
    this.maxSlots = Math.floor(maxBytes / COW_SECTOR);
  }

  /** A free slot, or -1 when the cap is reached. */
  alloc(): number {
    const f = this.free.pop();
    if (f !== undefined) {
      this.used++;
      return f;
    }
    const n = this.slabs.length * SLAB_SECTORS;
    if (n >= this.maxSlots) return -1;
    this.slabs.push(Buffer.allocUnsafeSlow(Math.min(SLAB_SECTORS, this.maxSlots - n) * COW_SECTOR));
    for (let i = Math.min(n + SLAB_SECTORS, this.maxSlots) - 1; i > n; i--) this.free.push(i);
    this.used++;
    return n;
  }

  /** Copies src[off, off + 4096) into slot `slot`. */
  put(slot: number, src: Buffer, off: number): void {
    src.copy(this.slabs[Math.floor(slot / SLAB_SECTORS)]!, (slot % SLAB_SECTORS) * COW_SECTOR, off, off + COW_SECTOR);
  }

  /** Copies slot `slot` into into[off, off + 4096). */
  get(slot: number, into: Buffer, off: number): void {
    const at = (slot % SLAB_SECTORS) * COW_SECTOR;
    this.slabs[Math.floor(slot / SLAB_SECTORS)]!.copy(into, off, at, at + COW_SECTOR);
  }

  release(slot: number): void {
    this.used--;
    this.free.push(slot);
  }

  /** Drops every slab (the session ended). */
  clear(): void {
    this.slabs.length = 0;
    this.free.length = 0;
    this.used = 0;
  }
}
