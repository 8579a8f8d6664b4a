/**
 * HMAC-SHA256 under one fixed key, for the SigV4 verifier's last step
 * (RFC 2104 §2: H(K ⊕ opad ‖ H(K ⊕ ipad ‖ text)), B = 64, L = 32).
 * `createHmac` builds a KeyObject and a stream object on every call, which
 * was most of a keep-alive verification's HMAC cost; here the padded key
 * blocks are computed once per signing key and each MAC is two one-shot
 * `crypto.hash` calls. test/kms-net/hmac-sha256.test.ts pins it to RFC 4231
 * and to node's createHmac.
 *
 * The padded blocks are key material: `wipe()` zeroes them (best effort, as
 * all wiping in JS: the engine may have copied them). A MAC's scratch holds
 * the inner pad too and is reused, never handed out.
 */
import { hash } from 'node:crypto';

const BLOCK = 64;
const DIGEST = 32;

export class HmacSha256Key {
  /** K ⊕ ipad, then room for the message (grown on demand). */
  private inner: Buffer;
  /** K ⊕ opad ‖ inner digest. */
  private readonly outer = Buffer.allocUnsafeSlow(BLOCK + DIGEST);

  constructor(key: Uint8Array) {
    if (!(key instanceof Uint8Array)) throw new TypeError('key must be a Uint8Array');
    if (key.length > BLOCK) throw new RangeError(`key must be at most ${BLOCK} bytes (SigV4 signing keys are ${DIGEST}), got ${key.length}`);
    this.inner = Buffer.allocUnsafeSlow(BLOCK + 256);
    this.inner.fill(0x36, 0, BLOCK);
    this.outer.fill(0x5c, 0, BLOCK);
    for (let i = 0; i < key.length; i++) {
      this.inner[i]! ^= key[i]!;
      this.outer[i]! ^= key[i]!;
    }
  }

  /** HMAC-SHA256(key, text); a string is taken as UTF-8. */
  mac(text: string | Uint8Array): Buffer {
    const n = typeof text === 'string' ? Buffer.byteLength(text) : text.length;
    if (this.inner.length < BLOCK + n) this.grow(BLOCK + n);
    if (typeof text === 'string') this.inner.write(text, BLOCK, 'utf8');
    else this.inner.set(text, BLOCK);
    try {
      const d = hash('sha256', this.inner.subarray(0, BLOCK + n), 'buffer');
      this.outer.set(d, BLOCK);
      return hash('sha256', this.outer, 'buffer');
    } finally {
      this.inner.fill(0, BLOCK, BLOCK + n); // between calls the scratch holds the pad and nothing else
    }
  }

  wipe(): void {
    this.inner.fill(0);
    this.outer.fill(0);
  }

  private grow(size: number): void {
    const next = Buffer.allocUnsafeSlow(Math.max(size, this.inner.length * 2));
    this.inner.copy(next, 0, 0, BLOCK);
    this.inner.fill(0);
    this.inner = next;
  }
}

/**
 * HMAC-SHA256 of one message under a key used once here (RFC 2104 §2, the same construction as
 * HmacSha256Key without keeping the pads): for the HSM's KDF on every Encrypt and Decrypt, where
 * createHmac's per-call setup was most of the derivation's cost. Both padded blocks are wiped
 * before returning (best effort, as all wiping in JS).
 */
export function hmacSha256(key: Uint8Array, message: Uint8Array): Buffer {
  if (key.length > BLOCK) throw new RangeError(`key must be at most ${BLOCK} bytes, got ${key.length}`);
  const inner = Buffer.allocUnsafeSlow(BLOCK + message.length);
  const outer = Buffer.allocUnsafeSlow(BLOCK + DIGEST);
  try {
    inner.fill(0x36, 0, BLOCK);
    outer.fill(0x5c, 0, BLOCK);
    for (let i = 0; i < key.length; i++) {
      inner[i]! ^= key[i]!;
      outer[i]! ^= key[i]!;
    }
    inner.set(message, BLOCK);
    outer.set(hash('sha256', inner, 'buffer'), BLOCK);
    return hash('sha256', outer, 'buffer');
  } finally {
    inner.fill(0);
    outer.fill(0);
  }
}
