import { describe, expect, test } from 'vitest';
import { createCipheriv, createDecipheriv, randomFillSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { aesGcmEncryptInPlace } from '../../src/native/addon.js';
import { gcmSeal, nodeAesGcmEncrypt, defaultAesGcmEncrypt, type AesGcmEncryptInPlace } from '../../src/kms/hsm/gcm-seal.js';
import { gcmOpen, nativeAesGcmDecrypt, nodeAesGcmDecrypt } from '../../src/kms/hsm/gcm-open.js';
import { secretBuffer } from '../../src/util/wipe.js';
import { countInOwnMemory, invert } from '../helpers/own-memory.js';
import { seeded, printSeedOnFailure } from '../crypto/seeded.js';

// native/src/aes-gcm.c: libgcrypt's AES-256-GCM encryption of a buffer in place, with
// which the HSM seals tokens, secrets, ciphertexts and the domain (src/kms/hsm/gcm-seal.ts,
// docs/architecture.md §6.5). The suite runs on the native function and on node's fallback;
// both must give node:crypto's createCipheriv output byte for byte, as the data sealed before
// (and the frozen kms-v1 fixture) must still open.

interface GcmVector { name: string; key: string; iv: string; aad: string; plaintext: string; ciphertext: string; tag: string }
const load = (f: string): GcmVector[] =>
  (JSON.parse(readFileSync(new URL(`../vectors/${f}`, import.meta.url), 'utf8')) as { vectors: GcmVector[] }).vectors;
const VECTORS = [...load('aes-256-gcm-cavp-encrypt.json'), ...load('aes-256-gcm-mcgrew-viega.json')];
const unhex = (s: string): Buffer => Buffer.from(s, 'hex');

/** What node:crypto makes of it: the reference every implementation must match. */
function nodeSeal(key: Uint8Array, iv: Uint8Array, aad: Uint8Array, plain: Uint8Array): { ct: Buffer; tag: Buffer } {
  const c = createCipheriv('aes-256-gcm', key, iv);
  c.setAAD(aad);
  const ct = Buffer.concat([c.update(plain), c.final()]);
  return { ct, tag: c.getAuthTag() };
}

const codeOf = (f: () => unknown): unknown => { try { f(); return null; } catch (e) { return (e as { code?: unknown }).code; } };

function runGcmEncryptSuite(name: string, seal: AesGcmEncryptInPlace | null): void {
  describe.skipIf(seal === null)(name, () => {
    printSeedOnFailure();
    const enc = seal!;

    test('NIST CAVP gcmEncryptExtIV256 and McGrew-Viega 13, 16: ciphertext in place and tag; key, iv, aad left as they were', () => {
      expect(VECTORS.length).toBe(7);
      for (const v of VECTORS) {
        const key = unhex(v.key), iv = unhex(v.iv), aad = unhex(v.aad);
        const buf = unhex(v.plaintext);
        const tag = enc(key, iv, aad, buf);
        expect(buf.toString('hex'), v.name).toBe(v.ciphertext);
        expect(Buffer.from(tag).toString('hex'), v.name).toBe(v.tag);
        expect([key, iv, aad].map((b) => b.toString('hex')), v.name).toEqual([v.key, v.iv, v.aad]);
      }
    });

    test('the same bytes as node:crypto createCipheriv, at lengths 0-600 with AAD of 0-80 bytes', () => {
      const rnd = seeded(`aes-gcm seal ${name}`);
      for (let len = 0; len <= 600; len += len < 40 ? 1 : 37) {
        const key = rnd.bytes(32), iv = rnd.bytes(12), aad = rnd.bytes(len % 81), plain = rnd.bytes(len);
        const want = nodeSeal(key, iv, aad, plain);
        const buf = Buffer.from(plain);
        const tag = enc(key, iv, aad, buf);
        expect(buf.equals(want.ct), `len ${len}`).toBe(true);
        expect(Buffer.from(tag).equals(want.tag), `len ${len}`).toBe(true);
      }
    });

    test('what it seals, both opens open (libgcrypt and node:crypto)', () => {
      const rnd = seeded(`aes-gcm seal-open ${name}`);
      for (const len of [0, 1, 16, 33, 4096]) {
        const key = rnd.bytes(32), iv = rnd.bytes(12), aad = rnd.bytes(9), plain = rnd.bytes(len);
        const buf = Buffer.from(plain);
        const tag = enc(key, iv, aad, buf);
        for (const open of [nativeAesGcmDecrypt, nodeAesGcmDecrypt]) {
          if (open === null) continue;
          const b = Buffer.from(buf);
          expect(open(key, iv, aad, b, tag), `len ${len}`).toBe(true);
          expect(b.equals(plain), `len ${len}`).toBe(true);
        }
      }
    });

    test('works on a view into a larger buffer and touches nothing outside it', () => {
      const key = Buffer.alloc(32, 7), iv = Buffer.alloc(12, 9), aad = Buffer.from('aad');
      const plain = Buffer.alloc(40, 0x5c);
      const want = nodeSeal(key, iv, aad, plain);
      const whole = Buffer.alloc(72, 0xaa);
      plain.copy(whole, 16);
      const tag = enc(key, iv, aad, whole.subarray(16, 56));
      expect(whole.subarray(16, 56).equals(want.ct)).toBe(true);
      expect(Buffer.from(tag).equals(want.tag)).toBe(true);
      expect(whole.subarray(0, 16).equals(Buffer.alloc(16, 0xaa))).toBe(true);
      expect(whole.subarray(56).equals(Buffer.alloc(16, 0xaa))).toBe(true);
    });

    test('refuses a key or IV of the wrong size, and what is not bytes, with a code naming the argument; the buffer untouched', () => {
      const buf = Buffer.alloc(16, 1);
      const k = Buffer.alloc(32), iv = Buffer.alloc(12), aad = Buffer.alloc(0);
      const refusal = (f: () => unknown): { code: unknown; message: string } => {
        try { f(); } catch (e) { return { code: (e as { code?: unknown }).code, message: (e as Error).message }; }
        return { code: null, message: '' };
      };
      expect(refusal(() => enc(Buffer.alloc(16), iv, aad, buf))).toEqual({ code: 'ERR_ARG_RANGE', message: 'key must be 32 bytes' });
      expect(refusal(() => enc(Buffer.alloc(24), iv, aad, buf))).toEqual({ code: 'ERR_ARG_RANGE', message: 'key must be 32 bytes' });
      // node:crypto itself would take a 16-byte GCM IV; the HSM's format is 12 bytes, so both refuse.
      expect(refusal(() => enc(k, Buffer.alloc(16), aad, buf))).toEqual({ code: 'ERR_ARG_RANGE', message: 'iv must be 12 bytes' });
      expect(refusal(() => enc(k, Buffer.alloc(0), aad, buf))).toEqual({ code: 'ERR_ARG_RANGE', message: 'iv must be 12 bytes' });
      expect(codeOf(() => enc(k, iv, 'aad' as unknown as Uint8Array, buf))).toBe('ERR_ARG_TYPE');
      expect(codeOf(() => enc(k, iv, aad, new Uint16Array(8) as unknown as Uint8Array))).toBe('ERR_ARG_TYPE');
      expect(codeOf(() => (enc as unknown as (a: Uint8Array, b: Uint8Array) => void)(k, iv))).toBe('ERR_ARG_TYPE');
      expect(buf.equals(Buffer.alloc(16, 1))).toBe(true);
    });

    test('gcmSeal: head ‖ ciphertext ‖ tag in a buffer of its own; the plaintext and key left as they were; gcmOpen opens it', () => {
      const v = VECTORS.find((x) => x.name.includes('PTlen = 408'))!;
      const key = unhex(v.key), plain = unhex(v.plaintext), head = Buffer.from('head');
      const out = gcmSeal(key, unhex(v.iv), unhex(v.aad), plain, head, enc);
      expect(out.toString('hex')).toBe(head.toString('hex') + v.ciphertext + v.tag);
      // A whole ArrayBuffer, off V8's heap at any size (src/util/wipe.ts, secretBuffer): the
      // plaintext is copied into it before the cipher runs, so it must never move.
      expect([out.byteOffset, out.buffer.byteLength]).toEqual([0, out.length]);
      expect([plain.toString('hex'), key.toString('hex')]).toEqual([v.plaintext, v.key]);
      const body = out.subarray(head.length);
      expect(gcmOpen(key, unhex(v.iv), unhex(v.aad), body.subarray(0, body.length - 16), body.subarray(body.length - 16))?.toString('hex')).toBe(v.plaintext);
    });

    test('no copy of the key or the plaintext outlives a seal, once the caller wipes its own (searched whole and without the head malloc overwrites)', () => {
      // The key schedule: libgcrypt's handle is closed (wiped) before the addon returns; node's
      // Cipher frees OpenSSL's context at final(). test/helpers/own-memory.ts searches freed memory too.
      const key = secretBuffer(32), plain = secretBuffer(4096);
      randomFillSync(key);
      randomFillSync(plain);
      const ik = invert(key), ip = invert(plain);
      const out = gcmSeal(key, Buffer.alloc(12, 3), Buffer.from('aad'), plain, undefined, enc);
      key.fill(0);
      plain.fill(0);
      expect(out.length).toBe(4096 + 16);
      expect([countInOwnMemory(ik), countInOwnMemory(ik.subarray(16)), countInOwnMemory(ip), countInOwnMemory(ip.subarray(32))]).toEqual([0, 0, 0, 0]);
    }, 60_000);
  });
}

runGcmEncryptSuite('aesGcmEncryptInPlace (libgcrypt AES-256-GCM)', aesGcmEncryptInPlace);
runGcmEncryptSuite('nodeAesGcmEncrypt (node:crypto fallback)', nodeAesGcmEncrypt);

describe('gcmSeal', () => {
  test('the HSM seals with the addon when it has one, else with node:crypto', () => {
    expect(defaultAesGcmEncrypt).toBe(aesGcmEncryptInPlace ?? nodeAesGcmEncrypt);
  });

  test('the fallback and the addon seal to the same bytes, and the old node:crypto seal opens with gcmOpen', () => {
    const rnd = seeded('gcmSeal fallback');
    for (const len of [0, 29, 30, 32, 48, 80, 4096]) {
      const key = rnd.bytes(32), iv = rnd.bytes(12), aad = rnd.bytes(20), plain = rnd.bytes(len), head = rnd.bytes(13);
      const viaNode = gcmSeal(key, iv, aad, plain, head, nodeAesGcmEncrypt);
      if (aesGcmEncryptInPlace !== null) expect(gcmSeal(key, iv, aad, plain, head, aesGcmEncryptInPlace).equals(viaNode), `len ${len}`).toBe(true);
      const old = nodeSeal(key, iv, aad, plain);
      expect(viaNode.equals(Buffer.concat([head, old.ct, old.tag])), `len ${len}`).toBe(true);
      expect(gcmOpen(key, iv, aad, old.ct, old.tag)?.equals(plain), `len ${len}`).toBe(true);
    }
  });

  test('refuses a wrong key or IV before it allocates, whichever cipher it is given', () => {
    const never: AesGcmEncryptInPlace = () => { throw new Error('must not be called'); };
    const pt = Buffer.alloc(8);
    expect(() => gcmSeal(Buffer.alloc(31), Buffer.alloc(12), Buffer.alloc(0), pt, undefined, never)).toThrow(RangeError);
    expect(codeOf(() => gcmSeal(Buffer.alloc(32), Buffer.alloc(8), Buffer.alloc(0), pt, undefined, never))).toBe('ERR_ARG_RANGE');
    expect(codeOf(() => gcmSeal(Buffer.alloc(32), Buffer.alloc(12), Buffer.alloc(0), 'text' as unknown as Uint8Array, undefined, never))).toBe('ERR_ARG_TYPE');
    expect(() => gcmSeal(Buffer.alloc(32), Buffer.alloc(12), Buffer.alloc(0), pt, 'v1' as unknown as Uint8Array, never)).toThrow(TypeError);
  });

  test('a cipher that throws part-way: the error passes through and no plaintext is left in the buffer it was given', () => {
    let seen: Uint8Array | undefined;
    const failing: AesGcmEncryptInPlace = (_k, _i, _a, buf) => { seen = buf; throw Object.assign(new Error('AES-256-GCM encrypt failed: test'), { code: 'AES_GCM_CIPHER' }); };
    const plain = Buffer.alloc(48, 0x77);
    expect(codeOf(() => gcmSeal(Buffer.alloc(32), Buffer.alloc(12), Buffer.alloc(0), plain, Buffer.of(1), failing))).toBe('AES_GCM_CIPHER');
    expect(seen?.length).toBe(48);
    expect(Buffer.from(seen!).equals(Buffer.alloc(48))).toBe(true);
    expect(plain.equals(Buffer.alloc(48, 0x77))).toBe(true); // the caller's, which it wipes
  });

  test('opens with createDecipheriv too: the wire format is plain AES-256-GCM', () => {
    const key = Buffer.alloc(32, 1), iv = Buffer.alloc(12, 2), aad = Buffer.from('ebsd'), plain = Buffer.from('a secret of some length');
    const out = gcmSeal(key, iv, aad, plain);
    const d = createDecipheriv('aes-256-gcm', key, iv);
    d.setAAD(aad);
    d.setAuthTag(out.subarray(out.length - 16));
    expect(Buffer.concat([d.update(out.subarray(0, out.length - 16)), d.final()]).equals(plain)).toBe(true);
  });
});
