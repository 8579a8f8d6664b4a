import { describe, expect, it } from 'vitest';
import { CopyPacer, PACER_MAX_REST_MS, PACER_QUIET_MS, PACER_REST_FACTOR } from '../../src/snapshot/cow-pacer.js';
import { ManualClock } from '../volume/helpers/manual-clock.js';

/** The snapshot copier's pacing (src/snapshot/cow-pacer.ts), on a clock the test moves. */
const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('CopyPacer', () => {
  it('an idle volume: every worker goes at once, no timer armed, no rest', async () => {
    const clock = new ManualClock();
    const p = new CopyPacer(() => 0, clock);
    const done = await Promise.all(Array.from({ length: 8 }, () => p.before()));
    expect(clock.pending).toBe(0);
    for (const d of done) d();
    // Still idle after blocks that took time: no rest.
    const d = await p.before();
    expect(clock.pending).toBe(0);
    d();
    expect(p.pacedBlocks).toBe(0);
  });

  it('a busy volume: one block at a time, then a rest of REST_FACTOR times its duration', async () => {
    const clock = new ManualClock();
    // Writes all the time: every look at the counter finds it moved.
    let writes = 0;
    const p = new CopyPacer(() => ++writes, clock);
    const d1 = await p.before();
    let second: (() => void) | undefined;
    void p.before().then((d) => (second = d));
    // A block short enough that its rest is under the cap.
    const took = Math.floor(PACER_MAX_REST_MS / PACER_REST_FACTOR / 2);
    await clock.advance(took);
    await settle();
    expect(second, 'a second block waits while one is in flight').toBeUndefined();
    d1(); // rest until took + REST_FACTOR * took
    await clock.advance(took * PACER_REST_FACTOR - 5);
    await settle();
    expect(second, 'still resting').toBeUndefined();
    await clock.advance(10);
    await settle();
    expect(second, 'rested').toBeDefined();
    second!();
    expect(p.pacedBlocks).toBe(2);
  });

  it('a rest is at most PACER_MAX_REST_MS, and the copier goes full speed once writes stop', async () => {
    const clock = new ManualClock();
    let writes = 0;
    let writing = true;
    const p = new CopyPacer(() => (writing ? ++writes : writes), clock);
    const d1 = await p.before();
    await clock.advance(10_000); // a very slow block
    d1();
    let next: (() => void) | undefined;
    void p.before().then((d) => (next = d));
    await clock.advance(PACER_MAX_REST_MS - 20);
    await settle();
    expect(next).toBeUndefined();
    await clock.advance(30);
    await settle();
    expect(next, 'the rest is capped').toBeDefined();
    next!();
    // No write for longer than the quiet time: idle again, everyone at once.
    writing = false;
    await clock.advance(PACER_QUIET_MS + 1);
    const all = await Promise.all(Array.from({ length: 4 }, () => p.before()));
    expect(all).toHaveLength(4);
    expect(clock.pending, 'nobody waited').toBe(0);
    for (const d of all) d();
  });
});
