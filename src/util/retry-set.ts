import { systemClock, type Clock, type TimerHandle } from './clock.js';

export interface RetrySetOptions<V> {
  /**
   * Tries one item again: true when it is done with (it leaves the set), false
   * to keep it for the next pass. A caller catches and logs its own failures,
   * as it knows what they mean; one that throws anyway keeps its item, as false
   * does (a background pass has nobody to reject to: the rejection would end
   * the process).
   */
  attempt: (key: string, value: V) => Promise<boolean>;
  /** The wait before a pass, at first and again after a pass that settled something. */
  firstMs: number;
  /** Each pass that settles nothing doubles the wait, up to this; default `firstMs` (a fixed period). */
  maxMs?: number;
  /** Default the system clock (its timers unref'd); tests drive a manual one. */
  clock?: Clock;
}

/**
 * Work a daemon tries again in the background until each item is done with
 * (a grant to retire, a snapshot marker to settle): by key, one timer armed
 * while any item waits, one pass over all of them at a time, the next timer
 * armed when a pass ends. The wait doubles after a pass that settled nothing
 * (up to maxMs) and starts over once one settles something, so an outage is
 * not polled hard while it lasts and the next one starts from the short wait.
 * close() stops the retries and waits for a pass under way; what is left
 * stays listed (`keys`), for the caller to report or leave to the next start.
 */
export class RetrySet<V> {
  private readonly items = new Map<string, V>();
  private readonly clock: Clock;
  private readonly firstMs: number;
  private readonly maxMs: number;
  private delayMs: number;
  private timer: TimerHandle | undefined;
  /** The pass under way, if any (close() waits for it). */
  private pass: Promise<void> | undefined;
  private closed = false;

  constructor(private readonly o: RetrySetOptions<V>) {
    if (!(o.firstMs > 0)) throw new RangeError(`firstMs: ${o.firstMs} is not a positive delay`);
    if (o.maxMs !== undefined && !(o.maxMs >= o.firstMs)) throw new RangeError(`maxMs: ${o.maxMs} is below firstMs ${o.firstMs}`);
    this.clock = o.clock ?? systemClock;
    this.firstMs = o.firstMs;
    this.maxMs = o.maxMs ?? o.firstMs;
    this.delayMs = o.firstMs;
  }

  /** `key` is tried again at the next pass, with `value` (replacing one it had). Once closed it is only listed. */
  add(key: string, value: V): void {
    this.items.set(key, value);
    this.arm();
  }

  /** The keys still waiting, in the order they were added. */
  get keys(): string[] {
    return [...this.items.keys()];
  }

  get size(): number {
    return this.items.size;
  }

  /** No more passes; waits for the one under way, which stops before its next item. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
    await this.pass;
  }

  private arm(): void {
    if (this.closed || this.timer !== undefined || this.pass || this.items.size === 0) return;
    const delay = this.delayMs;
    this.delayMs = Math.min(delay * 2, this.maxMs);
    this.timer = this.clock.setTimeout(() => {
      this.timer = undefined;
      this.pass = this.runPass().finally(() => {
        this.pass = undefined;
        this.arm();
      });
      return this.pass; // a manual clock waits for the pass
    }, delay);
  }

  private async runPass(): Promise<void> {
    let settled = false;
    for (const [key, value] of [...this.items]) {
      if (this.closed) return;
      if (!(await this.o.attempt(key, value).catch(() => false))) continue;
      this.items.delete(key);
      settled = true;
    }
    if (settled || this.items.size === 0) this.delayMs = this.firstMs;
  }
}
