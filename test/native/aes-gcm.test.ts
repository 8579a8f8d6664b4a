import { describe, expect, test } from 'vitest';
import { createCipheriv } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { aesGcmDecryptInPlace } from '../../src/native/addon.js';
import { gcmOpen, nodeAesGcmDecrypt, type AesGcmDecryptInPlace } from '../../src/kms/hsm/gcm-open.js';
import { seeded, printSeedOnFailure } from '../crypto/seeded.js';

// native/src/aes-gcm.c: libgcrypt's AES-256-GCM decryption of a buffer in place, with
// which the HSM opens tokens, seals and ciphertexts (src/kms/hsm/gcm-open.ts,
// docs/architecture.md §6.5). The suite runs on the native function and on node's fallback.

interface GcmVector { name: string; key: string; iv: string; aad: string; plaintext: string; ciphertext: string; tag: string }
const VECTORS = JSON.parse(readFileSync(new URL('../vectors/aes-256-gcm-mcgrew-viega.json', import.meta.url), 'utf8')) as { vectors: GcmVector[] };
const unhex = (s: string): Buffer => Buffer.from(s, 'hex');

function seal(key: Uint8Array, iv: Uint8Array, aad: Uint8Array, plain: Uint8Array): { ct: Buffer; tag: Buffer } {
  const c = createCipheriv('aes-256-gcm', key, iv);
  c.setAAD(aad);
  const ct = Buffer.concat([c.update(plain), c.final()]);
  return { ct, tag: c.getAuthTag() };
}

function runGcmDecryptSuite(name: string, open: AesGcmDecryptInPlace | null): void {
  describe.skipIf(open === null)(name, () => {
    printSeedOnFailure();
    const dec = open!;

    test('McGrew-Viega GCM Test Cases 13 and 16 (AES-256, the second with AAD), in place; key, iv, aad, tag left as they were', () => {
      for (const v of VECTORS.vectors) {
        const key = unhex(v.key), iv = unhex(v.iv), aad = unhex(v.aad), tag = unhex(v.tag);
        const buf = unhex(v.ciphertext);
        expect(dec(key, iv, aad, buf, tag), v.name).toBe(true);
        expect(buf.toString('hex'), v.name).toBe(v.plaintext);
        expect([key, iv, aad, tag].map((b) => b.toString('hex')), v.name).toEqual([v.key, v.iv, v.aad, v.tag]);
      }
    });

    test('opens what node:crypto aes-256-gcm seals, at lengths 0-600 with AAD of 0-80 bytes', () => {
      const rnd = seeded(`aes-gcm ${name}`);
      for (let len = 0; len <= 600; len += len < 40 ? 1 : 37) {
        const key = rnd.bytes(32), iv = rnd.bytes(12), aad = rnd.bytes(len % 81), plain = rnd.bytes(len);
        const { ct, tag } = seal(key, iv, aad, plain);
        expect(dec(key, iv, aad, ct, tag), `len ${len}`).toBe(true);
        expect(ct.equals(plain), `len ${len}`).toBe(true);
      }
    });

    test('a wrong tag, AAD, key, IV or ciphertext byte: false, and the buffer zeroed', () => {
      const rnd = seeded(`aes-gcm tamper ${name}`);
      const key = rnd.bytes(32), iv = rnd.bytes(12), aad = rnd.bytes(20), plain = rnd.bytes(100);
      const { ct, tag } = seal(key, iv, aad, plain);
      const flip = (b: Buffer, i: number): Buffer => { const c = Buffer.from(b); c[i]! ^= 1; return c; };
      const cases: [string, Buffer, Buffer, Buffer, Buffer, Buffer][] = [
        ['tag', key, iv, aad, ct, flip(tag, 15)],
        ['aad', key, iv, flip(aad, 0), ct, tag],
        ['no aad', key, iv, Buffer.alloc(0), ct, tag],
        ['key', flip(key, 31), iv, aad, ct, tag],
        ['iv', key, flip(iv, 0), aad, ct, tag],
        ['ciphertext', key, iv, aad, flip(ct, 50), tag],
      ];
      for (const [what, k, i, a, c, t] of cases) {
        const buf = Buffer.from(c);
        expect(dec(k, i, a, buf, t), what).toBe(false);
        expect(buf.equals(Buffer.alloc(buf.length)), what).toBe(true);
      }
    });

    test('works on a view into a larger buffer and touches nothing outside it', () => {
      const key = Buffer.alloc(32, 7), iv = Buffer.alloc(12, 9), aad = Buffer.from('aad');
      const plain = Buffer.alloc(40, 0x5c);
      const { ct, tag } = seal(key, iv, aad, plain);
      const whole = Buffer.alloc(72, 0xaa);
      ct.copy(whole, 16);
      expect(dec(key, iv, aad, whole.subarray(16, 56), tag)).toBe(true);
      expect(whole.subarray(16, 56).equals(plain)).toBe(true);
      expect(whole.subarray(0, 16).equals(Buffer.alloc(16, 0xaa))).toBe(true);
      expect(whole.subarray(56).equals(Buffer.alloc(16, 0xaa))).toBe(true);
    });

    test('gcmOpen: a new buffer with the plaintext, null on a tag failure, the ciphertext untouched', () => {
      const v = VECTORS.vectors[1]!;
      const ct = unhex(v.ciphertext);
      const out = gcmOpen(unhex(v.key), unhex(v.iv), unhex(v.aad), ct, unhex(v.tag), dec);
      expect(out?.toString('hex')).toBe(v.plaintext);
      expect(ct.toString('hex')).toBe(v.ciphertext);
      expect(gcmOpen(unhex(v.key), unhex(v.iv), Buffer.alloc(0), ct, unhex(v.tag), dec)).toBeNull();
      expect(ct.toString('hex')).toBe(v.ciphertext);
    });
  });
}

runGcmDecryptSuite('aesGcmDecryptInPlace (libgcrypt AES-256-GCM)', aesGcmDecryptInPlace);
runGcmDecryptSuite('nodeAesGcmDecrypt (node:crypto fallback)', nodeAesGcmDecrypt);

describe.skipIf(aesGcmDecryptInPlace === null)('aesGcmDecryptInPlace: typed errors', () => {
  test('wrong key, iv or tag size, not bytes, missing arguments; the buffer untouched', () => {
    const dec = aesGcmDecryptInPlace!;
    const buf = Buffer.alloc(16, 1);
    const k = Buffer.alloc(32), iv = Buffer.alloc(12), tag = Buffer.alloc(16), aad = Buffer.alloc(0);
    const codeOf = (f: () => void): unknown => { try { f(); return null; } catch (e) { return (e as { code?: unknown }).code; } };
    expect(codeOf(() => dec(Buffer.alloc(16), iv, aad, buf, tag))).toBe('ERR_ARG_RANGE');
    expect(codeOf(() => dec(k, Buffer.alloc(16), aad, buf, tag))).toBe('ERR_ARG_RANGE');
    expect(codeOf(() => dec(k, iv, aad, buf, Buffer.alloc(12)))).toBe('ERR_ARG_RANGE');
    expect(codeOf(() => dec(k, iv, 'aad' as unknown as Uint8Array, buf, tag))).toBe('ERR_ARG_TYPE');
    expect(codeOf(() => dec(k, iv, aad, new Uint16Array(8) as unknown as Uint8Array, tag))).toBe('ERR_ARG_TYPE');
    expect(codeOf(() => (dec as unknown as (a: Uint8Array, b: Uint8Array) => void)(k, iv))).toBe('ERR_ARG_TYPE');
    expect(buf.equals(Buffer.alloc(16, 1))).toBe(true);
  });
});
