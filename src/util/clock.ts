/**
 * Time as an input: what reads the time or arms a timer takes a `Clock`, so
 * a test can drive it with a manual clock instead of waiting on the wall
 * clock (docs/architecture.md §10). Timers from `systemClock` are unref'd:
 * a pending refresh never keeps the process alive.
 */
export interface Clock {
  now(): number;
  /** `fn` may return a promise: a manual clock waits for it before firing the next timer; the system clock ignores it. */
  setTimeout(fn: () => unknown, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
}

/** Opaque: whatever the clock's setTimeout returned. */
export type TimerHandle = { readonly __timer?: never } | object;

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** Race `p` against the clock: rejects with TimeoutError after `ms`. */
export function withTimeout<T>(clock: Clock, p: Promise<T>, ms: number): Promise<T> {
  let t: TimerHandle | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, rej) => {
      t = clock.setTimeout(() => rej(new TimeoutError(`no answer in ${ms} ms`)), ms);
    }),
  ]).finally(() => {
    if (t !== undefined) clock.clearTimeout(t);
  });
}

export class TimeoutError extends Error {
  override readonly name = 'TimeoutError';
}

/**
 * The longest delay a Node timer keeps: setTimeout turns a larger one into 1 ms
 * (Node.js API, timers: "When delay is larger than 2147483647 or less than 1,
 * the delay will be set to 1"). About 596.5 hours (24.8 days).
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;
