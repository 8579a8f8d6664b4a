import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { rngAesCtrDrbg256 } from '@noble/ciphers/aes.js';
import { Drbg, SEED_LEN } from '../../src/kms/hsm/drbg.js';

/**
 * The HSM's CTR_DRBG (OpenSSL AES) against @noble/ciphers' rngAesCtrDrbg256
 * (pure-JS AES): same seed, same reseeds, same draws -> same bytes.
 */
describe('CTR_DRBG (NIST SP 800-90A §10.2.1, AES-256, no df)', () => {
  it('matches @noble/ciphers rngAesCtrDrbg256 bit for bit over reseeds and draws of many lengths', () => {
    for (let trial = 0; trial < 20; trial++) {
      const seed = randomBytes(SEED_LEN);
      const ours = new Drbg(seed);
      const ref = rngAesCtrDrbg256(seed);
      for (const len of [1, 15, 16, 17, 44, 48, 96, 108, 1024, 4097]) {
        if (len % 3 === 0) {
          const e = randomBytes(SEED_LEN);
          ours.reseed(e);
          ref.addEntropy(e);
        }
        expect(Buffer.from(ours.generate(len)).toString('hex')).toBe(Buffer.from(ref.randomBytes(len)).toString('hex'));
      }
    }
  });
  it('stays equal over 300 consecutive draws (the low byte of the counter carries many times)', () => {
    const seed = randomBytes(SEED_LEN);
    const ours = new Drbg(seed);
    const ref = rngAesCtrDrbg256(seed);
    for (let i = 0; i < 300; i++) expect(Buffer.from(ours.generate(32)).equals(Buffer.from(ref.randomBytes(32)))).toBe(true);
  });
  it('bytes() reseeds from the OS every call: two DRBGs with the same seed diverge', () => {
    const seed = randomBytes(SEED_LEN);
    expect(new Drbg(seed).bytes(32).equals(new Drbg(seed).bytes(32))).toBe(false);
    expect(() => new Drbg(new Uint8Array(32))).toThrow(RangeError);
  });
});
