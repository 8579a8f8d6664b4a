import type { Caller } from '../types.js';
import type { ConditionContext, ContextValue } from './conditions.js';
import type { CompiledPolicy } from './policy-document.js';
import type { PrincipalBindings } from './principal-bindings.js';
import { callerIds } from './caller-ids.js';

/**
 * The request context that conditions read (IAM "global condition context
 * keys" and the KMS condition keys, KMS Developer Guide "AWS KMS condition
 * keys"). Built lazily: a key is computed only when a policy asks for it, so
 * a Decrypt through the EBS key policy touches two or three keys, not twenty.
 */

/** What the evaluator knows about the KMS key a request targets. */
export interface KeyInfo {
  arn: string;
  accountId: string;
  region?: string;
  /** The key policy, as text (compiled through the policy cache) or already compiled. */
  policy: string | CompiledPolicy;
  /** The text policy's principal bindings (principal-bindings.ts), compiled in with it. */
  principalIds?: PrincipalBindings;
  keySpec?: string;
  keyUsage?: string;
  keyOrigin?: string;
  /** `AWS` for AWS-managed keys (alias/aws/...), `CUSTOMER` otherwise. */
  keyManager?: 'AWS' | 'CUSTOMER';
  /** Alias names (`alias/...`) pointing at the key: kms:ResourceAliases. */
  aliases?: readonly string[];
  /** Tags, for aws:ResourceTag/<key>. */
  tags?: Readonly<Record<string, string>>;
}

/** The grant a CreateGrant request would create: kms:GrantOperations and friends. */
export interface NewGrantInfo {
  operations: readonly string[];
  granteePrincipal: string;
  retiringPrincipal?: string;
  constraints?: GrantConstraints;
}

export interface GrantConstraints {
  EncryptionContextEquals?: Readonly<Record<string, string>>;
  EncryptionContextSubset?: Readonly<Record<string, string>>;
}

export interface AuthzRequest {
  /** IAM action, `kms:Decrypt`. */
  action: string;
  caller: Caller;
  /** Absent for account-level actions (CreateKey, ListKeys, ListAliases, ListRetirableGrants, GenerateRandom). */
  key?: KeyInfo;
  /** The region the request was made to (the KMS's): aws:RequestedRegion of a call without a key. */
  region?: string;
  /** Resource ARN the statement's Resource is matched against; default the key ARN, else `*`. */
  resource?: string;
  encryptionContext?: Readonly<Record<string, string>>;
  grantTokens?: readonly string[];
  encryptionAlgorithm?: string;
  signingAlgorithm?: string;
  macAlgorithm?: string;
  dataKeyPairSpec?: string;
  messageType?: string;
  /** The alias the caller named in KeyId (kms:RequestAlias), `alias/...`. */
  requestAlias?: string;
  /** For CreateKey: the requested spec/usage/origin (kms:KeySpec, kms:KeyUsage, kms:KeyOrigin). */
  keySpec?: string;
  keyUsage?: string;
  keyOrigin?: string;
  grant?: NewGrantInfo;
  bypassPolicyLockoutSafetyCheck?: boolean;
  reEncryptOnSameKey?: boolean;
  /** ScheduleKeyDeletion's PendingWindowInDays, 30 when left out (kms:ScheduleKeyDeletionPendingWindowInDays). */
  pendingWindowInDays?: number;
  /** EnableKeyRotation's RotationPeriodInDays, 365 when left out (kms:RotationPeriodInDays). */
  rotationPeriodInDays?: number;
  /**
   * Tags the request would set (CreateKey, TagResource): aws:RequestTag/<k>, keyed by TagKey
   * as written. Keys differing only in case are one condition key with several values.
   */
  requestTags?: Readonly<Record<string, string>>;
  /** Tag keys the request names (CreateKey, TagResource, UntagResource): aws:TagKeys. */
  tagKeys?: readonly string[];
  /**
   * Any further keys, named as in policies (looked up case-insensitively):
   * how another service's request (EC2's `ec2:VolumeSize`, `aws:RequestTag/<k>`,
   * `aws:ResourceTag/<k>` of a volume) reaches the same evaluator. Consulted
   * only where the built-in keys above have no value, so it cannot override
   * who the caller is. A `Map` keeps any outside key (`__proto__` too) as data.
   */
  context?: ReadonlyMap<string, ContextValue> | Readonly<Record<string, ContextValue>>;
  /** Evaluation time (ms since epoch); default now. */
  now?: number;
}

