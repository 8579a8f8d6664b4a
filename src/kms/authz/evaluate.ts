import type { Caller } from '../types.js';
import { AccessDeniedException } from '../errors.js';
import type { CompiledPolicy, CompiledStatement, PrincipalSet } from './policy-document.js';
import { PolicyCache } from './policy-document.js';
import { callerIds, type CallerIds } from './caller-ids.js';
import { RequestContext, type AuthzRequest, type GrantConstraints, type NewGrantInfo } from './request-context.js';
import { dataMap, hasMember } from '../data-map.js';

/**
 * The authorization decision for one KMS request (KMS Developer Guide,
 * "Determining access to an AWS KMS key"; IAM "Policy evaluation logic"):
 *
 *   1. an explicit Deny in the key policy or an identity policy wins;
 *   2. else allowed if a key-policy Allow names the caller;
 *   3. else allowed if a key-policy Allow names the caller's account (IAM
 *      delegation, `arn:aws:iam::<acct>:root`) and an identity policy allows;
 *   4. else allowed if a grant for the caller allows the operation and its
 *      constraints hold;
 *   5. else implicitly denied.
 *
 * Actions without a key (CreateKey, ListKeys, ...) are IAM-only: the account
 * root may call them, others need an identity policy.
 *
 * A role session issued with a session policy (Caller.sessionPolicy; IAM User
 * Guide, "Session policies") is one more filter: an explicit Deny in it wins
 * like any other, and what steps 2 to 4 allow counts only if the session
 * policy allows it too, except a key-policy statement whose Principal names
 * the session's own ARN (`arn:aws:sts::<acct>:assumed-role/<role>/<session>`),
 * which IAM does not limit. A statement naming the role, its account or `*` is
 * limited, and so is every grant, whether its grantee is the role or the
 * session's own ARN: a session may create a grant to itself, so a grant it
 * could not be limited by would let it out of its policy (docs/architecture.md
 * §5.9, "Session policies").
 */

export type DenyReason =
  | 'unknown-caller'
  | 'explicit-deny-key-policy'
  | 'explicit-deny-identity-policy'
  | 'explicit-deny-session-policy'
  | 'no-key-policy-allow'
  | 'no-identity-policy-allow'
  | 'no-session-policy-allow';

/**
 * What a caller's session policy says about a request: absent (no session policy), an Allow, an
 * explicit Deny, or neither (implicit: it limits whatever the request was allowed by).
 */
export type SessionVerdict = 'absent' | 'allow' | 'deny' | 'implicit';

/**
 * `session`: on a decision without a key (the STS judges sts:AssumeRole with one), the session
 * policy's own verdict, for a caller that has one: a trust policy naming the session itself is not
 * limited by it, one naming its role is (sts-service.ts).
 */
export type Decision =
  | { allowed: true; by: 'key-policy' | 'iam-policy' | 'grant' | 'account-root'; grantId?: string; sid?: string; session?: SessionVerdict }
  | { allowed: false; reason: DenyReason; message: string; sid?: string; session?: SessionVerdict };

/** A grant as the evaluator sees it (the grant store's records satisfy this). */
export interface GrantView {
  readonly GrantId: string;
  readonly Operations: readonly string[];
  readonly Constraints?: GrantConstraints;
}

export interface GrantSource {
  /** Grants on `keyArn` whose grantee is `caller` (or, for a role session, the role). */
  grantsFor(keyArn: string, caller: Caller): readonly GrantView[];
}

export interface EvaluatorOptions {
  /** Identity policies attached to the caller (user or role); none for root and services. */
  identityPolicies?: (caller: Caller) => readonly CompiledPolicy[];
  grants?: GrantSource;
  cache?: PolicyCache;
  /**
   * The IAM ARN, with its path, of role `name` in `account`, if known: a session's
   * aws:PrincipalArn (its STS ARN carries no path; the role's ARN does).
   */
  roleArn?: (account: string, name: string) => string | undefined;
}

