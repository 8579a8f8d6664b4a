import { createHmac } from 'node:crypto';

const LABEL = Buffer.from('ebsd-kms-v1 data encryption', 'utf8');

/**
 * One-time data-encryption key from an HBK and a per-call nonce.
 * NIST SP 800-108r1 §4.1, KDF in counter mode, PRF = HMAC-SHA256, r = 32,
 * L = 256 so one iteration: K(1) = PRF(K_in, [1]_32 ‖ Label ‖ 0x00 ‖ Context ‖ [256]_32),
 * Context = HBK id ‖ nonce.
 *
 * The PRF is OpenSSL's HMAC (`createHmac`): a hand-written HMAC over one-shot
 * SHA-256 was slower here, not faster (docs/benchmarks.md, "KMS over the
 * network"). test/kms/kdf.test.ts checks it against the NIST vectors and
 * @noble/hashes.
 */
export function deriveOneTimeKey(hbk: Uint8Array, hbkId: Uint8Array, nonce: Uint8Array): Buffer {
  return createHmac('sha256', hbk).update(kdfInput(hbkId, nonce)).digest();
}

/** The KDF input block, exported for the cross-check test against @noble/hashes. */
export function kdfInput(hbkId: Uint8Array, nonce: Uint8Array): Buffer {
  const msg = Buffer.allocUnsafe(4 + LABEL.length + 1 + hbkId.length + nonce.length + 4);
  let o = msg.writeUInt32BE(1, 0);
  LABEL.copy(msg, o); o += LABEL.length;
  msg[o++] = 0;
  msg.set(hbkId, o); o += hbkId.length;
  msg.set(nonce, o); o += nonce.length;
  msg.writeUInt32BE(256, o);
  return msg;
}
