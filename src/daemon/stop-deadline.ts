import { EbsdError } from '../util/errors.js';

/**
 * How long a stop may take, from the signal that asked for it (or the stop of a start that
 * failed), before the daemon gives up on it and exits non-zero: 90 s, inside the 120 s
 * TimeoutStopSec of contrib/systemd/ebsd.service, so the daemon says where it was stuck
 * before systemd's SIGKILL would say nothing. A stop that never ends leaves the volumes
 * neither served nor released, which is worse than the exit: attachments stay recorded, and
 * what the drain did not reach is what a crash loses (README, "Durability and the data path").
 */
export const DEFAULT_STOP_TIMEOUT_MS = 90_000;

/**
 * The bound on one stop: armed once, by the first request to stop; `expired` rejects with
 * STOP_TIMEOUT `ms` later, naming the step `where()` says the stop is at. Its timer is
 * referenced: a stop awaiting a promise nothing will settle must still end.
 */
export class StopDeadline {
  private timer: NodeJS.Timeout | undefined;
  private armedBy: string | undefined;
  private expire!: (e: Error) => void;
  readonly expired: Promise<never>;

  constructor(private readonly ms: number, private readonly where: () => string) {
    if (!Number.isInteger(ms) || ms < 1) throw new RangeError(`stop timeout must be a positive whole number of ms, got ${ms}`);
    this.expired = new Promise<never>((_, reject) => (this.expire = reject));
    this.expired.catch(() => {}); // observed through race(); never an unhandled rejection
  }

  /** Start counting; later calls change nothing (the bound runs from the first request). */
  arm(why: string): void {
    if (this.armedBy !== undefined) return;
    this.armedBy = why;
    this.timer = setTimeout(() => {
      this.expire(new EbsdError('STOP_TIMEOUT', `shutdown (${why}) did not finish in ${this.ms / 1000} s: stuck at step "${this.where()}"; exiting without it`));
    }, this.ms);
  }

  /** `p`, or STOP_TIMEOUT if the deadline passes first (never, while unarmed). */
  race<T>(p: Promise<T>): Promise<T> {
    return Promise.race([p, this.expired]);
  }

  /** The stop is over: the timer no longer holds the process. */
  disarm(): void {
    clearTimeout(this.timer);
  }
}