/** Operations whose requests carry an encryption context, so grant constraints apply (KMS API, GrantConstraints). */
export const EC_OPERATIONS: ReadonlySet<string> = new Set([
  'Encrypt', 'Decrypt', 'ReEncryptFrom', 'ReEncryptTo', 'GenerateDataKey', 'GenerateDataKeyWithoutPlaintext',
  'GenerateDataKeyPair', 'GenerateDataKeyPairWithoutPlaintext',
]);

type Match = 0 | 1 | 2; // none | the caller's account (delegation) | the caller itself


/**
 * Does a Principal name the caller? A bound user or role (principal-bindings.ts) by its unique
 * id only, a role's id covering its sessions; what the set holds by name (policy-document.ts,
 * PrincipalSet) by ARN. Both are set lookups compiled in: no lookup by name per call.
 */
function _principalMatch(p: PrincipalSet, id: CallerIds): Match {
  if (p.any) return 2;
  if (id.isService) return p.services.has(id.arn) ? 2 : 0;
  if (p.arns.has(id.arn)) return 2;
  if (id.uniqueId !== undefined && p.ids.has(id.uniqueId)) return 2;
  if (id.roleKey !== undefined && p.roles.has(id.roleKey)) return 2;
  if (p.accounts.has(id.account)) return id.isRoot ? 2 : 1;
  return 0;
}

/**
 * Does a NotPrincipal name the caller itself? Its exact ARN or its own unique id, not its
 * role's: naming a role exempts the role, not its sessions, which only their own session ARN
 * exempts (IAM User Guide, "NotPrincipal"); naming the account exempts its root only.
 */
function _notPrincipalNames(p: PrincipalSet, id: CallerIds): boolean {
  if (p.any) return true;
  if (id.isService) return p.services.has(id.arn);
  if (p.arns.has(id.arn)) return true;
  if (!id.isSession && id.uniqueId !== undefined && p.ids.has(id.uniqueId)) return true;
  return id.isRoot && p.accounts.has(id.account);
}

function _statementMatch(st: CompiledStatement, id: CallerIds): Match {
  if (st.principal) return _principalMatch(st.principal, id);
  if (st.notPrincipal) return _notPrincipalNames(st.notPrincipal, id) ? 0 : 2; // excluded only when named itself
  return 2; // identity policy: applies to its own principal
}

function _conditionsHold(st: CompiledStatement, ctx: RequestContext): boolean {
  for (const c of st.conditions) if (!c.test(ctx)) return false;
  return true;
}

/**
 * Does `ec` hold the pair (`k`, `v`), the key compared case-insensitively and the value exactly
 * (grant constraints, docs/architecture.md §5.4)? The exact key is tried first: the grant
 * Decrypt of every attach names it as the constraint does.
 */
function _hasPair(ec: Readonly<Record<string, string>>, k: string, v: string): boolean {
  if (hasMember(ec, k) && ec[k] === v) return true;
  const lower = k.toLowerCase();
  for (const x of Object.keys(ec)) if (x !== k && ec[x] === v && x.toLowerCase() === lower) return true;
  return false;
}

function _ecIncludes(whole: Readonly<Record<string, string>>, part: Readonly<Record<string, string>>): boolean {
  for (const k of Object.keys(part)) if (!_hasPair(whole, k, part[k]!)) return false;
  return true;
}

/** The same pairs, keys compared case-insensitively, values exactly. */
function _ecEquals(a: Readonly<Record<string, string>>, b: Readonly<Record<string, string>>): boolean {
  return Object.keys(a).length === Object.keys(b).length && _ecIncludes(b, a) && _ecIncludes(a, b);
}

const _ABSENT: { verdict: SessionVerdict } = Object.freeze({ verdict: 'absent' as const });
const _SESSION_PASSES: ReadonlySet<SessionVerdict> = new Set(['absent', 'allow']);

const EMPTY_CONTEXT: Readonly<Record<string, string>> = Object.freeze(dataMap<string>());

/**
 * Does a request's encryption context satisfy a grant's constraints? Keys are compared
 * case-insensitively, values case-sensitively (docs/architecture.md §5.4).
 */