const GRANT_ACTIONS = new Set(['kms:creategrant', 'kms:listgrants', 'kms:revokegrant']);
const EC_PREFIX = 'kms:encryptioncontext:';
const TAG_PREFIX = 'aws:resourcetag/';
const REQUEST_TAG_PREFIX = 'aws:requesttag/';


export class RequestContext implements ConditionContext {
  private ecLower?: Map<string, ContextValue>;
  private extraLower?: Map<string, ContextValue>;
  constructor(private readonly req: AuthzRequest, private readonly roleArnOf?: (account: string, name: string) => string | undefined) {}

  get(key: string): ContextValue | undefined {
    const v = this._builtin(key);
    return v !== undefined ? v : this._extra(key);
  }

  private _extra(key: string): ContextValue | undefined {
    const extra = this.req.context;
    if (!extra) return undefined;
    if (!this.extraLower) {
      this.extraLower = new Map();
      const entries = extra instanceof Map ? extra.entries() : Object.entries(extra);
      for (const [k, v] of entries) if (!this.extraLower.has(k.toLowerCase())) this.extraLower.set(k.toLowerCase(), v);
    }
    return this.extraLower.get(key);
  }

  /**
   * aws:PrincipalArn of a role session: the role's IAM ARN with its path (`role/untrusted/R`),
   * as a Role caller's own ARN has it; the STS session ARN carries no path.
   */
  private _sessionRoleArn(): string {
    const c = this.req.caller;
    const ids = callerIds(c);
    if (ids.roleName === undefined) return c.arn;
    const issuer = c.sessionContext?.sessionIssuer;
    if (issuer && issuer.userName === ids.roleName && issuer.accountId === ids.account) return issuer.arn;
    const m = /^arn:[\w-]+:sts::(\d{12}):/.exec(c.arn);
    return (m && this.roleArnOf?.(m[1]!, ids.roleName)) ?? ids.roleArn ?? c.arn;
  }

