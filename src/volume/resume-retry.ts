import type { Logger } from 'pino';
import { backoffDelayMs } from '../util/backoff.js';
import { systemClock, type Clock, type TimerHandle } from '../util/clock.js';
import { silentLogger } from '../util/logger.js';
import { KeyServiceError, errInfo } from './errors.js';
import { isNoSpace } from '../util/errors.js';

/**
 * Volumes recorded attached whose re-attach after a restart failed because
 * the KMS did not answer (unreachable, throttled, an internal error: a
 * KeyServiceError that is not authoritative, key-service.ts) are re-attached
 * again in the background with back-off (src/util/backoff.ts) until the KMS
 * answers, as a host waiting for STS at start is (src/daemon/host-resolver.ts).
 * So are those that failed because the state dir's disk is full (ENOSPC or EDQUOT making
 * the image's attach lock, volume/attach-lock.ts): the audit log keeps a reserve so that
 * attached volumes keep working on a full disk (README, "Security model", Full disk), and a
 * restart (the watchdog's, an upgrade's) must not leave them unserved once space returns.
 * A refusal (AccessDenied, a disabled key, a revoked grant) is not retried:
 * the volume stays recorded attached and unserved until detached, as before.
 * Tries are logged when the kind of failure changes, not per retry. Only
 * the back-off starts a round: `ebsd status` reads the state and never
 * triggers one (`ebsd top` asks every second).
 */

/** What `ebsd status` shows for a volume waiting here. */
export interface ResumeWaiting {
  Since: string;
  Attempts: number;
  NextTryTime?: string;
  /** The AWS exception of the last failure, when KMS named one (ThrottlingException, KMSInternalException). */
  AwsName?: string;
  LastError: string;
  /** True when the last failure was the state dir's disk being full (not the KMS). */
  DiskFull?: boolean;
}

export interface ResumeOutcome {
  resumed: string[];
  failed: { volumeId: string; error: unknown }[];
}

export interface ResumeRetryOptions {
  /** Re-attach these volumes (Attachments.resumeAttachments); a volume no longer recorded attached here is in neither list. */
  resume: (volumeIds: ReadonlySet<string>) => Promise<ResumeOutcome>;
  logger?: Logger;
  clock?: Clock;
  random?: () => number;
}

/** True when the failure means "KMS did not answer" (or "no room on disk") rather than "no": worth trying again. */
export function isTransientResumeFailure(e: unknown): boolean {
  return resumeFailureKind(e) !== undefined;
}

/** `kms`: the KMS did not answer; `disk`: the state dir's disk is full; undefined: not worth retrying. */
export function resumeFailureKind(e: unknown): 'kms' | 'disk' | undefined {
  for (let x = e as { cause?: unknown; code?: unknown } | undefined, depth = 0; x && depth < 8; x = x.cause as typeof x, depth++) {
    if (x instanceof KeyServiceError) return x.authoritative ? undefined : 'kms';
    if (x.code === 'VOLUME_NO_SPACE' || isNoSpace(x)) return 'disk';
  }
  return undefined;
}

interface Entry {
  since: number;
  attempts: number;
  awsName?: string;
  lastError: string;
  diskFull: boolean;
}

export class ResumeRetry {
  private readonly waiting = new Map<string, Entry>();
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly random: () => number;
  private timer: TimerHandle | null = null;
  private nextTry: number | null = null;
  private round = 0;
  private running: Promise<void> | null = null;
  private stopped = false;

  constructor(private readonly o: ResumeRetryOptions) {
    this.log = o.logger ?? silentLogger;
    this.clock = o.clock ?? systemClock;
    this.random = o.random ?? Math.random;
  }

