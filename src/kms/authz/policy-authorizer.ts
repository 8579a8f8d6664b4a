import type { Authorizer, AuthorizationDecision, AuthorizationRequest } from '../authorizer.js';
import type { KeyView } from '../key-record.js';
import type { Caller } from '../types.js';
import { PolicyEvaluator, denialMessage, denialReason, type Decision } from './evaluate.js';
import { checkGrantTokens, parseConstraints, type GrantStore, type Grant } from './grants.js';
import type { Identities } from './identities.js';
import { managedKeyRefusal } from './managed-keys.js';
import type { PolicyCache } from './policy-document.js';
import type { AuthzRequest, KeyInfo, NewGrantInfo } from './request-context.js';
import { dataMap } from '../data-map.js';

/**
 * The core's `Authorizer`, backed by key policies, identity policies and
 * grants. Synchronous: the Decrypt hot path never waits on a promise here.
 */

const _tagCache = new WeakMap<object, Record<string, string>>();
function _tags(list: readonly { TagKey: string; TagValue: string }[] | undefined): Record<string, string> | undefined {
  if (!list || list.length === 0) return undefined;
  let t = _tagCache.get(list);
  if (!t) {
    t = dataMap<string>(); // tag keys are the caller's: "__proto__" is a key, not a prototype
    for (const { TagKey, TagValue } of list) t[TagKey] = TagValue;
    _tagCache.set(list, t);
  }
  return t;
}

const _infoCache = new WeakMap<KeyView, KeyInfo>();

/** KeyView -> the evaluator's KeyInfo (cached per view: the core caches views per key record, so this is per key version). */
export function keyInfo(k: KeyView): KeyInfo {
  let info = _infoCache.get(k);
  if (!info) {
    info = Object.freeze(_keyInfo(k));
    if (Object.isFrozen(k)) _infoCache.set(k, info); // only a frozen view cannot change under the cache
  }
  return info;
}

function _keyInfo(k: KeyView): KeyInfo {
  const tags = _tags(k.tags);
  return {
    arn: k.arn,
    accountId: k.accountId,
    region: k.region,
    policy: k.policy,
    ...(k.policyPrincipals ? { principalIds: k.policyPrincipals } : {}),
    keySpec: k.keySpec,
    keyUsage: k.keyUsage,
    keyOrigin: k.origin,
    keyManager: k.keyManager,
    aliases: k.aliases,
    ...(tags ? { tags } : {}),
  };
}

/** The account id of an account root ARN (`arn:aws:iam::111122223333:root`), a grant's IssuingAccount. */
const _accountOf = (rootArn: string): string | undefined => /^arn:[\w-]+:iam::(\d{12}):root$/.exec(rootArn)?.[1];

const _str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

function _newGrant(r: Readonly<Record<string, unknown>>): NewGrantInfo | undefined {
  if (typeof r.GranteePrincipal !== 'string' || !Array.isArray(r.Operations)) return undefined;
  let constraints;
  try { constraints = parseConstraints(r.Constraints); } catch { constraints = undefined; }
  return {
    operations: r.Operations.filter((o): o is string => typeof o === 'string'),
    granteePrincipal: r.GranteePrincipal,
    ...(typeof r.RetiringPrincipal === 'string' ? { retiringPrincipal: r.RetiringPrincipal } : {}),
    ...(constraints ? { constraints } : {}),
  };
}

/**
 * Who may retire a grant without any policy (KMS Developer Guide, "Retiring and revoking grants"):
 * its principals as `grants` bound them, so a user or role created again under their ARN may not.
 */
export function mayRetireByGrant(grants: GrantStore, g: Grant, caller: Caller): boolean {
  if (grants.isPrincipalOf(g, 'RetiringPrincipal', caller)) return true;
  if (g.Operations.includes('RetireGrant') && grants.isPrincipalOf(g, 'GranteePrincipal', caller)) return true;
  return caller.type === 'Root' && g.IssuingAccount === caller.arn;
}

/**
 * AuthorizationRequest (core) -> AuthzRequest (evaluator): the one place a request's condition keys
 * are built, for the core's calls and for a judgement made outside the core (a remote KMS's key
 * use judged by the local identity policy, src/daemon/remote-key-names.ts).
 */
