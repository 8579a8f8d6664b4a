/**
 * Randomised cross-checks: every engine must agree byte for byte with every
 * other on random keys, tweaks (up to 2^40), run lengths, unit sizes, steps
 * and both directions.
 */
import { describe, expect, it } from 'vitest';
import type { XtsEngine, XtsUnitSize } from '../../src/crypto/xts.js';
import { nativeXtsEngine } from '../../src/crypto/xts-native.js';
import { nodeXtsEngine } from '../../src/crypto/xts-node.js';
import { referenceXtsEngine } from '../../src/crypto/xts-reference.js';
import { randomKey } from './xts-suite.js';
import { printSeedOnFailure, seeded } from './seeded.js';

const rnd = seeded('xts-cross');
const randomBytes = (n: number): Buffer => rnd.bytes(n);
/** An integer in [min, max), or [0, min) with one argument, as node:crypto randomInt. */
const randomInt = (min: number, max?: number): number => (max === undefined ? rnd.int(min) : min + rnd.int(max - min));

const ENGINES: XtsEngine[] = [nativeXtsEngine, nodeXtsEngine, referenceXtsEngine];

function randomTweak(): bigint {
  // up to 2^40, with some small ones and some near powers of two
  switch (randomInt(3)) {
    case 0:
      return BigInt(randomInt(1000));
    case 1:
      return (1n << BigInt(randomInt(1, 41))) - BigInt(randomInt(0, 3));
    default:
      return BigInt(randomInt(2 ** 40 / 2 ** 8)) * 256n + BigInt(randomInt(256));
  }
}

describe('XTS engines agree', () => {
  printSeedOnFailure();
  for (const unitSize of [512, 4096] as XtsUnitSize[]) {
    for (const tweakStep of [1, 8]) {
      it(`random keys, tweaks, run lengths: ${unitSize}-byte units, step ${tweakStep}`, async () => {
        for (let trial = 0; trial < 12; trial++) {
          const key = randomKey();
          const tweak = randomTweak();
          const units = randomInt(1, unitSize === 512 ? 33 : 9);
          const plain = randomBytes(units * unitSize);
          const ctxs = ENGINES.map((e) => e.createContext(key));
          try {
            const opts = { unitSize, tweakStep };
            const cts = ctxs.map((c) => {
              const b = Buffer.from(plain);
              c.encryptSync(b, tweak, opts);
              return b.toString('hex');
            });
            const ctx0 = cts[0]!;
            for (let i = 1; i < cts.length; i++) expect(cts[i], `${ENGINES[i]!.name} vs native, trial ${trial}`).toBe(ctx0);
            // decrypt random bytes too: every engine must invert the same way
            const junk = randomBytes(units * unitSize);
            const pts = await Promise.all(
              ctxs.map(async (c) => {
                const b = Buffer.from(junk);
                await c.decrypt(b, tweak, opts);
                return b.toString('hex');
              }),
            );
            for (let i = 1; i < pts.length; i++) expect(pts[i]).toBe(pts[0]);
            // and each engine's ciphertext decrypts under every other engine
            for (const c of ctxs) {
              const b = Buffer.from(ctx0, 'hex');
              c.decryptSync(b, tweak, opts);
              expect(b.equals(plain)).toBe(true);
            }
          } finally {
            ctxs.forEach((c) => c.destroy());
          }
        }
      });
    }
  }

  it('a tweak above 2^32 reaches the upper word (not truncated to 32 bits)', () => {
    const key = randomKey();
    for (const e of ENGINES) {
      const c = e.createContext(key);
      const a = Buffer.alloc(512), b = Buffer.alloc(512);
      c.encryptSync(a, 5n, { unitSize: 512 });
      c.encryptSync(b, 5n + (1n << 32n), { unitSize: 512 });
      c.destroy();
      expect(a.equals(b), e.name).toBe(false);
    }
  });
});
