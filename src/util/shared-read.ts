/**
 * One read shared by every caller for a short time: callers that come while it runs wait for the
 * same answer, and those that come within `reuseMs` after it ended get that answer too; the first
 * one later starts a new read. A read that failed is not kept (the next caller reads again).
 * `now` is injected so a test can move time.
 */
export class SharedRead<T> {
  private running: Promise<T> | undefined;
  private kept: { at: number; value: T } | undefined;

  constructor(private readonly read: () => Promise<T>, private readonly reuseMs: number, private readonly now: () => number = Date.now) {
    if (!Number.isFinite(reuseMs) || reuseMs < 0) throw new RangeError(`reuseMs must be a finite number >= 0, got ${reuseMs}`);
  }

  get(): Promise<T> {
    if (this.kept && this.now() - this.kept.at < this.reuseMs) return Promise.resolve(this.kept.value);
    if (this.running) return this.running;
    const r = this.read();
    this.running = r;
    r.then(
      (value) => { if (this.running === r) { this.running = undefined; this.kept = { at: this.now(), value }; } },
      () => { if (this.running === r) this.running = undefined; },
    );
    return r;
  }
}
