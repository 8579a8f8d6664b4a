import type { Logger } from 'pino';
import type { Caller } from '../kms/types.js';
import { GRANT_CONSISTENCY_MS, listAllRetirableGrants, toKeyServiceError, type EncryptionContext, type KeyService } from './key-service.js';
import { errInfo } from './errors.js';
import { systemClock, type Clock } from '../util/clock.js';
import { RetrySet } from '../util/retry-set.js';
import { faultPoint } from '../util/fault-point.js';

/** Grants named so belong to one create, restore or copy step: `ebsd-op-<instance id>-<step id>`. */
export const OP_GRANT_PREFIX = 'ebsd-op-';

/** The operations a step's grant may carry: the unwrap of a data key, the re-wrap of one under a new context. */
export type OpGrantOperation = 'Decrypt' | 'ReEncryptFrom' | 'ReEncryptTo';

/** One grant a step needs: on `keyId` (an ARN or key id, never an alias), these operations, for contexts holding `context`. */
export interface OpGrantRequest {
  keyId: string;
  operations: OpGrantOperation[];
  context: EncryptionContext;
}

/** How a step makes its KMS calls: as `caller`, with `GrantTokens` when it goes through grants. */
export interface KeyUse {
  caller: Caller;
  grantTokens?: string[];
}

/** One op grant made: enough to retire it by token as the host, and to name it in logs. */
interface MadeGrant {
  grantId: string;
  grantToken: string;
  keyId: string;
  stepId: string;
}

/**
 * A grant KMS may have made while its CreateGrant went unanswered (the answer
 * lost, the SDK's retries timed out too): this host never learnt its id or
 * token, so it is found by its name (unique per step) and retired by id.
 */
interface LostGrant {
  name: string;
  keyId: string;
  stepId: string;
  /** Until then a list without it does not end the search: a grant just made may not be listed yet (GRANT_CONSISTENCY_MS). */
  until: number;
}

/**
 * How often a failed op-grant retirement is tried again: TTL/4 (as the shared
 * key check retries an unreachable KMS, docs/architecture.md §6.3), within
 * [1 s, 30 s], so a grant KMS could not retire outlives its step by little more
 * than the KMS outage, well within the TTL a revocation takes to be seen.
 * A TTL of 0 (keys held until detach) retries every 30 s.
 */
export function opGrantRetryMs(keyCacheTtlMs: number): number {
  if (!(keyCacheTtlMs > 0)) return 30_000;
  return Math.min(30_000, Math.max(1_000, keyCacheTtlMs / 4));
}

export interface OpGrantsOptions {
  /** Time and timers of the retirement retries (tests drive them); default the system's. */
  clock?: Clock;
  /** How long after a failed RetireGrant it is tried again, and again while it fails. */
  retryMs: number;
}

/** A step id as grant names may carry it (KMS allows `[a-zA-Z0-9:/_-]`, 256 characters in all). */
const STEP_ID = /^[a-zA-Z0-9:/_-]{1,200}$/;

/** The op grant's name; the InstanceId tells hosts sharing one role apart, as in attach grant names. */
export function opGrantName(instanceId: string, stepId: string, n: number): string {
  return `${OP_GRANT_PREFIX}${instanceId}-${stepId}-${n}`;
}

/** Whose op grant this is: the InstanceId its name carries, or undefined when it is not an op grant. */
export function opGrantInstance(name: string | undefined): string | undefined {
  if (!name?.startsWith(OP_GRANT_PREFIX)) return undefined;
  return /^(i-[0-9a-zA-Z]+)-/.exec(name.slice(OP_GRANT_PREFIX.length))?.[1];
}

