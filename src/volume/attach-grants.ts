import type { Logger } from 'pino';
import type { Caller } from '../kms/types.js';
import type { KeyedMutex } from '../util/lock.js';
import type { Catalog, VolumeRecord } from './catalog.js';
import { GRANT_CONSISTENCY_MS, listAllRetirableGrants, toKeyServiceError, type KeyService } from './key-service.js';
import { errInfo } from './errors.js';
import { opGrantInstance } from './op-grants.js';
import { systemClock, type Clock } from '../util/clock.js';
import { RetrySet } from '../util/retry-set.js';

/** Grants named so belong to an attachment: `ebsd-attach-<instance id>-<volume id>`. */
export const ATTACH_GRANT_PREFIX = 'ebsd-attach-';

/**
 * The attach grant's name. It carries the host's InstanceId because hosts
 * sharing one IAM role share the retiring principal, so ListRetirableGrants
 * shows each of them every host's grants (docs/architecture.md §6.2).
 */
export function attachGrantName(instanceId: string, volumeId: string): string {
  return `${ATTACH_GRANT_PREFIX}${instanceId}-${volumeId}`;
}

/** What an attach grant's name says: whose (undefined: the old `ebsd-attach-<vol>`, which names no host) and which volume. */
function parseAttachGrantName(name: string | undefined): { instanceId?: string; volumeId: string } | undefined {
  if (!name?.startsWith(ATTACH_GRANT_PREFIX)) return undefined;
  const rest = name.slice(ATTACH_GRANT_PREFIX.length);
  const m = /^(?:(i-[0-9a-zA-Z]+)-)?(vol-[0-9a-f]+)$/.exec(rest);
  if (!m) return undefined;
  return { ...(m[1] ? { instanceId: m[1] } : {}), volumeId: m[2]! };
}

type PendingGrant = NonNullable<VolumeRecord['pendingGrantRetirements']>[number];

export interface AttachGrantsOptions {
  /** How long after KMS did not answer a retirement (or a CreateGrant) it is tried again, and again while it does not. */
  retryMs: number;
  /** Time and timers of those retries (tests drive them); default the system's. */
  clock?: Clock;
}

/**
 * Retirement of attach grants (the `[Decrypt]` grants attach creates for the
 * host): one at a time at detach, the ones a failed detach left pending,
 * and the ones a crash left with no attachment at all. Every retirement is
 * made as the host, the grants' retiring principal.
 *
 * A grant KMS may still hold while nothing here uses it, because KMS did not
 * answer (a RetireGrant at detach or after a failed attach; a CreateGrant whose
 * answer was lost, so that KMS made a grant this host never learnt the id of),
 * is tried again every `retryMs` until KMS answers (retryLater), as OpGrants
 * does for op grants (docs/architecture.md §6.2): otherwise a `[Decrypt]` grant
 * of a volume no longer attached here would stay live until the next start or
 * the next attach of that volume, however long the KMS has been back.
 */
export class AttachGrants {
  /** Volumes whose grants are tried again in the background (retryLater). */
  private readonly unsettled: RetrySet<true>;
  /**
   * Of those, the ones to sweep for grants made for them that nobody heard of (a CreateGrant KMS
   * did not answer, a deleted volume), each with the time before which a complete sweep that finds
   * nothing does not end it: KMS grants are eventually consistent (GRANT_CONSISTENCY_MS).
   */
  private readonly sweepPending = new Map<string, number>();
  /** Pending retirements of volumes deleted meanwhile (their record is gone): still retired by token. */
  private readonly unrecorded = new Map<string, PendingGrant[]>();
  private readonly clock: Clock;

  constructor(
    private readonly ks: KeyService,
    private readonly host: Caller,
    private readonly instanceId: string,
    private readonly catalog: Catalog,
    private readonly mutex: KeyedMutex,
    private readonly log: Logger,
    o: AttachGrantsOptions,
  ) {
    if (!(o.retryMs > 0)) throw new RangeError(`retryMs: ${o.retryMs} is not a positive delay`);
    this.clock = o.clock ?? systemClock;
    this.unsettled = new RetrySet({
      attempt: (volumeId) => this.settle(volumeId),
      firstMs: o.retryMs, // maxMs unset: a fixed period
      ...(o.clock ? { clock: o.clock } : {}),
    });
  }

  /**
   * Try `volumeId`'s grants again in the background until KMS answers: its recorded
   * pendingGrantRetirements (or `grants`, those of a volume whose record is deleted), and
   * with `sweep` any grant named for this host and volume that its record does not hold
   * (retireOrphans). `sweep: 'lost-create'` (a CreateGrant KMS did not answer) keeps
   * sweeping for GRANT_CONSISTENCY_MS even when a list finds nothing, as a grant just
   * made may not be listed yet.
   */
  retryLater(volumeId: string, o: { sweep: boolean | 'lost-create'; grants?: readonly PendingGrant[] }): void {
    if (o.sweep) {
      const until = o.sweep === 'lost-create' ? this.clock.now() + GRANT_CONSISTENCY_MS : 0;
      this.sweepPending.set(volumeId, Math.max(until, this.sweepPending.get(volumeId) ?? 0));
    }
    if (o.grants?.length) this.unrecorded.set(volumeId, [...(this.unrecorded.get(volumeId) ?? []), ...o.grants]);
    this.unsettled.add(volumeId, true);
  }

