import { describe, expect, test } from 'vitest';
import { createCipheriv } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { aesCtrInPlace } from '../../src/native/addon.js';
import { seeded, printSeedOnFailure } from '../crypto/seeded.js';

// native/src/aes-ctr.c: libgcrypt's AES-256-CTR over a buffer in place, the HSM
// DRBG's block cipher (src/kms/hsm/drbg.ts, docs/architecture.md §6.5).

interface CtrVector { key: string; counter: string; plaintext: string; ciphertext: string }
const SP800_38A = JSON.parse(readFileSync(new URL('../vectors/aes-256-ctr-sp800-38a.json', import.meta.url), 'utf8')) as { vectors: CtrVector[] };
const unhex = (s: string): Buffer => Buffer.from(s, 'hex');

describe.skipIf(aesCtrInPlace === null)('aesCtrInPlace (libgcrypt AES-256-CTR)', () => {
  printSeedOnFailure();
  const ctr = aesCtrInPlace!;

  test('NIST SP 800-38A F.5.5 CTR-AES256.Encrypt, in place; key and counter left as they were', () => {
    for (const v of SP800_38A.vectors) {
      const key = unhex(v.key);
      const counter = unhex(v.counter);
      const buf = unhex(v.plaintext);
      ctr(key, counter, buf);
      expect(buf.toString('hex')).toBe(v.ciphertext);
      expect(key.toString('hex')).toBe(v.key);
      expect(counter.toString('hex')).toBe(v.counter);
    }
  });

  test('equals node:crypto aes-256-ctr at every length up to 600 bytes and across the 2^128 counter wrap', () => {
    const rnd = seeded('aes-ctr native');
    const counters = [rnd.bytes(16), Buffer.alloc(16, 0xff), Buffer.concat([Buffer.alloc(8), Buffer.alloc(8, 0xff)])];
    for (const counter of counters) {
      for (let len = 0; len <= 600; len += len < 40 ? 1 : 37) {
        const key = rnd.bytes(32);
        const data = rnd.bytes(len);
        const c = createCipheriv('aes-256-ctr', key, counter);
        const want = Buffer.concat([c.update(data), c.final()]);
        ctr(key, counter, data);
        expect(data.toString('hex'), `len ${len}, counter ${counter.toString('hex')}`).toBe(want.toString('hex'));
      }
    }
  });

  test('works on a view into a larger buffer and touches nothing outside it', () => {
    const whole = Buffer.alloc(96, 0xaa);
    const key = whole.subarray(0, 32);
    const counter = whole.subarray(32, 48);
    const view = Buffer.from(whole.subarray(48, 80));
    const want = createCipheriv('aes-256-ctr', key, counter).update(view);
    ctr(key, counter, whole.subarray(48, 80));
    expect(whole.subarray(48, 80).equals(want)).toBe(true);
    expect(whole.subarray(80).equals(Buffer.alloc(16, 0xaa))).toBe(true);
    expect(whole.subarray(0, 48).equals(Buffer.alloc(48, 0xaa))).toBe(true);
  });

  test('typed errors: wrong key or counter size, not bytes, missing arguments', () => {
    const buf = Buffer.alloc(16);
    const codeOf = (f: () => void): unknown => { try { f(); return null; } catch (e) { return (e as { code?: unknown }).code; } };
    expect(codeOf(() => ctr(Buffer.alloc(16), Buffer.alloc(16), buf))).toBe('ERR_ARG_RANGE');
    expect(codeOf(() => ctr(Buffer.alloc(32), Buffer.alloc(12), buf))).toBe('ERR_ARG_RANGE');
    expect(codeOf(() => ctr(new Uint16Array(16) as unknown as Uint8Array, Buffer.alloc(16), buf))).toBe('ERR_ARG_TYPE');
    expect(codeOf(() => ctr(Buffer.alloc(32), Buffer.alloc(16), 'abc' as unknown as Uint8Array))).toBe('ERR_ARG_TYPE');
    expect(codeOf(() => (ctr as unknown as (k: Uint8Array) => void)(Buffer.alloc(32)))).toBe('ERR_ARG_TYPE');
    expect(buf.equals(Buffer.alloc(16))).toBe(true);
  });
});
