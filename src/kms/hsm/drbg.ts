import { createCipheriv, randomBytes } from 'node:crypto';
import { wipe } from '../../util/wipe.js';

const KEY_LEN = 32; // AES-256
const BLOCK = 16;
/** seedlen = keylen + blocklen = 384 bits (NIST SP 800-90A Rev.1 §10.2.1, Table 3). */
export const SEED_LEN = KEY_LEN + BLOCK;
const ZEROS = Buffer.alloc(4096);

/**
 * AES-256 CTR_DRBG without a derivation function (NIST SP 800-90A Rev.1
 * §10.2.1), seeded with 384 bits from the OS, and reseeded with 384 fresh OS
 * bits before every draw (§10.2.1.4.1, CTR_DRBG_Reseed: one Update with
 * entropy_input), so a compromise of the state does not predict the next
 * call's output.
 *
 * The algorithm is @noble/ciphers' `rngAesCtrDrbg256` step for step (the
 * test cross-checks the two bit for bit); the block cipher is OpenSSL's AES
 * (node:crypto aes-256-ctr, whose 128-bit big-endian counter is the
 * V = (V+1) mod 2^128 of §10.2.1.2) instead of pure-JS AES. The pure-JS
 * DRBG cost ~35 µs per reseed+draw, almost all of it AES key schedules:
 * each Update (§10.2.1.2) re-keys. Generating with fresh entropy as
 * additional_input instead of reseeding (§10.2.1.5.1, CTR_DRBG_Generate
 * "if additional_input ≠ Null, CTR_DRBG_Update(additional_input)") would
 * cost exactly the same here, one Update either way, so the reseed stays.
 */
export class Drbg {
  /** Key ‖ (V + 1): V is kept pre-incremented, as the next counter block. */
  private readonly key = Buffer.allocUnsafeSlow(KEY_LEN);
  private readonly v1 = Buffer.allocUnsafeSlow(BLOCK);

  constructor(seed: Uint8Array = randomBytes(SEED_LEN)) {
    if (seed.length !== SEED_LEN) throw new RangeError(`seed must be ${SEED_LEN} bytes`);
    this.key.fill(0); // §10.2.1.3.1: Key = 0^keylen, V = 0^blocklen
    this.v1.fill(0);
    _inc(this.v1, 1);
    this.reseed(seed);
  }

  /** AES-CTR keystream from V+1, advancing V by the blocks used. */
  private keystream(n: number): Buffer {
    const c = createCipheriv('aes-256-ctr', this.key, this.v1);
    const out = n <= ZEROS.length ? c.update(ZEROS.subarray(0, n)) : c.update(Buffer.alloc(n));
    c.final();
    _inc(this.v1, Math.ceil(n / BLOCK));
    return out;
  }

  /** CTR_DRBG_Update, §10.2.1.2. */
  private update(data?: Uint8Array): void {
    const t = this.keystream(SEED_LEN);
    try {
      if (data) for (let i = 0; i < SEED_LEN; i++) t[i]! ^= data[i]!;
      t.copy(this.key, 0, 0, KEY_LEN);
      t.copy(this.v1, 0, KEY_LEN, SEED_LEN);
      _inc(this.v1, 1);
    } finally {
      wipe(t);
    }
  }

  /** CTR_DRBG_Reseed without df, §10.2.1.4.1: Update(entropy_input). */
  reseed(entropy: Uint8Array): void {
    if (entropy.length !== SEED_LEN) throw new RangeError(`entropy must be ${SEED_LEN} bytes`);
    this.update(entropy);
  }

  /**
   * CTR_DRBG_Generate without additional input, §10.2.1.5.1. The output
   * blocks and the closing Update (backtracking resistance: new Key and V
   * after every request) use the same Key on consecutive counter values,
   * so one keystream serves both: one AES context per call, not two.
   */
  generate(len: number): Buffer {
    if (!Number.isInteger(len) || len < 1 || len > 65536) throw new RangeError('len must be 1..65536');
    const used = Math.ceil(len / BLOCK) * BLOCK;
    const ks = this.keystream(used + SEED_LEN);
    try {
      ks.copy(this.key, 0, used, used + KEY_LEN);
      ks.copy(this.v1, 0, used + KEY_LEN, used + SEED_LEN);
      _inc(this.v1, 1);
      return Buffer.from(ks.subarray(0, len));
    } finally {
      wipe(ks);
    }
  }

  /** Reseed with 384 fresh OS bits, then draw `len` bytes. */
  bytes(len: number): Buffer {
    const fresh = randomBytes(SEED_LEN);
    try {
      this.reseed(fresh);
    } finally {
      fresh.fill(0);
    }
    return this.generate(len);
  }
}

/** Big-endian 128-bit add. */
function _inc(v: Buffer, n: number): void {
  for (let i = v.length - 1; i >= 0 && n > 0; i--) {
    const s = v[i]! + (n & 0xff);
    v[i] = s & 0xff;
    n = (n >>> 8) + (s >> 8);
  }
}
