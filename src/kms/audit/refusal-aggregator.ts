/**
 * Repeated refusals of one caller become one event with a count, so a flood
 * of refused requests costs a bounded number of audit bytes per window.
 *
 * The first `burst` refusals (default 5) of a (caller, operation, reason)
 * key in a window are written at once, exactly as unaggregated events, so an
 * occasional refusal reads as CloudTrail would record it. Further repeats
 * within the window are only counted; when the window closes (or on `flush()`: seal,
 * close), one more event records them, carrying
 * `additionalEventData.aggregated = { count, firstTime, lastTime, windowSeconds }`
 * in the way CloudTrail carries service-specific extras (CloudTrail record
 * contents, `additionalEventData`). `count` is the number of refusals that
 * event stands for, beyond those already written one by one.
 *
 * At most `maxKeys` keys are tracked per window; refusals under further keys
 * are folded into one overflow row (eventName `RefusalsOverflow`). Per window
 * that bounds the events written to (burst + 1) x maxKeys + 1, whatever the caller sends.
 */
import { randomUUID } from 'node:crypto';

export interface RefusalAggregatorOptions {
  windowMs?: number;
  maxKeys?: number;
  /** Refusals per key and window written one by one before counting starts. */
  burst?: number;
  clock?: () => number;
  /** Write one event (the audit log's droppable path). */
  write: (event: Record<string, unknown>) => Promise<void>;
}

interface Row {
  /** The newest refused event of this key: the summary repeats its fields. */
  last: Record<string, unknown>;
  count: number;
  /** Written one by one so far in this window. */
  written: number;
  firstTime: number;
  lastTime: number;
}

export const DEFAULT_REFUSAL_WINDOW_MS = 10_000;
export const DEFAULT_REFUSAL_KEYS = 64;
export const DEFAULT_REFUSAL_BURST = 5;
const OVERFLOW = '\0overflow';

export class RefusalAggregator {
  private rows = new Map<string, Row>();
  private timer: NodeJS.Timeout | undefined;
  private readonly windowMs: number;
  private readonly maxKeys: number;
  private readonly burst: number;
  private readonly clock: () => number;

  constructor(private readonly o: RefusalAggregatorOptions) {
    this.windowMs = o.windowMs ?? DEFAULT_REFUSAL_WINDOW_MS;
    this.maxKeys = o.maxKeys ?? DEFAULT_REFUSAL_KEYS;
    this.burst = o.burst ?? DEFAULT_REFUSAL_BURST;
    this.clock = o.clock ?? Date.now;
  }

  /**
   * Record one refusal. Resolves when its event is written (within the
   * burst) or counted (a repeat past it). `event` is built only when it will be used.
   */
  add(key: string, event: () => Record<string, unknown>): Promise<void> {
    const now = this.clock();
    let k = key;
    if (!this.rows.has(k) && this.rows.size >= this.maxKeys) k = OVERFLOW;
    const row = this.rows.get(k);
    if (row && k !== OVERFLOW && row.written < this.burst) {
      row.written++;
      return this.o.write(event());
    }
    if (row) {
      row.count++;
      row.lastTime = now;
      if (row.count % 64 === 1) row.last = event(); // refresh the sample now and then, not on every call
      return Promise.resolve();
    }
    const ev = event();
    if (k === OVERFLOW) {
      ev.eventName = 'RefusalsOverflow';
      this.rows.set(k, { last: ev, count: 1, written: 0, firstTime: now, lastTime: now });
      this.arm();
      return Promise.resolve();
    }
    this.rows.set(k, { last: ev, count: 0, written: 1, firstTime: now, lastTime: now });
    this.arm();
    return this.o.write(ev);
  }

  /**
   * Write the summaries of the window now and start a new window. Every
   * write is handed to `write` before this returns (no await in between), so
   * a caller holding the log's write turn can write them itself.
   */
  flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const rows = [...this.rows.entries()];
    this.rows = new Map();
    const writes: Promise<void>[] = [];
    for (const [k, r] of rows) {
      if (r.count === 0) continue;
      const ev: Record<string, unknown> = { ...r.last, eventID: randomUUID() };
      if (k === OVERFLOW) ev.eventName = 'RefusalsOverflow';
      const extra = (ev.additionalEventData && typeof ev.additionalEventData === 'object' ? ev.additionalEventData : {}) as Record<string, unknown>;
      ev.additionalEventData = {
        ...extra,
        aggregated: {
          count: r.count,
          firstTime: new Date(r.firstTime).toISOString(),
          lastTime: new Date(r.lastTime).toISOString(),
          windowSeconds: this.windowMs / 1000,
        },
      };
      ev.eventTime = new Date(r.lastTime).toISOString().replace(/\.\d{3}Z$/, 'Z');
      writes.push(this.o.write(ev));
    }
    return Promise.all(writes).then(() => {});
  }

  /** Refusals counted but not yet written, for status and tests. */
  pending(): number {
    let n = 0;
    for (const r of this.rows.values()) n += r.count;
    return n;
  }

  private arm(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => { this.timer = undefined; void this.flush().catch(() => {}); }, this.windowMs);
    this.timer.unref();
  }
}