  private _builtin(key: string): ContextValue | undefined {
    const r = this.req;
    const c = r.caller;
    switch (key) {
      case 'kms:calleraccount':
      case 'aws:principalaccount':
        return c.type === 'AWSService' ? undefined : c.accountId;
      case 'kms:viaservice':
        return c.viaService;
      case 'aws:principalarn':
        if (c.type === 'AWSService') return undefined;
        return c.type === 'AssumedRole' ? this._sessionRoleArn() : c.arn;
      case 'aws:principaltype':
        return { Root: 'Account', IAMUser: 'User', AssumedRole: 'AssumedRole', Role: 'AssumedRole', AWSService: undefined, Unknown: 'Anonymous' }[c.type];
      case 'aws:principalisawsservice':
        // In every request (docs/architecture.md §5.4): absent, a Deny on it being false never fired.
        return c.type === 'AWSService' ? 'true' : 'false';
      case 'aws:principalservicename':
        return c.type === 'AWSService' ? c.arn : undefined;
      case 'aws:username':
        return c.type === 'IAMUser' ? c.userName : undefined;
      case 'aws:userid':
        return c.principalId;
      case 'aws:sourceip':
        return c.sourceIp;
      case 'aws:useragent':
        return c.userAgent;
      case 'aws:viaawsservice':
        return c.viaService ? 'true' : 'false';
      // Present only in a request signed with temporary credentials (IAM User Guide, "AWS global
      // condition context keys"), so a Deny on aws:TokenIssueTime revokes the sessions issued before
      // a time, as IAM's "Revoke active sessions" writes it (docs/architecture.md §5.4). MFA is never
      // part of an ebsd session.
      // A version 1 session token recorded no issue time: taken as the epoch, so every revoke Deny reaches it.
      case 'aws:tokenissuetime':
        return c.sessionContext ? c.sessionContext.attributes.creationDate ?? '1970-01-01T00:00:00Z' : undefined;
      case 'aws:multifactorauthpresent':
        return c.sessionContext ? c.sessionContext.attributes.mfaAuthenticated : undefined;
      case 'aws:currenttime':
        return new Date(r.now ?? Date.now()).toISOString();
      case 'aws:epochtime':
        return String(Math.floor((r.now ?? Date.now()) / 1000));
      case 'aws:securetransport':
        // False only for a request that came in over plain HTTP; HTTPS, the control socket and the
        // daemon's own calls are true (docs/architecture.md §5.4, "aws:SecureTransport").
        return c.secureTransport === false ? 'false' : 'true';
      case 'aws:requestedregion':
        // Every request is made to a region, a call without a key (CreateKey, ListKeys) too: absent, a region
        // lock (Deny unless StringEquals aws:RequestedRegion) refused them all (docs/architecture.md §5.4).
        return r.key?.region ?? r.region;
      case 'aws:resourceaccount':
        return r.key?.accountId;
      case 'kms:encryptioncontextkeys':
        return r.encryptionContext ? Object.keys(r.encryptionContext) : undefined;
      case 'kms:grantisforawsresource':
        return GRANT_ACTIONS.has(r.action.toLowerCase()) ? (c.viaService ? 'true' : 'false') : undefined;
      case 'kms:grantoperations':
        return r.grant?.operations;
      case 'kms:granteeprincipal':
        return r.grant?.granteePrincipal;
      case 'kms:retiringprincipal':
        return r.grant?.retiringPrincipal;
      case 'kms:grantconstrainttype': {
        const k = r.grant?.constraints;
        if (!k) return undefined;
        return k.EncryptionContextEquals ? 'EncryptionContextEquals' : k.EncryptionContextSubset ? 'EncryptionContextSubset' : undefined;
      }
      case 'kms:keyspec':
        return r.keySpec ?? r.key?.keySpec;
      case 'kms:keyusage':
        return r.keyUsage ?? r.key?.keyUsage;
      case 'kms:keyorigin':
        return r.keyOrigin ?? r.key?.keyOrigin;
      case 'kms:encryptionalgorithm':
        return r.encryptionAlgorithm;
      case 'kms:signingalgorithm':
        return r.signingAlgorithm;
      case 'kms:macalgorithm':
        return r.macAlgorithm;
      case 'kms:datakeypairspec':
        return r.dataKeyPairSpec;
      case 'kms:messagetype':
        return r.messageType;
      case 'kms:requestalias':
        return r.requestAlias;
      case 'kms:resourcealiases':
        return r.key?.aliases;
      case 'kms:bypasspolicylockoutsafetycheck':
        return r.bypassPolicyLockoutSafetyCheck === undefined ? undefined : String(r.bypassPolicyLockoutSafetyCheck);
      case 'kms:reencryptonsamekey':
        return r.reEncryptOnSameKey === undefined ? undefined : String(r.reEncryptOnSameKey);
      case 'kms:multiregion':
        // Every key has the property (docs/architecture.md §5.4); ebsd's are all single-Region, and CreateKey
        // refuses MultiRegion true before it is authorized (ops/keys.ts).
        return r.key || r.action.toLowerCase() === 'kms:createkey' ? 'false' : undefined;
      case 'kms:schedulekeydeletionpendingwindowindays':
        return r.pendingWindowInDays === undefined ? undefined : String(r.pendingWindowInDays);
      case 'kms:rotationperiodindays':
        return r.rotationPeriodInDays === undefined ? undefined : String(r.rotationPeriodInDays);
      case 'aws:tagkeys':
        return r.tagKeys;
    }
    if (key.startsWith(EC_PREFIX)) {
      // KMS Developer Guide: the context key in kms:EncryptionContext:<key> is matched case-insensitively; values are not.
      const ec = r.encryptionContext;
      if (!ec) return undefined;
      if (!this.ecLower) {
        // Keys differing only in case ({"Dept": "secret", "dept": "x"}) are one condition key with
        // every value: a Deny on any of them fires, whichever the request lists last.
        this.ecLower = new Map();
        for (const [k, v] of Object.entries(ec)) {
          const l = k.toLowerCase();
          const had = this.ecLower.get(l);
          this.ecLower.set(l, had === undefined ? v : typeof had === 'string' ? [had, v] : [...had, v]);
        }
      }
      return this.ecLower.get(key.slice(EC_PREFIX.length));
    }
    if (key.startsWith(REQUEST_TAG_PREFIX) && r.requestTags) {
      // Every value of a case-differing same key ("Project" and "project"): a Deny on any of them fires.
      const want = key.slice(REQUEST_TAG_PREFIX.length);
      const vals: string[] = [];
      for (const [k, v] of Object.entries(r.requestTags)) if (k.toLowerCase() === want) vals.push(v);
      return vals.length === 0 ? undefined : vals.length === 1 ? vals[0] : vals;
    }
    if (key.startsWith(TAG_PREFIX)) {
      const tags = r.key?.tags;
      if (!tags) return undefined;
      const want = key.slice(TAG_PREFIX.length);
      for (const [k, v] of Object.entries(tags)) if (k.toLowerCase() === want) return v;
      return undefined;
    }
    return undefined;
  }
}
