import { createCipheriv, randomFillSync } from 'node:crypto';
import { aesCtrInPlace } from '../../native/addon.js';
import { wipe } from '../../util/wipe.js';

const KEY_LEN = 32; // AES-256
const BLOCK = 16;
/** seedlen = keylen + blocklen = 384 bits (NIST SP 800-90A Rev.1 §10.2.1, Table 3). */
export const SEED_LEN = KEY_LEN + BLOCK;
/** The longest draw generate() accepts (a whole number of blocks). */
const MAX_LEN = 65536;

/**
 * AES-256-CTR over `buf` in place: `buf` ^= the key stream of `key` from the
 * counter block `counter` (NIST SP 800-38A §6.5, 128-bit big-endian
 * increment); `key` and `counter` are left as they were.
 */
export type AesCtrInPlace = (key: Uint8Array, counter: Uint8Array, buf: Uint8Array) => void;

/**
 * The fallback when the native addon is missing or predates aes-ctr.c, as
 * today's OpenSSL CTR: node's Cipher.update copies its output to a buffer of
 * the exact length and frees the first one unwiped, so this leaves a copy of
 * every key stream in freed memory (docs/architecture.md §6.5). The copy it
 * returns is wiped here, best effort.
 */
export const nodeAesCtr: AesCtrInPlace = (key, counter, buf) => {
  const c = createCipheriv('aes-256-ctr', key, counter);
  const out = c.update(buf);
  try {
    out.copy(buf);
    c.final();
  } finally {
    wipe(out);
  }
};

/** libgcrypt's AES-256-CTR from the addon (native/src/aes-ctr.c), null without it. */
export const nativeAesCtr: AesCtrInPlace | null = aesCtrInPlace;

/** What the HSM's DRBG runs on: the addon's, else node's (as the XTS engines fall back). */
export const defaultAesCtr: AesCtrInPlace = nativeAesCtr ?? nodeAesCtr;

/**
 * AES-256 CTR_DRBG without a derivation function (NIST SP 800-90A Rev.1
 * §10.2.1), seeded with 384 bits from the OS, and reseeded with 384 fresh OS
 * bits before every draw (§10.2.1.4.1, CTR_DRBG_Reseed: one Update with
 * entropy_input), so a compromise of the state does not predict the next
 * call's output.
 *
 * The algorithm is @noble/ciphers' `rngAesCtrDrbg256` step for step (the
 * test cross-checks the two bit for bit), on an AES-256-CTR whose 128-bit
 * big-endian counter is the V = (V+1) mod 2^128 of §10.2.1.2: libgcrypt's,
 * through the native addon (native/src/aes-ctr.c). Every key stream is
 * generated in place, in one off-heap buffer this object owns and wipes after
 * each use, so the random bytes the HSM hands out (data keys, backing keys,
 * secrets) exist in that buffer and in the caller's copy only
 * (docs/architecture.md §6.5). node's Cipher.update cannot do that: it copies
 * its output to an exact-length buffer and frees the first one unwiped; it is
 * the fallback only when the addon is missing (`nodeAesCtr`). libgcrypt runs
 * AES on AES-NI where the CPU has it, with no lookup tables, so the DRBG key
 * leaks nothing through the cache; @noble/ciphers' pure-JS AES, which also
 * works in place, is table-based (its README, "Constant-timeness") and is
 * therefore not used. Generating with fresh entropy as additional_input
 * instead of reseeding (§10.2.1.5.1, CTR_DRBG_Generate "if additional_input
 * ≠ Null, CTR_DRBG_Update(additional_input)") would cost exactly the same
 * here, one Update either way, so the reseed stays.
 */
export class Drbg {
  /**
   * Key ‖ (V + 1) ‖ OS entropy ‖ key stream, one allocation larger than 64
   * bytes: V8 keeps a typed array of up to 64 bytes on its own heap, where the
   * GC moves it and reading its memory from C (napi_get_typedarray_info) or
   * `.buffer` moves it off the heap, leaving a copy behind.
   * V is kept pre-incremented, as the next counter block.
   */
  private readonly state = Buffer.allocUnsafeSlow(KEY_LEN + BLOCK + SEED_LEN + MAX_LEN + SEED_LEN);
  private readonly key = this.state.subarray(0, KEY_LEN);
  private readonly v1 = this.state.subarray(KEY_LEN, KEY_LEN + BLOCK);
  private readonly fresh = this.state.subarray(KEY_LEN + BLOCK, KEY_LEN + BLOCK + SEED_LEN);
  private readonly ks = this.state.subarray(KEY_LEN + BLOCK + SEED_LEN);

  /**
   * Instantiate (§10.2.1.3.1) with `seed`, or with 384 bits from the OS.
   * `aesCtr` is the block cipher (tests run every one).
   */
  constructor(seed?: Uint8Array, private readonly aesCtr: AesCtrInPlace = defaultAesCtr) {
    if (seed !== undefined && seed.length !== SEED_LEN) throw new RangeError(`seed must be ${SEED_LEN} bytes`);
    this.state.fill(0); // §10.2.1.3.1: Key = 0^keylen, V = 0^blocklen
    _inc(this.v1, 1);
    if (seed !== undefined) this.reseed(seed);
    else this.reseedFromOs();
  }

  /** AES-CTR key stream from V+1, `n` bytes (whole blocks) into `ks`, advancing V by the blocks used. */
  private keystream(n: number): Buffer {
    const out = this.ks.subarray(0, n);
    out.fill(0);
    this.aesCtr(this.key, this.v1, out); // libgcrypt closes (wipes) its handle before returning
    _inc(this.v1, n / BLOCK);
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

  /** Reseed with 384 fresh OS bits, drawn into this object's own buffer and wiped. */
  private reseedFromOs(): void {
    randomFillSync(this.fresh);
    try {
      this.update(this.fresh);
    } finally {
      wipe(this.fresh);
    }
  }

  /**
   * CTR_DRBG_Generate without additional input, §10.2.1.5.1. The output
   * blocks and the closing Update (backtracking resistance: new Key and V
   * after every request) use the same Key on consecutive counter values,
   * so one key stream serves both: one AES key schedule per call, not two.
   * The answer is the caller's to wipe (pooled below 4 KiB, as Buffer.from is).
   */
  generate(len: number): Buffer {
    if (!Number.isInteger(len) || len < 1 || len > MAX_LEN) throw new RangeError(`len must be 1..${MAX_LEN}`);
    const used = Math.ceil(len / BLOCK) * BLOCK;
    const ks = this.keystream(used + SEED_LEN);
    try {
      ks.copy(this.key, 0, used, used + KEY_LEN);
      ks.copy(this.v1, 0, used + KEY_LEN, used + SEED_LEN);
      _inc(this.v1, 1);
      const out = Buffer.allocUnsafe(len);
      ks.copy(out, 0, 0, len);
      return out;
    } finally {
      wipe(ks);
    }
  }

  /** Reseed with 384 fresh OS bits, then draw `len` bytes. */
  bytes(len: number): Buffer {
    this.reseedFromOs();
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
