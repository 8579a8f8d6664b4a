import { describe, expect, it } from 'vitest';
import { createHmac, randomBytes } from 'node:crypto';
import { HmacSha256Key, hmacSha256 } from '../../src/kms/sigv4/hmac-sha256.js';

// RFC 4231 §4.2-§4.4, §4.7 (test cases 1, 2, 3 and 6 have keys of at most 64 bytes or show the
// block-size boundary; case 6's 131-byte key is refused: SigV4 signing keys are 32 bytes).
const RFC4231 = [
  { key: '0b'.repeat(20), data: Buffer.from('Hi There').toString('hex'), mac: 'b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7' },
  { key: Buffer.from('Jefe').toString('hex'), data: Buffer.from('what do ya want for nothing?').toString('hex'), mac: '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843' },
  { key: 'aa'.repeat(20), data: 'dd'.repeat(50), mac: '773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe' },
];

describe('HmacSha256Key (RFC 2104 on one-shot SHA-256)', () => {
  it('gives the RFC 4231 answers', () => {
    for (const v of RFC4231) {
      expect(new HmacSha256Key(Buffer.from(v.key, 'hex')).mac(Buffer.from(v.data, 'hex')).toString('hex')).toBe(v.mac);
    }
  });

  it("agrees with node's createHmac for 32-byte keys, strings and bytes of every length up to 600 (the scratch grows)", () => {
    const seed = randomBytes(4).readUInt32BE();
    let x = seed;
    const next = (): number => (x = (Math.imul(x, 1103515245) + 12345) >>> 0);
    for (let i = 0; i < 600; i++) {
      const key = Buffer.alloc(32, next() & 0xff);
      key.writeUInt32BE(next(), 0);
      const k = new HmacSha256Key(key);
      const bytes = Buffer.alloc(i, next() & 0xff);
      const text = 'AWS4-HMAC-SHA256\n' + 'é'.repeat(i % 7) + 'x'.repeat(i);
      expect(k.mac(bytes).equals(createHmac('sha256', key).update(bytes).digest()), `seed ${seed}, length ${i}`).toBe(true);
      expect(k.mac(text).equals(createHmac('sha256', key).update(text).digest()), `seed ${seed}, length ${i}`).toBe(true);
      // The same key again after a longer message: nothing of the previous one is left in the scratch.
      expect(k.mac('a').equals(createHmac('sha256', key).update('a').digest())).toBe(true);
    }
  });

  it('refuses a key longer than a block and a key that is not bytes, and wipe() makes it useless', () => {
    expect(() => new HmacSha256Key(Buffer.alloc(65))).toThrow(RangeError);
    expect(() => new HmacSha256Key('secret' as unknown as Uint8Array)).toThrow(TypeError);
    const key = Buffer.alloc(32, 1);
    const k = new HmacSha256Key(key);
    k.wipe();
    expect(k.mac('x').equals(createHmac('sha256', key).update('x').digest())).toBe(false);
  });

  it('hmacSha256 (one shot, the HSM KDF\'s PRF) gives the RFC 4231 answers and agrees with createHmac for keys of 0-64 bytes', () => {
    for (const v of RFC4231) expect(hmacSha256(Buffer.from(v.key, 'hex'), Buffer.from(v.data, 'hex')).toString('hex')).toBe(v.mac);
    for (let n = 0; n <= 64; n++) {
      const key = randomBytes(n);
      const msg = randomBytes(n * 3);
      expect(hmacSha256(key, msg).equals(createHmac('sha256', key).update(msg).digest())).toBe(true);
    }
    expect(() => hmacSha256(Buffer.alloc(65), Buffer.alloc(1))).toThrow(RangeError);
  });
});
