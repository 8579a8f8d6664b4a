/**
 * STS for ebsd: who a SigV4 access key stands for, GetCallerIdentity and
 * AssumeRole. Session credentials are stateless: the session token carries
 * the session (role name and unique id, session name, expiry, access key id, origin) in clear and its
 * secret sealed by the HSM with that clear part as associated data, so a
 * token altered in any byte fails in the HSM and a daemon restart keeps
 * sessions valid until they expire (README.md, "KMS over the network"; the
 * token's layout: docs/kms-format.md, "STS session token").
 */
import { createHash } from 'node:crypto';
import { EbsdError } from '../../util/errors.js';
import type { Identities } from '../authz/identities.js';
import type { Hsm } from '../hsm/hsm-client.js';
import type { Caller, SessionContext } from '../types.js';
import { SigV4Error } from '../sigv4/errors.js';
import type { Credential, CredentialSource } from '../sigv4/verifier.js';
import { newAccessKeyId, type AccessKeyStore } from './access-keys.js';
import type { TrustPolicies } from './trust-policies.js';
import type { ContextValue } from '../authz/conditions.js';
import { AssumeRoleContext, type AssumeRoleParams } from './assume-role-context.js';
import { callerParty } from '../caller-party.js';
import { SESSION_POLICY_MAX, SESSION_POLICY_MIN, SESSION_POLICY_RE, packSessionPolicy, sessionPolicyProblem, unpackSessionPolicy } from './session-policy.js';

/**
 * AssumeRole DurationSeconds: AWS's bounds (15 min to 12 h), default 1 h. A session may last no longer
 * than its role's MaxSessionDuration (3600 unless the role says more, src/kms/authz/identities.ts), and
 * one assumed by role chaining (the caller is itself a role session) no longer than 1 h.
 */
export const MIN_SESSION_S = 900;
export const MAX_SESSION_S = 43_200;
export const DEFAULT_SESSION_S = 3_600;
export const CHAINED_SESSION_MAX_S = 3_600;
/**
 * 3: the clear part also names the session's origin (`org`), the long-term identity that minted
 * its chain (Caller.origin, src/kms/caller-party.ts), so sessions minted by one identity share its
 * turns in the core and its refusal budget. 2 added the role's unique id (`rid`, AROA…), so a role
 * deleted and created again under the same name does not accept the old role's sessions. Tokens
 * of versions 1 (no `rid`) and 2 (no `org`), issued before, are still accepted until they expire
 * (12 h at most), the role of a version 1 token judged by name as then, and the origin of either
 * taken to be the role (all such sessions of a role share one party): refusing them would impair
 * every fleet host whose SDK holds one (UnrecognizedClientException is a refusal to a host, and
 * the SDK does not fetch new credentials on an error). No new token of an older version can be
 * made: the version is in the clear part the HSM authenticates.
 */
const TOKEN_VERSION = 3;
const TOKEN_VERSION_2 = 2;
const TOKEN_VERSION_1 = 1;
/** AssumeRole RoleArn (STS API Reference, AssumeRole): 20 to 2048 characters. */
export const ROLE_ARN_MIN = 20;
export const ROLE_ARN_MAX = 2048;
/** AssumeRole ExternalId (STS API Reference, AssumeRole): 2 to 1224 characters of this set. */
export const EXTERNAL_ID_MIN = 2;
export const EXTERNAL_ID_MAX = 1224;
const EXTERNAL_ID_RE = /^[\w+=,.@:/-]*$/;
/** AssumeRole RoleSessionName (STS API Reference, AssumeRole): 2 to 64 characters of this set. */
export const SESSION_NAME_MIN = 2;
export const SESSION_NAME_MAX = 64;
const SESSION_NAME_RE = /^[\w+=,.@-]*$/;

/**
 * The token's clear part: `rid` is the role's unique id (RoleId), `iat` the issue time (ms), `org`
 * the session's origin (an ARN; version 3), `sp` the session policy, packed (session-policy.ts), when
 * AssumeRole was given one (version 3 only). Authenticated by the HSM with the rest, so a session cannot
 * change its origin, or drop or widen its policy.
 */
interface SessionMeta { v: number; id: string; role: string; rid: string; session: string; exp: number; iat?: number; org?: string; sp?: string }

/**
 * What the caller's own identity policies decide about an action (src/kms/authz/evaluate.ts's
 * Decision has this shape): an explicit Deny is `reason: 'explicit-deny-identity-policy'` (or
 * `…-session-policy`). `session`: for a caller with a session policy, that policy's own verdict
 * (evaluate.ts, SessionVerdict).
 */
