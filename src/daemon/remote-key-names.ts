import type { Caller } from '../kms/types.js';
import type { AuthorizationRequest } from '../kms/authorizer.js';
import { authzRequestOf, type PolicyEvaluator } from '../kms/authz/index.js';
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

/** The actions a volume operation has the host do with a symmetric key: kms:EncryptionAlgorithm is SYMMETRIC_DEFAULT. */
const SYMMETRIC_USE: ReadonlySet<string> = new Set([
  'kms:Encrypt', 'kms:Decrypt', 'kms:ReEncryptFrom', 'kms:ReEncryptTo', 'kms:GenerateDataKey', 'kms:GenerateDataKeyWithoutPlaintext',
]);
const KEY_ARN_REGION_RE = /^arn:[\w-]+:kms:([a-z0-9-]+):/;

/**
 * May `caller` have the host do `action` with the key for it, through EC2
 * (`kms:ViaService` = `ec2.<region>.amazonaws.com`)? Judged by the local
 * identity policies on the key's ARN, with the request context a KMS call
 * gets (`authzRequestOf`, docs/architecture.md §5.4): the caller via EC2
 * (kms:ViaService, aws:ViaAWSService), aws:RequestedRegion the key's region,
 * kms:EncryptionAlgorithm SYMMETRIC_DEFAULT for a data key, a Decrypt or a
 * ReEncrypt, and `o.reEncryptOnSameKey` for ReEncrypt. The refusal names the
 * ARN, and the name the request used when it was another.
 */
export function judgeRemoteKeyUse(
  evaluator: PolicyEvaluator, region: string, action: string, name: string, key: ResolvedKeyName, caller: Caller,
  o: { reEncryptOnSameKey?: boolean } = {},
): UnauthorizedOperation | undefined {
  const req: AuthorizationRequest = {
    action, operation: action.startsWith('kms:ReEncrypt') ? 'ReEncrypt' : action.slice('kms:'.length),
    caller: { ...caller, viaService: `ec2.${region}.amazonaws.com` }, accountId: caller.accountId,
    region: KEY_ARN_REGION_RE.exec(key.arn)?.[1] ?? region, resource: key.arn, request: { KeyId: name }, now: Date.now(),
  };
  if (key.requestAlias) req.requestAlias = key.requestAlias;
  if (SYMMETRIC_USE.has(action)) req.encryptionAlgorithm = 'SYMMETRIC_DEFAULT';
  if (o.reEncryptOnSameKey !== undefined && req.operation === 'ReEncrypt') req.reEncryptOnSameKey = o.reEncryptOnSameKey;
  const d = evaluator.evaluate(authzRequestOf(req));
  if (d.allowed) return undefined;
  const named = name === key.arn ? '' : ` (named ${name} in the request)`;
  return new UnauthorizedOperation(`${d.message}${named} (this host's KMS is remote: the local identity policy decides what a local caller may do with a key)`);
}