  /** Volumes whose grants are still to be retried (tests, logs). */
  get unsettledVolumeIds(): string[] {
    return this.unsettled.keys;
  }

  /** Stop retrying; what is left stays recorded (pending retirements) or is found by the next start's sweep. */
  async close(): Promise<void> {
    await this.unsettled.close();
    if (this.unsettled.size) {
      const grantIds = [...this.unrecorded.values()].flat().map((g) => g.grantId);
      this.log.warn({ volumeIds: this.unsettledVolumeIds, ...(grantIds.length ? { grantIds } : {}) }, 'attach grants still to be retired at close; the next start retries them (those of deleted volumes: its sweep by name)');
    }
  }

  /** One retry of `volumeId`, under its mutex (an attach under way holds it, so its new grant is never taken for a stray). True when nothing is left. Never throws. */
  private async settle(volumeId: string): Promise<boolean> {
    try {
      return await this.mutex.run(volumeId, async () => {
        const rec = this.catalog.get(volumeId);
        if (rec?.pendingGrantRetirements?.length) await this.retirePending(rec);
        const kept = this.unrecorded.get(volumeId);
        if (kept) {
          const left: PendingGrant[] = [];
          for (const g of kept) if (!(await this.retireOne(volumeId, g, 'retry'))) left.push(g);
          if (left.length) this.unrecorded.set(volumeId, left);
          else this.unrecorded.delete(volumeId);
        }
        const pendingLeft = !!this.catalog.get(volumeId)?.pendingGrantRetirements?.length || this.unrecorded.has(volumeId);
        const until = this.sweepPending.get(volumeId);
        if (until !== undefined) {
          const r = await this.sweep(volumeId, true);
          if (!r.complete) return false;
          // A list that may not show the grant yet (eventual consistency) does not end the sweep.
          if (!r.refused && !r.retired.length && this.clock.now() < until) return false;
          this.sweepPending.delete(volumeId);
        }
        if (!pendingLeft) this.log.info({ volumeId }, 'attach grants KMS did not answer for earlier are settled');
        return !pendingLeft;
      });
    } catch (e) {
      this.log.warn({ volumeId, err: errInfo(e) }, 'retrying the retirement of attach grants failed; trying again');
      return false;
    }
  }


  /**
   * RetireGrant as the host (the grant's retiring principal), by grant token
   * when we have it: the token names the grant without a key lookup, so a
   * grant that is already gone answers NotFoundException (by KeyId+GrantId
   * the core authorizes first, and the host, allowed only by the grant
   * itself, gets AccessDeniedException once the grant is revoked).
   *
   * True when retrying is pointless: retired now, or KMS answered with an
   * authoritative refusal (grant revoked or already retired, key deleted,
   * denied). False only when KMS did not answer, so the grant may still be
   * live and a later retry can succeed.
   */
  async retireOne(volumeId: string, g: { grantId: string; keyArn: string; grantToken?: string }, when: string): Promise<boolean> {
    try {
      await this.ks.retireGrant(g.grantToken ? { GrantToken: g.grantToken } : { KeyId: g.keyArn, GrantId: g.grantId }, this.host);
      return true;
    } catch (e) {
      const err = toKeyServiceError('RetireGrant', e);
      if (err.authoritative) {
        const gone = err.awsName === 'NotFoundException' || err.awsName === 'InvalidGrantIdException' || err.awsName === 'InvalidGrantTokenException';
        this.log[gone ? 'info' : 'warn']({ volumeId, grantId: g.grantId, when, awsName: err.awsName }, gone ? 'attach grant already gone' : 'KMS refused RetireGrant; not retrying (revoke the grant as the account if it still exists)');
        return true;
      }
      this.log.warn({ volumeId, grantId: g.grantId, when, err: errInfo(err) }, 'RetireGrant failed; grant kept for a later retry');
      return false;
    }
  }

  /** Retry the grant retirements a failed detach left on `rec`; updates the catalog. Never throws for KMS errors. */
  async retirePending(rec: VolumeRecord): Promise<void> {
    const before = rec.pendingGrantRetirements ?? [];
    const left: NonNullable<VolumeRecord['pendingGrantRetirements']> = [];
    for (const g of before) if (!(await this.retireOne(rec.volumeId, g, 'retry'))) left.push(g);
    if (left.length === before.length) return;
    if (left.length) rec.pendingGrantRetirements = left;
    else delete rec.pendingGrantRetirements;
    await this.catalog.put(rec);
  }

