/**
 * The HSM's cryptography. Runs inside the HSM worker: it alone holds the
 * domain key. Every function that unwraps an HBK wipes it in `finally`
 * (best effort: JS may have copied it, and OpenSSL KeyObjects for
 * asymmetric keys are freed by the GC, not zeroized).
 */
import {
  createHmac, createPrivateKey, createPublicKey, generateKeyPairSync,
  privateDecrypt, publicEncrypt, sign as nodeSign, verify as nodeVerify, constants, timingSafeEqual,
  createHash, type KeyObject,
} from 'node:crypto';
import { p256, p384, p521 } from '@noble/curves/nist.js';
import { secp256k1 } from '@noble/curves/secp256k1.js';
import { wipe } from '../../util/wipe.js';
import { encodeHeader, parseBlob, HBK_ID_LEN, KDF_NONCE_LEN, IV_LEN, TAG_LEN } from '../blob.js';
import { HMAC_KEY_BYTES, RSA_BITS, EC_CURVE, isRsa, isEcc, isHmac, signingHash, HASH_LEN, rsaOaepMaxPlaintext, allowedUsages, KEY_SPECS, type KeySpec, type KeyUsage } from '../key-spec.js';
import { KmsError, InvalidCiphertextException, KMSInternalException, IncorrectKeyException, ValidationException, KMSInvalidSignatureException } from '../errors.js';
import { deriveOneTimeKey } from './kdf.js';
import { Drbg } from './drbg.js';
import { gcmOpen } from './gcm-open.js';
import { gcmSeal } from './gcm-seal.js';
import type { Domain } from './domain.js';
import { EKT_VERSION, type CipherEndpoint, type HsmRequest, type KeyHandle, type SecretKind } from './protocol.js';
import { deriveSigningKey } from '../sigv4/signing-key.js';

const EKT_V1 = 1;
const EKT_V1_AAD_PREFIX = Buffer.from('ebsd/ekt/v1', 'utf8');
const EKT_V2_AAD_PREFIX = Buffer.from('ebsd/ekt/v2', 'utf8');
const SECRET_VERSION = 1;
const SECRET_AAD_PREFIX = Buffer.from('ebsd/secret/v1\0', 'utf8');

export class HsmEngine {
  private readonly drbg = new Drbg();
  /**
   * Plaintext materials unwrapped during the current batch, keyed by their
   * token. A batch of requests for one key then pays the EKT unwrap (one
   * AES-GCM decrypt, ~a third of a Decrypt's HSM cost) once, not per request.
   * Lives only between beginBatch() and endBatch(), which wipes every entry;
   * outside a batch nothing is cached (docs/architecture.md §5.6: a plaintext HBK lives for
   * one operation, here one batch of operations, and only on this thread).
   */
  private batchMaterials: Map<string, Buffer> | null = null;
  constructor(private readonly domain: Domain) {}

  /** Start caching unwrapped materials until endBatch(). */
  beginBatch(): void {
    this.endBatch();
    this.batchMaterials = new Map();
  }

  /** Wipe and drop every material unwrapped since beginBatch() (best effort, see the file comment). */
  endBatch(): void {
    const m = this.batchMaterials;
    if (!m) return;
    this.batchMaterials = null;
    for (const b of m.values()) wipe(b);
  }

  // ---- exported key tokens --------------------------------------------

  /**
   * docs/kms-format.md §Exported key token. Version 2: "ebsd/ekt/v2" ‖ u16 len(arn) ‖ arn ‖
   * hbkId ‖ u8 len(spec) ‖ spec ‖ u8 len(usage) ‖ usage, so a token opens only for the spec and
   * usage it was made for. Version 1 (read only): "ebsd/ekt/v1" ‖ u16 len(arn) ‖ arn ‖ hbkId.
   */
  private ektAad(version: number, k: EktBinding): Buffer {
    if (k.hbkId.length !== HBK_ID_LEN) throw new ValidationException('hbkId must be 32 bytes');
    const a = Buffer.from(k.arn, 'utf8');
    if (version === EKT_V1) return Buffer.concat([EKT_V1_AAD_PREFIX, u16(a.length), a, k.hbkId]);
    const s = Buffer.from(k.spec, 'utf8'), u = Buffer.from(k.usage, 'utf8');
    if (s.length > 0xff || u.length > 0xff) throw new ValidationException('key spec and usage must be at most 255 bytes');
    return Buffer.concat([EKT_V2_AAD_PREFIX, u16(a.length), a, k.hbkId, Buffer.of(s.length), s, Buffer.of(u.length), u]);
  }

