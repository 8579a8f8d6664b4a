import type { Caller } from '../types.js';

/**
 * What the evaluator, the grant store and the identity store need to know
 * about a caller's ARN, parsed once per ARN: a regex on every Decrypt costs
 * more than the rest of the policy check. Keyed by ARN, not by Caller object:
 * both doors build a new Caller per request.
 */
export interface CallerIds {
  readonly arn: string;
  /** The caller's principalId these ids were derived from. */
  readonly principalId: string | undefined;
  readonly account: string;
  readonly isRoot: boolean;
  readonly isService: boolean;
  /** An assumed-role session (`arn:…:sts::…:assumed-role/…`). */
  readonly isSession: boolean;
  /**
   * The unique id a bound policy principal is compared with (principal-bindings.ts): a user's
   * AIDA…, a Role caller's AROA…, and for a session its role's AROA… (principalId `AROA…:session`).
   */
  readonly uniqueId?: string;
  /** Role name, for a role session (or a Role caller). */
  readonly roleName?: string;
  /** `arn:<partition>:iam::<acct>:role/<name>` for a session (no path, as STS ARNs carry none; aws:PrincipalArn looks the path up, request-context.ts). */
  readonly roleArn?: string;
  /** `role:<acct>:<name>`: how grants and key policies find a role's sessions. */
  readonly roleKey?: string;
  /**
   * Keys a grant's principal lookup tries (grants.ts): the ARN itself, then `roleKey`, then the
   * principal ids a bound grant names: a user's or role's own (AIDA…, AROA…), a session's
   * `AROA…:session` and its role's AROA….
   */
  readonly granteeKeys: readonly string[];
}

const cache = new Map<string, CallerIds>();
const ROLE_RE = /^arn:([\w-]+):(?:sts::(\d{12}):assumed-role|iam::(\d{12}):role(?:\/.*)?)\/([^/]+)/;

export function callerIds(c: Caller): CallerIds {
  let ids = cache.get(c.arn);
  // What is derived depends on the ARN, the type, the account and the principal id (a principal created
  // again under its name has a new one): checked, so a changed one is parsed again.
  if (ids && ids.account === c.accountId && ids.isRoot === (c.type === 'Root') && ids.isService === (c.type === 'AWSService')
    && (ids.roleKey !== undefined) === (c.type === 'AssumedRole' || c.type === 'Role') && ids.principalId === c.principalId) return ids;
  const m = c.type === 'AssumedRole' || c.type === 'Role' ? ROLE_RE.exec(c.arn) : null;
  const acct = m ? (m[2] ?? m[3]!) : undefined;
  const roleKey = m ? `role:${acct}:${m[4]}` : undefined;
  const pid = c.principalId;
  const isSession = c.type === 'AssumedRole';
  const uniqueId = pid === undefined || (c.type !== 'IAMUser' && c.type !== 'Role' && !isSession) ? undefined
    : isSession ? (pid.includes(':') ? pid.slice(0, pid.indexOf(':')) : undefined) : pid;
  ids = {
    arn: c.arn,
    account: c.accountId,
    principalId: pid,
    isRoot: c.type === 'Root',
    isService: c.type === 'AWSService',
    isSession,
    ...(uniqueId ? { uniqueId } : {}),
    ...(m ? { roleName: m[4]!, roleArn: `arn:${m[1]}:iam::${acct}:role/${m[4]}`, roleKey } : {}),
    granteeKeys: [c.arn, ...(roleKey ? [roleKey] : []), ...(isSession && uniqueId ? [pid!] : []), ...(uniqueId ? [uniqueId] : [])],
  };
  if (cache.size > 10_000) cache.clear();
  cache.set(c.arn, ids);
  return ids;
}