export type IdentityDecision =
  | { allowed: true; session?: 'absent' | 'allow' | 'deny' | 'implicit' }
  | { allowed: false; reason: string; session?: 'absent' | 'allow' | 'deny' | 'implicit' };

const NO_IDENTITY_POLICY: IdentityDecision = { allowed: false, reason: 'no-identity-policy-allow' };

/** STS Query-protocol errors (`<Error><Code>`), with the HTTP status STS uses. */
export class StsError extends EbsdError {
  constructor(awsName: 'AccessDenied' | 'ValidationError' | 'InvalidParameterValue' | 'MissingParameter' | 'InvalidAction' | 'MalformedPolicyDocument' | 'PackedPolicyTooLarge', message: string, readonly status = awsName === 'AccessDenied' ? 403 : 400) {
    super(`STS_${awsName.replace(/([a-z])([A-Z])/g, '$1_$2').toUpperCase()}`, message, { awsName });
  }
}

const invalidToken = (id: string): SigV4Error => new SigV4Error('UnrecognizedClient', 'The security token included in the request is invalid.', id);

/** The AssumeRole members this STS implements (besides Action and Version). */
const ASSUME_ROLE_MEMBERS = new Set(['RoleArn', 'RoleSessionName', 'DurationSeconds', 'ExternalId', 'Policy']);

export class StsService {
  constructor(
    private readonly ids: Identities,
    private readonly keys: AccessKeyStore,
    private readonly trust: TrustPolicies,
    private readonly hsm: Hsm,
    /**
     * What the caller's identity policies decide for `action` on `resource` (the account root: allowed).
     * `context`: the request's own condition keys (sts:ExternalId, ...), for their Conditions.
     */
    private readonly identityDecision: (caller: Caller, action: string, resource: string, context?: ReadonlyMap<string, ContextValue>) => IdentityDecision = () => NO_IDENTITY_POLICY,
    /** `secureTransport`: the listener speaks TLS, so aws:SecureTransport is true in trust-policy conditions. */
    private readonly opts: { secureTransport?: boolean } = {},
  ) {}

  /** The SigV4 verifier's credential lookup. */
  readonly credentials: CredentialSource<Caller> = (id, token, now) => {
    if (id.startsWith('ASIA')) return this.sessionCredential(id, token, now);
    if (token !== undefined) throw invalidToken(id); // long-term keys carry no token
    const k = this.keys.forSigning(id);
    const caller = k && k.active ? this.ids.callerFor(this.ids.userArn(k.userName)) : undefined;
    // The user the key was made for, not one created since under the same name (its UserId differs).
    if (!k || !caller || caller.principalId !== k.userId) throw invalidToken(id);
    return {
      principal: caller,
      cacheId: id,
      signingKey: (date, region, service) => this.derive({ kind: 'access-key', id, context: new Uint8Array(0), sealed: k.sealed(), date, region, service }),
    };
  };

  /**
   * Whether `id` names a long-term access key in the store, active or not (the verifier's holdsKey). A
   * session's key is stateless (its token carries it): held only once the token authenticates in the
   * HSM, which the verifier sees itself; ExpiredToken is decided before that, so it proves nothing.
   */
  readonly holdsAccessKey = (id: string): boolean => !id.startsWith('ASIA') && this.keys.forSigning(id) !== undefined;

  getCallerIdentity(caller: Caller): { UserId: string; Account: string; Arn: string } {
    return { UserId: caller.principalId ?? caller.accountId, Account: caller.accountId, Arn: caller.arn };
  }

