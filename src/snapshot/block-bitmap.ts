import { SNAPSHOT_BLOCK_BYTES } from './types.js';

/**
 * A growable set of 512 KiB block indexes, one bit each: 256 bytes per
 * GiB of volume. Changed-block tracking and the copy-on-write set use it.
 */
export class BlockBitmap {
  private bits: Uint8Array;

  constructor(bytes?: Uint8Array) {
    this.bits = bytes ? Uint8Array.from(bytes) : new Uint8Array(64);
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
    this.bits[byte]! |= 1 << (i & 7);
  }

  addRange(first: number, last: number): void {
    for (let i = first; i <= last; i++) this.add(i);
  }

  delete(i: number): void {
    const byte = i >>> 3;
    if (byte < this.bits.length) this.bits[byte]! &= ~(1 << (i & 7));
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
    let n = 0;
    for (const b of this.bits) for (let x = b; x; x &= x - 1) n++;
    return n;
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
