import type { Caller } from '../types.js';

/**
 * What the evaluator, the grant store and the identity store need to know
 * about a caller's ARN, parsed once per ARN: a regex on every Decrypt costs
 * more than the rest of the policy check. Keyed by ARN, not by Caller object:
 * both doors build a new Caller per request.
 */
export interface CallerIds {
  readonly arn: string;
  readonly account: string;
  readonly isRoot: boolean;
  readonly isService: boolean;
  /** Role name, for a role session (or a Role caller). */
  readonly roleName?: string;
  /** `arn:<partition>:iam::<acct>:role/<name>` for a session (no path, as STS ARNs carry none; aws:PrincipalArn looks the path up, request-context.ts). */
  readonly roleArn?: string;
  /** `role:<acct>:<name>`: how grants and key policies find a role's sessions. */
  readonly roleKey?: string;
  /** Keys a grantee lookup tries: the ARN itself, then `roleKey`. */
  readonly granteeKeys: readonly string[];
}

const cache = new Map<string, CallerIds>();
const ROLE_RE = /^arn:([\w-]+):(?:sts::(\d{12}):assumed-role|iam::(\d{12}):role(?:\/.*)?)\/([^/]+)/;

export function callerIds(c: Caller): CallerIds {
  let ids = cache.get(c.arn);
  // What is derived depends on the ARN, the type and the account: checked, so a changed one is parsed again.
  if (ids && ids.account === c.accountId && ids.isRoot === (c.type === 'Root') && ids.isService === (c.type === 'AWSService')
    && (ids.roleKey !== undefined) === (c.type === 'AssumedRole' || c.type === 'Role')) return ids;
  const m = c.type === 'AssumedRole' || c.type === 'Role' ? ROLE_RE.exec(c.arn) : null;
  const acct = m ? (m[2] ?? m[3]!) : undefined;
  const roleKey = m ? `role:${acct}:${m[4]}` : undefined;
  ids = {
    arn: c.arn,
    account: c.accountId,
    isRoot: c.type === 'Root',
    isService: c.type === 'AWSService',
    ...(m ? { roleName: m[4]!, roleArn: `arn:${m[1]}:iam::${acct}:role/${m[4]}`, roleKey } : {}),
    granteeKeys: roleKey ? [c.arn, roleKey] : [c.arn],
  };
  if (cache.size > 10_000) cache.clear();
  cache.set(c.arn, ids);
  return ids;
}
