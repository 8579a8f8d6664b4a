import { unsafe } from '@noble/ciphers/aes.js';
import type { XtsContext, XtsEngine } from './xts.js';
import { _checkKey, type CheckedRun } from './xts-check.js';
import { XtsError } from './xts-errors.js';
import { _OnThreadXtsContext } from './xts-on-thread.js';
import { wipe } from '../util/wipe.js';

/**
 * AES-256-XTS in pure TypeScript, on @noble/ciphers' raw AES block function
 * (`unsafe.encrypt/decrypt` over expanded keys). Written straight from
 * IEEE 1619-2018 to cross-check the other engines; slow, but runs anywhere.
 *
 * Words: a 16-byte block is handled as four u32 words read little-endian
 * (w0 = bytes 0..3), which is both what noble's AES takes on little-endian
 * hosts and the byte order IEEE 1619 uses for the 128-bit tweak value.
 */

/**
 * Multiply the tweak by the primitive element α in GF(2^128) modulo
 * x^128 + x^7 + x^2 + x + 1 (IEEE 1619-2018 §5.2): the block is a 128-bit
 * little-endian integer; shift left one bit, and if a bit fell off the top,
 * XOR 0x87 into the lowest byte.
 */
export function _gfDouble(t: Uint32Array): void {
  const carry = t[3]! >>> 31;
  t[3] = (t[3]! << 1) | (t[2]! >>> 31);
  t[2] = (t[2]! << 1) | (t[1]! >>> 31);
  t[1] = (t[1]! << 1) | (t[0]! >>> 31);
  t[0] = (t[0]! << 1) ^ (carry * 0x87);
}

class ReferenceXtsContext extends _OnThreadXtsContext {
  readonly engine = 'reference' as const;
  /** Expanded K1 (encrypt and decrypt schedules) and K2 (tweak, encrypt only). */
  #k1e: Uint32Array | null;
  #k1d: Uint32Array | null;
  #k2e: Uint32Array | null;
  #t = new Uint32Array(4);

  constructor(key: Uint8Array) {
    super();
    // Temporary copies of the halves, wiped below (best effort, docs/architecture.md §11.7).
    // Not key.slice(): on a Buffer that is a view, and wiping it would zero the caller's key.
    const k1 = new Uint8Array(key.subarray(0, 32));
    const k2 = new Uint8Array(key.subarray(32, 64));
    try {
      this.#k1e = unsafe.expandKeyLE(k1);
      this.#k1d = unsafe.expandKeyDecLE(k1);
      this.#k2e = unsafe.expandKeyLE(k2);
    } finally {
      wipe(k1, k2);
    }
  }

  protected override _run(data: Uint8Array, r: CheckedRun, encrypt: boolean): void {
    const k1 = encrypt ? this.#k1e : this.#k1d;
    const k2 = this.#k2e;
    if (k1 === null || k2 === null) throw new XtsError('XTS_DESTROYED', 'context was destroyed');
    const cipher = encrypt ? unsafe.encrypt : unsafe.decrypt;
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const t = this.#t;
    const step = BigInt(r.tweakStep);
    let tweak = r.firstTweak;
    try {
      for (let unit = 0; unit < r.units; unit++, tweak += step) {
        // IEEE 1619-2018 §5.3.1: T = AES-enc(K2, i) ⊗ α^j, i = the data unit's
        // tweak as a 128-bit little-endian value (upper 64 bits zero here).
        const e = unsafe.encrypt(k2, Number(tweak & 0xffffffffn), Number((tweak >> 32n) & 0xffffffffn), 0, 0);
        t[0] = e.s0;
        t[1] = e.s1;
        t[2] = e.s2;
        t[3] = e.s3;
        const end = (unit + 1) * r.unitSize;
        for (let off = unit * r.unitSize; off < end; off += 16) {
          // §5.3.1 (encrypt) / §5.4.1 (decrypt): PP = P ⊕ T; CC = AES(K1, PP); C = CC ⊕ T.
          const o = cipher(
            k1,
            view.getUint32(off, true) ^ t[0]!,
            view.getUint32(off + 4, true) ^ t[1]!,
            view.getUint32(off + 8, true) ^ t[2]!,
            view.getUint32(off + 12, true) ^ t[3]!,
          );
          view.setUint32(off, o.s0 ^ t[0]!, true);
          view.setUint32(off + 4, o.s1 ^ t[1]!, true);
          view.setUint32(off + 8, o.s2 ^ t[2]!, true);
          view.setUint32(off + 12, o.s3 ^ t[3]!, true);
          _gfDouble(t); // §5.2: next block's T = T ⊗ α
        }
      }
    } finally {
      t.fill(0);
    }
  }

  /** Zeroes the expanded keys. Best effort: the GC may have copied them. */
  override destroy(): void {
    wipe(
      this.#k1e && new Uint8Array(this.#k1e.buffer, this.#k1e.byteOffset, this.#k1e.byteLength),
      this.#k1d && new Uint8Array(this.#k1d.buffer, this.#k1d.byteOffset, this.#k1d.byteLength),
      this.#k2e && new Uint8Array(this.#k2e.buffer, this.#k2e.byteOffset, this.#k2e.byteLength),
    );
    this.#k1e = this.#k1d = this.#k2e = null;
  }

  /** Test hook: the buffers this context copied key material into. */
  _keyBuffers(): Uint32Array[] {
    return [this.#k1e, this.#k1d, this.#k2e].filter((x): x is Uint32Array => x !== null);
  }
}

export const referenceXtsEngine: XtsEngine = {
  name: 'reference',
  library: '@noble/ciphers AES block + XTS in TypeScript',
  createContext(key: Uint8Array): XtsContext {
    _checkKey(key);
    return new ReferenceXtsContext(key);
  },
};
