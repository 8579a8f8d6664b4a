/**
 * The one XTS test suite (docs/architecture.md §11.10), run against every engine by
 * xts-native.test.ts, xts-node.test.ts and xts-reference.test.ts.
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { XtsContext, XtsEngine, XtsRunOptions } from '../../src/crypto/xts.js';
import { XtsError } from '../../src/crypto/xts-errors.js';
import { ArgTypeError } from '../../src/util/errors.js';
import { printSeedOnFailure, seeded, type SeededRandom } from './seeded.js';

export interface XtsVector {
  name: string;
  key: string;
  tweak: string;
  unitSize: 512 | 4096;
  tweakStep: number;
  plaintext: string;
  ciphertext: string;
}

const loadVectors = (file: string): XtsVector[] =>
  JSON.parse(readFileSync(new URL(`../vectors/${file}`, import.meta.url), 'utf8')).vectors;

/** IEEE 1619 Annex B (512-byte units) and Python `cryptography`'s answers for 4096-byte units, tweak step 8 (test/vectors/README.md). */
export const VECTORS: XtsVector[] = [...loadVectors('xts-aes-256.json'), ...loadVectors('xts-aes-256-4096.json')];

export const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
export const unhex = (s: string): Buffer => Buffer.from(s, 'hex');

/**
 * Every random key and buffer of the XTS tests comes from a seeded stream (seeded.ts), one per
 * test file: the unit files share a worker process and this module (vitest.config.ts), and a
 * stream shared between them would make a file's draws depend on the files run before it, so
 * EBSD_TEST_SEED would not replay a file run alone.
 */
const streams = new Map<string, SeededRandom>();
function stream(): SeededRandom {
  const file = expect.getState().testPath ?? '';
  let s = streams.get(file);
  if (!s) streams.set(file, (s = seeded(`xts:${basename(file)}`)));
  return s;
}
export const randomBytes = (n: number): Buffer => stream().bytes(n);

/** A valid key whose halves differ. */
export function randomKey(): Buffer {
  for (;;) {
    const k = randomBytes(64);
    if (!k.subarray(0, 32).equals(k.subarray(32))) return k;
  }
}