  async assumeRole(caller: Caller, p: AssumeRoleParams, now = Date.now()): Promise<Record<string, unknown>> {
    // Managed session policies, tags, a source identity or an MFA code change what the session may do or
    // who it is: this STS implements none of them, so a request carrying one is refused rather than
    // answered with a session broader than the caller asked for.
    for (const member of Object.keys(p)) {
      if (!ASSUME_ROLE_MEMBERS.has(member)) {
        const name = member.split('.')[0]!;
        if (name === 'PolicyArns') {
          // AWS answers a managed policy's ARN that names no policy; ebsd has no managed policies (identity
          // policies are inline, attached by name), so no ARN names one (docs/architecture.md §5.9).
          throw new StsError('ValidationError', `AssumeRole member ${member.slice(0, 64)} names a managed policy, and this STS has none (identity policies are inline, attached to a user or role by name), so no policy ARN names one: pass the session policy inline in Policy`);
        }
        throw new StsError('ValidationError', `AssumeRole member ${name.slice(0, 64)} is not supported by this STS (supported: RoleArn, RoleSessionName, DurationSeconds, ExternalId, Policy); the request was refused so that no session is broader than requested`);
      }
    }
    if (!p.RoleArn) throw new StsError('MissingParameter', 'The request must contain the parameter RoleArn');
    if (!p.RoleSessionName) throw new StsError('MissingParameter', 'The request must contain the parameter RoleSessionName');
    const m = checkAssumeRoleMembers(p);
    const duration = p.DurationSeconds === undefined ? DEFAULT_SESSION_S : Number(p.DurationSeconds);
    const role = m[2]!;
    const notAuthorized = new StsError('AccessDenied', `User: ${caller.arn} is not authorized to perform: sts:AssumeRole on resource: ${p.RoleArn}`);
    // The role is named by its ARN, path and partition included: an ARN that is not the role's own (another
    // path, a made-up partition) names a role that does not exist, answered as STS answers for one. From here
    // on every decision reads the role's ARN, never what the caller wrote.
    const rec = m[1] === this.ids.accountId ? this.ids.listRoles().find((r) => r.RoleName === role) : undefined;
    if (!rec || rec.Arn !== p.RoleArn) throw notAuthorized;
    const roleArn = rec.Arn;
    const ctx = new AssumeRoleContext(caller, roleArn, p, { secureTransport: this.opts.secureTransport === true, region: this.ids.region, roleAccount: m[1]!, now });
    const trusted = this.trust.allows(role, caller, ctx);
    if (!trusted) throw notAuthorized;
    // The caller's own policies are read whatever the trust policy says (IAM User Guide, "Policy evaluation
    // logic"): an explicit Deny there wins even when the trust policy names the caller. Trust through the
    // account only delegates, so then they must also allow it.
    const own = this.identityDecision(caller, 'sts:AssumeRole', roleArn, ctx.extraKeys());
    if (!own.allowed && (own.reason === 'explicit-deny-identity-policy' || own.reason === 'explicit-deny-session-policy' || trusted === 'account')) throw notAuthorized;
    // Role chaining by a session with a session policy: a trust policy naming the caller's role (or `*`)
    // counts only where the session policy allows sts:AssumeRole on the role, one naming the session's own
    // ARN regardless (IAM User Guide, "Session policies"). A judge that gave no verdict: refused (fail closed).
    const session = caller.sessionPolicy === undefined ? 'absent' : own.session ?? 'implicit';
    if (session === 'deny' || (session === 'implicit' && trusted !== 'session')) throw notAuthorized;
    // After the decision: only a caller allowed to assume the role learns its MaxSessionDuration.
    if (caller.type === 'AssumedRole' && duration > CHAINED_SESSION_MAX_S) {
      throw new StsError('ValidationError', 'The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.');
    }
    if (duration > rec.MaxSessionDuration) throw new StsError('ValidationError', 'The requested DurationSeconds exceeds the MaxSessionDuration set for this role.');
    // The session policy is this session's own: a caller's session policy does not pass to the sessions it assumes.
    const policy = p.Policy === undefined ? undefined : this.sessionPolicy(p.Policy);
    const assumed = this.ids.assumeRole(role, p.RoleSessionName);
    const id = newAccessKeyId('ASIA');
    const iat = Math.floor(now / 1000) * 1000;
    // The origin is the caller's party, never a request member: an IAM user (the only holder of an access
    // key) is its own, and a session assuming a role (role chaining) passes its own origin on unchanged.
    const org = callerParty(caller);
    const meta: SessionMeta = { v: TOKEN_VERSION, id, role, rid: rec.RoleId, session: p.RoleSessionName, exp: iat + duration * 1000, iat, org, ...(policy ? { sp: policy.packed } : {}) };
    const clear = Buffer.from(JSON.stringify(meta), 'utf8');
    const { secret, sealed } = await this.hsm.call({ op: 'newSecret', kind: 'session', id, context: clear });
    const token = Buffer.concat([Buffer.of(TOKEN_VERSION), u16(clear.length), clear, sealed]).toString('base64');
    return {
      Credentials: { AccessKeyId: id, SecretAccessKey: secret, SessionToken: token, Expiration: new Date(meta.exp).toISOString() },
      AssumedRoleUser: { AssumedRoleId: assumed.principalId, Arn: assumed.arn },
      ...(policy ? { PackedPolicySize: policy.percent } : {}),
    };
  }

