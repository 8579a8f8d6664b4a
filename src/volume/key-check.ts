import type { Logger } from 'pino';
import type { Caller } from '../kms/types.js';
import { silentLogger } from '../util/logger.js';
import { systemClock, TimeoutError, withTimeout, type Clock, type TimerHandle } from '../util/clock.js';
import { KeyServiceError } from './errors.js';
import { toKeyServiceError, type KeyService } from './key-service.js';
import type { CheckedCache, KeyCheckMembership } from './key-cache.js';

/** ListRetirableGrants pages per round (100 grants each); a list still truncated after them is incomplete. */
const MAX_GRANT_PAGES = 1000;
/** Complete lists in a row without a grant listed before, before its volume is impaired: the list is eventually consistent. */
const GONE_AFTER_MISSES = 2;
/**
 * A grant no round has ever listed (revoked between the attach and the first
 * round) is gone after this many complete lists without it, once the volume has
 * been in the check this long: AWS documents that a new grant may take up to
 * five minutes to show everywhere (eventual consistency), so before that an
 * absence says nothing.
 */
const NEVER_LISTED_MISSES = 3;
const NEVER_LISTED_GRACE_MS = 5 * 60_000;

interface Member {
  volumeId: string;
  keyArn: string;
  grantId: string;
  cache: CheckedCache;
}

export interface KeyCheckOptions {
  ks: KeyService;
  /** The host: the caller of DescribeKey and the retiring principal whose grants are listed. */
  host: Caller;
  ttlMs: number;
  /** Give up on one call after this long and count KMS as unreachable. */
  timeoutMs?: number;
  clock?: Clock;
  /** Jitter source in [0, 1); default Math.random. */
  random?: () => number;
  logger?: Logger;
}

/** What one round learnt, for tests and `ebsd status`. */
export interface KeyCheckRound {
  at: number;
  confirmed: number;
  toDecrypt: number;
  unreachable: number;
  /** False when the host may not list its grants: every volume then decrypts each round. */
  grantsListed: boolean;
  /** Volumes impaired because their grant, listed by an earlier round, was gone from this one and the one before. */
  grantGone: number;
  /** False when the list of grants ended without saying it was whole (truncated without a marker, or the page cap): absences were not judged. */
  grantsComplete: boolean;
}

/**
 * The host's shared key-and-grant check (docs/architecture.md §6.3): once
 * per TTL (drawn from [0.75, 0.9] TTL) one ListRetirableGrants as the host,
 * paged, finds which attach grants still exist, and one DescribeKey per key
 * in use tells whether each key is still Enabled. A volume whose key is
 * Enabled and whose grant is listed is confirmed without a call of its own;
 * any other answer (key not Enabled, DescribeKey refused, grant missing,
 * grants not listable) sends that volume to decrypt through its grant now,
 * and the Decrypt's answer decides, so a refusal impairs with KMS's own
 * exception and a list lagging behind a new grant never impairs anything.
 * One exception: a grant an earlier round listed and two complete lists in a
 * row no longer hold was revoked or retired, and that volume is impaired
 * (`grant-revoked`) without a Decrypt, which a key policy allowing the host
 * kms:Decrypt would let succeed anyway. Two rounds, because
 * ListRetirableGrants is eventually consistent: one missing entry proves
 * nothing. A grant no round ever listed (revoked between the attach and the
 * first round) is judged the same way after NEVER_LISTED_MISSES complete
 * lists without it, once the volume has been in the check five minutes (how
 * long AWS says a new grant may take to show). A list that ends truncated without a marker, or at the page cap,
 * is not complete, and no absence from it counts. KMS not answering
 * makes every member stale; rounds then come every TTL/4 until it answers.
 */
export class KeyCheck {
  private readonly members = new Set<Member>();
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly timeout: number;
  private readonly log: Logger;
  private timer: TimerHandle | null = null;
  private nextAt: number | null = null;
  private running: Promise<void> | null = null;
  private stopped = false;
  private listable = true;
  /** Members whose grant a round has listed: complete lists without it later mean it is gone. */
  private readonly listed = new WeakSet<Member>();
  /** Complete lists in a row that lacked a member's grant (listed before, or never listed). */
  private readonly misses = new WeakMap<Member, number>();
  /** When each member joined the check. */
  private readonly joinedAt = new WeakMap<Member, number>();
  /** Members whose grant names another retiring principal than the host's: never in the lists (membership()). */
  private readonly foreign = new WeakSet<Member>();
  private failing = false;
  /** The last list was whole (logged once when it stops being). */
  private complete = true;
  last: KeyCheckRound | undefined;