  /**
   * The failures of a resume round: the transient ones are retried, the
   * others left as they are. Returns the volume ids now waiting.
   */
  add(failed: ResumeOutcome['failed']): string[] {
    const now = this.clock.now();
    const added: string[] = [];
    const noRoom: string[] = [];
    for (const f of failed) {
      const kind = resumeFailureKind(f.error);
      if (kind === undefined) continue;
      const info = errInfo(f.error);
      this.waiting.set(f.volumeId, { since: now, attempts: 1, ...(typeof info.awsName === 'string' ? { awsName: info.awsName } : {}), lastError: String(info.message ?? 'KMS did not answer'), diskFull: kind === 'disk' });
      (kind === 'disk' ? noRoom : added).push(f.volumeId);
    }
    if (added.length) this.log.warn({ volumeIds: added }, 'KMS did not answer the re-attach of volumes recorded attached: retrying with back-off until it does');
    if (noRoom.length) this.log.warn({ volumeIds: noRoom }, "the state dir's disk is full: volumes recorded attached could not be re-attached; retrying with back-off until there is room");
    added.push(...noRoom);
    if (added.length && !this.timer && !this.running) this.schedule();
    return added;
  }

  /** The volume's retry, for status; undefined when it is not waiting here. */
  state(volumeId: string): ResumeWaiting | undefined {
    const e = this.waiting.get(volumeId);
    if (!e) return undefined;
    return {
      Since: new Date(e.since).toISOString(), Attempts: e.attempts,
      ...(this.nextTry !== null ? { NextTryTime: new Date(this.nextTry).toISOString() } : {}),
      ...(e.awsName ? { AwsName: e.awsName } : {}), LastError: e.lastError, ...(e.diskFull ? { DiskFull: true } : {}),
    };
  }

  get size(): number {
    return this.waiting.size;
  }

  /** Runs one round now (tests); resolves when it is done. */
  async tryNow(): Promise<void> {
    if (this.running) return this.running;
    if (this.timer) this.clock.clearTimeout(this.timer);
    this.timer = null;
    this.nextTry = null;
    this.start();
    await this.running;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) this.clock.clearTimeout(this.timer);
    this.timer = null;
    this.nextTry = null;
    await this.running;
  }

  private start(): void {
    this.running = this.tryOnce().finally(() => {
      this.running = null;
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.stopped || !this.waiting.size || this.timer) return;
    const ms = backoffDelayMs(++this.round, this.random);
    this.nextTry = this.clock.now() + ms;
    this.timer = this.clock.setTimeout(() => {
      this.timer = null;
      this.nextTry = null;
      this.start();
      return this.running;
    }, ms);
    (this.timer as { unref?: () => void }).unref?.();
  }

  private async tryOnce(): Promise<void> {
    if (this.stopped || !this.waiting.size) return;
    const ids = new Set(this.waiting.keys());
    let out: ResumeOutcome;
    try {
      out = await this.o.resume(ids);
    } catch (e) {
      this.log.error({ err: errInfo(e) }, 'could not retry the re-attach of volumes recorded attached; trying again');
      return;
    }
    if (this.stopped) return;
    for (const id of out.resumed) {
      const e = this.waiting.get(id);
      this.waiting.delete(id);
      this.log.info({ volumeId: id, attempts: (e?.attempts ?? 0) + 1, waitedMs: e ? this.clock.now() - e.since : undefined }, e?.diskFull ? 'room on the disk again: volume recorded attached is served again' : 'KMS answers: volume recorded attached is served again');
    }
    const failed = new Map(out.failed.map((f) => [f.volumeId, f.error]));
    for (const id of ids) {
      if (out.resumed.includes(id)) continue;
      const e = this.waiting.get(id)!;
      const err = failed.get(id);
      if (!failed.has(id)) {
        // Detached or deleted meanwhile: nothing left to re-attach.
        this.waiting.delete(id);
        continue;
      }
      const kind = resumeFailureKind(err);
      if (kind === undefined) {
        this.waiting.delete(id);
        this.log.error({ volumeId: id, err: errInfo(err) }, 'KMS refused the re-attach: the volume stays recorded attached and unserved (detach it)');
        continue;
      }
      const info = errInfo(err);
      const msg = String(info.message ?? 'KMS did not answer');
      if (info.awsName !== e.awsName || (kind === 'disk') !== e.diskFull) this.log.warn({ volumeId: id, err: info }, 're-attach still failing; retrying');
      e.attempts++;
      e.lastError = msg;
      e.diskFull = kind === 'disk';
      if (typeof info.awsName === 'string') e.awsName = info.awsName; else delete e.awsName;
    }
    if (!this.waiting.size) this.round = 0;
  }
}
