import { compileConditions, type CompiledCondition, type ConditionContext } from './conditions.js';
import { compileTemplate, hasVariables } from './policy-variables.js';
import { malformedPolicy } from './errors.js';
import { globMatcher } from './wildcard.js';
import { JsonDocumentError, parseStrictJson } from '../../util/strict-json.js';
import { MAX_KEY_POLICY_BYTES, MAX_POLICY_DEPTH, checkKeyPolicySize } from '../validate.js';
import { hasMember } from '../data-map.js';
import type { PrincipalBindings } from './principal-bindings.js';

/**
 * IAM / KMS policy documents: parse, validate, compile.
 * (IAM User Guide, "IAM JSON policy element reference"; KMS Developer Guide,
 * "Key policies in AWS KMS".) A compiled policy answers "does this statement
 * apply to principal P, action A, resource R, context C" without re-reading JSON.
 */

/** KMS quota: a key policy document is at most 32 KiB (validate.ts). */
export { MAX_KEY_POLICY_BYTES };
/** IAM quota for a customer managed policy document (characters, whitespace excluded by IAM; we count all). */
export const MAX_IDENTITY_POLICY_BYTES = 6144;

export const POLICY_VERSIONS: readonly string[] = ['2012-10-17', '2008-10-17'];
const TOP_ELEMENTS = new Set(['Version', 'Id', 'Statement']);
const STATEMENT_ELEMENTS = new Set(['Sid', 'Effect', 'Principal', 'NotPrincipal', 'Action', 'NotAction', 'Resource', 'NotResource', 'Condition']);
const PRINCIPAL_TYPES = new Set(['AWS', 'Service', 'Federated', 'CanonicalUser']);

export type PolicyKind = 'key' | 'identity';
export type Effect = 'Allow' | 'Deny';

/**
 * Who a Principal / NotPrincipal element names, normalized. A user or role ARN bound to a
 * unique id (principal-bindings.ts) names the principal with that id: its id is in `ids`, and
 * its ARN (and role key) only where matching by name can grant nothing the policy did not give
 * the principal it named: in a Deny's Principal (the Deny still reaches a principal created
 * again under the name) and an Allow's NotPrincipal (one created again under the name stays
 * excluded). docs/architecture.md §5.4.
 */
export interface PrincipalSet {
  /** `"*"` or `{"AWS": "*"}`. */
  readonly any: boolean;
  /** Principal ARNs matched by name: assumed-role sessions, unbound users and roles (see above). */
  readonly arns: ReadonlySet<string>;
  /** Account ids whose root (`arn:aws:iam::<id>:root` or bare id) is named: delegation to the account. */
  readonly accounts: ReadonlySet<string>;
  /** `role:<account>:<roleName>` for each role in `arns`, so its assumed-role sessions match too. */
  readonly roles: ReadonlySet<string>;
  /** Unique ids (AIDA…, AROA…) of the bound users and roles named; a role's id covers its sessions. */
  readonly ids: ReadonlySet<string>;
  readonly services: ReadonlySet<string>;
}

export interface CompiledStatement {
  readonly index: number;
  readonly sid?: string;
  readonly effect: Effect;
  /** Absent in identity policies (the principal is the identity the policy is attached to). */
  readonly principal?: PrincipalSet;
  readonly notPrincipal?: PrincipalSet;
  matchesAction(action: string): boolean;
  /** `ctx`: the request, for policy variables in Resource (`${aws:username}`); without it they match nothing. */
  matchesResource(arn: string, ctx?: ConditionContext): boolean;
  readonly conditions: readonly CompiledCondition[];
}

export interface CompiledPolicy {
  readonly kind: PolicyKind;
  readonly version?: string;
  readonly id?: string;
  readonly statements: readonly CompiledStatement[];
  /** The document as submitted (GetKeyPolicy returns it verbatim). */
  readonly text: string;
  /** The exact user and role ARNs (any account) named in a Principal or NotPrincipal: what binding binds. */
  readonly principalArns: readonly string[];
}

