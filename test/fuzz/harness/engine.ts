import fc from 'fast-check';
import { performance } from 'node:perf_hooks';
import { errorSignature, isTypedError, showInput, type FuzzTarget, type Verdict } from './target.js';

/**
 * The loop that feeds one target, inside a worker thread (pool.ts watches it).
 *
 * Inputs come from fast-check: chunk k of `chunk` inputs is one `fc.check`
 * with seed `chunkSeed(seed, k)`, so any input is named by (chunk, index) and
 * can be generated again, after a watchdog kill or to shrink it. The property
 * itself never fails while counting; shrinking replays the chunk with a
 * property that fails on the finding's kind and lets fast-check shrink it.
 */

export type FindingKind = 'untyped' | 'invalid' | 'slow';

export interface Finding {
  kind: FindingKind | 'stuck';
  /** Error signature (untyped), property name (invalid), `slow` / `stuck`. */
  key: string;
  count: number;
  /** The first input that showed it, rendered. */
  example: string;
  detail: string;
  chunk: number;
  index: number;
  /** The input fast-check shrank it to, when shrinking ran. */
  shrunk?: string;
  shrunkDetail?: string;
}

export interface ChunkDelta {
  inputs: number;
  accepted: number;
  refused: number;
  findings: Finding[];
}

export interface EngineOptions {
  seed: number;
  runs: number;
  chunk: number;
  /** An input whose fastest of three runs exceeds this is a hang (`slow`). */
  slowMs: number;
  startChunk: number;
  /** Inputs of startChunk to skip (those up to and including a stuck one). */
  skip: number;
}

export const chunkSeed = (seed: number, k: number): number => (seed + Math.imul(k, 0x9e3779b1)) | 0;

type Outcome = { kind: 'accepted' | 'refused' } | { kind: FindingKind; key: string; detail: string };

async function once<I, C>(t: FuzzTarget<I, C>, ctx: C, input: I): Promise<Outcome> {
  let v: Verdict;
  try {
    v = await t.run(input, ctx);
  } catch (e) {
    const typed = t.isTyped ? t.isTyped(e) : isTypedError(e);
    if (typed) return { kind: 'refused' };
    const stack = e instanceof Error ? (e.stack ?? '').split('\n').slice(1, 4).map((l) => l.trim()).join(' < ') : '';
    return { kind: 'untyped', key: errorSignature(e), detail: stack };
  }
  if (v === 'accepted' || v === 'refused') return { kind: v };
  return { kind: 'invalid', key: v.invalid, detail: v.why };
}

/** Run one input, timed; a slow one is run twice more and judged by its fastest run (noise is not a hang). */
export async function judge<I, C>(t: FuzzTarget<I, C>, ctx: C, input: I, slowMs: number): Promise<Outcome> {
  let t0 = performance.now();
  const out = await once(t, ctx, input);
  let best = performance.now() - t0;
  for (let i = 0; i < 2 && best > slowMs; i++) {
    t0 = performance.now();
    await once(t, ctx, input);
    best = Math.min(best, performance.now() - t0);
  }
  if (best > slowMs) return { kind: 'slow', key: 'slow', detail: `fastest of 3 runs took ${best.toFixed(0)} ms (limit ${slowMs} ms)` };
  return out;
}

export interface EngineHooks {
  /** Called before each input with its position: the watchdog's heartbeat. */
  beat(chunk: number, index: number): void;
  delta(d: ChunkDelta, chunk: number): void;
}

export async function runEngine<I, C>(t: FuzzTarget<I, C>, o: EngineOptions, hooks: EngineHooks): Promise<void> {
  const arb = t.arbitrary();
  const show = (x: I): string => (t.show ? t.show(x) : showInput(x));
  let ctx = await t.open();
  let sinceReset = 0;
  try {
    let done = o.startChunk * o.chunk;
    for (let k = o.startChunk; done < o.runs; k++) {
      const n = Math.min(o.chunk, o.runs - done);
      const skip = k === o.startChunk ? o.skip : 0;
      const d: ChunkDelta = { inputs: 0, accepted: 0, refused: 0, findings: [] };
      const byKey = new Map<string, Finding>();
      let index = -1;
      let lastFlush = performance.now();
      const flush = (): void => {
        d.findings = [...byKey.values()];
        hooks.delta(d, k);
        d.inputs = d.accepted = d.refused = 0;
        byKey.clear();
        lastFlush = performance.now();
      };
      if (t.resetEvery && sinceReset >= t.resetEvery) {
        await t.close(ctx);
        ctx = await t.open();
        sinceReset = 0;
      }
      await fc.check(
        fc.asyncProperty(arb, async (input) => {
          index++;
          hooks.beat(k, index);
          if (index < skip) return true;
          const out = await judge(t, ctx, input, o.slowMs);
          d.inputs++;
          if (out.kind === 'accepted') d.accepted++;
          else if (out.kind === 'refused') d.refused++;
          else if ('key' in out) {
            const id = `${out.kind}\u0000${out.key}`;
            const f = byKey.get(id);
            if (f) f.count++;
            else byKey.set(id, { kind: out.kind, key: out.key, count: 1, example: show(input), detail: out.detail, chunk: k, index });
          }
          // Counts reach the main thread often, so a worker killed as stuck loses few.
          if (performance.now() - lastFlush > 250) flush();
          return true;
        }),
        { seed: chunkSeed(o.seed, k), numRuns: n },
      );
      sinceReset += n;
      done += n;
      flush();
    }
  } finally {
    await t.close(ctx);
  }
}

/** The input at (chunk, index), generated again without running the target. */
export async function inputAt<I>(t: FuzzTarget<I, unknown>, seed: number, chunk: number, index: number): Promise<string> {
  let i = -1;
  const r = await fc.check(fc.asyncProperty(t.arbitrary(), async () => ++i !== index), {
    seed: chunkSeed(seed, chunk), numRuns: index + 1, endOnFailure: true,
  });
  const x = r.counterexample?.[0] as I | undefined;
  return x === undefined ? '(could not regenerate)' : t.show ? t.show(x) : showInput(x);
}

/**
 * Shrink a finding: replay its chunk with a property that fails when an
 * input shows the same kind and key, and let fast-check minimize it.
 */
export async function shrinkFinding<I, C>(t: FuzzTarget<I, C>, ctx: C, seed: number, f: Finding, timeMs: number): Promise<{ shrunk: string; detail: string } | undefined> {
  if (f.kind === 'slow' || f.kind === 'stuck') return undefined; // a shrink candidate could hang the worker
  let last = '';
  const r = await fc.check(
    fc.asyncProperty(t.arbitrary(), async (input) => {
      const out = await once(t, ctx, input);
      const same = out.kind === f.kind && 'key' in out && out.key === f.key;
      if (same) last = (out as { detail: string }).detail;
      return !same;
    }),
    { seed: chunkSeed(seed, f.chunk), numRuns: f.index + 1, interruptAfterTimeLimit: timeMs, markInterruptAsFailure: false },
  );
  const x = r.counterexample?.[0] as I | undefined;
  if (!r.failed || x === undefined) return undefined;
  return { shrunk: t.show ? t.show(x) : showInput(x), detail: last };
}
