import type { Logger } from 'pino';
import type { Caller } from '../kms/types.js';
import type { KeyedMutex } from '../util/lock.js';
import type { Catalog, VolumeRecord } from './catalog.js';
import { toKeyServiceError, type KeyService } from './key-service.js';
import { errInfo } from './errors.js';
import { opGrantInstance } from './op-grants.js';

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

/**
 * Retirement of attach grants (the `[Decrypt]` grants attach creates for the
 * host): one at a time at detach, the ones a failed detach left pending,
 * and the ones a crash left with no attachment at all. Every retirement is
 * made as the host, the grants' retiring principal.
 */
export class AttachGrants {
  constructor(
    private readonly ks: KeyService,
    private readonly host: Caller,
    private readonly instanceId: string,
    private readonly catalog: Catalog,
    private readonly mutex: KeyedMutex,
    private readonly log: Logger,
  ) {}


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
    const list = this.ks.listRetirableGrants?.bind(this.ks);
    if (!list) return [];
    const orphans: { volumeId: string; grantId: string; keyArn: string }[] = [];
    let unattributed = 0;
    try {
      let marker: string | undefined;
      for (let page = 0; page < 1000; page++) {
        const r = await list({ RetiringPrincipal: this.host.arn, Limit: 100, ...(marker ? { Marker: marker } : {}) }, this.host);
        for (const g of r.Grants) {
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
        if (!r.Truncated || !r.NextMarker) break;
        marker = r.NextMarker;
      }
    } catch (e) {
      this.log.warn({ err: errInfo(e) }, 'could not list the host\'s retirable grants; attach grants without an attachment stay until the next start');
      return [];
    }
    if (unattributed) this.log.info({ grants: unattributed }, 'attach grants named the old way (ebsd-attach-<vol>) for volumes this host does not know: left alone, they may be another host\'s on the same role');
    const retired: string[] = [];
    for (const g of orphans) if (await this.retireOne(g.volumeId, g, 'orphan')) retired.push(g.grantId);
    if (orphans.length) this.log.warn({ grantIds: orphans.map((g) => g.grantId), retired: retired.length }, 'retired attach and op grants that nothing holds');
    return retired;
  }
}
