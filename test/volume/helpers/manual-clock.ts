import type { Clock, TimerHandle } from '../../../src/util/clock.js';

/**
 * A clock a test moves by hand (docs/architecture.md §10: time is an input).
 * `advance(ms)` fires every timer that falls due, in time order, setting
 * `now()` to each one's due time and waiting for the promise its callback
 * returns (a refresh, a check round) before the next, so after `advance`
 * everything due by then has happened. A callback that waits on a later
 * timer of this clock would never settle: start such work without awaiting.
 */
export class ManualClock implements Clock {
  private t: number;
  private seq = 0;
  private readonly timers = new Map<number, { at: number; seq: number; fn: () => unknown }>();

  constructor(start = Date.parse('2026-11-30T00:00:00.000Z')) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => unknown, ms: number): TimerHandle {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + Math.max(0, ms), seq: id, fn });
    return { id };
  }

  clearTimeout(h: TimerHandle): void {
    this.timers.delete((h as { id: number }).id);
  }

  /** Timers armed and not yet fired. */
  get pending(): number {
    return this.timers.size;
  }

  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      let next: [number, { at: number; seq: number; fn: () => unknown }] | undefined;
      for (const e of this.timers) if (e[1].at <= end && (!next || e[1].at < next[1].at || (e[1].at === next[1].at && e[1].seq < next[1].seq))) next = e;
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = next[1].at;
      await next[1].fn();
    }
    this.t = end;
  }
}

/** A jitter source that replays: a 32-bit xorshift from `seed` (printed by the test on failure). */
export function seededRandom(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}
