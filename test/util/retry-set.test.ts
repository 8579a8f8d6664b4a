import { describe, expect, it } from 'vitest';
import { RetrySet } from '../../src/util/retry-set.js';
import { ManualClock } from '../volume/helpers/manual-clock.js';

/**
 * RetrySet (src/util/retry-set.ts), the background retries of op-grant
 * retirements (fixed period) and of pending-snapshot markers (doubling
 * back-off), on a manual clock: when passes run, what they try, what stays.
 * The two users' own tests (test/volume/kms-flows.test.ts,
 * test/snapshot/pending-markers.test.ts) run it against the real KMS and store.
 */
describe('RetrySet', () => {
  /** A set whose attempts succeed for the keys in `ok`; every attempt is recorded with the clock's time. */
  const setUp = (o: { firstMs: number; maxMs?: number }) => {
    const clock = new ManualClock(0);
    const ok = new Set<string>();
    const tries: [number, string, string][] = [];
    const set = new RetrySet<string>({ ...o, clock, attempt: async (k, v) => (tries.push([clock.now(), k, v]), ok.has(k)) });
    return { clock, ok, tries, set };
  };

  it('without maxMs, passes every firstMs over every item until each succeeds; then no timer is left', async () => {
    const { clock, ok, tries, set } = setUp({ firstMs: 1_000 });
    expect(clock.pending).toBe(0);
    set.add('a', 'x');
    set.add('b', 'y');
    expect(clock.pending).toBe(1);
    await clock.advance(999);
    expect(tries).toEqual([]);
    await clock.advance(1);
    expect(tries).toEqual([[1_000, 'a', 'x'], [1_000, 'b', 'y']]);
    ok.add('a');
    await clock.advance(1_000);
    expect(tries.slice(2)).toEqual([[2_000, 'a', 'x'], [2_000, 'b', 'y']]);
    expect(set.keys).toEqual(['b']);
    await clock.advance(1_000);
    expect(tries.slice(4)).toEqual([[3_000, 'b', 'y']]);
    ok.add('b');
    await clock.advance(1_000);
    expect(set.size).toBe(0);
    expect(clock.pending).toBe(0);
  });

  it('with maxMs, doubles the wait after a pass that settles nothing, up to maxMs, and starts over after one that settles something', async () => {
    const { clock, ok, tries, set } = setUp({ firstMs: 1_000, maxMs: 4_000 });
    set.add('a', '');
    set.add('b', '');
    await clock.advance(20_000);
    // 1 s, then 2, 4, 4, 4, 4 s later.
    expect([...new Set(tries.map(([t]) => t))]).toEqual([1_000, 3_000, 7_000, 11_000, 15_000, 19_000]);
    ok.add('a');
    await clock.advance(3_000); // the pass at 23 s settles a: the wait starts over at 1 s
    expect(set.keys).toEqual(['b']);
    const at = tries.length;
    await clock.advance(1_000);
    await clock.advance(2_000);
    expect(tries.slice(at).map(([t]) => t)).toEqual([24_000, 26_000]);
  });

  it('an attempt that throws keeps its item for the next pass, and the items after it are still tried', async () => {
    const clock = new ManualClock(0);
    const tries: string[] = [];
    let failA = true;
    const set = new RetrySet<string>({ firstMs: 1_000, clock, attempt: async (k) => {
      tries.push(k);
      if (k === 'a' && failA) throw new Error('attempt failed unexpectedly');
      return true;
    } });
    set.add('a', '');
    set.add('b', '');
    await clock.advance(1_000);
    expect(tries).toEqual(['a', 'b']);
    expect(set.keys).toEqual(['a']);
    failA = false;
    await clock.advance(1_000);
    expect(tries).toEqual(['a', 'b', 'a']);
    expect(set.size).toBe(0);
    expect(clock.pending).toBe(0);
  });

  it('a value given again replaces the one the next pass tries', async () => {
    const { clock, tries, set } = setUp({ firstMs: 10 });
    set.add('a', 'first');
    set.add('a', 'second');
    await clock.advance(10);
    expect(tries).toEqual([[10, 'a', 'second']]);
  });

  it('close() waits for the pass under way, which stops before its next item; nothing runs after, and what is added is only listed', async () => {
    const clock = new ManualClock(0);
    let release!: () => void;
    const tried: string[] = [];
    const set = new RetrySet<number>({
      firstMs: 100, clock,
      attempt: async (k) => {
        tried.push(k);
        if (k === 'a') await new Promise<void>((r) => (release = r));
        return false;
      },
    });
    set.add('a', 1);
    set.add('b', 2);
    const firing = clock.advance(100); // the pass starts and waits inside a
    await new Promise((r) => setImmediate(r));
    expect(tried).toEqual(['a']);
    let closed = false;
    const closing = set.close().then(() => (closed = true));
    await new Promise((r) => setImmediate(r));
    expect(closed).toBe(false);
    release();
    await closing;
    await firing;
    expect(tried).toEqual(['a']);
    set.add('c', 3);
    expect(set.keys).toEqual(['a', 'b', 'c']);
    expect(clock.pending).toBe(0);
  });

  it('checks its delays', () => {
    const attempt = async (): Promise<boolean> => true;
    expect(() => new RetrySet({ firstMs: 0, attempt })).toThrow(RangeError);
    expect(() => new RetrySet({ firstMs: 10, maxMs: 5, attempt })).toThrow(RangeError);
  });
});
