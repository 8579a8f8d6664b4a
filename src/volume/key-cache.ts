import type { Logger } from 'pino';
import { silentLogger } from '../util/logger.js';
import { wipe } from '../util/wipe.js';
import { VolumeError, KeyServiceError } from './errors.js';
import { toKeyServiceError, type CallOptions } from './key-service.js';
import { MAX_TIMER_MS, systemClock, TimeoutError, withTimeout, type Clock, type TimerHandle } from '../util/clock.js';

export const DEFAULT_KEY_CACHE_TTL_MS = 300_000;
export const DEFAULT_KEY_CACHE_MAX_STALE_MS = 3_600_000;
/** With a shared key check, each volume still decrypts through its grant about every this many TTLs. */
export const DEFAULT_FULL_REFRESH_TTLS = 4;

/** Why a volume stopped serving I/O. */
export interface ImpairedEvent {
  volumeId: string;
  /** `kms-refused` (authoritative no), `kms-unreachable` (past max-stale), `key-mismatch`. */
  reason: 'kms-refused' | 'kms-unreachable' | 'key-mismatch' | 'grant-revoked';
  /** The KMS exception, when KMS gave one. */
  awsName?: string;
  message: string;
  time: string;
}

/**
 * What `ebsd status` shows per attached encrypted volume (docs/architecture.md §6.3):
 *   cached             KMS confirmed the key within the TTL; next refresh scheduled
 *   refreshing         a refresh through the grant is running now
 *   stale              KMS did not answer (since `staleSince`); key kept until `expiresAt`
 *   impaired           the key was withdrawn (`impaired` says why); I/O fails with EIO
 *   held-until-detach  TTL 0: unwrapped once at attach, held until detach (EBS behaviour)
 */
export type KeyCacheStateName = 'cached' | 'refreshing' | 'stale' | 'impaired' | 'held-until-detach';

export interface KeyCacheState {
  state: KeyCacheStateName;
  /**
   * Last time KMS confirmed the key: an unwrap (attach or refresh) checked
   * against the LUKS2 digest, or the shared key-and-grant check (key-check.ts).
   */
  lastUnwrap: string;
  /** When the next refresh is due; absent when none is scheduled (TTL 0, impaired, running now). */
  nextRefresh?: string;
  /** Max-stale deadline: without a KMS confirmation by then the volume becomes impaired. Absent for TTL 0. */
  expiresAt?: string;
  /** First failed refresh since the last good one (KMS unreachable). */
  staleSince?: string;
  /** The AWS exception (or timeout) of the last failed refresh, while stale. */
  lastError?: { awsName?: string; message: string };
  impaired?: ImpairedEvent;
  ttlMs: number;
  maxStaleMs: number;
}

/** What the cache guards: the attached device holding the key schedule. */
export interface KeyedDevice {
  fail(err: VolumeError, after?: () => void | Promise<void>): Promise<void>;
  wipeKey(): void;
}

/**
 * What a shared check (key-check.ts) tells one volume's cache after each of
 * its rounds: KMS confirmed the key and the grant, KMS could not be asked,
 * or something changed and the volume must decrypt through its grant to
 * learn what (the Decrypt's answer decides, never the check's).
 */
export interface CheckedCache {
  confirm(): void;
  unreachable(err: KeyServiceError): Promise<void>;
  refreshNow(): Promise<void>;
  /** The volume's attach grant, listed by an earlier round, is gone from a complete list: revoked or retired by someone else. */
  grantGone(message: string): Promise<void>;
}

/** A shared check a cache joins at start and leaves at stop. */
export interface KeyCheckMembership {
  join(m: { volumeId: string; keyArn: string; grantId: string; cache: CheckedCache }): { leave(): void; nextRoundAt(): number | null };
  readonly keyArn: string;
  readonly grantId: string;
}