export function constraintsHold(c: GrantConstraints | undefined, ec: Readonly<Record<string, string>> | undefined): boolean {
  if (!c) return true;
  const ctx = ec ?? EMPTY_CONTEXT;
  if (c.EncryptionContextEquals && !_ecEquals(c.EncryptionContextEquals, ctx)) return false;
  if (c.EncryptionContextSubset && !_ecIncludes(ctx, c.EncryptionContextSubset)) return false;
  return true;
}

/**
 * Is grant `child` no broader than `parent`? (KMS Developer Guide, "Granting
 * CreateGrant permission": its operations are a subset and its constraint is
 * equally strict or stricter.)
 */
export function grantNoBroader(parent: GrantView, child: NewGrantInfo): boolean {
  for (const op of child.operations) if (!parent.Operations.includes(op)) return false;
  const pc = parent.Constraints;
  if (!pc || (!pc.EncryptionContextEquals && !pc.EncryptionContextSubset)) return true;
  const cc = child.constraints ?? {};
  if (pc.EncryptionContextEquals) {
    return !!cc.EncryptionContextEquals && _ecEquals(pc.EncryptionContextEquals, cc.EncryptionContextEquals) && !cc.EncryptionContextSubset;
  }
  const ps = pc.EncryptionContextSubset!;
  if (cc.EncryptionContextEquals) return _ecIncludes(cc.EncryptionContextEquals, ps);
  if (cc.EncryptionContextSubset) return _ecIncludes(cc.EncryptionContextSubset, ps);
  return false;
}

/** The kind of policy each reason names, in AWS's words ("… in a resource-based policy"). */
const _POLICY_KIND: Record<Exclude<DenyReason, 'unknown-caller'>, string> = {
  'explicit-deny-key-policy': 'a resource-based policy',
  'explicit-deny-identity-policy': 'an identity-based policy',
  'explicit-deny-session-policy': 'a session policy',
  'no-key-policy-allow': 'resource-based policy',
  'no-identity-policy-allow': 'identity-based policy',
  'no-session-policy-allow': 'session policy',
};

/** An explicit deny's policy kind, or else what follows "because " in AWS's message. */
function _denial(reason: DenyReason, action: string, caller: Caller): { explicitDenyIn?: string; because: string } {
  if (reason === 'unknown-caller') return { because: `the caller${caller.uid !== undefined ? ` (uid ${caller.uid})` : ''} is not mapped to any principal` };
  const kind = _POLICY_KIND[reason];
  return reason.startsWith('explicit-deny-')
    ? { explicitDenyIn: kind, because: `of an explicit deny in ${kind}` }
    : { because: `no ${kind} allows the ${action} action` };
}

/** AWS's AccessDenied message: "User: … is not authorized to perform: … on resource: … with an explicit deny in … / because …". */
export function denialMessage(caller: Caller, action: string, resource: string, reason: DenyReason): string {
  const head = `User: ${caller.arn} is not authorized to perform: ${action} on resource: ${resource}`;
  const d = _denial(reason, action, caller);
  return d.explicitDenyIn !== undefined ? `${head} with an explicit deny in ${d.explicitDenyIn}` : `${head} because ${d.because}`;
}

/** The tail the dispatcher puts after "… on resource: <arn> because " (policy-authorizer.ts). */
export function denialReason(reason: DenyReason, action: string, caller: Caller): string {
  return _denial(reason, action, caller).because;
}

export class PolicyEvaluator {
  readonly cache: PolicyCache;
  private readonly identityPolicies: (caller: Caller) => readonly CompiledPolicy[];
  private readonly grants: GrantSource | undefined;
  private readonly roleArn: EvaluatorOptions['roleArn'];

  constructor(opts: EvaluatorOptions = {}) {
    this.cache = opts.cache ?? new PolicyCache();
    this.identityPolicies = opts.identityPolicies ?? (() => []);
    this.grants = opts.grants;
    this.roleArn = opts.roleArn;
  }