export function authzRequestOf(req: AuthorizationRequest): AuthzRequest {
  const r = req.request;
  const out: AuthzRequest = {
    action: req.action,
    caller: req.caller,
    resource: req.resource,
    now: req.now,
  };
  if (req.key) out.key = keyInfo(req.key);
  out.region = req.region;
  if (req.encryptionContext) out.encryptionContext = req.encryptionContext;
  if (req.grantTokens) out.grantTokens = req.grantTokens;
  if (req.requestAlias) out.requestAlias = req.requestAlias;
  // Members with a default (docs/architecture.md §5.4): the value the handler resolved and uses
  // (AuthorizationRequest.encryptionAlgorithm, ...), so a Deny on a default is not passed by leaving it out.
  const ea = req.encryptionAlgorithm ?? _str(r.EncryptionAlgorithm); if (ea) out.encryptionAlgorithm = ea;
  const sa = _str(r.SigningAlgorithm); if (sa) out.signingAlgorithm = sa;
  const ma = _str(r.MacAlgorithm); if (ma) out.macAlgorithm = ma;
  const kp = _str(r.KeyPairSpec); if (kp) out.dataKeyPairSpec = kp;
  const mt = req.messageType ?? _str(r.MessageType); if (mt) out.messageType = mt;
  if (req.operation === 'CreateKey') {
    const ks = _str(r.KeySpec) ?? _str(r.CustomerMasterKeySpec) ?? 'SYMMETRIC_DEFAULT';
    out.keySpec = ks;
    out.keyUsage = _str(r.KeyUsage) ?? 'ENCRYPT_DECRYPT';
    out.keyOrigin = _str(r.Origin) ?? 'AWS_KMS';
  }
  if (req.pendingWindowInDays !== undefined) out.pendingWindowInDays = req.pendingWindowInDays;
  if (req.rotationPeriodInDays !== undefined) out.rotationPeriodInDays = req.rotationPeriodInDays;
  if (req.operation === 'CreateKey' || req.operation === 'PutKeyPolicy') {
    out.bypassPolicyLockoutSafetyCheck = r.BypassPolicyLockoutSafetyCheck === true;
  }
  // From the resolved keys (AuthorizationRequest.reEncryptOnSameKey), never the request's strings: a request
  // without SourceKeyId would leave the key out, and a Deny on it being false would not fire.
  if (req.operation === 'ReEncrypt' && req.reEncryptOnSameKey !== undefined) out.reEncryptOnSameKey = req.reEncryptOnSameKey;
  if (req.operation === 'CreateKey' || req.operation === 'TagResource') {
    // aws:RequestTag/<k> and aws:TagKeys (KMS Developer Guide, "Controlling access with tags").
    const tags = Array.isArray(r.Tags) ? r.Tags.filter((x): x is { TagKey: string; TagValue?: unknown } =>
      x !== null && typeof x === 'object' && typeof (x as { TagKey?: unknown }).TagKey === 'string') : [];
    if (tags.length) {
      const rt = dataMap<string>();
      for (const x of tags) rt[x.TagKey] = typeof x.TagValue === 'string' ? x.TagValue : '';
      out.requestTags = rt;
      out.tagKeys = tags.map((x) => x.TagKey);
    }
  }
  if (req.operation === 'UntagResource' && Array.isArray(r.TagKeys)) {
    const keys = r.TagKeys.filter((k): k is string => typeof k === 'string');
    if (keys.length) out.tagKeys = keys;
  }
  if (req.operation === 'CreateGrant') {
    const g = _newGrant(r);
    if (g) out.grant = g;
    // kms:EncryptionContext:<key> and kms:EncryptionContextKeys of a CreateGrant are the new grant's constraint
    // (docs/architecture.md §5.4), read from the request as kms:GrantConstraintType is: never from the grant the
    // handler prepares, which does not exist when a principal is missing, so a policy on them would judge an
    // existing and a missing grantee apart and tell a refused caller which IAM users and roles exist.
    const ec = g?.constraints?.EncryptionContextEquals ?? g?.constraints?.EncryptionContextSubset;
    if (ec && !req.encryptionContext) out.encryptionContext = ec;
  }
  return out;
}

export interface PolicyAuthorizerOptions {
  identities: Identities;
  grants: GrantStore;
  cache?: PolicyCache;
}

export class PolicyAuthorizer implements Authorizer {
  readonly evaluator: PolicyEvaluator;
  readonly identities: Identities;
  readonly grants: GrantStore;

  constructor(opts: PolicyAuthorizerOptions) {
    this.identities = opts.identities;
    this.grants = opts.grants;
    this.evaluator = new PolicyEvaluator({
      identityPolicies: (c) => opts.identities.identityPolicies(c),
      grants: opts.grants,
      roleArn: (account, name) => opts.identities.existingRoleArn(account, name),
      ...(opts.cache ? { cache: opts.cache } : {}),
    });
  }

