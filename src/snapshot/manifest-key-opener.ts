import type { Logger } from 'pino';
import { backoffDelayMs } from '../util/backoff.js';
import { systemClock, type Clock, type TimerHandle } from '../util/clock.js';
import { errInfo } from '../volume/errors.js';
import { ManifestKeyUnavailable, type ManifestSigner } from './manifest-mac.js';

/**
 * Opens a ManifestSigner whose first open() met a KMS that did not answer: tries again in the
 * background with the daemon's back-off (src/util/backoff.ts, as src/volume/resume-retry.ts
 * does) until it opens, logging when the kind of failure changes, not per try. Meanwhile every
 * manifest read or write fails with SNAPSHOT_STORE (ManifestSigner.ready). A refusal on a later
 * try (the KMS now answers "no") is logged as an error and ends the retries: the daemon keeps
 * serving volumes, and snapshots fail until it is restarted with a key it may use.
 */
export class ManifestKeyOpener {
  private timer: TimerHandle | null = null;
  private attempt = 0;
  private lastKind: string | undefined;
  private stopped = false;
  private gaveUp = false;
  private refused: { Time: string; LastError: string; AwsName?: string } | undefined;
  private since: number | undefined;
  private lastError = '';
  private running: Promise<void> | null = null;
  private readonly clock: Clock;
  /** Resolves once the signer is open (never, if the retries end first). */
  readonly opened: Promise<void>;
  private resolveOpened!: () => void;

  constructor(private readonly o: { signer: ManifestSigner; open: () => Promise<void>; log: Logger; clock?: Clock; random?: () => number }) {
    this.clock = o.clock ?? systemClock;
    this.opened = new Promise((r) => (this.resolveOpened = r));
  }

  /** Starts the retries after the first open failed with `first`. */
  start(first: ManifestKeyUnavailable): void {
    this.note(first);
    this.schedule();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) this.clock.clearTimeout(this.timer);
    this.timer = null;
    await this.running;
  }

  /** For `ebsd status` while the key is not open: since when, how many tries, the last failure; undefined once open or given up. */
  state(): { Since: string; Attempts: number; LastError: string; AwsName?: string } | undefined {
    if (this.o.signer.keyArn !== undefined || this.gaveUp || this.since === undefined) return undefined;
    return { Since: new Date(this.since).toISOString(), Attempts: this.attempt, LastError: this.lastError, ...(this.lastKind !== 'no answer' && this.lastKind !== undefined ? { AwsName: this.lastKind } : {}) };
  }

  /** For `ebsd status` once a later try met a refusal and the retries ended: when, and what the KMS said; undefined otherwise. */
  refusal(): { Time: string; LastError: string; AwsName?: string } | undefined {
    return this.refused;
  }

  private note(e: unknown): void {
    this.since ??= this.clock.now();
    this.lastError = (e as Error).message;
    const aws = (e as { awsName?: unknown }).awsName;
    const kind = typeof aws === 'string' ? aws : 'no answer';
    if (kind === this.lastKind) return;
    this.lastKind = kind;
    this.o.log.warn({ err: errInfo(e), snapshotManifestKey: this.o.signer.keyId, attempts: this.attempt + 1 }, 'the KMS did not answer for the key of --snapshot-manifest-key: snapshot manifests cannot be read or written until it does; trying again with back-off');
  }

  private schedule(): void {
    if (this.stopped || this.timer) return;
    const ms = backoffDelayMs(++this.attempt, this.o.random);
    this.timer = this.clock.setTimeout(() => {
      this.timer = null;
      this.running = this.tryOnce().finally(() => (this.running = null));
      return this.running;
    }, ms);
    (this.timer as { unref?: () => void }).unref?.();
  }

  private async tryOnce(): Promise<void> {
    if (this.stopped) return;
    try {
      await this.o.open();
    } catch (e) {
      if (this.stopped) return;
      if (e instanceof ManifestKeyUnavailable) {
        this.note(e);
        this.schedule();
        return;
      }
      this.gaveUp = true;
      const aws = (e as { awsName?: unknown }).awsName ?? ((e as { cause?: { awsName?: unknown } }).cause?.awsName);
      this.refused = { Time: new Date(this.clock.now()).toISOString(), LastError: (e as Error).message, ...(typeof aws === 'string' ? { AwsName: aws } : {}) };
      this.o.log.error({ err: errInfo(e), snapshotManifestKey: this.o.signer.keyId }, 'the KMS refused the key of --snapshot-manifest-key: snapshot manifests cannot be read or written; restart the daemon with a key it may use');
      return;
    }
    this.o.log.info({ snapshotManifestKey: this.o.signer.keyArn, attempts: this.attempt + 1 }, 'the key of --snapshot-manifest-key is open: snapshot manifests are signed and verified from now on');
    this.resolveOpened();
  }
}
