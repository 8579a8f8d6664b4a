/**
 * Turns for KMS calls, shared fairly between callers (docs/architecture.md
 * §5.7).
 *
 * Every call, from the network listener, the control socket or the daemon's
 * own volume service, enters the core through one gate. At most `maxActive`
 * calls are in the core at once (authorizing, in the HSM, waiting for their
 * audit record). Past that, calls wait in one queue per caller, and a freed
 * turn goes to the callers in rotation: each caller with calls waiting gets
 * the next turn once before any caller gets a second. A caller here is a
 * party (kms-core.ts keys turns by caller-party.ts): a session's turns are
 * its origin's, so minting sessions does not multiply them. So one caller with
 * thousands of pipelined Decrypts (128 connections x 32 in flight from one
 * address is 4,096) adds at most one call's wait per turn to another
 * caller's, where a single FIFO would put the other caller behind all of
 * them.
 *
 * Nothing is refused here: what a caller can queue is bounded by the
 * transports (connections and requests in flight, kms-transport.ts and
 * connection-guard.ts). Below the limit a call passes straight through.
 */

export class FairGate {
  private active = 0;
  /** Callers with calls waiting, in rotation order (a Map keeps insertion order); each queue is FIFO. */
  private readonly waiting = new Map<string, (() => void)[]>();
  private queued = 0;

  constructor(readonly maxActive: number) {
    if (!Number.isInteger(maxActive) || maxActive < 1) throw new RangeError(`maxActive must be a positive integer, not ${maxActive}`);
  }

  /** Calls in the core now, and calls waiting for a turn. */
  get load(): { active: number; waiting: number; callers: number } {
    return { active: this.active, waiting: this.queued, callers: this.waiting.size };
  }

  /** Run `f` in a turn of `caller`'s; the turn passes on when `f` settles, whether it resolves or throws. */
  async run<T>(caller: string, f: () => Promise<T>): Promise<T> {
    if (this.active < this.maxActive && this.queued === 0) this.active++;
    else await this.turn(caller);
    try {
      return await f();
    } finally {
      this.pass();
    }
  }

  private turn(caller: string): Promise<void> {
    return new Promise<void>((resolve) => {
      const q = this.waiting.get(caller);
      if (q) q.push(resolve);
      else this.waiting.set(caller, [resolve]);
      this.queued++;
    });
  }

  /** A call left the core: its turn goes to the caller first in rotation, who then moves to the back. */
  private pass(): void {
    const next = this.waiting.entries().next();
    if (next.done) {
      this.active--;
      return;
    }
    const [caller, q] = next.value;
    const wake = q.shift()!;
    this.waiting.delete(caller);
    if (q.length > 0) this.waiting.set(caller, q);
    this.queued--;
    wake(); // the turn changes hands: `active` stays as it is
  }
}
