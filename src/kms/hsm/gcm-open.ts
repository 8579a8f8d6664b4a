import { createDecipheriv } from 'node:crypto';
import { aesGcmDecryptInPlace } from '../../native/addon.js';
import { wipe } from '../../util/wipe.js';

/**
 * AES-256-GCM decryption of `buf` in place (NIST SP 800-38D §7.2; 32-byte key,
 * 12-byte IV, 16-byte tag): true if `tag` authenticates `aad` and `buf`, else
 * false with `buf` zeroed (GCM decrypts before it authenticates).
 */
export type AesGcmDecryptInPlace = (key: Uint8Array, iv: Uint8Array, aad: Uint8Array, buf: Uint8Array, tag: Uint8Array) => boolean;

/**
 * The fallback when the native addon is missing or predates aes-gcm.c: node's
 * Decipher.update copies its output to a buffer of the exact length and frees
 * the first one unwiped, so this leaves a copy of every plaintext in freed
 * memory (docs/architecture.md §6.5). The copy it returns is wiped here, best
 * effort.
 */
export const nodeAesGcmDecrypt: AesGcmDecryptInPlace = (key, iv, aad, buf, tag) => {
  const d = createDecipheriv('aes-256-gcm', key, iv);
  d.setAAD(aad);
  d.setAuthTag(tag);
  const out = d.update(buf);
  try {
    d.final();
    out.copy(buf);
    return true;
  } catch {
    buf.fill(0);
    return false;
  } finally {
    wipe(out);
  }
};

/** libgcrypt's AES-256-GCM from the addon (native/src/aes-gcm.c), null without it. */
export const nativeAesGcmDecrypt: AesGcmDecryptInPlace | null = aesGcmDecryptInPlace;

/** What the HSM opens with: the addon's, else node's (as the DRBG falls back, drbg.ts). */
export const defaultAesGcmDecrypt: AesGcmDecryptInPlace = nativeAesGcmDecrypt ?? nodeAesGcmDecrypt;

/**
 * The plaintext of `ciphertext` in a new off-heap buffer the caller owns and
 * must wipe, or null (nothing left behind) when the tag does not authenticate.
 * The ciphertext is copied there and decrypted in place, so with the addon the
 * plaintext exists in that buffer only (docs/architecture.md §6.5).
 */
export function gcmOpen(
  key: Uint8Array, iv: Uint8Array, aad: Uint8Array, ciphertext: Uint8Array, tag: Uint8Array,
  decrypt: AesGcmDecryptInPlace = defaultAesGcmDecrypt,
): Buffer | null {
  const buf = Buffer.allocUnsafeSlow(ciphertext.length);
  buf.set(ciphertext);
  let ok = false;
  try {
    ok = decrypt(key, iv, aad, buf, tag);
    return ok ? buf : null;
  } finally {
    if (!ok) wipe(buf); // zeroed already on a tag failure; a throw part-way may have left plaintext
  }
}
