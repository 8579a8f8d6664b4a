/**
 * Counts a device's accepted writes and can hold new ones back while those
 * drain (SnapshotSource.withWritesPaused, docs/architecture.md §3.7). A write
 * is accepted from the moment the device takes it (write(), or writeBehind
 * returning a completion) until its bytes are in the backing file, so a
 * write-behind acknowledged to FUSE is counted until its completion has run.
 *
 * The unpaused fast path is one null check (`held`) and a counter.
 */
export class WritePause {
  /** Resolves when the current pause ends; null when writes may start. */
  held: Promise<void> | null = null;
  private active = 0;
  private drained: (() => void)[] = [];
  /** Resolves when the last pause asked for has ended (pauses run one after another). */
  private tail: Promise<void> = Promise.resolve();

  /** Writes accepted and not yet in the backing file. */
  get accepted(): number {
    return this.active;
  }

  /** A write was accepted (call only while `held` is null). */
  begin(): void {
    this.active++;
  }

  /** An accepted write has reached the backing file (or failed). */
  end(): void {
    if (--this.active === 0 && this.drained.length > 0) for (const r of this.drained.splice(0)) r();
  }

  /**
   * Hold new writes from this call on (synchronously: a write started after
   * it returns is held), wait for every accepted one, run `fn`, release.
   * Reads are not affected. Concurrent calls run one after another, and
   * writes stay held until the last has ended. `fn` must not wait for a
   * write started after this call: that write waits for `fn`.
   */
  run<T>(fn: () => Promise<T> | T): Promise<T> {
    const prev = this.tail;
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    this.tail = mine;
    this.held = mine;
    return (async () => {
      try {
        await prev;
        if (this.active > 0) await new Promise<void>((r) => this.drained.push(r));
        return await fn();
      } finally {
        if (this.held === mine) this.held = null;
        release();
      }
    })();
  }
}
