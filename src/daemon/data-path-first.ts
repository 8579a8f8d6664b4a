/**
 * The volume data path before callers' KMS calls on the daemon's main thread
 * (docs/architecture.md §3.6, §5.7).
 *
 * FUSE requests, routing and every cipher run up to 128 KiB run on the event
 * loop; so do SigV4, the KMS core and audit of every call from the network
 * listener and the control socket. A flood of KMS calls took the loop and the
 * cores from the data path: fio on an attached volume kept 9-10 % of its speed
 * (24-32 % with the listener's TLS and HTTP on its worker thread) while the
 * HTTPS listener served 6,200-7,300 Decrypt/s (docs/benchmarks.md, "The
 * data path while the KMS is loaded"). So while the data path is busy (busy():
 * a FUSE request arrived within the last BUSY_WINDOW_MS, or one runs) callers'
 * calls are admitted at most `ratePerSecond`, in turns per source as the core's FairGate takes
 * them per party: one source's thousands of queued calls add at most one
 * call's wait per turn to another source's. When the data path is idle every
 * call passes straight through, with no promise and no timer.
 *
 * Nothing is refused here: what a source can queue is bounded by the
 * transports (connections, requests in flight per connection, body budget).
 * The daemon's own KMS calls (attach, key refresh, snapshots) do not come
 * through here: they serve the data path.
 */

/** A FUSE request within this long ago: the data path is busy. */
export const BUSY_WINDOW_MS = 10;
/** A FUSE request running counts as busy only while requests moved within this long (not a stuck one). */
export const STUCK_MS = 1000;
/** Callers' calls admitted per second while the data path is busy (`--kms-rate-while-io-busy`): docs/benchmarks.md, "The data path while the KMS is loaded". */
export const KMS_RATE_WHILE_IO_BUSY = 250;
/**
 * How often queued calls are let through while the data path is busy, a tick's worth at once: one wake-up of
 * the loop and of the KMS's threads per 10 ms, not per call (docs/benchmarks.md, "The data path while the KMS
 * is loaded": the first trials at 1 ms kept less of fio's speed at the same rate).
 */
const TICK_MS = 10;

export interface DataPathFirstOptions {
  /** FUSE requests received since start (any monotonic count). */
  requests: () => number;
  /** FUSE requests running now. */
  inFlight: () => number;
  /** Calls admitted per second while the data path is busy; 0: no limit. */
  ratePerSecond: number;
  now?: () => number;
}

export class DataPathFirst {
  private lastCount: number;
  private lastChangeAt = -Infinity;
  private checkedAt = -Infinity;
  private movedAt = -Infinity;
  private closed = false;
  private tokens: number;
  private refilledAt: number;
  private readonly burst: number;
  private readonly now: () => number;
  /** Sources with calls waiting, in rotation order; each queue FIFO. */
  private readonly waiting = new Map<string, (() => void)[]>();
  private queued = 0;
  private timer: NodeJS.Timeout | undefined;
  /** Calls that waited for a turn since start (metrics, tests). */
  held = 0;

  constructor(private readonly o: DataPathFirstOptions) {
    if (!Number.isInteger(o.ratePerSecond) || o.ratePerSecond < 0) throw new RangeError(`ratePerSecond must be a whole number >= 0, not ${o.ratePerSecond}`);
    this.now = o.now ?? (() => performance.now());
    // A tick's worth of calls at once (at least one).
    this.burst = Math.max(1, Math.ceil((o.ratePerSecond * TICK_MS) / 1000));
    this.tokens = this.burst;
    this.refilledAt = this.now();
    this.lastCount = o.requests();
  }

  /** Calls waiting for a turn now. */
  get waitingCalls(): number {
    return this.queued;
  }

  /**
   * Whether the data path is busy: a FUSE request arrived within the last BUSY_WINDOW_MS, or one runs
   * now and requests moved within STUCK_MS (a request that never completes, a hung backing file, does
   * not pace callers for good). The count is read only here: while calls wait, the ticks read it
   * continuously, so any move since the last read is recent however late the tick ran; otherwise a
   * move seen after more than two windows may be old and counts only with a request running now.
   */
  busy(): boolean {
    const t = this.now();
    const n = this.o.requests();
    if (n !== this.lastCount) {
      const recent = this.queued > 0 || t - this.checkedAt <= 2 * BUSY_WINDOW_MS;
      this.lastCount = n;
      this.movedAt = t;
      if (recent || this.o.inFlight() > 0) this.lastChangeAt = t;
    }
    this.checkedAt = t;
    return t - this.lastChangeAt < BUSY_WINDOW_MS || (this.o.inFlight() > 0 && t - this.movedAt < STUCK_MS);
  }

  /**
   * undefined: go now. Otherwise a promise that resolves when `source`'s turn
   * comes (never rejects).
   */
  admit(source: string): Promise<void> | undefined {
    if (this.o.ratePerSecond === 0 || this.closed) return undefined;
    if (this.queued === 0 && (!this.busy() || this.take())) return undefined;
    this.held++;
    const p = new Promise<void>((resolve) => {
      const q = this.waiting.get(source);
      if (q) q.push(resolve);
      else this.waiting.set(source, [resolve]);
      this.queued++;
    });
    this.schedule();
    return p;
  }

  /** Stop: every waiting call goes now, and every later one at once (the daemon is stopping; its transports answer or drop them). */
  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    while (this.queued > 0) this.release();
  }

  private take(): boolean {
    const t = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((t - this.refilledAt) * this.o.ratePerSecond) / 1000);
    this.refilledAt = t;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  private schedule(): void {
    if (this.timer !== undefined || this.queued === 0) return;
    this.timer = setTimeout(this.tick, TICK_MS);
  }

  private readonly tick = (): void => {
    this.timer = undefined;
    if (!this.busy()) {
      while (this.queued > 0) this.release();
      return;
    }
    while (this.queued > 0 && this.take()) this.release();
    this.schedule();
  };

  /** The next turn goes to the source first in rotation, which then moves to the back. */
  private release(): void {
    const next = this.waiting.entries().next();
    if (next.done) return;
    const [source, q] = next.value;
    const wake = q.shift()!;
    this.waiting.delete(source);
    if (q.length > 0) this.waiting.set(source, q);
    this.queued--;
    wake();
  }
}