/**
 * Short-lived grants for the steps that unwrap or re-wrap a data key outside an
 * attachment (docs/architecture.md §6.1, §14): a new volume's digest, the
 * snapshot key a restore or copy under another key decrypts, the re-wrap of a
 * restore or copy under the same key. As EBS does, the host uses a key only
 * through a grant made for that step: CreateGrant on the caller's behalf
 * (grantee and retiring principal: the host; only the step's operations; an
 * EncryptionContextSubset naming the volume or snapshot), the call as the host
 * with the grant token, RetireGrant right after, on failure too. So a host
 * role's key policy needs no kms:Decrypt, and KMS refuses a host whose attach
 * grant was revoked (README "A fleet").
 *
 * Only with a remote KMS (--kms-endpoint), whose key policy for the host role
 * these grants serve. The embedded KMS judges the local caller itself, so
 * there each step's Decrypt or ReEncrypt stays the caller's, via EC2: an
 * explicit Deny of kms:Decrypt for the caller must still refuse a create
 * (withKeyUse without an OpGrants; VolumeManagerOptions.opGrants).
 *
 * A RetireGrant KMS did not answer (unreachable, timed out) leaves a live
 * grant the host no longer needs: it is kept and tried again every `retryMs`
 * until KMS answers, so a failed retirement does not leave a [Decrypt] grant
 * alive until the next restart (docs/architecture.md §6.1). A crash between
 * CreateGrant and RetireGrant leaves the grant too: the start-up sweep retires
 * this host's `ebsd-op-<instance>-…` grants (AttachGrants.retireOrphans), and
 * so does it whatever a close left unretired.
 *
 * A CreateGrant refused with AccessDeniedException (a key policy from before
 * op grants, allowing the step's own operation but not kms:CreateGrant to this
 * caller) falls back to the call on the caller's behalf without a grant, as
 * every step was made before: KMS still judges that call itself.
 */
export class OpGrants {
  /** Grants whose RetireGrant KMS did not answer, by grant id, and grants a CreateGrant KMS did not answer may have made, by name: retried every retryMs. */
  private readonly unretired: RetrySet<MadeGrant | LostGrant>;

  constructor(
    private readonly ks: KeyService,
    private readonly host: Caller,
    private readonly instanceId: string,
    private readonly log: Logger,
    private readonly o: OpGrantsOptions,
  ) {
    if (!(o.retryMs > 0)) throw new RangeError(`retryMs: ${o.retryMs} is not a positive delay`);
    this.unretired = new RetrySet({
      attempt: async (_id, g) => {
        if ('name' in g) return this.retireLost(g);
        if (!(await this.retireOne(g))) return false;
        this.log.info({ step: g.stepId, grantId: g.grantId, keyId: g.keyId }, 'retired a key step\'s grant on retry');
        return true;
      },
      firstMs: o.retryMs, // maxMs unset: a fixed period
      ...(o.clock ? { clock: o.clock } : {}),
    });
  }

  /** Ids of the grants whose retirement failed and is still to be retried (tests, logs). */
  get unretiredGrantIds(): string[] {
    return this.unretired.keys;
  }

  /**
   * `fn` with the grants of `grants`, retired when it settles. `stepId` names
   * them (`vol-…-new-key`); `via` is the caller acting through EC2, on whose
   * behalf the grants are made.
   */
  async run<T>(stepId: string, grants: OpGrantRequest[], via: Caller, fn: (use: KeyUse) => Promise<T>): Promise<T> {
    if (typeof stepId !== 'string' || !STEP_ID.test(stepId)) throw new RangeError(`stepId: ${String(stepId)} is not a grant name part`);
    if (!grants.length) throw new RangeError('grants: at least one');
    const made: MadeGrant[] = [];
    try {
      for (const [n, g] of grants.entries()) {
        const name = opGrantName(this.instanceId, stepId, n);
        try {
          const r = await this.ks.createGrant(
            {
              KeyId: g.keyId,
              GranteePrincipal: this.host.arn,
              RetiringPrincipal: this.host.arn,
              Operations: [...g.operations],
              Constraints: { EncryptionContextSubset: { ...g.context } },
              Name: name,
            },
            via,
          );
          made.push({ grantId: r.GrantId, grantToken: r.GrantToken, keyId: g.keyId, stepId });
          faultPoint('op-grant.after-create');
        } catch (e) {
          const err = toKeyServiceError('CreateGrant', e);
          if (!err.authoritative) {
            // No answer is not "no grant": KMS may have made it and the answer been lost.
            this.unretired.add(`name:${name}`, { name, keyId: g.keyId, stepId, until: (this.o.clock ?? systemClock).now() + GRANT_CONSISTENCY_MS });
            this.log.warn({ step: stepId, keyId: g.keyId, grantName: name, retryMs: this.o.retryMs }, 'CreateGrant for a key step not answered: KMS may have made the grant; looking for it by name to retire it');
          }
          if (err.awsName !== 'AccessDeniedException') throw err;
          this.log.info({ step: stepId, keyId: g.keyId }, 'CreateGrant refused for a key step: calling without a grant on the caller\'s behalf (a key policy that allows the operation itself)');
          await this.retire(made.splice(0));
          return await fn({ caller: via });
        }
      }
      return await fn({ caller: this.host, grantTokens: made.map((m) => m.grantToken) });
    } finally {
      await this.retire(made);
    }
  }