  /**
   * EKT = 0x02 ‖ iv(12) ‖ AES-256-GCM(domainKey, material, AAD = ektAad(2, k)) ‖ tag(16).
   * Sealed in place (gcm-seal.ts, docs/architecture.md §6.5): the material stays only in the caller's buffer.
   */
  wrap(k: EktBinding, material: Uint8Array): Uint8Array {
    const iv = this.drbg.bytes(IV_LEN);
    return gcmSeal(this.domain.domainKey, iv, this.ektAad(EKT_VERSION, k), material, Buffer.concat([Buffer.of(EKT_VERSION), iv]));
  }

  /**
   * Plaintext material of a handle. The caller must wipe it.
   *
   * A version 1 token does not authenticate the spec and usage, so its material must at least
   * fit them (materialFits): that refuses every relabelling but SYMMETRIC_DEFAULT <-> HMAC_256 with
   * the usage edited as well (32 random bytes either way) and an RSA key's usage. The KMS
   * re-seals version 1 tokens in version 2 when it opens (kms-core.ts, `resealKeyTokens`).
   */
  private unwrap(k: KeyHandle): Buffer {
    const t = k.ekt;
    const version = t[0];
    let out: Buffer | undefined;
    try {
      if (t.length < 1 + IV_LEN + TAG_LEN + 1 || (version !== EKT_V1 && version !== EKT_VERSION)) throw new Error('format');
      // Opened in place into a buffer the caller wipes (gcm-open.ts, docs/architecture.md §6.5).
      // GCM decrypts before it authenticates: a token under another ARN, key id, spec or usage (its AAD)
      // still decrypts to the real material, which gcmOpen zeroes before answering null.
      out = gcmOpen(this.domain.domainKey, t.subarray(1, 1 + IV_LEN), this.ektAad(version, k),
        t.subarray(1 + IV_LEN, t.length - TAG_LEN), t.subarray(t.length - TAG_LEN)) ?? undefined;
      if (!out) throw new Error('authentication');
    } catch {
      wipe(out);
      const binds = version === EKT_V1
        ? 'a version 1 token binds the key ARN and material id'
        : version === EKT_VERSION
          ? 'a version 2 token binds the key ARN, material id, spec and usage'
          : `token version ${version ?? 'none'} is not one this HSM reads`;
      throw new KMSInternalException(
        `The key material token of ${materialName(k)} failed authentication for key spec ${k.spec} and usage ${k.usage} (${binds}); this key is unusable`,
        { code: 'KMS_KEY_MATERIAL_CORRUPT' },
      );
    }
    if (version === EKT_V1 && !materialFits(out, k.spec, k.usage)) {
      wipe(out);
      throw new KMSInternalException(
        `The key material of ${materialName(k)} does not fit its stored key spec ${k.spec} and usage ${k.usage}; this key is unusable`,
        { code: 'KMS_KEY_MATERIAL_CORRUPT' },
      );
    }
    return out;
  }

  private withMaterial<T>(k: KeyHandle, fn: (m: Buffer) => T): T {
    const cache = this.batchMaterials;
    if (cache) {
      // The token authenticates arn, hbkId, spec and usage (its AAD; version 1 checks the
      // material against spec and usage instead): a cached unwrap may serve only a request naming
      // the same token and all four, or a request under another spec would skip that check.
      const id = JSON.stringify([
        Buffer.from(k.ekt.buffer, k.ekt.byteOffset, k.ekt.byteLength).toString('latin1'),
        k.arn,
        Buffer.from(k.hbkId.buffer, k.hbkId.byteOffset, k.hbkId.byteLength).toString('hex'),
        k.spec,
        k.usage,
      ]);
      let m = cache.get(id);
      if (!m) {
        m = this.unwrap(k);
        cache.set(id, m);
      }
      return fn(m); // wiped by endBatch()
    }
    const m = this.unwrap(k);
    try {
      return fn(m);
    } finally {
      wipe(m);
    }
  }

  private privateKey(k: KeyHandle): KeyObject {
    return this.withMaterial(k, (m) => createPrivateKey({ key: m, format: 'der', type: 'pkcs8' }));
  }

  // ---- symmetric --------------------------------------------------------

