import { systemClock, type Clock } from '../util/clock.js';

/** The volume counts as busy for this long after a write was last seen. */
export const PACER_QUIET_MS = 100;
/** While busy, the copier rests this many times as long as its last block took (it takes at most 1/(1+REST) of the time). */
export const PACER_REST_FACTOR = 5;
/** ... but never longer than this at once, so a snapshot of a volume written without pause still finishes. */
export const PACER_MAX_REST_MS = 200;
/** How often a resting copier looks again (a write stopping ends the rest early). */
const PACER_POLL_MS = 10;

/** A monotonic clock for the pacer (timers unref'd, as systemClock's). */
const monotonic: Clock = { ...systemClock, now: () => performance.now() };

/**
 * Paces a snapshot's copier against the volume's foreground writes
 * (docs/architecture.md §12.2). A snapshot is background work; the writes
 * of the volume it copies are not.
 *
 * How it decides: `writes()` is a counter the copy-on-write gate bumps on
 * every write of the volume. The volume is busy while that counter moved
 * within the last PACER_QUIET_MS. Idle, the copier runs as before, every
 * worker at once, no rest: an idle volume's snapshot is not slowed (one
 * counter read and one clock read per block). Busy, one block is in flight
 * at a time, and after each the copier rests PACER_REST_FACTOR times the
 * block's own wall time (at most PACER_MAX_REST_MS): the copier takes at
 * most a sixth of the time, and a slower machine (longer blocks) gets
 * longer rests, without a tuned constant per machine.
 */
export class CopyPacer {
  private seen = 0;
  private busyUntil = -Infinity;
  private inFlight = 0;
  private restUntil = -Infinity;
  /** Workers waiting for the block in flight to be done. */
  private waiting: (() => void)[] = [];
  private resting = false;
  /** Blocks started while the volume was busy (for the log). */
  pacedBlocks = 0;

  constructor(private readonly writes: () => number, private readonly clock: Clock = monotonic) {}

  /** Whether the volume is busy now (a write within the last PACER_QUIET_MS). */
  busy(): boolean {
    const now = this.clock.now();
    const w = this.writes();
    if (w !== this.seen) {
      this.seen = w;
      this.busyUntil = now + PACER_QUIET_MS;
    }
    return now < this.busyUntil;
  }

  /** Awaited by a copier worker before it takes a block; call the returned function when that block is done. */
  async before(): Promise<() => void> {
    for (;;) {
      if (!this.busy()) break;
      const now = this.clock.now();
      if (this.inFlight === 0 && now >= this.restUntil) {
        this.pacedBlocks++;
        break;
      }
      if (this.inFlight > 0 || this.resting) {
        // One timer at most: the block in flight, or the one worker resting, wakes the others.
        await new Promise<void>((r) => this.waiting.push(r));
        continue;
      }
      this.resting = true;
      await new Promise<void>((r) => this.clock.setTimeout(r, Math.max(1, Math.min(this.restUntil - now, PACER_POLL_MS))));
      this.resting = false;
      this.wakeAll();
    }
    this.inFlight++;
    const t0 = this.clock.now();
    return () => {
      this.inFlight--;
      this.wakeAll();
      const now = this.clock.now();
      this.restUntil = Math.max(this.restUntil, now + Math.min((now - t0) * PACER_REST_FACTOR, PACER_MAX_REST_MS));
    };
  }

  private wakeAll(): void {
    for (const r of this.waiting.splice(0)) r();
  }
}