  /**
   * Retire every attach grant a failed detach left behind (runs at open, and
   * per volume before its next attach). Returns the grant ids still pending.
   */
  async retirePendingGrants(): Promise<string[]> {
    const still: string[] = [];
    for (const r of this.catalog.list()) {
      if (!r.pendingGrantRetirements?.length) continue;
      await this.mutex.run(r.volumeId, async () => {
        const rec = this.catalog.get(r.volumeId);
        if (!rec) return;
        await this.retirePending(rec);
        still.push(...(rec.pendingGrantRetirements ?? []).map((g) => g.grantId));
        if (rec.pendingGrantRetirements?.length) this.retryLater(rec.volumeId, { sweep: false });
      });
    }
    return still;
  }

  /**
   * Retire the attach grants no attachment holds: a crash between CreateGrant
   * and the catalog write leaves one; so does a delete of a volume whose
   * grant retirement kept failing. Found by ListRetirableGrants as the host
   * (grants whose retiring principal is this host's principal), matched by
   * name against the catalog, retired by id as the host. Only this host's
   * own grants are candidates: `ebsd-attach-<this instance>-<vol>`, and the
   * old `ebsd-attach-<vol>` (made before names carried the instance) when
   * `<vol>` is in this host's catalog. Hosts sharing one IAM role see each
   * other's grants in the list; another instance's grants, and old-format
   * grants of volumes this host does not know, are left alone (they may be
   * another host's live attachments). `onlyVolumeId` limits the sweep to one
   * volume (DeleteVolume). Returns the grant ids retired. Never throws for
   * KMS errors: a sweep that cannot list is logged and retried at the next start.
   *
   * The whole sweep (no `onlyVolumeId`: at open, before any create, restore or
   * copy runs) also retires this host's op grants, `ebsd-op-<this instance>-…`
   * (op-grants.ts): each lives only while one step runs, so any found then was
   * left by a crash.
   */
  async retireOrphans(onlyVolumeId?: string): Promise<string[]> {
    return (await this.sweep(onlyVolumeId)).retired;
  }

  /** retireOrphans, telling also whether it is `complete`: listed to the end, and KMS answered every retirement. */
  private async sweep(onlyVolumeId?: string, retrying = false): Promise<{ retired: string[]; complete: boolean; refused?: true }> {
    const orphans: { volumeId: string; grantId: string; keyArn: string }[] = [];
    let unattributed = 0;
    let listed: Awaited<ReturnType<typeof listAllRetirableGrants>>;
    try {
      listed = await listAllRetirableGrants(this.ks, this.host);
    } catch (e) {
      const err = toKeyServiceError('ListRetirableGrants', e);
      if (err.authoritative) {
        // A host that may not list its grants (no kms:ListRetirableGrants) never will by retrying: done.
        this.log.warn({ volumeId: onlyVolumeId, awsName: err.awsName }, 'KMS refused ListRetirableGrants: attach grants without an attachment cannot be found by name (allow kms:ListRetirableGrants, or revoke them as the account)');
        return { retired: [], complete: true, refused: true };
      }
      // A background retry fails every retryMs while KMS is away: not a line each time.
      if (retrying) this.log.debug({ volumeId: onlyVolumeId, err: errInfo(e) }, 'could not list the host\'s retirable grants; trying again');
      else this.log.warn({ err: errInfo(e) }, 'could not list the host\'s retirable grants; attach grants without an attachment stay until the next start');
      return { retired: [], complete: false };
    }
    if (!listed) return { retired: [], complete: true };
    for (const g of listed.grants) {
      if (onlyVolumeId === undefined && opGrantInstance(g.Name) === this.instanceId) {
        orphans.push({ volumeId: '', grantId: g.GrantId, keyArn: g.KeyId });
        continue;
      }
      const n = parseAttachGrantName(g.Name);
      if (!n) continue;
      if (onlyVolumeId !== undefined && n.volumeId !== onlyVolumeId) continue;
      if (n.instanceId !== undefined && n.instanceId !== this.instanceId) continue; // another host's
      const rec = this.catalog.get(n.volumeId);
      if (n.instanceId === undefined && !rec) {
        unattributed++;
        continue;
      }
      const held = rec?.state === 'in-use' && !rec.detaching && rec.attachment?.grantId === g.GrantId;
      if (!held) orphans.push({ volumeId: n.volumeId, grantId: g.GrantId, keyArn: g.KeyId });
    }
    if (unattributed) this.log.info({ grants: unattributed }, 'attach grants named the old way (ebsd-attach-<vol>) for volumes this host does not know: left alone, they may be another host\'s on the same role');
    const retired: string[] = [];
    for (const g of orphans) if (await this.retireOne(g.volumeId, g, 'orphan')) retired.push(g.grantId);
    if (orphans.length) this.log.warn({ grantIds: orphans.map((g) => g.grantId), retired: retired.length }, 'retired attach and op grants that nothing holds');
    return { retired, complete: listed.complete && retired.length === orphans.length };
  }
}