  constructor(private readonly o: KeyCheckOptions) {
    this.clock = o.clock ?? systemClock;
    this.random = o.random ?? Math.random;
    this.timeout = o.timeoutMs ?? Math.max(100, Math.min(o.ttlMs / 2, 30_000));
    this.log = o.logger ?? silentLogger;
  }

  /** A key cache's way in: the check it joins for one volume's key and grant. */
  /**
   * `retiringPrincipal`: whom the grant names as retiring principal, when known (the principal
   * recorded at attach). The lists name only the current host's grants, so a grant recorded under
   * another principal (the host changed its identity and restarted) is never in them: it is not
   * judged by its absence, and each round's Decrypt through it decides.
   */
  membership(keyArn: string, grantId: string, retiringPrincipal?: string): KeyCheckMembership {
    const foreign = retiringPrincipal !== undefined && retiringPrincipal !== this.o.host.arn;
    return { keyArn, grantId, join: (m) => this.join(m, foreign) };
  }

  /** Volumes the next round covers. */
  get size(): number {
    return this.members.size;
  }

  /** Run one round now (tests); coalesces with a running one. */
  runNow(): Promise<void> {
    this.running ??= this.round().finally(() => (this.running = null));
    return this.running;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) this.clock.clearTimeout(this.timer);
    this.timer = null;
    this.nextAt = null;
    await this.running;
  }

  private join(m: Member, foreign: boolean): { leave(): void; nextRoundAt(): number | null } {
    this.members.add(m);
    this.joinedAt.set(m, this.clock.now());
    if (foreign) this.foreign.add(m);
    if (!this.timer && !this.running) this.schedule(this.period());
    return {
      leave: () => {
        this.members.delete(m);
        if (this.members.size === 0 && this.timer) {
          this.clock.clearTimeout(this.timer);
          this.timer = null;
          this.nextAt = null;
        }
      },
      nextRoundAt: () => this.nextAt,
    };
  }

  private period(): number {
    return this.o.ttlMs * (0.75 + 0.15 * this.random());
  }

  private schedule(ms: number): void {
    if (this.stopped || this.members.size === 0) return;
    if (this.timer) this.clock.clearTimeout(this.timer);
    const delay = Math.max(10, ms);
    this.nextAt = this.clock.now() + delay;
    this.timer = this.clock.setTimeout(() => {
      this.timer = null;
      this.nextAt = null;
      return this.runNow();
    }, delay);
  }

  private call<T>(op: string, p: () => Promise<T>): Promise<T> {
    return withTimeout(this.clock, p(), this.timeout).catch((e: unknown) => {
      throw e instanceof TimeoutError ? new KeyServiceError(op, undefined, false, 'KMS did not answer in time') : toKeyServiceError(op, e);
    });
  }

  /**
   * Every grant id this host may retire, and whether the list is whole (it
   * ended with Truncated false); null when KMS refuses to list them.
   */
  private async grantIds(): Promise<{ ids: Set<string>; complete: boolean } | null> {
    const list = this.o.ks.listRetirableGrants?.bind(this.o.ks);
    if (!list) return null;
    const ids = new Set<string>();
    let marker: string | undefined;
    let complete = false;
    try {
      for (let page = 0; page < MAX_GRANT_PAGES; page++) {
        const r = await this.call('ListRetirableGrants', () => list({ RetiringPrincipal: this.o.host.arn, Limit: 100, ...(marker ? { Marker: marker } : {}) }, this.o.host));
        for (const g of r.Grants) ids.add(g.GrantId);
        if (!r.Truncated) {
          complete = true;
          break;
        }
        if (!r.NextMarker) break; // truncated, and no way to the rest
        marker = r.NextMarker;
      }
    } catch (e) {
      const err = toKeyServiceError('ListRetirableGrants', e);
      if (!err.authoritative) throw err;
      if (this.listable) this.log.warn({ awsName: err.awsName, message: err.message }, 'the host may not list its grants (kms:ListRetirableGrants): every volume decrypts through its grant each TTL');
      this.listable = false;
      return null;
    }
    if (!this.listable) this.log.info('the host lists its grants again: one shared check per TTL');
    this.listable = true;
    if (!complete && this.complete) this.log.warn({ grants: ids.size }, 'shared key check: the list of attach grants ended truncated without a marker or at the page cap; grants missing from it are not judged');
    this.complete = complete;
    return { ids, complete };
  }

  private async round(): Promise<void> {
    const members = [...this.members];
    if (members.length === 0) return;
    const decrypt: Member[] = [];
    const confirmed: Member[] = [];
    const gone: Member[] = [];
    let goneNow: Member[] = [];
    let unreachable: KeyServiceError | undefined;
    try {
      const grants = await this.grantIds();
      const keys = [...new Set(members.map((m) => m.keyArn))];
      const enabled = new Map<string, boolean>();
      await Promise.all(keys.map(async (k) => {
        try {
          const r = await this.call('DescribeKey', () => this.o.ks.describeKey({ KeyId: k }, this.o.host));
          enabled.set(k, r.KeyMetadata.KeyState === undefined ? r.KeyMetadata.Enabled === true : r.KeyMetadata.KeyState === 'Enabled');
        } catch (e) {
          const err = toKeyServiceError('DescribeKey', e);
          if (!err.authoritative) throw err;
          enabled.set(k, false); // refused: each volume's Decrypt says what it means for it
        }
      }));
      for (const m of members) {
        const seen = grants?.ids.has(m.grantId) === true;
        if (seen) {
          this.listed.add(m);
          this.misses.delete(m);
        } else if (grants?.complete) {
          const n = (this.misses.get(m) ?? 0) + 1;
          this.misses.set(m, n);
          const wasListed = this.listed.has(m);
          if (wasListed ? n >= GONE_AFTER_MISSES : !this.foreign.has(m) && n >= NEVER_LISTED_MISSES && this.clock.now() - (this.joinedAt.get(m) ?? 0) >= NEVER_LISTED_GRACE_MS) {
            gone.push(m);
            continue;
          }
        }
        (enabled.get(m.keyArn) && seen ? confirmed : decrypt).push(m);
      }
    } catch (e) {
      unreachable = toKeyServiceError('DescribeKey', e);
    }
    if (this.stopped) return;
    if (unreachable) {
      if (!this.failing) this.log.warn({ awsName: unreachable.awsName, message: unreachable.message, volumes: members.length }, 'shared key check: KMS unreachable; retrying every TTL/4');
      this.failing = true;
      await Promise.all(members.map((m) => (this.members.has(m) ? m.cache.unreachable(unreachable) : undefined)));
    } else {
      if (this.failing) this.log.info({ volumes: members.length }, 'shared key check: KMS answers again');
      this.failing = false;
      for (const m of confirmed) if (this.members.has(m)) m.cache.confirm();
      // Only members still attached: a volume detached during the round is not impaired.
      goneNow = gone.filter((m) => this.members.has(m));
      const before = goneNow.filter((m) => this.listed.has(m));
      const never = goneNow.filter((m) => !this.listed.has(m));
      if (before.length) this.log.warn({ volumes: before.map((m) => m.volumeId), grantIds: before.map((m) => m.grantId) }, 'shared key check: attach grants listed before are gone (revoked or retired): volumes impaired');
      if (never.length) this.log.warn({ volumes: never.map((m) => m.volumeId), grantIds: never.map((m) => m.grantId) }, 'shared key check: attach grants never listed since the attach are gone (revoked or retired before the first check): volumes impaired');
      await Promise.all(goneNow.map((m) => (this.members.has(m) ? m.cache.grantGone(this.listed.has(m)
        ? `attach grant ${m.grantId} is no longer listed for the host in ${GONE_AFTER_MISSES} complete lists in a row (revoked or retired)`
        : `attach grant ${m.grantId} was never listed for the host: absent from ${this.misses.get(m)} complete lists in a row over ${NEVER_LISTED_GRACE_MS / 60_000} minutes or more since the attach (revoked or retired before the first check)`) : undefined)));
      await Promise.all(decrypt.map((m) => (this.members.has(m) ? m.cache.refreshNow() : undefined)));
    }
    this.last = { at: this.clock.now(), confirmed: confirmed.length, toDecrypt: decrypt.length, unreachable: unreachable ? members.length : 0, grantsListed: this.listable, grantGone: goneNow.length, grantsComplete: this.complete };
    this.schedule(unreachable ? this.o.ttlMs / 4 : this.period());
  }
}