  /** Decide; never throws for a denial. `useGrants: false` is the lockout check's view. */
  evaluate(req: AuthzRequest, opts: { useGrants?: boolean } = {}): Decision {
    const { caller, action } = req;
    const resource = req.resource ?? req.key?.arn ?? '*';
    const deny = (reason: DenyReason, sid?: string): Decision => ({
      allowed: false, reason, message: denialMessage(caller, action, resource, reason), ...(sid ? { sid } : {}),
    });
    if (caller.type === 'Unknown') return deny('unknown-caller');

    const id = callerIds(caller);
    const ctx = new RequestContext(req, this.roleArn);
    let keyDirect: string | null = null; // sid ('' when none) of the first direct Allow
    let keySession = false; // a direct Allow names the caller's own session ARN
    let keyViaAccount = false;

    if (req.key) {
      const kp = typeof req.key.policy === 'string' ? this.cache.get(req.key.policy, 'key', req.key.principalIds) : req.key.policy;
      for (const st of kp.statements) {
        if (!st.matchesAction(action) || !st.matchesResource(resource, ctx)) continue;
        const m = _statementMatch(st, id);
        if (m === 0) continue;
        // Session ARNs are always held by name (policy-document.ts, PrincipalSet.arns).
        const self = m === 2 && id.isSession && st.principal !== undefined && st.principal.arns.has(id.arn);
        if (st.effect === 'Allow' && (m === 2 ? keyDirect !== null && (keySession || !self) : keyViaAccount)) continue; // already known
        if (!_conditionsHold(st, ctx)) continue;
        if (st.effect === 'Deny') return deny('explicit-deny-key-policy', st.sid);
        if (m === 2) {
          if (keyDirect === null || self) keyDirect = st.sid ?? '';
          keySession ||= self;
        } else keyViaAccount = true;
      }
    }

    const idp = id.isRoot || id.isService ? undefined : this._identityEffect(caller, action, resource, ctx);
    if (idp?.effect === 'Deny') return deny('explicit-deny-identity-policy', idp.sid);
    const idAllow = idp?.effect === 'Allow';
    const sp = this._sessionEffect(caller, action, resource, ctx);
    if (sp.verdict === 'deny') return deny('explicit-deny-session-policy', sp.sid);
    // A session policy without an Allow for the request: what the role, its account or any grant allows does not count.
    const limited = sp.verdict === 'implicit';

    if (!req.key) {
      const s = sp.verdict === 'absent' ? {} : { session: sp.verdict };
      if (id.isRoot) return { allowed: true, by: 'account-root' };
      if (!idAllow) return { ...deny('no-identity-policy-allow'), ...s };
      return limited ? { ...deny('no-session-policy-allow'), ...s } : { allowed: true, by: 'iam-policy', ...s };
    }
    if (keyDirect !== null && (keySession || !limited)) return { allowed: true, by: 'key-policy', ...(keyDirect ? { sid: keyDirect } : {}) };
    let sessionMissing = keyDirect !== null; // allowed but for the session policy
    if (keyViaAccount && idAllow) {
      if (!limited) return { allowed: true, by: 'iam-policy' };
      sessionMissing = true;
    }

    if (opts.useGrants !== false && this.grants && action.startsWith('kms:')) {
      const op = action.slice(4);
      for (const g of this.grants.grantsFor(req.key.arn, caller)) {
        if (!g.Operations.includes(op)) continue;
        if (EC_OPERATIONS.has(op) && !constraintsHold(g.Constraints, req.encryptionContext)) continue;
        if (op === 'CreateGrant' && req.grant && !grantNoBroader(g, req.grant)) continue;
        // Every grant, to the role or to the session's own ARN: the session could grant itself what its policy withholds.
        if (limited) { sessionMissing = true; continue; }
        return { allowed: true, by: 'grant', grantId: g.GrantId };
      }
    }
    return deny(sessionMissing ? 'no-session-policy-allow' : keyViaAccount ? 'no-identity-policy-allow' : 'no-key-policy-allow');
  }

