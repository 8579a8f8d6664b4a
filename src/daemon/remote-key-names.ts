import type { Caller } from '../kms/types.js';
import type { PolicyEvaluator } from '../kms/authz/index.js';
import { UnauthorizedOperation } from './ec2-authz.js';

/**
 * With a remote KMS (`--kms-endpoint`) the KMS calls of a volume operation are
 * signed as this host, so the local identity policy judges the local caller's
 * use of a key (docs/architecture.md §5.5). KMS judges a key on its ARN
 * whatever the request names it by, with `kms:RequestAlias` when an alias was
 * used (KMS Developer Guide, "kms:RequestAlias"); so must this check, or a Deny
 * on `key/<id>`'s ARN is bypassed by naming the key `alias/x`, by its bare id
 * or by an alias ARN, and an Allow on the ARN refuses a legitimate alias.
 *
 * A name that is not a key ARN is resolved by DescribeKey as this host, and
 * the answer cached for `ttlMs` (default 30 s): an alias moved to another key
 * is followed within that time.
 */

/** The key a name stands for, as a KMS authorization sees it. */
export interface ResolvedKeyName {
  /** The key ARN: the resource policies are evaluated on. */
  arn: string;
  /** `alias/...` when the name was an alias name or alias ARN (kms:RequestAlias). */
  requestAlias?: string;
}

const KEY_ARN_RE = /^arn:[\w-]+:kms:[a-z0-9-]+:\d{12}:key\/[^/]+$/;
const ALIAS_ARN_RE = /^arn:[\w-]+:kms:[a-z0-9-]+:\d{12}:(alias\/.+)$/;
/** Names remembered at most; past it the cache starts again (a caller choosing names cannot grow it). */
const MAX_NAMES = 1024;
export const DEFAULT_KEY_NAME_TTL_MS = 30_000;

export class RemoteKeyNames {
  private readonly cache = new Map<string, { r: ResolvedKeyName; until: number }>();
  private readonly ttlMs: number;
  private readonly now: () => number;

  /** `describe`: DescribeKey as this host, answering the key's ARN; its errors (NotFound, AccessDenied, unreachable) reach the caller. */
  constructor(private readonly describe: (keyId: string) => Promise<string>, o: { ttlMs?: number; now?: () => number } = {}) {
    this.ttlMs = o.ttlMs ?? DEFAULT_KEY_NAME_TTL_MS;
    this.now = o.now ?? Date.now;
  }

  async resolve(name: string): Promise<ResolvedKeyName> {
    if (KEY_ARN_RE.test(name)) return { arn: name };
    const now = this.now();
    const hit = this.cache.get(name);
    if (hit && hit.until > now) return hit.r;
    const arn = await this.describe(name);
    const alias = name.startsWith('alias/') ? name : ALIAS_ARN_RE.exec(name)?.[1];
    const r: ResolvedKeyName = alias !== undefined ? { arn, requestAlias: alias } : { arn };
    if (this.cache.size >= MAX_NAMES) this.cache.clear();
    this.cache.set(name, { r, until: now + this.ttlMs });
    return r;
  }
}

/**
 * May `caller` have the host do `action` with the key for it, through EC2
 * (`kms:ViaService` = `ec2.<region>.amazonaws.com`)? Judged by the local
 * identity policies on the key's ARN. The refusal names the ARN, and the name
 * the request used when it was another.
 */
export function judgeRemoteKeyUse(
  evaluator: PolicyEvaluator, region: string, action: string, name: string, key: ResolvedKeyName, caller: Caller,
): UnauthorizedOperation | undefined {
  const d = evaluator.evaluate({
    action, caller, resource: key.arn, ...(key.requestAlias ? { requestAlias: key.requestAlias } : {}),
    context: new Map([['kms:ViaService', `ec2.${region}.amazonaws.com`]]),
  });
  if (d.allowed) return undefined;
  const named = name === key.arn ? '' : ` (named ${name} in the request)`;
  return new UnauthorizedOperation(`${d.message}${named} (this host's KMS is remote: the local identity policy decides what a local caller may do with a key)`);
}