/** Expects `fn` to throw (sync) or reject (async) an XtsError with `code` naming `argument`. */
async function expectXtsError(fn: () => unknown, code: string, argument?: string): Promise<void> {
  let err: unknown;
  try {
    await fn();
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${code}`).toBeInstanceOf(XtsError);
  expect((err as XtsError).code).toBe(code);
  if (argument !== undefined) {
    expect((err as XtsError).argument).toBe(argument);
    expect((err as Error).message).toContain(argument);
  }
}

export function runXtsSuite(engine: XtsEngine): void {
  const withCtx = (key: Uint8Array, f: (c: XtsContext) => void | Promise<void>) => async () => {
    const c = engine.createContext(key);
    try {
      await f(c);
    } finally {
      c.destroy();
    }
  };

  describe(`XTS engine: ${engine.name}`, () => {
    printSeedOnFailure();
    it('reports its name', () => {
      expect(engine.name).toMatch(/^(native|node|reference)$/);
      const c = engine.createContext(randomKey());
      expect(c.engine).toBe(engine.name);
      c.destroy();
    });

    it('leaves the caller\'s key buffer as it was (create, use, destroy)', () => {
      const key = randomKey();
      const copy = Buffer.from(key);
      const c = engine.createContext(key);
      c.encryptSync(Buffer.alloc(4096), 0);
      c.destroy();
      expect(key.equals(copy)).toBe(true);
    });

    describe('IEEE 1619 vectors', () => {
      it('has vectors 10 to 14, and 4096-byte sectors 0, 1, past 2^32, the last one and a run', () => {
        expect(VECTORS.map((v) => v.name)).toEqual(
          expect.arrayContaining([10, 11, 12, 13, 14].map((n) => `IEEE 1619 Vector ${n}`)),
        );
        const sectors = VECTORS.filter((v) => v.unitSize === 4096);
        expect(sectors.every((v) => v.tweakStep === 8)).toBe(true);
        expect(sectors.map((v) => BigInt(v.tweak))).toEqual(
          expect.arrayContaining([0n, 8n, 8n * (2n ** 32n + 5n), 2n ** 64n - 8n, 8000n]),
        );
        expect(sectors.some((v) => v.plaintext.length / 2 > v.unitSize)).toBe(true);
      });
      for (const v of VECTORS) {
        const opts: XtsRunOptions = { unitSize: v.unitSize, tweakStep: v.tweakStep };
        it(`${v.name}: encryptSync / decryptSync`, withCtx(unhex(v.key), (c) => {
          const buf = unhex(v.plaintext);
          c.encryptSync(buf, BigInt(v.tweak), opts);
          expect(hex(buf)).toBe(v.ciphertext);
          c.decryptSync(buf, BigInt(v.tweak), opts);
          expect(hex(buf)).toBe(v.plaintext);
        }));
        it(`${v.name}: async encrypt / decrypt`, withCtx(unhex(v.key), async (c) => {
          const buf = unhex(v.plaintext);
          await c.encrypt(buf, BigInt(v.tweak), opts);
          expect(hex(buf)).toBe(v.ciphertext);
          await c.decrypt(buf, BigInt(v.tweak), opts);
          expect(hex(buf)).toBe(v.plaintext);
        }));
        const t = BigInt(v.tweak);
        it(`${v.name}: tweak as a number where it is safe, and as unit 2 of a run starting one unit earlier`, withCtx(unhex(v.key), (c) => {
          if (t <= BigInt(Number.MAX_SAFE_INTEGER)) {
            const buf = unhex(v.plaintext);
            c.encryptSync(buf, Number(t), opts);
            expect(hex(buf)).toBe(v.ciphertext);
          }
          // A unit before and after the vector's, where the tweak range has one (not before 0, not after 2^64 - 1).
          const step = BigInt(v.tweakStep), units = BigInt(v.plaintext.length / 2 / v.unitSize);
          const before = t >= step ? 1 : 0;
          const after = t + units * step < 2n ** 64n ? 1 : 0;
          const run = Buffer.concat([Buffer.alloc(before * v.unitSize), unhex(v.plaintext), Buffer.alloc(after * v.unitSize)]);
          c.encryptSync(run, t - BigInt(before) * step, opts);
          expect(hex(run.subarray(before * v.unitSize, run.length - after * v.unitSize))).toBe(v.ciphertext);
        }));
      }
    });

    describe('runs', () => {
      it('a run equals its units processed one by one (4096, step 8 and 512, step 1)', withCtx(randomKey(), (c) => {
        for (const [unitSize, tweakStep] of [[4096, 8], [512, 1]] as const) {
          const data = randomBytes(unitSize * 5);
          const run = Buffer.from(data);
          c.encryptSync(run, 1000n, { unitSize, tweakStep });
          for (let i = 0; i < 5; i++) {
            const u = Buffer.from(data.subarray(i * unitSize, (i + 1) * unitSize));
            c.encryptSync(u, 1000n + BigInt(i * tweakStep), { unitSize, tweakStep });
            expect(hex(u)).toBe(hex(run.subarray(i * unitSize, (i + 1) * unitSize)));
          }
        }
      }));

      it('defaults: 4096-byte units with step 8; 512 defaults to step 1', withCtx(randomKey(), (c) => {
        const d = randomBytes(8192);
        const a = Buffer.from(d), b = Buffer.from(d);
        c.encryptSync(a, 16);
        c.encryptSync(b, 16, { unitSize: 4096, tweakStep: 8 });
        expect(a.equals(b)).toBe(true);
        const e = Buffer.from(d), f = Buffer.from(d);
        c.encryptSync(e, 16, { unitSize: 512 });
        c.encryptSync(f, 16, { unitSize: 512, tweakStep: 1 });
        expect(e.equals(f)).toBe(true);
      }));

      it('round-trips, sync and async, in a subarray at an odd offset', withCtx(randomKey(), async (c) => {
        const backing = randomBytes(3 * 4096 + 3);
        const view = backing.subarray(3);
        const before = Buffer.from(view);
        c.encryptSync(view, 2n ** 40n);
        expect(view.equals(before)).toBe(false);
        expect(backing.subarray(0, 3).equals(Buffer.from(backing.subarray(0, 3)))).toBe(true);
        c.decryptSync(view, 2n ** 40n);
        expect(view.equals(before)).toBe(true);
        await c.encrypt(view, 7n);
        await c.decrypt(view, 7n);
        expect(view.equals(before)).toBe(true);
      }));

      it('accepts a plain Uint8Array and an empty run', withCtx(randomKey(), async (c) => {
        const u = new Uint8Array(512).fill(7);
        c.encryptSync(u, 0, { unitSize: 512 });
        c.decryptSync(u, 0, { unitSize: 512 });
        expect(u.every((x) => x === 7)).toBe(true);
        c.encryptSync(new Uint8Array(0), 0);
        await c.encrypt(new Uint8Array(0), 0);
      }));

      it('handles the largest tweaks: last unit at 2^64 - 1', withCtx(randomKey(), (c) => {
        const max = 2n ** 64n - 1n;
        const d = randomBytes(2 * 4096);
        const b = Buffer.from(d);
        c.encryptSync(b, max - 8n);
        c.decryptSync(b, max - 8n);
        expect(b.equals(d)).toBe(true);
        const one = randomBytes(512);
        const o = Buffer.from(one);
        c.encryptSync(o, max, { unitSize: 512 });
        c.decryptSync(o, max, { unitSize: 512 });
        expect(o.equals(one)).toBe(true);
      }));

      it('different tweaks and different keys give different ciphertext', withCtx(randomKey(), (c) => {
        const d = Buffer.alloc(4096);
        const a = Buffer.from(d), b = Buffer.from(d);
        c.encryptSync(a, 0n);
        c.encryptSync(b, 8n);
        expect(a.equals(b)).toBe(false);
        const c2 = engine.createContext(randomKey());
        const e = Buffer.from(d);
        c2.encryptSync(e, 0n);
        c2.destroy();
        expect(e.equals(a)).toBe(false);
      }));
    });

    describe('errors', () => {
      it('key of another length: XTS_BAD_KEY_LENGTH naming key', async () => {
        for (const n of [0, 32, 63, 65]) await expectXtsError(() => engine.createContext(randomBytes(n)), 'XTS_BAD_KEY_LENGTH', 'key');
      });
      it('key that is not bytes: ArgTypeError', () => {
        expect(() => engine.createContext('00'.repeat(64) as unknown as Uint8Array)).toThrow(ArgTypeError);
      });
      it('K1 = K2: XTS_WEAK_KEY', async () => {
        const half = randomBytes(32);
        await expectXtsError(() => engine.createContext(Buffer.concat([half, half])), 'XTS_WEAK_KEY', 'key');
        await expectXtsError(() => engine.createContext(Buffer.alloc(64)), 'XTS_WEAK_KEY', 'key');
      });
      it('unit size other than 512/4096: XTS_BAD_UNIT_SIZE', withCtx(randomKey(), async (c) => {
        for (const u of [0, 16, 1024, 8192, 513]) {
          await expectXtsError(() => c.encryptSync(Buffer.alloc(8192), 0, { unitSize: u as 512 }), 'XTS_BAD_UNIT_SIZE', 'opts.unitSize');
          await expectXtsError(() => c.decrypt(Buffer.alloc(8192), 0, { unitSize: u as 512 }), 'XTS_BAD_UNIT_SIZE', 'opts.unitSize');
        }
      }));
      it('buffer not a whole number of units: XTS_PARTIAL_UNIT', withCtx(randomKey(), async (c) => {
        await expectXtsError(() => c.encryptSync(Buffer.alloc(4095), 0), 'XTS_PARTIAL_UNIT', 'data');
        await expectXtsError(() => c.encryptSync(Buffer.alloc(4096 + 512), 0), 'XTS_PARTIAL_UNIT', 'data');
        await expectXtsError(() => c.decryptSync(Buffer.alloc(513), 0, { unitSize: 512 }), 'XTS_PARTIAL_UNIT', 'data');
        await expectXtsError(() => c.encrypt(Buffer.alloc(100), 0), 'XTS_PARTIAL_UNIT', 'data');
      }));
      it('tweak past 2^64: XTS_TWEAK_OVERFLOW', withCtx(randomKey(), async (c) => {
        await expectXtsError(() => c.encryptSync(Buffer.alloc(4096), 2n ** 64n), 'XTS_TWEAK_OVERFLOW', 'firstTweak');
        // first unit fits, last one does not
        await expectXtsError(() => c.encryptSync(Buffer.alloc(8192), 2n ** 64n - 8n), 'XTS_TWEAK_OVERFLOW', 'firstTweak');
        await expectXtsError(() => c.decrypt(Buffer.alloc(1024), 2n ** 64n - 1n, { unitSize: 512 }), 'XTS_TWEAK_OVERFLOW', 'firstTweak');
        await expectXtsError(() => c.encryptSync(Buffer.alloc(4096), -1n), 'XTS_TWEAK_OVERFLOW', 'firstTweak');
      }));
      it('bad tweak step: XTS_BAD_TWEAK_STEP', withCtx(randomKey(), async (c) => {
        for (const s of [0, -1, 1.5, 2 ** 32]) {
          await expectXtsError(() => c.encryptSync(Buffer.alloc(4096), 0, { tweakStep: s }), 'XTS_BAD_TWEAK_STEP', 'opts.tweakStep');
        }
      }));
      it('wrong argument types: ArgTypeError', withCtx(randomKey(), async (c) => {
        expect(() => c.encryptSync('x' as unknown as Uint8Array, 0)).toThrow(ArgTypeError);
        expect(() => c.encryptSync(new Uint16Array(2048) as unknown as Uint8Array, 0)).toThrow(ArgTypeError);
        expect(() => c.encryptSync(Buffer.alloc(4096), 1.5)).toThrow(ArgTypeError);
        expect(() => c.encryptSync(Buffer.alloc(4096), 2 ** 60)).toThrow(ArgTypeError); // unsafe integer: use a bigint
        expect(() => c.encryptSync(Buffer.alloc(4096), '0' as unknown as number)).toThrow(ArgTypeError);
        await expect(c.encrypt(null as unknown as Uint8Array, 0)).rejects.toThrow(ArgTypeError);
      }));
      it('use after destroy: XTS_DESTROYED; destroy is idempotent', async () => {
        const c = engine.createContext(randomKey());
        c.destroy();
        c.destroy();
        await expectXtsError(() => c.encryptSync(Buffer.alloc(4096), 0), 'XTS_DESTROYED');
        await expectXtsError(() => c.decryptSync(Buffer.alloc(4096), 0), 'XTS_DESTROYED');
        await expectXtsError(() => c.encrypt(Buffer.alloc(4096), 0), 'XTS_DESTROYED');
      });
      it('a failed call leaves the data untouched', withCtx(randomKey(), (c) => {
        const d = randomBytes(4097);
        const copy = Buffer.from(d);
        expect(() => c.encryptSync(d, 0)).toThrow(XtsError);
        expect(d.equals(copy)).toBe(true);
      }));
    });

    describe('async', () => {
      it('many concurrent runs on one context all give the sync result', withCtx(randomKey(), async (c) => {
        const n = 48;
        const inputs = Array.from({ length: n }, (_, i) => randomBytes(4096 * (1 + (i % 16))));
        const expected = inputs.map((d, i) => {
          const b = Buffer.from(d);
          c.encryptSync(b, BigInt(i) * 1000n);
          return b;
        });
        const bufs = inputs.map((d) => Buffer.from(d));
        await Promise.all(bufs.map((b, i) => c.encrypt(b, BigInt(i) * 1000n)));
        bufs.forEach((b, i) => expect(b.equals(expected[i]!), `run ${i}`).toBe(true));
        // and back, mixing directions on the same context
        await Promise.all(bufs.map((b, i) => c.decrypt(b, BigInt(i) * 1000n)));
        const mixed = inputs.map((d) => Buffer.from(d));
        await Promise.all([
          ...bufs.map((b, i) => (i % 2 ? Promise.resolve() : c.encrypt(b, BigInt(i) * 1000n))),
          ...mixed.map((b, i) => c.encrypt(b, BigInt(i) * 1000n)),
        ]);
        bufs.forEach((b, i) => expect(b.equals(i % 2 ? inputs[i]! : expected[i]!), `run ${i}`).toBe(true));
        mixed.forEach((b, i) => expect(b.equals(expected[i]!), `mixed ${i}`).toBe(true));
      }));

      it('concurrent runs on several contexts with different keys', async () => {
        const keys = [randomKey(), randomKey(), randomKey()];
        const ctxs = keys.map((k) => engine.createContext(k));
        try {
          const data = randomBytes(64 * 1024);
          const bufs = ctxs.flatMap((c) => [0, 1, 2, 3].map(() => ({ c, b: Buffer.from(data) })));
          await Promise.all(bufs.map(({ c, b }) => c.encrypt(b, 80n)));
          for (const { c, b } of bufs) {
            c.decryptSync(b, 80n);
            expect(b.equals(data)).toBe(true);
          }
        } finally {
          ctxs.forEach((c) => c.destroy());
        }
      });

      it('destroy() while runs are in flight: they still complete correctly', async () => {
        const key = randomKey();
        const c = engine.createContext(key);
        const data = randomBytes(256 * 1024);
        const want = Buffer.from(data);
        const ref = engine.createContext(key);
        ref.encryptSync(want, 0n);
        ref.destroy();
        const bufs = [0, 1, 2, 3].map(() => Buffer.from(data));
        const ps = bufs.map((b) => c.encrypt(b, 0n));
        c.destroy();
        await Promise.all(ps);
        bufs.forEach((b) => expect(b.equals(want)).toBe(true));
      });
    });
  });
}