  /** The caller's session policy's verdict on the request (see SessionVerdict); `absent` for a caller without one. */
  sessionVerdict(req: AuthzRequest): SessionVerdict {
    if (req.caller.sessionPolicy === undefined) return 'absent';
    const resource = req.resource ?? req.key?.arn ?? '*';
    return this._sessionEffect(req.caller, req.action, resource, new RequestContext(req, this.roleArn)).verdict;
  }

  /**
   * Do the caller's identity policies allow the request, on a key whose policy lets its account's
   * IAM policies count (a statement naming the account, as the default key policy's "Enable IAM
   * User Permissions" does)? For the one action a key policy cannot allow, RetireGrant delegated by
   * the key's account to its IAM principals (policy-authorizer.ts, `_decideRetire`): a key whose
   * policy leaves IAM out gives IAM policies nothing here either, as for every other action. The
   * account root, services and unknown callers have no identity policies: false.
   */
  identityAllows(req: AuthzRequest): boolean {
    if (req.caller.type === 'Unknown' || !req.key) return false;
    const id = callerIds(req.caller);
    if (id.isRoot || id.isService) return false;
    const resource = req.resource ?? req.key.arn;
    const ctx = new RequestContext(req, this.roleArn);
    const kp = typeof req.key.policy === 'string' ? this.cache.get(req.key.policy, 'key', req.key.principalIds) : req.key.policy;
    const viaAccount = kp.statements.some((st) => st.effect === 'Allow' && st.matchesAction(req.action) && st.matchesResource(resource, ctx)
      && _statementMatch(st, id) === 1 && _conditionsHold(st, ctx));
    return viaAccount && this._identityEffect(req.caller, req.action, resource, ctx)?.effect === 'Allow'
      && _SESSION_PASSES.has(this._sessionEffect(req.caller, req.action, resource, ctx).verdict);
  }

  /**
   * The caller's session policy on the request. Its text came in the session token, which the HSM
   * authenticated: it was parsed when AssumeRole issued the token, so it parses now; should it not
   * (a parser grown stricter since), the session is refused everything rather than left unlimited.
   */
  private _sessionEffect(caller: Caller, action: string, resource: string, ctx: RequestContext): { verdict: SessionVerdict; sid?: string } {
    const text = caller.sessionPolicy;
    if (text === undefined) return _ABSENT; // the Decrypt hot path: no allocation
    let p: CompiledPolicy;
    try { p = this.cache.get(text, 'identity'); } catch { return { verdict: 'deny' }; }
    const e = this._policiesEffect([p], action, resource, ctx);
    return e === undefined ? { verdict: 'implicit' } : e.effect === 'Allow' ? { verdict: 'allow' } : { verdict: 'deny', ...(e.sid ? { sid: e.sid } : {}) };
  }

  /** The caller's identity policies on the request: the first Deny that applies, else an Allow, else undefined. */
  private _identityEffect(caller: Caller, action: string, resource: string, ctx: RequestContext): { effect: 'Deny'; sid?: string } | { effect: 'Allow' } | undefined {
    return this._policiesEffect(this.identityPolicies(caller), action, resource, ctx);
  }

  private _policiesEffect(policies: readonly CompiledPolicy[], action: string, resource: string, ctx: RequestContext): { effect: 'Deny'; sid?: string } | { effect: 'Allow' } | undefined {
    let allow = false;
    for (const p of policies) {
      for (const st of p.statements) {
        if (!st.matchesAction(action) || !st.matchesResource(resource, ctx)) continue;
        if (st.effect === 'Allow' && allow) continue;
        if (!_conditionsHold(st, ctx)) continue;
        if (st.effect === 'Deny') return { effect: 'Deny', ...(st.sid ? { sid: st.sid } : {}) };
        allow = true;
      }
    }
    return allow ? { effect: 'Allow' } : undefined;
  }

  /** Decide, throwing AccessDeniedException (message as AWS's) on denial. */
  authorize(req: AuthzRequest): Decision & { allowed: true } {
    const d = this.evaluate(req);
    if (!d.allowed) throw new AccessDeniedException(d.message, { code: `KMS_ACCESS_DENIED` });
    return d;
  }
}
