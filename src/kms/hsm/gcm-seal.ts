import { createCipheriv } from 'node:crypto';
import { aesGcmEncryptInPlace } from '../../native/addon.js';
import { secretBuffer, wipe } from '../../util/wipe.js';

const KEY_LEN = 32;
const IV_LEN = 12;
const TAG_LEN = 16;
const EMPTY = new Uint8Array(0);

/**
 * AES-256-GCM encryption of `buf` in place (NIST SP 800-38D §7.1; 32-byte key,
 * 12-byte IV): `buf` becomes the ciphertext and the 16-byte tag over `aad` and
 * it is returned. On a throw `buf` is zeroed (neither plaintext nor a partial
 * ciphertext is left); a key or IV of the wrong size is refused before
 * anything is touched (RangeError-like, code ERR_ARG_RANGE).
 */
export type AesGcmEncryptInPlace = (key: Uint8Array, iv: Uint8Array, aad: Uint8Array, buf: Uint8Array) => Buffer;

function _argError(code: 'ERR_ARG_TYPE' | 'ERR_ARG_RANGE', message: string): Error {
  const e = code === 'ERR_ARG_TYPE' ? new TypeError(message) : new RangeError(message);
  return Object.assign(e, { code });
}

/** The addon's refusals (native/src/addon.c, ebsd_get_u8), for node's fallback: the same codes and words. */
function _bytes(v: unknown, name: string, want = 0): void {
  if (!(v instanceof Uint8Array)) throw _argError('ERR_ARG_TYPE', `${name} must be a Uint8Array or Buffer`);
  if (want !== 0 && v.length !== want) throw _argError('ERR_ARG_RANGE', `${name} must be ${want} bytes`);
}

/**
 * The fallback when the native addon is missing or predates the encryption in
 * aes-gcm.c. Node's Cipher.update reads its input where it is (no copy of the
 * plaintext) but its output is a new buffer (ciphertext, not secret), and
 * OpenSSL's key schedule lives in the Cipher's context until the GC collects
 * the Cipher (docs/architecture.md §6.5). node:crypto takes IVs of any length
 * for GCM: this refuses all but 12 bytes, as the addon does.
 */
export const nodeAesGcmEncrypt: AesGcmEncryptInPlace = (key, iv, aad, buf) => {
  _bytes(key, 'key', KEY_LEN);
  _bytes(iv, 'iv', IV_LEN);
  _bytes(aad, 'aad');
  _bytes(buf, 'buf');
  try {
    const c = createCipheriv('aes-256-gcm', key, iv);
    c.setAAD(aad);
    const out = c.update(buf);
    c.final(); // GCM is a stream mode: nothing more to write
    buf.set(out);
    return c.getAuthTag();
  } catch (e) {
    buf.fill(0);
    throw e;
  }
};

/** libgcrypt's AES-256-GCM encryption from the addon (native/src/aes-gcm.c), null without it. */
export const nativeAesGcmEncrypt: AesGcmEncryptInPlace | null = aesGcmEncryptInPlace;

/** What the HSM seals with: the addon's, else node's (as gcmOpen opens, gcm-open.ts). */
export const defaultAesGcmEncrypt: AesGcmEncryptInPlace = nativeAesGcmEncrypt ?? nodeAesGcmEncrypt;

/**
 * `head ‖ AES-256-GCM(key, iv, aad, plaintext) ‖ tag(16)` in a new buffer
 * (`head` is a clear prefix such as a version and the IV, so the caller's
 * wire format needs no second copy). The plaintext is copied into that buffer
 * and encrypted there in place, so with the addon it exists nowhere but in the
 * caller's `plaintext`, which the caller wipes, and the key schedule is wiped
 * before this returns (docs/architecture.md §6.5). `plaintext` and `key` are
 * left as they were.
 *
 * The buffer is a whole ArrayBuffer of its own (secretBuffer): a small
 * Buffer.allocUnsafeSlow is a typed array on V8's heap, which handing it to
 * the addon moves off the heap, leaving its bytes, here the plaintext, behind.
 */
export function gcmSeal(
  key: Uint8Array, iv: Uint8Array, aad: Uint8Array, plaintext: Uint8Array, head: Uint8Array = EMPTY,
  encrypt: AesGcmEncryptInPlace = defaultAesGcmEncrypt,
): Buffer {
  _bytes(key, 'key', KEY_LEN);
  _bytes(iv, 'iv', IV_LEN);
  _bytes(aad, 'aad');
  _bytes(plaintext, 'plaintext');
  _bytes(head, 'head');
  const out = secretBuffer(head.length + plaintext.length + TAG_LEN);
  const body = out.subarray(head.length, head.length + plaintext.length);
  let ok = false;
  try {
    out.set(head);
    body.set(plaintext);
    const tag = encrypt(key, iv, aad, body);
    out.set(tag, head.length + plaintext.length);
    ok = true;
    return out;
  } finally {
    if (!ok) wipe(body); // zeroed already by either encrypt on a throw; best effort, as everywhere in JS
  }
}