  /** Stop retrying; what is still unretired is left to the next start's sweep. Waits for a retry under way. */
  async close(): Promise<void> {
    await this.unretired.close();
    // Keys are grant ids, or `name:<grant name>` for a grant whose CreateGrant KMS did not answer (no id known).
    if (this.unretired.size) this.log.warn({ grants: this.unretiredGrantIds }, 'key step grants still unretired at close (by id, or name: for a CreateGrant not answered); the next start retires them');
  }

  /** RetireGrant of each, as the host; one KMS did not answer is kept and retried (`unretired`). Never throws. */
  private async retire(made: MadeGrant[]): Promise<void> {
    for (const g of made) {
      if (await this.retireOne(g)) continue;
      this.unretired.add(g.grantId, g);
      this.log.warn({ step: g.stepId, grantId: g.grantId, keyId: g.keyId, retryMs: this.o.retryMs }, 'could not retire a key step\'s grant: KMS did not answer; retrying');
    }
    made.length = 0;
  }

  /**
   * The grants named `g.name` among those this host may retire, retired by id. True when
   * the list was complete and KMS answered each retirement, once one was found or `g.until`
   * has passed (a grant just made may not be listed yet); true too when this host may not
   * list (an authoritative refusal) or this KeyService cannot: the next start's sweep is
   * all there is. False to try again.
   */
  private async retireLost(g: LostGrant): Promise<boolean> {
    let listed: Awaited<ReturnType<typeof listAllRetirableGrants>>;
    try {
      listed = await listAllRetirableGrants(this.ks, this.host);
    } catch (e) {
      const err = toKeyServiceError('ListRetirableGrants', e);
      if (!err.authoritative) return false; // KMS still away: tried again, and by the next start's sweep
      this.log.warn({ step: g.stepId, keyId: g.keyId, grantName: g.name, awsName: err.awsName }, 'KMS refused ListRetirableGrants: a key step\'s grant whose CreateGrant was not answered cannot be found by name (allow kms:ListRetirableGrants, or revoke it as the account)');
      return true;
    }
    if (!listed) return true;
    let answered = true;
    const found = listed.grants.filter((x) => x.Name === g.name);
    for (const f of found) {
      const done = await this.retireOne({ grantId: f.GrantId, grantToken: '', keyId: f.KeyId, stepId: g.stepId });
      if (done) this.log.info({ step: g.stepId, grantId: f.GrantId, keyId: f.KeyId }, 'retired a key step\'s grant whose CreateGrant was not answered');
      answered &&= done;
    }
    return answered && listed.complete && (found.length > 0 || (this.o.clock ?? systemClock).now() >= g.until);
  }

  /**
   * True when there is nothing left to retry: retired now, already gone, or
   * refused by KMS (an authoritative answer, as AttachGrants.retireOne: a retry
   * would get the same; the start sweep tries once more). False when KMS did not answer.
   */
  private async retireOne(g: MadeGrant): Promise<boolean> {
    try {
      await this.ks.retireGrant(g.grantToken ? { GrantToken: g.grantToken } : { KeyId: g.keyId, GrantId: g.grantId }, this.host);
      return true;
    } catch (e) {
      const err = toKeyServiceError('RetireGrant', e);
      const gone = err.awsName === 'NotFoundException' || err.awsName === 'InvalidGrantIdException' || err.awsName === 'InvalidGrantTokenException';
      if (gone) return true;
      if (err.authoritative) {
        this.log.warn({ step: g.stepId, grantId: g.grantId, keyId: g.keyId, err: errInfo(err) }, 'KMS refused RetireGrant of a key step\'s grant; not retrying (revoke it as the account if it still exists)');
        return true;
      }
      return false;
    }
  }
}

/**
 * `fn` through the step's op grants when there are any (a remote KMS), else
 * on the caller's behalf via EC2 without a grant (the embedded KMS, which
 * then judges the step's own Decrypt or ReEncrypt as the caller's:
 * docs/architecture.md §6.1).
 */
export function withKeyUse<T>(grants: OpGrants | undefined, stepId: string, reqs: OpGrantRequest[], via: Caller, fn: (use: KeyUse) => Promise<T>): Promise<T> {
  return grants ? grants.run(stepId, reqs, via, fn) : fn({ caller: via });
}

/** `GrantTokens` for a request made with `use`: none when the step calls without grants. */
export function grantTokensOf(use: KeyUse): { GrantTokens?: string[] } {
  return use.grantTokens?.length ? { GrantTokens: use.grantTokens } : {};
}