  /** AssumeRole's Policy, parsed as an identity-based policy and packed (session-policy.ts). */
  private sessionPolicy(text: string): { packed: string; percent: number } {
    const problem = sessionPolicyProblem(text);
    if (problem !== undefined) throw new StsError('MalformedPolicyDocument', problem.slice(0, 512));
    const packed = packSessionPolicy(text);
    if (packed.percent > 100) throw new StsError('PackedPolicyTooLarge', `Packed policy consumes ${packed.percent}% of allotted space, please use smaller policy.`);
    return packed;
  }

  private sessionCredential(id: string, token: string | undefined, now: number): Credential<Caller> {
    if (token === undefined) throw invalidToken(id);
    const raw = Buffer.from(token, 'base64');
    // Only the token as issued: node's decoder skips characters outside the alphabet, reads the URL-safe
    // one too and stops at padding, so '<token>=', '<token>\n' or '-' for '+' decode to the same bytes, and
    // each spelling would be a signing-key cache entry of its own (an HSM call each, and at the cache's
    // cap a flush for every caller). Re-encoding gives back the one canonical spelling.
    if (raw.toString('base64') !== token) throw invalidToken(id);
    if (raw.length < 3 || (raw[0] !== TOKEN_VERSION && raw[0] !== TOKEN_VERSION_2 && raw[0] !== TOKEN_VERSION_1)) throw invalidToken(id);
    const n = raw.readUInt16BE(1);
    const clear = raw.subarray(3, 3 + n);
    let meta: SessionMeta;
    try { meta = JSON.parse(clear.toString('utf8')) as SessionMeta; } catch { throw invalidToken(id); }
    if (meta === null || typeof meta !== 'object' || meta.v !== raw[0] || meta.id !== id || typeof meta.exp !== 'number') throw invalidToken(id);
    if (meta.v !== TOKEN_VERSION_1 && typeof meta.rid !== 'string') throw invalidToken(id);
    if (meta.v === TOKEN_VERSION && (typeof meta.org !== 'string' || meta.org === '')) throw invalidToken(id);
    // Session policies came with version 3: an older token naming one was never issued.
    if (meta.sp !== undefined && meta.v !== TOKEN_VERSION) throw invalidToken(id);
    const policy = meta.sp === undefined ? undefined : unpackSessionPolicy(meta.sp);
    if (meta.sp !== undefined && policy === undefined) throw invalidToken(id);
    // Expiry is read before the HSM has authenticated the clear part; a forged later expiry still fails there.
    if (now >= meta.exp) throw new SigV4Error('ExpiredToken', 'The security token included in the request is expired', id);
    let principal: Caller;
    try { principal = this.ids.assumeRole(meta.role, meta.session); } catch { throw invalidToken(id); }
    // The role the session was issued for, not one created since under the same name (its id differs).
    // Like the expiry, read before the HSM authenticates the clear part: a forged id fails there.
    if (meta.v !== TOKEN_VERSION_1 && principal.principalId !== `${meta.rid}:${meta.session}`) throw invalidToken(id);
    principal.sessionContext = this.sessionContext(meta, principal);
    // Authenticated with the rest of the clear part (a forged one fails in the HSM). Older tokens name no
    // origin: their role stands for it, so that sessions minted before the upgrade share one party per role.
    principal.origin = meta.v === TOKEN_VERSION ? meta.org! : this.ids.roleArn(meta.role);
    if (policy !== undefined) principal.sessionPolicy = policy;
    const sealed = raw.subarray(3 + n);
    return {
      principal,
      // The decoded token's digest: one entry per session, whatever the header held, and a short key.
      cacheId: `${id}\0${createHash('sha256').update(raw).digest('base64')}`,
      signingKey: (date, region, service) => this.derive({ kind: 'session', id, context: clear, sealed, date, region, service }),
    };
  }

  /** The issuing role and the session's attributes, for the audit's userIdentity.sessionContext. */
  private sessionContext(meta: SessionMeta, session: Caller): SessionContext {
    const roleId = session.principalId!.slice(0, session.principalId!.indexOf(':'));
    const created = typeof meta.iat === 'number' && Number.isFinite(meta.iat) ? new Date(meta.iat).toISOString().replace(/\.\d{3}Z$/, 'Z') : undefined;
    return Object.freeze({
      sessionIssuer: Object.freeze({ type: 'Role' as const, principalId: roleId, arn: this.ids.roleArn(meta.role), accountId: session.accountId, userName: meta.role }),
      attributes: Object.freeze({ ...(created ? { creationDate: created } : {}), mfaAuthenticated: 'false' as const }),
    });
  }