export interface ParseOptions {
  kind: PolicyKind;
  /** The local account; principals in it must exist (checked through `principalExists`). */
  accountId?: string;
  /** Called for users, roles and sessions of the local account; false makes the principal invalid. */
  principalExists?: (arn: string) => boolean;
  /**
   * The policy's principal bindings (principal-bindings.ts): a user or role ARN bound here
   * names the principal with that id. Without them every ARN is matched by name (a policy
   * evaluated outside the KMS, or one naming no user or role of the account).
   */
  bindings?: PrincipalBindings;
  maxBytes?: number;
}

const ACCOUNT_RE = /^\d{12}$/;
const PARTITION = '(aws|aws-cn|aws-us-gov)';
const ROOT_RE = new RegExp(`^arn:${PARTITION}:iam::(\\d{12}):root$`);
const USER_ROLE_RE = new RegExp(`^arn:${PARTITION}:iam::(\\d{12}):(user|role)(/[\\w+=,.@/-]*)?/([\\w+=,.@-]{1,128})$`);
const SESSION_RE = new RegExp(`^arn:${PARTITION}:sts::(\\d{12}):assumed-role/([\\w+=,.@-]{1,64})/([\\w+=,.@-]{2,64})$`);
const SERVICE_RE = /^[a-z0-9][a-z0-9.-]*\.amazonaws\.com(\.cn)?$/;
const ACTION_RE = /^[A-Za-z0-9-]+:[A-Za-z0-9*?]+$/;
/** A unique principal id as IAM writes one (AIDA… a user, AROA… a role, and IAM's other four-letter prefixes). */
export const UNIQUE_ID_RE = /^A[A-Z]{3}[A-Z2-7]{16,}$/;

/** Parsed shape of a principal ARN the evaluator understands. */
export type PrincipalForm =
  | { kind: 'root'; account: string }
  | { kind: 'user' | 'role'; account: string; name: string }
  | { kind: 'session'; account: string; role: string; session: string };

export function parsePrincipalArn(arn: string): PrincipalForm | undefined {
  let m = ROOT_RE.exec(arn);
  if (m) return { kind: 'root', account: m[2]! };
  m = USER_ROLE_RE.exec(arn);
  if (m) return { kind: m[3] as 'user' | 'role', account: m[2]!, name: m[5]! };
  m = SESSION_RE.exec(arn);
  if (m) return { kind: 'session', account: m[2]!, role: m[3]!, session: m[4]! };
  return undefined;
}

export function isServicePrincipal(s: string): boolean {
  return SERVICE_RE.test(s);
}

const _asList = (v: unknown): unknown[] => (Array.isArray(v) ? v : [v]);

function _strings(v: unknown, where: string): string[] {
  const list = _asList(v);
  if (list.length === 0) throw malformedPolicy(`${where} must not be empty`);
  return list.map((x) => {
    if (typeof x !== 'string' || x.length === 0) throw malformedPolicy(`${where} must be a non-empty string or a list of them`);
    return x;
  });
}

const INVALID_PRINCIPALS = 'Policy contains a statement with one or more invalid principals';

/** The account a policy's bindings are of: every bound ARN is of the local account (principal-bindings.ts). */
function _bindingsAccount(b: PrincipalBindings): string | undefined {
  for (const arn of Object.keys(b)) return parsePrincipalArn(arn)?.account;
  return undefined;
}

/**
 * `byName`: whether a bound ARN also matches by name (a Deny's Principal, an Allow's
 * NotPrincipal; see PrincipalSet). `named`: collects the user and role ARNs named.
 */
