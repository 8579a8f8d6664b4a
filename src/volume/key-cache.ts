import type { Logger } from 'pino';
import { silentLogger } from '../util/logger.js';
import { wipe } from '../util/wipe.js';
import { VolumeError, KeyServiceError } from './errors.js';
import { toKeyServiceError } from './key-service.js';

export const DEFAULT_KEY_CACHE_TTL_MS = 300_000;
export const DEFAULT_KEY_CACHE_MAX_STALE_MS = 3_600_000;

/** Why a volume stopped serving I/O. */
export interface ImpairedEvent {
  volumeId: string;
  /** `kms-refused` (authoritative no), `kms-unreachable` (past max-stale), `key-mismatch`. */
  reason: 'kms-refused' | 'kms-unreachable' | 'key-mismatch';
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
  /** Last successful unwrap (attach or refresh) confirmed against the LUKS2 digest. */
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

export interface KeyCacheOptions {
  volumeId: string;
  /** 0 = hold the key until detach (EBS behaviour): no refresh at all. */
  ttlMs?: number;
  /** How long an unreachable KMS is ridden out after the last good answer. */
  maxStaleMs?: number;
  /** Give up on one refresh call after this long and count it as unreachable. */
  refreshTimeoutMs?: number;
  /** Unwrap the key again through the grant, as the host. */
  refresh: () => Promise<Uint8Array>;
  /** Throws if the refreshed key is not the volume's key (LUKS2 digest). */
  verify: (key: Uint8Array) => void;
  onImpaired?: (ev: ImpairedEvent) => void;
  logger?: Logger;
}

/**
 * Bounds how long an unwrapped volume key stays usable without KMS saying
 * so again (docs/architecture.md §6.3). The key itself lives only in the device's XTS
 * context (set once at attach, destroyed on impairment or detach); this
 * cache holds no copy. It re-unwraps through the grant every TTL/2 in the
 * background, so a refusal is seen within one TTL and I/O never waits on
 * KMS. A refresh only confirms: the new plaintext is checked against the
 * LUKS2 digest and wiped at once.
 */
export class KeyCache {
  private readonly ttl: number;
  private readonly maxStale: number;
  private readonly timeout: number;
  private readonly log: Logger;
  private timer: NodeJS.Timeout | null = null;
  private lastGood = Date.now();
  private stopped = false;
  private _impaired: ImpairedEvent | null = null;
  private running: Promise<void> | null = null;
  private nextAt: number | null = null;
  private staleSince: number | null = null;
  private lastError: { awsName?: string; message: string } | null = null;

  constructor(private readonly device: KeyedDevice, private readonly o: KeyCacheOptions) {
    this.ttl = o.ttlMs ?? DEFAULT_KEY_CACHE_TTL_MS;
    this.maxStale = Math.max(o.maxStaleMs ?? DEFAULT_KEY_CACHE_MAX_STALE_MS, this.ttl);
    this.timeout = o.refreshTimeoutMs ?? Math.max(100, Math.min(this.ttl / 2, 30_000));
    this.log = o.logger ?? silentLogger;
  }

  get impaired(): ImpairedEvent | null {
    return this._impaired;
  }

  /** Milliseconds since KMS last confirmed the key. */
  get staleness(): number {
    return Date.now() - this.lastGood;
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
    return {
      state,
      lastUnwrap: iso(this.lastGood),
      ...(this.nextAt !== null && !imp && !this.stopped ? { nextRefresh: iso(this.nextAt) } : {}),
      ...(this.ttl > 0 && !imp ? { expiresAt: iso(this.lastGood + this.maxStale) } : {}),
      ...(this.staleSince !== null ? { staleSince: iso(this.staleSince) } : {}),
      ...(this.lastError && this.staleSince !== null ? { lastError: { ...this.lastError } } : {}),
      ...(imp ? { impaired: { ...imp } } : {}),
      ttlMs: this.ttl,
      maxStaleMs: this.maxStale,
    };
  }

  start(): void {
    this.lastGood = Date.now();
    if (this.ttl > 0) this.schedule(this.ttl / 2);
  }

  /** Detach: no more refreshes; waits for one in progress. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.nextAt = null;
    await this.running;
  }

  /** Run one refresh now (tests, `ebsd volume refresh-key`). */
  refreshNow(): Promise<void> {
    this.running ??= this.refreshOnce().finally(() => (this.running = null));
    return this.running;
  }

  private schedule(ms: number): void {
    if (this.stopped || this._impaired) return;
    const delay = Math.max(10, ms);
    this.nextAt = Date.now() + delay;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.nextAt = null;
      void this.refreshNow();
    }, delay);
    this.timer.unref();
  }

  private async refreshOnce(): Promise<void> {
    if (this.stopped || this._impaired) return;
    let key: Uint8Array | undefined;
    const pending = this.o.refresh();
    try {
      key = await withTimeout(pending, this.timeout);
      if (this.stopped) return;
      try {
        this.o.verify(key);
      } catch (e) {
        await this.impair('key-mismatch', undefined, (e as Error).message);
        return;
      }
      this.lastGood = Date.now();
      if (this.staleSince !== null) this.log.info({ volumeId: this.o.volumeId, staleMs: this.lastGood - this.staleSince }, 'key refresh succeeded again; KMS reachable');
      this.staleSince = null;
      this.lastError = null;
      this.schedule(this.ttl / 2);
    } catch (e) {
      // A refresh that timed out may still deliver a key later: wipe it when it comes.
      if (e instanceof TimeoutError) pending.then((late) => wipe(late), () => {});
      if (this.stopped) return;
      const err = e instanceof TimeoutError ? new KeyServiceError('Decrypt', undefined, false, 'KMS did not answer in time') : toKeyServiceError('Decrypt', e);
      if (err.authoritative) {
        await this.impair('kms-refused', err.awsName, err.message);
      } else if (this.staleness >= this.maxStale) {
        await this.impair('kms-unreachable', err.awsName, `no KMS confirmation for ${this.staleness} ms: ${err.message}`);
      } else {
        this.staleSince ??= Date.now();
        this.lastError = { ...(err.awsName ? { awsName: err.awsName } : {}), message: err.message };
        this.log.warn({ volumeId: this.o.volumeId, awsName: err.awsName, staleMs: this.staleness }, 'key refresh failed; KMS unreachable, keeping key until max-stale');
        this.schedule(Math.min(this.ttl / 4, this.maxStale - this.staleness));
      }
    } finally {
      wipe(key); // best effort: KMS client and GC may hold copies
    }
  }

  private async impair(reason: ImpairedEvent['reason'], awsName: string | undefined, message: string): Promise<void> {
    if (this._impaired) return;
    const ev: ImpairedEvent = { volumeId: this.o.volumeId, reason, ...(awsName ? { awsName } : {}), message, time: new Date().toISOString() };
    this._impaired = ev;
    if (this.timer) clearTimeout(this.timer);
    this.nextAt = null;
    this.log.error({ volumeId: ev.volumeId, reason, awsName }, 'volume impaired: I/O disabled and volume key wiped');
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

class TimeoutError extends Error {}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([
    p,
    new Promise<never>((_, rej) => {
      t = setTimeout(() => rej(new TimeoutError('timeout')), ms);
      t.unref();
    }),
  ]).finally(() => clearTimeout(t));
}