  /**
   * `plaintext` may be a function receiving `extra` fresh random bytes from the
   * same DRBG draw (GenerateDataKey's data key), which it must return.
   */
  private symEncrypt(k: KeyHandle, plaintext: Uint8Array | ((rnd: Buffer) => Uint8Array), ctx: Uint8Array, extra = 0): Uint8Array {
    return this.withMaterial(k, (hbk) => {
      // One DRBG draw (one reseed) per call: each reseed is an AES key schedule (docs/benchmarks.md).
      const r = extra > 0 ? this.drbg.bytes(KDF_NONCE_LEN + IV_LEN + extra) : this.drbg.bytes(KDF_NONCE_LEN + IV_LEN);
      const nonce = r.subarray(0, KDF_NONCE_LEN);
      const iv = r.subarray(KDF_NONCE_LEN, KDF_NONCE_LEN + IV_LEN);
      const otk = deriveOneTimeKey(hbk, k.hbkId, nonce);
      try {
        const header = encodeHeader(k.arn, k.hbkId, nonce, iv);
        const pt = typeof plaintext === 'function' ? plaintext(r.subarray(KDF_NONCE_LEN + IV_LEN)) : plaintext;
        // NIST SP 800-38D, 96-bit IV; in place, so the plaintext is copied nowhere but into the
        // blob, where it becomes ciphertext, and the otk's key schedule is wiped (gcm-seal.ts).
        return gcmSeal(otk, iv, ctx.length ? Buffer.concat([header, ctx]) : header, pt, header);
      } finally {
        wipe(otk, r.subarray(KDF_NONCE_LEN + IV_LEN));
      }
    });
  }

  private symDecrypt(k: KeyHandle, blob: Uint8Array, ctx: Uint8Array): Buffer {
    const p = parseBlob(blob);
    if (p.arn !== k.arn || Buffer.compare(p.hbkId, k.hbkId) !== 0) {
      throw new IncorrectKeyException('The key ID in the request does not identify a KMS key that can perform this operation.');
    }
    return this.withMaterial(k, (hbk) => {
      const otk = deriveOneTimeKey(hbk, k.hbkId, p.nonce);
      try {
        // In place into a buffer the caller wipes; null (the buffer zeroed) if the tag fails (gcm-open.ts).
        const out = gcmOpen(otk, p.iv, Buffer.concat([p.header, ctx]),
          p.body.subarray(0, p.body.length - TAG_LEN), p.body.subarray(p.body.length - TAG_LEN));
        if (!out) throw new InvalidCiphertextException('The ciphertext or its encryption context failed authentication.');
        return out;
      } finally {
        wipe(otk);
      }
    });
  }

  // ---- RSA encryption -----------------------------------------------------

  private oaep(alg: string): { padding: number; oaepHash: string } {
    return { padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: alg === 'RSAES_OAEP_SHA_1' ? 'sha1' : 'sha256' };
  }

  private rsaDecrypt(k: KeyHandle, alg: string, blob: Uint8Array): Buffer {
    const key = this.privateKey(k);
    try {
      return privateDecrypt({ key, ...this.oaep(alg) }, blob);
    } catch {
      throw new InvalidCiphertextException('The ciphertext could not be decrypted with this key and algorithm.');
    }
  }

  private rsaEncrypt(k: KeyHandle, alg: string, plaintext: Uint8Array): Buffer {
    // Encrypt checks this before the HSM call; ReEncrypt learns the plaintext length only here,
    // after the decrypt. Same answer as Encrypt: a 4xx ValidationException, not publicEncrypt's throw (a 500).
    const max = rsaOaepMaxPlaintext(k.spec, alg);
    if (plaintext.length > max) throw new ValidationException(`Plaintext must be at most ${max} bytes for ${k.spec} with ${alg}`);
    const pub = createPublicKey(this.privateKey(k));
    return publicEncrypt({ key: pub, ...this.oaep(alg) }, plaintext);
  }

  private decryptAny(e: CipherEndpoint, blob: Uint8Array): Buffer {
    return e.algorithm === 'SYMMETRIC_DEFAULT' ? this.symDecrypt(e.key, blob, e.ctx ?? new Uint8Array(4)) : this.rsaDecrypt(e.key, e.algorithm, blob);
  }
  private encryptAny(e: CipherEndpoint, pt: Uint8Array): Uint8Array {
    return e.algorithm === 'SYMMETRIC_DEFAULT' ? this.symEncrypt(e.key, pt, e.ctx ?? new Uint8Array(4)) : this.rsaEncrypt(e.key, e.algorithm, pt);
  }

