import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { rngAesCtrDrbg256 } from '@noble/ciphers/aes.js';
import { Drbg, SEED_LEN, defaultAesCtr, nativeAesCtr, nodeAesCtr, type AesCtrInPlace } from '../../src/kms/hsm/drbg.js';
import { printSeedOnFailure, seeded } from '../crypto/seeded.js';
import { countInOwnMemory, invert } from '../helpers/own-memory.js';

interface DrbgVector { count: number; EntropyInput: string; EntropyInputReseed?: string; ReturnedBits: string }
const CAVP = JSON.parse(readFileSync(new URL('../vectors/ctr-drbg-aes256-nodf.json', import.meta.url), 'utf8')) as {
  noReseed: { vectors: DrbgVector[] };
  reseed: { vectors: DrbgVector[] };
};
const unhex = (s: string): Buffer => Buffer.from(s, 'hex');
/** Every block cipher the DRBG may run on: libgcrypt's through the addon, node's as the fallback. */
const CIPHERS: [string, AesCtrInPlace | null][] = [['libgcrypt (native addon)', nativeAesCtr], ['node:crypto (fallback)', nodeAesCtr]];


/**
 * The HSM's CTR_DRBG (NIST SP 800-90A Rev.1 §10.2.1, AES-256, no derivation
 * function, no personalization string, no additional input) against NIST's
 * CAVP answers through its public methods: the constructor is Instantiate,
 * reseed() is Reseed, generate() is Generate. bytes() is prediction-resistant
 * generation (Reseed with fresh OS entropy, then Generate), the same two steps
 * the reseed vectors pin, with an input no test can know.
 */
describe.each(CIPHERS)('CTR_DRBG (NIST SP 800-90A §10.2.1, AES-256, no df) on %s', (_name, aes) => {
  printSeedOnFailure();
  if (aes === null) {
    it.skip('the native addon is not loaded', () => {});
    return;
  }
  const drbg = (seed: Uint8Array): Drbg => new Drbg(seed, aes);

  for (const v of CAVP.noReseed.vectors) {
    it(`CAVP no reseed, COUNT=${v.count}: Instantiate, Generate, Generate`, () => {
      const d = drbg(unhex(v.EntropyInput));
      d.generate(64);
      expect(d.generate(64).toString('hex')).toBe(v.ReturnedBits);
    });
  }
  for (const v of CAVP.reseed.vectors) {
    it(`CAVP with reseed (PredictionResistance = False), COUNT=${v.count}: Instantiate, Reseed, Generate, Generate`, () => {
      const d = drbg(unhex(v.EntropyInput));
      d.reseed(unhex(v.EntropyInputReseed!));
      d.generate(64);
      expect(d.generate(64).toString('hex')).toBe(v.ReturnedBits);
    });
  }

  it('a draw of fewer bytes is a prefix of the CAVP answer (the closing Update does not depend on the length within a block)', () => {
    const v = CAVP.noReseed.vectors[0]!;
    for (const len of [1, 15, 16, 17, 48, 63]) {
      const d = drbg(unhex(v.EntropyInput));
      d.generate(64);
      expect(d.generate(len).toString('hex')).toBe(v.ReturnedBits.slice(0, 2 * len));
    }
  });

  it('matches @noble/ciphers rngAesCtrDrbg256 bit for bit over reseeds and draws of many lengths', () => {
    const rnd = seeded('drbg cross');
    for (let trial = 0; trial < 20; trial++) {
      const seed = rnd.bytes(SEED_LEN);
      const ours = drbg(seed);
      const ref = rngAesCtrDrbg256(seed);
      for (const len of [1, 15, 16, 17, 44, 48, 96, 108, 1024, 4097]) {
        if (len % 3 === 0) {
          const e = rnd.bytes(SEED_LEN);
          ours.reseed(e);
          ref.addEntropy(e);
        }
        expect(Buffer.from(ours.generate(len)).toString('hex')).toBe(Buffer.from(ref.randomBytes(len)).toString('hex'));
      }
    }
  });

  it('stays equal over 300 consecutive draws (the low byte of the counter carries many times)', () => {
    const seed = seeded('drbg carry').bytes(SEED_LEN);
    const ours = drbg(seed);
    const ref = rngAesCtrDrbg256(seed);
    for (let i = 0; i < 300; i++) expect(Buffer.from(ours.generate(32)).equals(Buffer.from(ref.randomBytes(32)))).toBe(true);
  });
});

describe('CTR_DRBG as the HSM runs it (the addon\'s AES when loaded)', () => {
  it('runs on libgcrypt\'s AES-256-CTR whenever the addon has it, node\'s Cipher otherwise', () => {
    expect(defaultAesCtr).toBe(nativeAesCtr ?? nodeAesCtr);
  });

  it.skipIf(nativeAesCtr === null)('a draw leaves no copy of itself once the caller wipes its answer (docs/architecture.md §6.5: generated in place)', () => {
    const d = new Drbg();
    // GenerateDataKey's draw: KDF nonce (32) ‖ IV (12) ‖ data key; the key is the part searched
    // (the first 16 bytes of a freed buffer are malloc's, so a key further in stays whole).
    const secrets = [32, 64, 256, 512].map((n) => {
      const out = d.bytes(44 + n);
      const inv = invert(out.subarray(44));
      out.fill(0);
      return inv;
    });
    // node's Cipher.update left the key stream in the buffer it frees after copying (fails without: 256, 512)
    expect(secrets.map((s) => countInOwnMemory(s))).toEqual([0, 0, 0, 0]);
  });

  it('bytes() reseeds from the OS every call: two DRBGs with the same seed diverge', () => {
    const seed = seeded('drbg os').bytes(SEED_LEN);
    expect(new Drbg(seed).bytes(32).equals(new Drbg(seed).bytes(32))).toBe(false);
    expect(() => new Drbg(new Uint8Array(32))).toThrow(RangeError);
  });
});