  /** AuthorizationRequest (core) -> AuthzRequest (evaluator): `authzRequestOf`. */
  toAuthzRequest(req: AuthorizationRequest): AuthzRequest {
    return authzRequestOf(req);
  }

  /** The decision without the managed-key guard or grant-token checks (see `authorize`). */
  decide(req: AuthorizationRequest): Decision {
    if (req.operation === 'RetireGrant') return this._decideRetire(req);
    return this.evaluator.evaluate(this.toAuthzRequest(req));
  }

  /**
   * RetireGrant is authorized by the grant, not by policies (AWS KMS, "Retiring and revoking
   * grants"): its retiring principal, its grantee if that grant includes RetireGrant, or the
   * account that created it. "The kms:RetireGrant permission alone does not allow principals to
   * retire a grant", and a key policy cannot give it, so a key-policy Allow of
   * kms:RetireGrant, or another grant of the caller's listing RetireGrant, retires nothing. The
   * account that owns the key may delegate its own right to its IAM principals, though: an
   * identity policy of a principal of that account (the grant's issuing account) allowing
   * kms:RetireGrant on the key retires any grant of it, when the key policy lets the account's IAM
   * policies count at all (evaluate.ts, identityAllows). An explicit Deny still refuses.
   * A session with a session policy retires through a grant only where its session policy allows
   * kms:RetireGrant, whether the grant names its role or its own session ARN, as grantee or as
   * retiring principal: every grant is limited by a session policy (evaluate.ts), the right to
   * retire one included (docs/architecture.md §5.9). A caller without one retires as on AWS.
   */
  private _decideRetire(req: AuthorizationRequest): Decision {
    const authz = this.toAuthzRequest(req);
    const resource = authz.resource ?? authz.key?.arn ?? '*';
    const g = req.caller.type === 'Unknown' ? undefined : this._grantOf(req);
    if (g && mayRetireByGrant(this.grants, g, req.caller)) {
      const d = this.evaluator.evaluate(authz, { useGrants: false });
      if (!d.allowed && (d.reason === 'explicit-deny-key-policy' || d.reason === 'explicit-deny-identity-policy' || d.reason === 'explicit-deny-session-policy')) return d;
      if (this.evaluator.sessionVerdict(authz) === 'implicit') {
        return { allowed: false, reason: 'no-session-policy-allow', message: denialMessage(req.caller, req.action, resource, 'no-session-policy-allow') };
      }
      return { allowed: true, by: 'grant', grantId: g.GrantId };
    }
    const d = this.evaluator.evaluate(authz, { useGrants: false });
    // No such grant: a caller the policies allow learns that (NotFoundException from the operation); others are refused.
    if (!g) return d;
    if (!d.allowed && d.reason !== 'no-key-policy-allow' && d.reason !== 'no-identity-policy-allow') return d; // an explicit Deny, an unknown caller
    if (_accountOf(g.IssuingAccount) === req.caller.accountId && authz.key?.accountId === req.caller.accountId && this.evaluator.identityAllows(authz)) {
      return { allowed: true, by: 'iam-policy' };
    }
    return {
      allowed: false, reason: 'no-key-policy-allow',
      message: `User: ${req.caller.arn} is not authorized to perform: kms:RetireGrant on resource: ${resource} because the grant does not allow it: only its retiring principal, its grantee when the grant includes RetireGrant, or the account that created it (itself, or an IAM principal of it whose identity policy allows kms:RetireGrant on the key) may retire a grant`,
    };
  }

  authorize(req: AuthorizationRequest): AuthorizationDecision {
    if (req.grantTokens) checkGrantTokens(req.grantTokens); // ValidationException / InvalidGrantTokenException
    const refusal = managedKeyRefusal(req.action, req.key, req.request);
    if (refusal) return { allowed: false, reason: refusal };
    const d = this.decide(req);
    if (d.allowed) return d.grantId ? { allowed: true, grantId: d.grantId } : { allowed: true };
    // evaluate() words the message as AWS does ("… with an explicit deny in …" / "… because …").
    return { allowed: false, reason: denialReason(d.reason, req.action, req.caller), message: d.message };
  }

  private _grantOf(req: AuthorizationRequest): Grant | undefined {
    const r = req.request;
    if (typeof r.GrantToken === 'string') {
      try { return this.grants.byGrantToken(r.GrantToken); } catch { return undefined; }
    }
    if (req.key && typeof r.GrantId === 'string') return this.grants.get(req.key.arn, r.GrantId);
    return undefined;
  }
}