  // ---- signatures -----------------------------------------------------------

  private ecdsaDigest(spec: string, d: Uint8Array, digest: Uint8Array): Uint8Array {
    const curve = spec === 'ECC_NIST_P256' ? p256 : spec === 'ECC_NIST_P384' ? p384 : spec === 'ECC_NIST_P521' ? p521 : secp256k1;
    return curve.sign(digest, d, { prehash: false, format: 'der', lowS: false });
  }

  private sign(k: KeyHandle, alg: string, message: Uint8Array, type: 'RAW' | 'DIGEST'): Uint8Array {
    const hash = signingHash(alg);
    const key = this.privateKey(k);
    if (type === 'RAW') {
      if (alg.startsWith('ECDSA')) return nodeSign(hash, message, { key, dsaEncoding: 'der' });
      const padding = alg.startsWith('RSASSA_PSS') ? constants.RSA_PKCS1_PSS_PADDING : constants.RSA_PKCS1_PADDING;
      return nodeSign(hash, message, { key, padding, saltLength: HASH_LEN[hash] });
    }
    // DIGEST: the message is already the hash.
    if (message.length !== HASH_LEN[hash]) throw new ValidationException(`Digest length must be ${HASH_LEN[hash]} bytes for ${alg}`);
    if (alg.startsWith('ECDSA')) {
      const jwk = key.export({ format: 'jwk' });
      const d = Buffer.from(jwk.d!, 'base64url');
      try { return this.ecdsaDigest(k.spec, d, message); } finally { wipe(d); }
    }
    const emBits = RSA_BITS[k.spec]! - 1;
    const em = alg.startsWith('RSASSA_PSS') ? this.emsaPss(message, hash, emBits) : emsaPkcs1(message, hash, RSA_BITS[k.spec]! / 8);
    // RFC 8017 §8.1.1 / §8.2.1: signature = RSASP1(EM); RSA_NO_PADDING is the bare private-key operation.
    return privateDecrypt({ key, padding: constants.RSA_NO_PADDING }, em);
  }

  /** EMSA-PSS-ENCODE, RFC 8017 §9.1.1, MGF1 with the same hash, sLen = hLen. */
  private emsaPss(mHash: Uint8Array, hash: string, emBits: number): Buffer {
    const hLen = HASH_LEN[hash]!;
    const emLen = Math.ceil(emBits / 8);
    const salt = this.drbg.bytes(hLen);
    const h = createHash(hash).update(Buffer.alloc(8)).update(mHash).update(salt).digest();
    const db = Buffer.alloc(emLen - hLen - 1);
    db[emLen - 2 * hLen - 2] = 0x01;
    salt.copy(db, emLen - 2 * hLen - 1);
    const mask = mgf1(h, db.length, hash);
    for (let i = 0; i < db.length; i++) db[i]! ^= mask[i]!;
    db[0]! &= 0xff >> (8 * emLen - emBits);
    const em = Buffer.concat([db, h, Buffer.of(0xbc)]);
    // emLen may be one byte shorter than the modulus; left-pad for RSA_NO_PADDING.
    return em.length === Math.ceil((emBits + 1) / 8) ? em : Buffer.concat([Buffer.alloc(1), em]);
  }