export interface KeyCacheOptions {
  volumeId: string;
  /** 0 = hold the key until detach (EBS behaviour): no refresh at all. */
  ttlMs?: number;
  /** How long an unreachable KMS is ridden out after the last good answer. */
  maxStaleMs?: number;
  /** Give up on one refresh call after this long and count it as unreachable. */
  refreshTimeoutMs?: number;
  /** Unwrap the key again through the grant, as the host; `opts` passes through to the KeyService. */
  refresh: (opts?: CallOptions) => Promise<Uint8Array>;
  /** Throws if the refreshed key is not the volume's key (LUKS2 digest). */
  verify: (key: Uint8Array) => void;
  onImpaired?: (ev: ImpairedEvent) => void;
  logger?: Logger;
  /** Time and timers; default the system clock. */
  clock?: Clock;
  /** Jitter source in [0, 1); default Math.random. */
  random?: () => number;
  /**
   * The host's shared key-and-grant check (key-check.ts). With it the cache
   * decrypts through its grant only about every `fullRefreshTtls` TTLs and
   * whenever the check asks; without it, about once per TTL.
   */
  check?: KeyCheckMembership;
  fullRefreshTtls?: number;
}

type Health = 'ok' | 'stale' | 'impaired';

/**
 * Bounds how long an unwrapped volume key stays usable without KMS saying
 * so again (docs/architecture.md §6.3). The key itself lives only in the device's XTS
 * context (set once at attach, destroyed on impairment or detach); this
 * cache holds no copy. KMS confirms the key at least once per TTL, in the
 * background, so a refusal is seen within one TTL and I/O never waits on
 * KMS: by the host's shared key-and-grant check when there is one (one
 * DescribeKey per key and one ListRetirableGrants per host cover every
 * volume), else by a Decrypt through the grant. A Decrypt only confirms:
 * the new plaintext is checked against the LUKS2 digest and wiped at once.
 * Each transition (ok -> stale, stale -> ok, -> impaired) is logged once,
 * not once per failed retry.
 */
export class KeyCache implements CheckedCache {
  private readonly ttl: number;
  private readonly maxStale: number;
  private readonly timeout: number;
  private readonly fullEvery: number;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly random: () => number;
  private timer: TimerHandle | null = null;
  /** Armed while stale: impairs at max-stale unless KMS confirms first. */
  private deadline: TimerHandle | null = null;
  private lastGood: number;
  private stopped = false;
  private _impaired: ImpairedEvent | null = null;
  private running: Promise<void> | null = null;
  private nextAt: number | null = null;
  private staleSince: number | null = null;
  private lastError: { awsName?: string; message: string } | null = null;
  private membership: { leave(): void; nextRoundAt(): number | null } | null = null;

  constructor(private readonly device: KeyedDevice, private readonly o: KeyCacheOptions) {
    this.ttl = o.ttlMs ?? DEFAULT_KEY_CACHE_TTL_MS;
    this.maxStale = Math.max(o.maxStaleMs ?? DEFAULT_KEY_CACHE_MAX_STALE_MS, this.ttl);
    // The max-stale deadline is one timer; past MAX_TIMER_MS Node would fire it after 1 ms.
    if (this.maxStale > MAX_TIMER_MS) throw new RangeError(`maxStaleMs and ttlMs must be at most ${MAX_TIMER_MS} ms, got ${this.maxStale}`);
    this.timeout = o.refreshTimeoutMs ?? Math.max(100, Math.min(this.ttl / 2, 30_000));
    this.fullEvery = this.ttl * (o.fullRefreshTtls ?? DEFAULT_FULL_REFRESH_TTLS);
    this.log = o.logger ?? silentLogger;
    this.clock = o.clock ?? systemClock;
    this.random = o.random ?? Math.random;
    this.lastGood = this.clock.now();
  }

  get impaired(): ImpairedEvent | null {
    return this._impaired;
  }

  /** Milliseconds since KMS last confirmed the key. */
  get staleness(): number {
    return this.clock.now() - this.lastGood;
  }

  private get health(): Health {
    return this._impaired ? 'impaired' : this.staleSince !== null ? 'stale' : 'ok';
  }

