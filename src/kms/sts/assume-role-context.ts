/**
 * The request context an AssumeRole is judged in: the condition keys a role's
 * trust policy (and the caller's identity policies, when the trust names only
 * the account) can read. IAM User Guide, "AWS global condition context keys"
 * and "Available keys for AWS STS" (IAM and AWS STS condition context keys):
 *
 * - `sts:ExternalId`, `sts:RoleSessionName`: the request's parameters, present
 *   only when given (ExternalId is optional).
 * - `aws:PrincipalArn`, `aws:PrincipalAccount`, `aws:PrincipalType`,
 *   `aws:userid`, `aws:username`, `aws:SourceIp`, `aws:UserAgent`,
 *   `aws:CurrentTime`, `aws:EpochTime`: as for any request, from the caller
 *   and the clock (src/kms/authz/request-context.ts computes them).
 * - `aws:SecureTransport`: whether the listener speaks TLS (a plain-HTTP
 *   listener exists only on loopback, and answers false).
 * - `aws:RequestedRegion`: this daemon's region, the one the request was
 *   signed for (SigV4 refuses any other).
 * - `aws:ResourceAccount`: the role's account.
 * - `aws:MultiFactorAuthPresent`, `aws:TokenIssueTime`: present only for a
 *   caller signing with temporary credentials (role chaining), as in any
 *   request (request-context.ts); MFA is never part of an ebsd session, so the
 *   former is then "false".
 *
 * `sts:DurationSeconds` is not among them: the STS service authorization
 * reference lists it for GetServiceBearerToken only, so in an AssumeRole it is
 * absent like any other unknown key (a positive operator on it is false,
 * `…IfExists` and `Null: true` are true). Role and principal tags, session
 * tags and source identity are not supported by ebsd, so their keys are absent too
 * (docs/architecture.md §5.9).
 */
import type { Caller } from '../types.js';
import type { ConditionContext, ContextValue } from '../authz/conditions.js';
import { RequestContext } from '../authz/request-context.js';

/** What AssumeRole was asked, as the Query protocol carried it. */
export interface AssumeRoleParams {
  RoleArn?: string;
  RoleSessionName?: string;
  DurationSeconds?: string;
  ExternalId?: string;
  /** The inline session policy (session-policy.ts). */
  Policy?: string;
  /** Any other request member (PolicyArns.member.1.arn, Tags.member.1.Key, …): refused by assumeRole, never ignored. */
  [member: string]: string | undefined;
}

export interface AssumeRoleSetting {
  /** Does the listener the request came through speak TLS? */
  secureTransport: boolean;
  /** The daemon's region, the one SigV4 verified. */
  region: string;
  /** The role's account. */
  roleAccount: string;
  /** Evaluation time, ms since the epoch. */
  now: number;
}

const TAG_KEY = /^aws:(resourcetag|principaltag|requesttag)\//;

export class AssumeRoleContext implements ConditionContext {
  private readonly base: RequestContext;
  private readonly own: ReadonlyMap<string, ContextValue>;

  constructor(caller: Caller, roleArn: string, p: AssumeRoleParams, s: AssumeRoleSetting) {
    this.base = new RequestContext({ action: 'sts:AssumeRole', caller, resource: roleArn, now: s.now });
    const own = new Map<string, ContextValue>([
      ['aws:securetransport', s.secureTransport ? 'true' : 'false'],
      ['aws:requestedregion', s.region],
      ['aws:resourceaccount', s.roleAccount],
    ]);
    if (p.ExternalId !== undefined) own.set('sts:externalid', p.ExternalId);
    if (p.RoleSessionName !== undefined) own.set('sts:rolesessionname', p.RoleSessionName);
    this.own = own;
  }

  /** `key` is lower-case (the condition engine's contract). */
  get(key: string): ContextValue | undefined {
    const v = this.own.get(key);
    if (v !== undefined) return v;
    // Only the global keys describe an STS request: kms:* keys and tags are absent here.
    if (!key.startsWith('aws:') || TAG_KEY.test(key)) return undefined;
    return this.base.get(key);
  }

  /**
   * The keys this request adds to what any request has, for the identity-policy check
   * (src/kms/authz/evaluate.ts reads them as `AuthzRequest.context`).
   */
  extraKeys(): ReadonlyMap<string, ContextValue> {
    return this.own;
  }
}
