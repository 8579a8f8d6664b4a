import { expect } from 'vitest';
import { formatReport, fuzz, type TargetReport } from './harness/pool.js';

/**
 * The short fixed-seed run inside `npm test`. FUZZ_SEED and FUZZ_RUNS
 * override the seed and the input count (FUZZ_RUNS multiplies nothing: it is
 * the count per target); the seed is printed with every report so a failure
 * can be replayed. FUZZ_SLOW_MS sets the hang threshold (fastest of three
 * runs of one input; 1000 ms here, so that a loaded CI machine does not
 * flag noise; the long run uses 100 ms).
 */
export const SEED = Number(process.env.FUZZ_SEED ?? 0x0eb5d013);
export const runsOr = (n: number): number => Number(process.env.FUZZ_RUNS ?? n);
const SLOW_MS = Number(process.env.FUZZ_SLOW_MS ?? 1000);

export async function fuzzAndReport(target: string, runs: number, extra: { stuckMs?: number; maxStuck?: number } = {}): Promise<TargetReport> {
  const r = await fuzz(target, { seed: SEED, runs: runsOr(runs), slowMs: SLOW_MS, stuckMs: extra.stuckMs ?? 3000, maxStuck: extra.maxStuck ?? 2, chunk: 250, shrinkMs: 1000, maxShrink: 4 });
  console.log(formatReport(r));
  return r;
}

/** The four oracles: no untyped error, no hang (slow or stuck), no invalid input accepted, and inputs actually ran. */
export function expectClean(r: TargetReport): void {
  const list = (kind: string): string[] => r.findings.filter((f) => f.kind === kind || (kind === 'hang' && (f.kind === 'slow' || f.kind === 'stuck'))).map((f) => `${f.key} x${f.count}: ${f.shrunk ?? f.example}`);
  expect(r.inputs, `${r.target}: inputs run`).toBeGreaterThan(0);
  expect(list('untyped'), `${r.target}: untyped errors (seed ${r.seed})`).toEqual([]);
  expect(list('hang'), `${r.target}: hangs (seed ${r.seed})`).toEqual([]);
  expect(list('invalid'), `${r.target}: invalid inputs accepted (seed ${r.seed})`).toEqual([]);
}