  /** A snapshot for status displays; no key material. */
  state(): KeyCacheState {
    const iso = (t: number): string => new Date(t).toISOString();
    const imp = this._impaired;
    const state: KeyCacheStateName = imp
      ? 'impaired'
      : this.staleSince !== null
        ? 'stale'
        : this.running
          ? 'refreshing'
          : this.ttl === 0
            ? 'held-until-detach'
            : 'cached';
    const round = this.membership?.nextRoundAt() ?? null;
    const next = [this.nextAt, round].filter((x): x is number => x !== null);
    return {
      state,
      lastUnwrap: iso(this.lastGood),
      ...(next.length && !imp && !this.stopped ? { nextRefresh: iso(Math.min(...next)) } : {}),
      ...(this.ttl > 0 && !imp ? { expiresAt: iso(this.lastGood + this.maxStale) } : {}),
      ...(this.staleSince !== null ? { staleSince: iso(this.staleSince) } : {}),
      ...(this.lastError && this.staleSince !== null ? { lastError: { ...this.lastError } } : {}),
      ...(imp ? { impaired: { ...imp } } : {}),
      ttlMs: this.ttl,
      maxStaleMs: this.maxStale,
    };
  }

  start(): void {
    this.lastGood = this.clock.now();
    if (this.ttl === 0) return;
    const c = this.o.check;
    if (c) {
      this.membership = c.join({ volumeId: this.o.volumeId, keyArn: c.keyArn, grantId: c.grantId, cache: this });
      // Spread over the period, so a burst of attaches does not decrypt in step.
      this.schedule(this.fullEvery * (0.25 + 0.75 * this.random()));
    } else {
      this.schedule(this.period());
    }
  }

  /** Detach: no more refreshes; waits for one in progress. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.membership?.leave();
    this.membership = null;
    if (this.timer) this.clock.clearTimeout(this.timer);
    this.timer = null;
    this.nextAt = null;
    this.clearDeadline();
    await this.running;
  }

  private clearDeadline(): void {
    if (this.deadline) this.clock.clearTimeout(this.deadline);
    this.deadline = null;
  }

  /** Run one refresh (Decrypt through the grant) now: the shared check, tests, `ebsd volume refresh-key`. */
  refreshNow(): Promise<void> {
    this.running ??= this.refreshOnce().finally(() => (this.running = null));
    return this.running;
  }

  /** The shared check confirmed the key's state and this volume's grant. */
  confirm(): void {
    if (this.stopped || this._impaired) return;
    this.good();
  }

  /**
   * The shared check saw this volume's grant listed, then a complete list
   * without it: impaired without a Decrypt, whose success would prove nothing
   * when the key policy itself allows the host kms:Decrypt (older policies;
   * the README's no longer does, docs/architecture.md §6.3).
   */
  async grantGone(message: string): Promise<void> {
    if (this.stopped || this._impaired) return;
    await this.impair('grant-revoked', undefined, message);
  }

  /** The shared check could not reach KMS: ride it out until max-stale. */
  async unreachable(err: KeyServiceError): Promise<void> {
    if (this.stopped || this._impaired) return;
    await this.failedReach(err);
  }

  /**
   * Between own refreshes: about once per TTL without a shared check (drawn
   * from [0.75, 0.9] TTL, so volumes attached together drift apart and a
   * refusal is still seen within one TTL), about every `fullRefreshTtls`
   * TTLs with one.
   */
  private period(): number {
    const base = this.membership ? this.fullEvery : this.ttl * 0.9;
    return base * (this.membership ? 0.75 + 0.25 * this.random() : 0.75 / 0.9 + (0.15 / 0.9) * this.random());
  }

  private schedule(ms: number): void {
    if (this.stopped || this._impaired) return;
    if (this.timer) this.clock.clearTimeout(this.timer);
    // At most MAX_TIMER_MS (4 TTLs between full refreshes can exceed it): a refresh early rather than after 1 ms.
    const delay = Math.min(MAX_TIMER_MS, Math.max(10, ms));
    this.nextAt = this.clock.now() + delay;
    this.timer = this.clock.setTimeout(() => {
      this.timer = null;
      this.nextAt = null;
      return this.refreshNow();
    }, delay);
  }

  private good(): void {
    const now = this.clock.now();
    if (this.staleSince !== null) this.log.info({ volumeId: this.o.volumeId, staleMs: now - this.staleSince }, 'KMS confirms the key again: stale -> cached');
    this.lastGood = now;
    this.staleSince = null;
    this.lastError = null;
    this.clearDeadline();
  }