  private async derive(r: { kind: 'access-key' | 'session'; id: string; context: Uint8Array; sealed: Uint8Array; date: string; region: string; service: string }): Promise<Uint8Array> {
    try {
      return (await this.hsm.call({ op: 'sigv4Key', ...r })).key;
    } catch (e) {
      if ((e as { awsName?: string }).awsName === 'UnrecognizedClientException') throw invalidToken(r.id);
      throw e;
    }
  }
}

/**
 * AssumeRole's member constraints (STS API Reference, AssumeRole): RoleArn 20..2048 characters,
 * RoleSessionName 2..64 of `[\w+=,.@-]`, DurationSeconds 900..43200, ExternalId 2..1224 of
 * `[\w+=,.@:/-]`, Policy 1..2048 of tab, LF, CR and U+0020..U+00FF. Checked before anything else reads them. Like STS, every broken constraint is
 * reported in one ValidationError ("2 validation errors detected: …; …"), each bound in its own
 * words ("Member must have length less than or equal to 64", "Member must have value greater than
 * or equal to 900"), as clients and people match them. A value quoted back is cut (the request
 * body may hold a megabyte); the ExternalId's is left out, as the audit and the log leave it out, and the
 * Policy's (most of a request, and recorded by the audit).
 * Then the RoleArn must name a role ("… is invalid"): its account and name.
 */
function checkAssumeRoleMembers(p: AssumeRoleParams): RegExpExecArray {
  const arn = p.RoleArn ?? '';
  const name = p.RoleSessionName ?? '';
  const quote = (v: string): string => (v.length > 64 ? `${v.slice(0, 64)}...` : v);
  const broken: string[] = [];
  const length = (v: string, min: number, max: number): string | undefined =>
    v.length < min ? `Member must have length greater than or equal to ${min}` : v.length > max ? `Member must have length less than or equal to ${max}` : undefined;
  const violated = (member: string, value: string | undefined, constraint: string | undefined): void => {
    if (constraint) broken.push(`Value ${value === undefined ? '' : `'${quote(value)}' `}at '${member}' failed to satisfy constraint: ${constraint}`);
  };
  violated('roleArn', arn, length(arn, ROLE_ARN_MIN, ROLE_ARN_MAX));
  violated('roleSessionName', name, length(name, SESSION_NAME_MIN, SESSION_NAME_MAX));
  violated('roleSessionName', name, SESSION_NAME_RE.test(name) ? undefined : 'Member must satisfy regular expression pattern: [\\w+=,.@-]*');
  const d = p.DurationSeconds;
  // Digits only: Number() would also read '9e2', '0x384', ' 900 ' and '900.0' as 900.
  if (d !== undefined && !/^[0-9]{1,9}$/.test(d)) violated('durationSeconds', d, 'Member must be an integer written in decimal digits');
  else if (d !== undefined) {
    const n = Number(d);
    violated('durationSeconds', d, n < MIN_SESSION_S ? `Member must have value greater than or equal to ${MIN_SESSION_S}` : n > MAX_SESSION_S ? `Member must have value less than or equal to ${MAX_SESSION_S}` : undefined);
  }
  const x = p.ExternalId;
  if (x !== undefined) {
    violated('externalId', undefined, length(x, EXTERNAL_ID_MIN, EXTERNAL_ID_MAX));
    violated('externalId', undefined, EXTERNAL_ID_RE.test(x) ? undefined : 'Member must satisfy regular expression pattern: [\\w+=,.@:\\/-]*');
  }
  // The policy is not quoted back either: it may be most of the request, and the audit records it bounded.
  const pol = p.Policy;
  if (pol !== undefined) {
    violated('policy', undefined, length(pol, SESSION_POLICY_MIN, SESSION_POLICY_MAX));
    violated('policy', undefined, SESSION_POLICY_RE.test(pol) ? undefined : 'Member must satisfy regular expression pattern: [\\u0009\\u000A\\u000D\\u0020-\\u00FF]+');
  }
  if (broken.length > 0) {
    throw new StsError('ValidationError', `${broken.length} validation error${broken.length > 1 ? 's' : ''} detected: ${broken.join('; ')}`);
  }
  const m = /^arn:[\w-]+:iam::(\d{12}):role(?:\/.*)?\/([\w+=,.@-]+)$/.exec(arn);
  if (!m) throw new StsError('ValidationError', `${arn} is invalid`);
  return m;
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}
