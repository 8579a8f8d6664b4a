/**
 * Seeded randomness for tests: every random input a test draws comes from a
 * stream keyed by one seed and the test's own label, so a failure can be
 * replayed exactly. The seed is printed when a test that used it fails;
 * `EBSD_TEST_SEED=<n>` replays it.
 */
import { createCipheriv, createHash, randomInt } from 'node:crypto';
import { beforeEach } from 'vitest';

const fromEnv = process.env.EBSD_TEST_SEED;
/** One seed per test process: EBSD_TEST_SEED if set, else a fresh one. */
export const SEED: number = fromEnv !== undefined && /^\d+$/.test(fromEnv) ? Number(fromEnv) : randomInt(2 ** 31);

export interface SeededRandom {
  readonly seed: number;
  /** The next `n` bytes of this stream. */
  bytes(n: number): Buffer;
  /** An integer in [0, n). */
  int(n: number): number;
}

/**
 * A deterministic byte stream for `label` under SEED: the AES-256-CTR
 * keystream keyed by SHA-256(seed ‖ label) (any fixed function would do; this
 * one is fast). Tests in a file run in order, so a file's draws replay exactly.
 */
export function seeded(label: string): SeededRandom {
  const key = createHash('sha256').update(`${SEED}\0${label}`).digest();
  const ctr = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  const bytes = (n: number): Buffer => ctr.update(Buffer.alloc(n));
  return { seed: SEED, bytes, int: (n) => bytes(4).readUInt32BE(0) % n };
}

/** Call in a file or describe that draws from seeded(): a failing test there prints the seed. */
export function printSeedOnFailure(): void {
  beforeEach((ctx) => {
    ctx.onTestFailed(() => {
      console.error(`[seeded] "${ctx.task.name}" failed under EBSD_TEST_SEED=${SEED} (set it to replay)`);
    });
  });
}

/**
 * A drop-in for node:crypto's `randomBytes(n)` drawing from seeded(label):
 * a file that writes random payloads replays them under EBSD_TEST_SEED.
 * Pair it with printSeedOnFailure() in the same file.
 */
export function seededBytes(label: string): (n: number) => Buffer {
  const r = seeded(label);
  return (n) => r.bytes(n);
}