function _principalSet(v: unknown, where: string, opts: ParseOptions, byName: boolean, named: Set<string>): PrincipalSet {
  const arns = new Set<string>();
  const accounts = new Set<string>();
  const roles = new Set<string>();
  const ids = new Set<string>();
  const services = new Set<string>();
  let any = false;
  if (v === '*') return { any: true, arns, accounts, roles, ids, services };
  if (v === null || typeof v !== 'object' || Array.isArray(v)) {
    throw malformedPolicy(`${INVALID_PRINCIPALS}: ${where} must be "*" or an object such as {"AWS": ...}`);
  }
  const entries = Object.entries(v as Record<string, unknown>);
  if (entries.length === 0) throw malformedPolicy(`${INVALID_PRINCIPALS}: ${where} is empty`);
  for (const [type, raw] of entries) {
    if (!PRINCIPAL_TYPES.has(type)) throw malformedPolicy(`${INVALID_PRINCIPALS}: unknown principal type "${type}" in ${where}`);
    for (const p of _strings(raw, `${where}.${type}`)) {
      if (type === 'AWS') {
        if (p === '*') { any = true; continue; }
        const id = ACCOUNT_RE.test(p) ? p : undefined;
        const form = id ? ({ kind: 'root', account: id } as const) : parsePrincipalArn(p);
        if (!form && UNIQUE_ID_RE.test(p)) {
          // GetKeyPolicy shows a deleted principal's unique id where its ARN was; it names nobody, so it is not accepted back.
          throw malformedPolicy(`${INVALID_PRINCIPALS}: "${p}" is a unique principal id (a deleted principal's, as a stored policy shows one), not a principal ARN; name an existing principal by its ARN or remove it`);
        }
        if (!form) throw malformedPolicy(`${INVALID_PRINCIPALS}: "${p}" is not an account id or a principal ARN`);
        if (opts.accountId && form.account === opts.accountId && form.kind !== 'root' && opts.principalExists) {
          // A session ARN is checked as one (its role by name: a session ARN carries no path, and a role with one exists).
          if (!opts.principalExists(p)) throw malformedPolicy(`${INVALID_PRINCIPALS}: "${p}" does not exist in account ${opts.accountId}`);
        }
        if (form.kind === 'root') accounts.add(form.account);
        else {
          // A policy with bindings names a user or role of its account only through them: one missing
          // from them (bindings out of step with the text) names nobody, never whoever holds the name now.
          const bound = form.kind === 'session' || opts.bindings === undefined ? undefined
            : hasMember(opts.bindings, p) ? opts.bindings[p]!
            : form.account === _bindingsAccount(opts.bindings) ? '' : undefined;
          if (form.kind !== 'session') named.add(p);
          if (bound !== '' && bound !== undefined) ids.add(bound); // '' binds to nobody
          if (bound === undefined || byName) {
            arns.add(p);
            if (form.kind === 'role') roles.add(`role:${form.account}:${form.name}`);
          }
        }
      } else if (type === 'Service') {
        if (p === '*') { any = true; continue; }
        if (!isServicePrincipal(p)) throw malformedPolicy(`${INVALID_PRINCIPALS}: "${p}" is not a service principal`);
        services.add(p);
      }
      // Federated / CanonicalUser are valid syntax but never match a local caller.
    }
  }
  return { any, arns, accounts, roles, ids, services };
}