  private verify(k: KeyHandle, alg: string, message: Uint8Array, type: 'RAW' | 'DIGEST', sig: Uint8Array): boolean {
    const hash = signingHash(alg);
    const pub = createPublicKey(this.privateKey(k));
    try {
      if (type === 'RAW') {
        if (alg.startsWith('ECDSA')) return nodeVerify(hash, message, { key: pub, dsaEncoding: 'der' }, sig);
        const padding = alg.startsWith('RSASSA_PSS') ? constants.RSA_PKCS1_PSS_PADDING : constants.RSA_PKCS1_PADDING;
        return nodeVerify(hash, message, { key: pub, padding, saltLength: HASH_LEN[hash] }, sig);
      }
      if (message.length !== HASH_LEN[hash]) throw new ValidationException(`Digest length must be ${HASH_LEN[hash]} bytes for ${alg}`);
      if (alg.startsWith('ECDSA')) {
        const curve = k.spec === 'ECC_NIST_P256' ? p256 : k.spec === 'ECC_NIST_P384' ? p384 : k.spec === 'ECC_NIST_P521' ? p521 : secp256k1;
        const raw = pub.export({ format: 'jwk' });
        const x = Buffer.from(raw.x!, 'base64url'), y = Buffer.from(raw.y!, 'base64url');
        const point = Buffer.concat([Buffer.of(4), x, y]);
        return curve.verify(sig, message, point, { prehash: false, format: 'der', lowS: false });
      }
      // Recover EM with the public operation and compare (PKCS#1) or check (PSS).
      const k8 = RSA_BITS[k.spec]! / 8;
      if (sig.length !== k8) return false;
      const em = publicEncryptRaw(pub, sig);
      if (alg.startsWith('RSASSA_PKCS1')) return timingSafeEqual(em, emsaPkcs1(message, hash, k8));
      return emsaPssVerify(message, em.subarray(em.length - Math.ceil((RSA_BITS[k.spec]! - 1) / 8)), hash, RSA_BITS[k.spec]! - 1);
    } catch (e) {
      if (e instanceof ValidationException) throw e;
      return false;
    }
  }

  // ---- dispatch ---------------------------------------------------------------

  handle(r: HsmRequest): unknown {
    switch (r.op) {
      case 'generateKey': return this.generateKey({ arn: r.arn, hbkId: r.hbkId, spec: r.spec, usage: r.usage });
      case 'resealKeyToken': return { ekt: this.withMaterial(r.key, (m) => this.wrap(r.key, m)) };
      case 'encrypt': return { blob: this.symEncrypt(r.key, r.plaintext, r.ctx) };
      case 'decrypt': return { plaintext: this.symDecrypt(r.key, r.blob, r.ctx) };
      case 'generateDataKey': {
        let plaintext: Buffer | undefined;
        const blob = this.symEncrypt(r.key, (dk) => { if (r.wantPlaintext) plaintext = Buffer.from(dk); return dk; }, r.ctx, r.bytes);
        return plaintext ? { blob, plaintext } : { blob };
      }
      case 'rsaEncrypt': return { blob: this.rsaEncrypt(r.key, r.algorithm, r.plaintext) };
      case 'rsaDecrypt': return { plaintext: this.rsaDecrypt(r.key, r.algorithm, r.blob) };
      case 'reEncrypt': {
        const pt = this.decryptAny(r.src, r.blob);
        try { return { blob: this.encryptAny(r.dst, pt) }; } finally { wipe(pt); }
      }
      case 'sign': return { signature: this.sign(r.key, r.algorithm, r.message, r.messageType) };
      case 'verify': {
        const valid = this.verify(r.key, r.algorithm, r.message, r.messageType, r.signature);
        if (!valid) throw new KMSInvalidSignatureException('The signature verification failed.');
        return { valid };
      }
      case 'generateDataKeyPair': {
        const { privateKey, publicKey } = genPair(r.pairSpec);
        const pkcs8 = privateKey.export({ format: 'der', type: 'pkcs8' });
        try {
          const privateBlob = this.symEncrypt(r.key, pkcs8, r.ctx);
          const spki = publicKey.export({ format: 'der', type: 'spki' });
          return r.wantPlaintext ? { privateBlob, privatePlaintext: Buffer.from(pkcs8), publicKey: spki } : { privateBlob, publicKey: spki };
        } finally {
          wipe(pkcs8);
        }
      }
      case 'generateMac': return { mac: this.mac(r.key, r.algorithm, r.message) };
      case 'verifyMac': {
        const m = this.mac(r.key, r.algorithm, r.message);
        return { valid: m.length === r.mac.length && timingSafeEqual(m, r.mac) };
      }
      case 'random': return { bytes: this.drbg.bytes(r.bytes) };
      case 'signAudit': return { signature: nodeSign(null, r.data, this.domain.auditPrivateKey) };
      case 'auditPublicKey': return { pem: this.domain.auditPublicKeyPem };
      case 'newSecret': return this.newSecret(r.kind, r.id, r.context);
      case 'sigv4Key': {
        const secret = this.unsealSecret(r.kind, r.id, r.context, r.sealed);
        try { return { key: deriveSigningKey(secret, r.date, r.region, r.service) }; } finally { wipe(secret); }
      }
    }
  }

  // ---- SigV4 secrets -----------------------------------------------------------

