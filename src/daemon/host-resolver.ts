import type { Caller } from '../kms/types.js';
import { backoffDelayMs } from '../util/backoff.js';
import { EbsdError } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { AwsKeyService } from '../volume/aws-key-service.js';
import { isUnreachable } from '../volume/unreachable.js';
import { errInfo } from '../volume/errors.js';

/** EC2's server error for a temporary failure; volume operations get it while the host waits for its KMS. */
export class KmsNotYetReachable extends EbsdError {
  readonly httpStatus = 503;
  constructor(message: string) {
    super('KMS_NOT_YET_REACHABLE', message, { awsName: 'ServiceUnavailable' });
  }
}

/** What `ebsd status` shows while the host waits (Daemon.Kms.Waiting). */
export interface WaitingForKms {
  Since: string;
  Attempts: number;
  NextTryTime?: string;
  LastError: string;
}

/**
 * A host daemon whose KMS (or STS) does not answer at start still comes up
 * (docs/architecture.md §8): the mount and the control socket serve, status
 * says what it waits for, and this asks STS who the host is again with
 * back-off (1 s doubling to 30 s, jittered) until it answers; then
 * `onResolved` opens the volumes and re-attaches the recorded ones through
 * their stored grants. Failed tries are logged once, not per retry.
 */
export class HostResolver {
  private readonly since = Date.now();
  private attempts = 1;
  private lastError: string;
  private timer: NodeJS.Timeout | undefined;
  private nextTry: number | undefined;
  private stopped = false;
  private running: Promise<void> | undefined;
  private resolved = false;
  private lastTry = Date.now();

  constructor(
    private readonly ks: AwsKeyService,
    private readonly log: Logger,
    private readonly onResolved: (host: Caller) => Promise<void>,
    first: unknown,
  ) {
    this.lastError = (first as Error)?.message ?? String(first);
    log.warn({ kmsEndpoint: ks.endpoint, err: errInfo(first) }, 'KMS unreachable at start: serving the mount and status; asking again with back-off, recorded volumes are re-attached when it answers');
    this.schedule();
  }

  /** True once the host principal is known and the volumes are open. */
  get done(): boolean {
    return this.resolved;
  }

  waiting(): WaitingForKms | undefined {
    if (this.resolved) return undefined;
    return {
      Since: new Date(this.since).toISOString(), Attempts: this.attempts, LastError: this.lastError,
      ...(this.nextTry !== undefined ? { NextTryTime: new Date(this.nextTry).toISOString() } : {}),
    };
  }

  /** The error a volume operation gets meanwhile. */
  refusal(op: string): KmsNotYetReachable {
    this.nudge();
    return new KmsNotYetReachable(`ebsd.${op}: this host's KMS at ${this.ks.endpoint} has not answered since ${new Date(this.since).toISOString()} (${this.attempts} tries; last: ${this.lastError}); volume operations resume when it does (ebsd status)`);
  }

  /**
   * Someone asked (`ebsd status`, a refused volume operation): try now rather
   * than at the end of a back-off of up to 30 s, at most once a second.
   */
  nudge(): void {
    if (this.stopped || this.resolved || this.running || Date.now() - this.lastTry < 1000) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.nextTry = undefined;
    this.running = this.tryOnce().finally(() => (this.running = undefined));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
  }

  private schedule(): void {
    if (this.stopped) return;
    const ms = backoffDelayMs(this.attempts);
    this.nextTry = Date.now() + ms;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.nextTry = undefined;
      this.running = this.tryOnce().finally(() => (this.running = undefined));
    }, ms);
    this.timer.unref();
  }

  private async tryOnce(): Promise<void> {
    if (this.stopped) return;
    this.attempts++;
    this.lastTry = Date.now();
    let host: Caller;
    try {
      host = await this.ks.hostPrincipal();
    } catch (e) {
      const msg = (e as Error)?.message ?? String(e);
      // A new kind of failure (credentials refused now, say) is worth a line; the same one again is not.
      if (msg !== this.lastError && !isUnreachable(e)) this.log.warn({ kmsEndpoint: this.ks.endpoint, err: errInfo(e) }, 'host principal still unresolved');
      this.lastError = msg;
      this.schedule();
      return;
    }
    if (this.stopped) return;
    try {
      await this.onResolved(host);
      this.resolved = true;
      this.log.info({ kmsEndpoint: this.ks.endpoint, hostPrincipal: host.arn, attempts: this.attempts, waitedMs: Date.now() - this.since }, 'KMS answers: host principal resolved, volumes open');
    } catch (e) {
      this.lastError = (e as Error)?.message ?? String(e);
      this.log.error({ err: errInfo(e) }, 'could not open the volumes after the KMS answered; trying again');
      this.schedule();
    }
  }
}
