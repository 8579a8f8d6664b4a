/**
 * Ciphertext blob of symmetric Encrypt / GenerateDataKey*, format v1
 * (docs/kms-format.md). All integers big-endian.
 *
 *   off  len   field
 *   0    1     version = 0x01
 *   1    2     arnLen
 *   3    n     key ARN, UTF-8
 *   3+n  32    HBK id (key material id)
 *   35+n 32    KDF nonce
 *   67+n 12    GCM IV
 *   79+n m     ciphertext
 *   ..   16    GCM tag
 *
 * header = bytes [0, 79+n). AAD = header ‖ canonicalContext(EncryptionContext).
 */
import { InvalidCiphertextException } from './errors.js';

export const BLOB_VERSION = 1;
export const HBK_ID_LEN = 32;
export const KDF_NONCE_LEN = 32;
export const IV_LEN = 12;
export const TAG_LEN = 16;
export const MAX_BLOB = 6144;

export interface BlobParts {
  arn: string;
  hbkId: Uint8Array;
  nonce: Uint8Array;
  iv: Uint8Array;
  /** Header bytes (the first half of the AAD). */
  header: Uint8Array;
  /** Ciphertext followed by the 16-byte tag. */
  body: Uint8Array;
}

export function headerLength(arnBytes: number): number {
  return 1 + 2 + arnBytes + HBK_ID_LEN + KDF_NONCE_LEN + IV_LEN;
}

export function encodeHeader(arn: string, hbkId: Uint8Array, nonce: Uint8Array, iv: Uint8Array): Uint8Array {
  const a = Buffer.from(arn, 'utf8');
  const out = Buffer.allocUnsafe(headerLength(a.length));
  out[0] = BLOB_VERSION;
  out.writeUInt16BE(a.length, 1);
  a.copy(out, 3);
  let o = 3 + a.length;
  out.set(hbkId, o); o += HBK_ID_LEN;
  out.set(nonce, o); o += KDF_NONCE_LEN;
  out.set(iv, o);
  return out;
}

const _utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Parse without authenticating; the tag is checked later inside the HSM. */
export function parseBlob(blob: Uint8Array): BlobParts {
  const bad = () => new InvalidCiphertextException('The ciphertext is not a valid KMS ciphertext blob.');
  if (blob.length < headerLength(1) + TAG_LEN || blob.length > MAX_BLOB || blob[0] !== BLOB_VERSION) throw bad();
  const b = Buffer.from(blob.buffer, blob.byteOffset, blob.byteLength);
  const n = b.readUInt16BE(1);
  const hl = headerLength(n);
  if (n === 0 || blob.length < hl + TAG_LEN) throw bad();
  let arn: string;
  try {
    // Fatal: bytes that are not UTF-8 would otherwise decode to U+FFFD, so distinct headers could name one ARN.
    arn = _utf8.decode(blob.subarray(3, 3 + n));
  } catch {
    throw bad();
  }
  if (!arn.startsWith('arn:')) throw bad();
  let o = 3 + n;
  const hbkId = blob.subarray(o, o + HBK_ID_LEN); o += HBK_ID_LEN;
  const nonce = blob.subarray(o, o + KDF_NONCE_LEN); o += KDF_NONCE_LEN;
  const iv = blob.subarray(o, o + IV_LEN);
  return { arn, hbkId, nonce, iv, header: blob.subarray(0, hl), body: blob.subarray(hl) };
}

/**
 * Canonical encryption context: u32 count, then pairs sorted by the UTF-8
 * bytes of the key, each as u32 len ‖ key ‖ u32 len ‖ value. Length
 * prefixes make {"ab":"c"} and {"a":"bc"} encode differently.
 */
export function canonicalContext(ctx: Record<string, string> | undefined): Uint8Array {
  if (ctx === undefined) return new Uint8Array(4);
  const keys = Object.keys(ctx);
  if (keys.length === 1) {
    // The common case (EBS: one pair) without the intermediate buffers and the sort.
    const k = keys[0]!, v = ctx[k]!;
    const kl = Buffer.byteLength(k, 'utf8'), vl = Buffer.byteLength(v, 'utf8');
    const out = Buffer.from(new ArrayBuffer(4 + 8 + kl + vl));
    out.writeUInt32BE(1, 0);
    out.writeUInt32BE(kl, 4);
    out.write(k, 8, 'utf8');
    out.writeUInt32BE(vl, 8 + kl);
    out.write(v, 12 + kl, 'utf8');
    return out;
  }
  const pairs = Object.keys(ctx).map((k) => [Buffer.from(k, 'utf8'), Buffer.from(ctx[k]!, 'utf8')] as const);
  pairs.sort((x, y) => Buffer.compare(x[0], y[0]));
  let len = 4;
  for (const [k, v] of pairs) len += 8 + k.length + v.length;
  // Not from Node's shared pool: this crosses postMessage, which copies a view's whole ArrayBuffer.
  const out = Buffer.from(new ArrayBuffer(len));
  out.writeUInt32BE(pairs.length, 0);
  let o = 4;
  for (const [k, v] of pairs) {
    out.writeUInt32BE(k.length, o); o += 4; k.copy(out, o); o += k.length;
    out.writeUInt32BE(v.length, o); o += 4; v.copy(out, o); o += v.length;
  }
  return out;
}