  private secretAad(kind: SecretKind, id: string, context: Uint8Array): Buffer {
    return Buffer.concat([SECRET_AAD_PREFIX, Buffer.from(`${kind}\0${id}\0`, 'utf8'), context]);
  }

  /**
   * A new 40-character secret access key (30 DRBG bytes, base64, the shape of
   * an AWS secret), and its seal: version ‖ iv ‖ AES-256-GCM(domainKey,
   * secret, AAD = "ebsd/secret/v1" ‖ kind ‖ id ‖ context) ‖ tag.
   */
  private newSecret(kind: SecretKind, id: string, context: Uint8Array): { secret: string; sealed: Uint8Array } {
    const raw = this.drbg.bytes(30);
    const secret = Buffer.from(raw.toString('base64'), 'latin1'); // raw itself: a copy of it would stay unwiped
    try {
      const iv = this.drbg.bytes(IV_LEN);
      const sealed = gcmSeal(this.domain.domainKey, iv, this.secretAad(kind, id, context), secret, Buffer.concat([Buffer.of(SECRET_VERSION), iv]));
      return { secret: secret.toString('latin1'), sealed };
    } finally {
      wipe(raw, secret);
    }
  }

  /** The secret inside a seal made by newSecret; the caller wipes it. A seal that fails authentication names no secret. */
  private unsealSecret(kind: SecretKind, id: string, context: Uint8Array, sealed: Uint8Array): Buffer {
    let out: Buffer | undefined;
    try {
      if (sealed.length < 1 + IV_LEN + TAG_LEN + 1 || sealed[0] !== SECRET_VERSION) throw new Error('format');
      // In place into a buffer the caller wipes (gcm-open.ts). A session token whose clear part was
      // altered (the AAD) still decrypts to the real secret: gcmOpen zeroes it and answers null.
      out = gcmOpen(this.domain.domainKey, sealed.subarray(1, 1 + IV_LEN), this.secretAad(kind, id, context),
        sealed.subarray(1 + IV_LEN, sealed.length - TAG_LEN), sealed.subarray(sealed.length - TAG_LEN)) ?? undefined;
      if (!out) throw new Error('authentication');
      return out;
    } catch {
      wipe(out);
      throw new KmsError('UnrecognizedClientException', `The sealed secret of ${kind} ${id} failed authentication.`, { code: 'KMS_SECRET_UNSEAL_FAILED' });
    }
  }

  private mac(k: KeyHandle, alg: string, message: Uint8Array): Buffer {
    const h = 'sha' + alg.slice('HMAC_SHA_'.length);
    return this.withMaterial(k, (m) => createHmac(h, m).update(message).digest()); // RFC 2104
  }

  private generateKey(k: EktBinding): { ekt: Uint8Array; publicKey?: Uint8Array } {
    const { spec } = k;
    if (k.hbkId.length !== HBK_ID_LEN) throw new ValidationException('hbkId must be 32 bytes');
    if (!KEY_SPECS.includes(spec as KeySpec) || !allowedUsages(spec as KeySpec).includes(k.usage as KeyUsage)) {
      throw new ValidationException(`unsupported key spec ${spec} with usage ${k.usage}`);
    }
    if (spec === 'SYMMETRIC_DEFAULT' || isHmac(spec)) {
      const m = this.drbg.bytes(spec === 'SYMMETRIC_DEFAULT' ? 32 : HMAC_KEY_BYTES[spec]!);
      try { return { ekt: this.wrap(k, m) }; } finally { wipe(m); }
    }
    const { privateKey, publicKey } = genPair(spec);
    const pkcs8 = privateKey.export({ format: 'der', type: 'pkcs8' });
    try {
      return { ekt: this.wrap(k, pkcs8), publicKey: publicKey.export({ format: 'der', type: 'spki' }) };
    } finally {
      wipe(pkcs8);
    }
  }
}

/** What a token is bound to: a KeyHandle without its token. */
export type EktBinding = Omit<KeyHandle, 'ekt'>;

/** "<arn> (material <hbkId hex>)", for error messages: names the key, never its token or material. */
function materialName(k: EktBinding): string {
  return `${k.arn} (material ${Buffer.from(k.hbkId).toString('hex')})`;
}

function u16(n: number): Buffer {
  const b = Buffer.allocUnsafe(2);
  b.writeUInt16BE(n);
  return b;
}