function _compileStatement(s: unknown, index: number, opts: ParseOptions, variables: boolean, named: Set<string>): CompiledStatement {
  const where = `Statement[${index}]`;
  if (s === null || typeof s !== 'object' || Array.isArray(s)) throw malformedPolicy(`${where} must be an object`);
  const st = s as Record<string, unknown>;
  for (const k of Object.keys(st)) {
    if (!STATEMENT_ELEMENTS.has(k)) throw malformedPolicy(`${where}: unknown element "${k}"`);
  }
  const sid = st.Sid;
  if (sid !== undefined && typeof sid !== 'string') throw malformedPolicy(`${where}: Sid must be a string`);
  const w = sid ? `${where} (Sid "${sid}")` : where;
  if (st.Effect !== 'Allow' && st.Effect !== 'Deny') {
    throw malformedPolicy(`${w}: Effect must be "Allow" or "Deny", got ${JSON.stringify(st.Effect ?? null)}`);
  }
  const hasP = 'Principal' in st;
  const hasNP = 'NotPrincipal' in st;
  if (opts.kind === 'key') {
    if (hasP === hasNP) throw malformedPolicy(`${w}: a key policy statement needs exactly one of Principal or NotPrincipal`);
  } else if (hasP || hasNP) {
    throw malformedPolicy(`${w}: an identity-based policy must not contain Principal or NotPrincipal`);
  }
  if (('Action' in st) === ('NotAction' in st)) throw malformedPolicy(`${w}: needs exactly one of Action or NotAction`);
  if (('Resource' in st) === ('NotResource' in st)) throw malformedPolicy(`${w}: needs exactly one of Resource or NotResource`);

  const actionKey = 'Action' in st ? 'Action' : 'NotAction';
  const actions = _strings(st[actionKey], `${w}.${actionKey}`);
  for (const a of actions) {
    if (a !== '*' && !ACTION_RE.test(a)) throw malformedPolicy(`${w}: "${a}" is not a valid action (expected service:Action)`);
  }
  const actMatch = globMatcher(actions, true); // IAM actions are case-insensitive
  const actNeg = actionKey === 'NotAction';
  // Actions are a small closed set, so memoize per statement: one Map lookup per call.
  const memo = new Map<string, boolean>();
  const matchesAction = (a: string): boolean => {
    let r = memo.get(a);
    if (r === undefined) {
      r = actMatch(a) !== actNeg;
      if (memo.size < 1024) memo.set(a, r);
    }
    return r;
  };

  const resKey = 'Resource' in st ? 'Resource' : 'NotResource';
  const resources = _strings(st[resKey], `${w}.${resKey}`);
  for (const r of resources) {
    if (r !== '*' && !r.startsWith('arn:')) throw malformedPolicy(`${w}: resource "${r}" must be "*" or an ARN`);
  }
  const resNeg = resKey === 'NotResource';
  let matchesResource: (arn: string, ctx?: ConditionContext) => boolean;
  if (variables && resources.some(hasVariables)) {
    // IAM policy variables (Version 2012-10-17): resolved per request. A pattern whose variable has
    // no value matches no resource, in Resource and NotResource alike (so a Deny's NotResource of
    // nothing covers every resource: it fails closed).
    const templates = resources.map(compileTemplate);
    matchesResource = (arn, ctx) => {
      const pats: string[] = [];
      const lits: (Uint8Array | undefined)[] = [];
      for (const t of templates) {
        const r = t.resolve(ctx);
        if (r) { pats.push(r.s); lits.push(r.lit); }
      }
      return (pats.length > 0 && globMatcher(pats, false, lits)(arn)) !== resNeg;
    };
  } else {
    const resMatch = globMatcher(resources, false);
    matchesResource = (arn) => resMatch(arn) !== resNeg;
  }

  const conditions = st.Condition === undefined ? [] : compileConditions(st.Condition, w, { variables });
  return {
    index,
    ...(sid ? { sid } : {}),
    effect: st.Effect,
    ...(hasP ? { principal: _principalSet(st.Principal, `${w}.Principal`, opts, st.Effect === 'Deny', named) } : {}),
    ...(hasNP ? { notPrincipal: _principalSet(st.NotPrincipal, `${w}.NotPrincipal`, opts, st.Effect === 'Allow', named) } : {}),
    matchesAction,
    matchesResource,
    conditions,
  };
}

/**
 * Parse and validate a policy document. Throws MalformedPolicyDocumentException
 * with a message naming the problem (AWS's wording first where it has one).
 */