  private async failedReach(err: KeyServiceError, lastTry = false): Promise<void> {
    if (lastTry) {
      await this.impair('kms-unreachable', err.awsName, `no KMS confirmation for ${this.staleness} ms: ${err.message}`);
      return;
    }
    this.lastError = { ...(err.awsName ? { awsName: err.awsName } : {}), message: err.message };
    if (this.staleSince === null) {
      this.staleSince = this.clock.now();
      this.log.warn({ volumeId: this.o.volumeId, awsName: err.awsName, message: err.message, maxStaleMs: this.maxStale }, 'KMS unreachable: cached -> stale, keeping the key until max-stale');
    }
    // Max-stale is a deadline, not whenever the next retry happens to fail; a
    // failure found past it (a late round) brings the deadline's last try forward.
    if (!this.deadline) {
      this.deadline = this.clock.setTimeout(() => {
        this.deadline = null;
        if (this.staleSince === null || this.stopped) return;
        return this.lastTry();
      }, Math.max(0, this.lastGood + this.maxStale - this.clock.now()));
    }
  }

  /**
   * At the max-stale deadline: one Decrypt that goes out even through an open
   * circuit (whose open period, doubling while probes fail, may outlast the
   * outage), so a KMS that came back before the deadline keeps the volume.
   * Impaired only if this try fails too; it is bounded by the refresh timeout
   * (docs/architecture.md §6.3).
   */
  private async lastTry(): Promise<void> {
    await this.running;
    if (this.staleSince === null || this.stopped || this._impaired) return;
    this.running = this.refreshOnce({ bypassCircuit: true }).finally(() => (this.running = null));
    await this.running;
  }

  private async refreshOnce(opts?: CallOptions): Promise<void> {
    if (this.stopped || this._impaired) return;
    let key: Uint8Array | undefined;
    const pending = this.o.refresh(opts);
    try {
      key = await withTimeout(this.clock, pending, this.timeout);
      if (this.stopped) return;
      try {
        this.o.verify(key);
      } catch (e) {
        await this.impair('key-mismatch', undefined, (e as Error).message);
        return;
      }
      this.good();
      this.schedule(this.period());
    } catch (e) {
      // A refresh that timed out may still deliver a key later: wipe it when it comes.
      if (e instanceof TimeoutError) pending.then((late) => wipe(late), () => {});
      if (this.stopped) return;
      const err = e instanceof TimeoutError ? new KeyServiceError('Decrypt', undefined, false, 'KMS did not answer in time') : toKeyServiceError('Decrypt', e);
      if (err.authoritative) {
        await this.impair('kms-refused', err.awsName, err.message);
        return;
      }
      await this.failedReach(err, opts?.bypassCircuit === true);
      // Retry sooner while stale; with a shared check, its rounds retry for us.
      this.schedule(this.membership ? this.period() : Math.min(this.ttl / 4, Math.max(0, this.maxStale - this.staleness)));
    } finally {
      wipe(key); // best effort: KMS client and GC may hold copies
    }
  }

  private async impair(reason: ImpairedEvent['reason'], awsName: string | undefined, message: string): Promise<void> {
    if (this._impaired) return;
    const ev: ImpairedEvent = { volumeId: this.o.volumeId, reason, ...(awsName ? { awsName } : {}), message, time: new Date(this.clock.now()).toISOString() };
    const from = this.health;
    this._impaired = ev;
    this.clearDeadline();
    if (this.timer) this.clock.clearTimeout(this.timer);
    this.timer = null;
    this.nextAt = null;
    this.membership?.leave();
    this.membership = null;
    this.log.error({ volumeId: ev.volumeId, reason, awsName, from }, `volume impaired (${from} -> impaired): I/O disabled and volume key wiped`);
    await this.device.fail(
      new VolumeError('VOLUME_IMPAIRED', `volume ${ev.volumeId} is impaired (${reason}${awsName ? `: ${awsName}` : ''})`),
      () => this.device.wipeKey(),
    );
    try {
      this.o.onImpaired?.(ev);
    } catch (e) {
      this.log.warn({ volumeId: ev.volumeId, err: e }, 'onImpaired callback threw');
    }
  }
}
