import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { decodeKmsRequest } from '../../src/daemon/aws-json.js';

// The blob check was rewritten for speed (aws-json.ts): it must accept exactly what the RFC 4648 §4
// grammar it replaced accepted, and decode to the same bytes.
const GRAMMAR = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const accepts = (v: string): boolean => {
  try {
    decodeKmsRequest({ CiphertextBlob: v });
    return true;
  } catch (e) {
    expect((e as { awsName?: string }).awsName).toBe('SerializationException');
    return false;
  }
};

describe('strict base64 of request blobs', () => {
  it('accepts and refuses exactly what the RFC 4648 grammar does (edge cases and 20,000 random strings)', () => {
    const edge = ['', '=', '==', '===', 'A===', 'AA==', 'AAA=', 'AAAA', 'AA=A', 'A=AA', 'AAA', 'AAAAA', 'AA==AAAA', 'AAAA====', 'AB\nC', 'AB-_', 'QUJD', 'QUJDRA==', ' QUJD'];
    for (const v of edge) expect(accepts(v), JSON.stringify(v)).toBe(GRAMMAR.test(v));
    const seed = randomBytes(4).readUInt32BE();
    let x = seed;
    const next = (n: number): number => ((x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 8) % n;
    const alphabet = 'ABCXYZabcxyz0189+/==== -_\n.';
    for (let i = 0; i < 20_000; i++) {
      let v = '';
      for (let n = next(14); n > 0; n--) v += alphabet[next(alphabet.length)];
      expect(accepts(v), `seed ${seed}: ${JSON.stringify(v)}`).toBe(GRAMMAR.test(v));
    }
  });

  it('decodes to the bytes that were encoded', () => {
    for (let n = 0; n < 70; n++) {
      const b = randomBytes(n);
      expect(Buffer.from(decodeKmsRequest({ CiphertextBlob: b.toString('base64') }).CiphertextBlob as Uint8Array).equals(b)).toBe(true);
    }
  });
});