export function parsePolicy(text: string, opts: ParseOptions): CompiledPolicy {
  if (typeof text !== 'string' || text.length === 0) throw malformedPolicy('The policy document is empty');
  if (opts.kind === 'key' && opts.maxBytes === undefined) {
    checkKeyPolicySize(text); // over the KMS quota: LimitExceededException, as CreateKey and PutKeyPolicy answer
  } else {
    const max = opts.maxBytes ?? MAX_IDENTITY_POLICY_BYTES;
    const size = Buffer.byteLength(text, 'utf8');
    if (size > max) throw malformedPolicy(`The policy document is ${size} bytes; the limit is ${max} bytes`);
  }
  // KMS API reference, PutKeyPolicy: printable ASCII (U+0020..U+00FF) plus tab, LF and CR.
  // eslint-disable-next-line no-control-regex
  const bad = /[^\t\n\r\u0020-\u00FF]/.exec(text);
  if (bad) throw malformedPolicy(`The policy document contains a character outside the allowed range at offset ${bad.index}`);
  let doc: unknown;
  try {
    // Strict: a duplicate member ({"Effect":"Deny","Effect":"Allow"}) is refused, not read as its last
    // value, and nesting is bounded before any recursive reader sees the document.
    doc = parseStrictJson(text, { what: 'policy document', maxDepth: MAX_POLICY_DEPTH, awsName: 'MalformedPolicyDocumentException' });
  } catch (e) {
    if (e instanceof JsonDocumentError) throw malformedPolicy(`The policy document is not valid JSON: ${e.message}`);
    throw e;
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw malformedPolicy('The policy document must be a JSON object');
  const d = doc as Record<string, unknown>;
  for (const k of Object.keys(d)) if (!TOP_ELEMENTS.has(k)) throw malformedPolicy(`Unknown element "${k}" in the policy document`);
  if (d.Version !== undefined && (typeof d.Version !== 'string' || !POLICY_VERSIONS.includes(d.Version))) {
    throw malformedPolicy(`Version must be one of ${POLICY_VERSIONS.join(', ')}, got ${JSON.stringify(d.Version)}`);
  }
  if (d.Id !== undefined && typeof d.Id !== 'string') throw malformedPolicy('Id must be a string');
  if (d.Statement === undefined) throw malformedPolicy('The policy document has no Statement');
  const raw = _asList(d.Statement);
  if (raw.length === 0) throw malformedPolicy('Statement must not be empty');
  // IAM policy variables are replaced only in a policy whose Version is 2012-10-17 (IAM User Guide, "Version").
  const variables = d.Version === '2012-10-17';
  const named = new Set<string>();
  const statements = raw.map((s, i) => _compileStatement(s, i, opts, variables, named));
  return {
    kind: opts.kind,
    ...(d.Version !== undefined ? { version: d.Version as string } : {}),
    ...(d.Id !== undefined ? { id: d.Id as string } : {}),
    statements,
    text,
    principalArns: [...named],
  };
}

/**
 * Compiled policies keyed by their exact text. Compiling costs tens of
 * microseconds; a cache hit is one Map lookup, which keeps Decrypt's
 * authorization well under its share of the 50 µs budget (≥ 20,000/s).
 * Entries are compiled without the principal-existence check: that check
 * belongs to PutKeyPolicy, not to every call.
 *
 * A policy with principal bindings is compiled with them (the ids are in its
 * principal sets: no lookup by name per call) and cached by its bindings
 * object, which the key record holds: one WeakMap lookup, and the entry goes
 * with the record version that held it.
 */
export class PolicyCache {
  // Keyed by the text itself (no prefix): V8 caches a string's hash on the
  // string, so the keystore's policy string hashes once, not on every call.
  private readonly maps: Record<PolicyKind, Map<string, CompiledPolicy>> = { key: new Map(), identity: new Map() };
  private readonly bound = new WeakMap<PrincipalBindings, CompiledPolicy>();
  constructor(private readonly capacity = 1024) {}

  get(text: string, kind: PolicyKind, bindings?: PrincipalBindings): CompiledPolicy {
    if (bindings) {
      let b = this.bound.get(bindings);
      // The same bindings object with another text or kind (never from one key record): compiled anew.
      if (b && b.text === text && b.kind === kind) return b;
      b = parsePolicy(text, { kind, bindings, maxBytes: Number.MAX_SAFE_INTEGER });
      this.bound.set(bindings, b);
      return b;
    }
    const map = this.maps[kind];
    let p = map.get(text);
    if (p) return p;
    p = parsePolicy(text, { kind, maxBytes: Number.MAX_SAFE_INTEGER });
    if (map.size >= this.capacity) {
      const oldest = map.keys().next().value;
      if (oldest !== undefined) map.delete(oldest);
    }
    map.set(text, p);
    return p;
  }

  get size(): number {
    return this.maps.key.size + this.maps.identity.size;
  }
}
