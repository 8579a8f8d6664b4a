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
 * so again (DESIGN §6). The key itself lives only in the device's XTS
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

  start(): void {
    this.lastGood = Date.now();
    if (this.ttl > 0) this.schedule(this.ttl / 2);
  }

  /** Detach: no more refreshes; waits for one in progress. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.running;
  }

  /** Run one refresh now (tests, `ebsd volume refresh-key`). */
  refreshNow(): Promise<void> {
    this.running ??= this.refreshOnce().finally(() => (this.running = null));
    return this.running;
  }

  private schedule(ms: number): void {
    if (this.stopped || this._impaired) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.refreshNow();
    }, Math.max(10, ms));
    this.timer.unref();
  }

  private async refreshOnce(): Promise<void> {
    if (this.stopped || this._impaired) return;
    let key: Uint8Array | undefined;
    try {
      key = await withTimeout(this.o.refresh(), this.timeout);
      if (this.stopped) return;
      try {
        this.o.verify(key);
      } catch (e) {
        await this.impair('key-mismatch', undefined, (e as Error).message);
        return;
      }
      this.lastGood = Date.now();
      this.schedule(this.ttl / 2);
    } catch (e) {
      if (this.stopped) return;
      const err = e instanceof TimeoutError ? new KeyServiceError('Decrypt', undefined, false, 'KMS did not answer in time') : toKeyServiceError('Decrypt', e);
      if (err.authoritative) {
        await this.impair('kms-refused', err.awsName, err.message);
      } else if (this.staleness >= this.maxStale) {
        await this.impair('kms-unreachable', err.awsName, `no KMS confirmation for ${this.staleness} ms: ${err.message}`);
      } else {
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
