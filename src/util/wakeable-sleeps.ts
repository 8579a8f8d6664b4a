/**
 * Sleeps a shutdown ends early: the shared-store waits of a snapshot copy and of CompleteSnapshot
 * (src/snapshot/copy.ts, src/snapshot/ebs-direct.ts), which a close() must not outlast.
 */
export class WakeableSleeps {
  private readonly wakers = new Set<() => void>();

  /** Resolves after `ms`, or as soon as wakeAll() is called meanwhile. */
  sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.wakers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakers.add(done);
    });
  }

  /** Ends every sleep under way. */
  wakeAll(): void {
    for (const wake of [...this.wakers]) wake();
  }
}