/**
 * Whether unwrapped material has the shape of `spec` and `usage` is one the spec allows: the
 * key length (symmetric, HMAC), or the PKCS#8 key's type and size or curve (RSA, ECC).
 */
function materialFits(m: Buffer, spec: string, usage: string): boolean {
  if (!KEY_SPECS.includes(spec as KeySpec) || !allowedUsages(spec as KeySpec).includes(usage as KeyUsage)) return false;
  if (spec === 'SYMMETRIC_DEFAULT') return m.length === 32;
  if (isHmac(spec)) return m.length === HMAC_KEY_BYTES[spec];
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: m, format: 'der', type: 'pkcs8' });
  } catch {
    return false;
  }
  const d = key.asymmetricKeyDetails;
  if (isRsa(spec)) return key.asymmetricKeyType === 'rsa' && d?.modulusLength === RSA_BITS[spec];
  return key.asymmetricKeyType === 'ec' && d?.namedCurve === EC_CURVE[spec];
}

function genPair(spec: string): { privateKey: KeyObject; publicKey: KeyObject } {
  // node:crypto (OpenSSL) generates every curve AWS offers, secp256k1 included, and
  // exports SPKI DER directly; noble is used only where OpenSSL lacks a pre-hashed ECDSA API.
  if (isRsa(spec)) return generateKeyPairSync('rsa', { modulusLength: RSA_BITS[spec]!, publicExponent: 65537 });
  return generateKeyPairSync('ec', { namedCurve: EC_CURVE[spec]! });
}

const DIGEST_INFO: Record<string, Buffer> = {
  // RFC 8017 §9.2 note 1: DER of DigestInfo prefix per hash.
  sha256: Buffer.from('3031300d060960864801650304020105000420', 'hex'),
  sha384: Buffer.from('3041300d060960864801650304020205000430', 'hex'),
  sha512: Buffer.from('3051300d060960864801650304020305000440', 'hex'),
};

/** EMSA-PKCS1-v1_5-ENCODE, RFC 8017 §9.2. */
function emsaPkcs1(h: Uint8Array, hash: string, emLen: number): Buffer {
  const t = Buffer.concat([DIGEST_INFO[hash]!, h]);
  const ps = Buffer.alloc(emLen - t.length - 3, 0xff);
  return Buffer.concat([Buffer.of(0, 1), ps, Buffer.of(0), t]);
}

function mgf1(seed: Uint8Array, len: number, hash: string): Buffer {
  const out: Buffer[] = [];
  let got = 0;
  for (let c = 0; got < len; c++) {
    const cnt = Buffer.alloc(4);
    cnt.writeUInt32BE(c);
    const d = createHash(hash).update(seed).update(cnt).digest();
    out.push(d);
    got += d.length;
  }
  return Buffer.concat(out).subarray(0, len);
}

/** EMSA-PSS-VERIFY, RFC 8017 §9.1.2, sLen = hLen. */
function emsaPssVerify(mHash: Uint8Array, em: Buffer, hash: string, emBits: number): boolean {
  const hLen = HASH_LEN[hash]!;
  const emLen = Math.ceil(emBits / 8);
  if (em.length !== emLen || em[emLen - 1] !== 0xbc) return false;
  // Step 6: the leftmost 8·emLen − emBits bits of maskedDB must be zero.
  if ((em[0]! & ~(0xff >> (8 * emLen - emBits)) & 0xff) !== 0) return false;
  const db = Buffer.from(em.subarray(0, emLen - hLen - 1));
  const h = em.subarray(emLen - hLen - 1, emLen - 1);
  const mask = mgf1(h, db.length, hash);
  for (let i = 0; i < db.length; i++) db[i]! ^= mask[i]!;
  db[0]! &= 0xff >> (8 * emLen - emBits);
  const ps = emLen - 2 * hLen - 2;
  for (let i = 0; i < ps; i++) if (db[i] !== 0) return false;
  if (db[ps] !== 1) return false;
  const salt = db.subarray(db.length - hLen);
  const h2 = createHash(hash).update(Buffer.alloc(8)).update(mHash).update(salt).digest();
  return timingSafeEqual(h, h2);
}

/** s^e mod n: the bare public-key operation (RFC 8017 §5.2.2 RSAVP1). */
function publicEncryptRaw(pub: KeyObject, sig: Uint8Array): Buffer {
  return publicEncrypt({ key: pub, padding: constants.RSA_NO_PADDING }, sig);
}
