import { SNAPSHOT_BLOCK_BYTES } from './types.js';

/**
 * A set of 512 KiB block indexes the snapshot code reads: what a snapshot
 * copies (CowSession, copyBlocks). Either a BlockBitmap or a BlockRange
 * (every block of a volume, one object whatever its size).
 */
export interface BlockSet {
  /** Members, in O(1). */
  readonly size: number;
  has(i: number): boolean;
  /** Members in ascending order. */
  indexes(): IterableIterator<number>;
}

/**
 * Blocks [0, size): a full snapshot's set, O(1) to build and to hold. A
 * list or a Set of every index would cost time proportional to the volume
 * inside the write pause (docs/architecture.md §12.2) and cannot hold the
 * 2^27 blocks of a 64 TiB volume (V8 caps a Map or Set at 2^24 entries).
 */
export class BlockRange implements BlockSet {
  constructor(readonly size: number) {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`size: not a block count: ${size}`);
  }

  has(i: number): boolean {
    return Number.isInteger(i) && i >= 0 && i < this.size;
  }

  *indexes(): IterableIterator<number> {
    for (let i = 0; i < this.size; i++) yield i;
  }
}

/**
 * A growable set of 512 KiB block indexes, one bit each: 256 bytes per
 * GiB of volume (16 MiB for 64 TiB). Changed-block tracking, the
 * copy-on-write set and the copier's bookkeeping use it.
 */
export class BlockBitmap implements BlockSet {
  private bits: Uint8Array;
  /** Members, kept as bits are set and cleared so `size` is O(1). */
  private count = 0;

  constructor(bytes?: Uint8Array) {
    this.bits = bytes ? new Uint8Array(bytes) : new Uint8Array(64);
    if (bytes) for (const b of this.bits) for (let x = b; x; x &= x - 1) this.count++;
  }

  /** A bitmap with room for blocks [0, nBlocks) allocated at once (no growth while it fills). */
  static withCapacity(nBlocks: number): BlockBitmap {
    const b = new BlockBitmap();
    b.bits = new Uint8Array(Math.max(64, Math.ceil(nBlocks / 8)));
    return b;
  }

  /** The blocks a byte range [pos, pos + len) of the data segment touches; none for len 0. */
  static blocksOf(pos: number, len: number): [first: number, last: number] | undefined {
    if (len <= 0) return undefined;
    return [Math.floor(pos / SNAPSHOT_BLOCK_BYTES), Math.floor((pos + len - 1) / SNAPSHOT_BLOCK_BYTES)];
  }

  has(i: number): boolean {
    const byte = i >>> 3;
    return byte < this.bits.length && (this.bits[byte]! & (1 << (i & 7))) !== 0;
  }

  add(i: number): void {
    const byte = i >>> 3;
    if (byte >= this.bits.length) {
      const grown = new Uint8Array(Math.max(byte + 1, this.bits.length * 2));
      grown.set(this.bits);
      this.bits = grown;
    }
    const bit = 1 << (i & 7);
    if ((this.bits[byte]! & bit) === 0) {
      this.bits[byte]! |= bit;
      this.count++;
    }
  }

  addRange(first: number, last: number): void {
    for (let i = first; i <= last; i++) this.add(i);
  }

  delete(i: number): void {
    const byte = i >>> 3;
    const bit = 1 << (i & 7);
    if (byte < this.bits.length && (this.bits[byte]! & bit) !== 0) {
      this.bits[byte]! &= ~bit;
      this.count--;
    }
  }

  /** Removes every member >= `limit`. */
  truncate(limit: number): void {
    for (let byte = Math.floor(Math.max(0, limit) / 8); byte < this.bits.length; byte++) {
      for (let bit = 0; bit < 8; bit++) if (byte * 8 + bit >= limit) this.delete(byte * 8 + bit);
    }
  }

  /** Adds every member of `other`. */
  or(other: BlockBitmap): void {
    for (const i of other.indexes()) this.add(i);
  }

  /** Members in ascending order, below `limit` when given. */
  *indexes(limit = Infinity): IterableIterator<number> {
    for (let byte = 0; byte < this.bits.length; byte++) {
      const b = this.bits[byte]!;
      if (b === 0) continue;
      for (let bit = 0; bit < 8; bit++) {
        const i = byte * 8 + bit;
        if (i >= limit) return;
        if (b & (1 << bit)) yield i;
      }
    }
  }

  get size(): number {
    return this.count;
  }

  toBase64(): string {
    let end = this.bits.length;
    while (end > 0 && this.bits[end - 1] === 0) end--;
    return Buffer.from(this.bits.subarray(0, end)).toString('base64');
  }

  /**
   * The bitmap toBase64() wrote; anything else (characters outside the
   * alphabet, missing or extra padding, any other non-canonical form:
   * Buffer.from skips what it does not understand and would read "fewer
   * blocks") is a RangeError. The check: the bytes encode back to `s` exactly.
   */
  static fromBase64(s: string): BlockBitmap {
    if (typeof s !== 'string') throw new TypeError('s: not a string');
    const bytes = Buffer.from(s, 'base64');
    if (bytes.toString('base64') !== s) throw new RangeError('s: not the canonical base64 of a block bitmap');
    return new BlockBitmap(bytes);
  }
}
