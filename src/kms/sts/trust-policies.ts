/**
 * Role trust policies ("assume role policy documents"): who may call
 * sts:AssumeRole on a role. Evaluated as IAM does for the parts ebsd supports:
 * an explicit Deny wins, then any Allow; a principal matches as in a key
 * policy (src/kms/authz/evaluate.ts): by its ARN, a role's ARN also matching
 * that role's sessions (`arn:aws:sts::ACCT:assumed-role/ROLE/SESSION`, so a
 * role may trust another role's sessions, role chaining, and a Deny naming a
 * role binds its sessions), by "*", or by the account (root ARN or account
 * id), which trusts a principal of the account whose identity policies also
 * allow it. Actions match as IAM matches them, case-insensitively and with
 * `*` and `?` wildcards (`sts:Assume*`, `STS:AssumeRole`). A
 * statement's Condition is compiled by the same engine as key and identity
 * policies (src/kms/authz/conditions.ts) and read against the AssumeRole
 * request context (assume-role-context.ts); a statement applies only when all
 * its conditions hold. A role without a trust policy can be assumed by nobody
 * over STS. A statement member ebsd does not evaluate (NotPrincipal,
 * NotAction) is refused when the policy is put, never ignored.
 *
 * A user or role ARN of the account in a Principal is bound, when the policy
 * is put, to that principal's unique id (src/kms/authz/principal-bindings.ts),
 * stored beside the document: a principal deleted and created again under the
 * name is not trusted until the policy is put again. A trust file written
 * before bindings is bound when it is opened, to the principals then existing.
 *
 * A document belongs to the role it was put on, named by the role's unique id
 * (RoleId, AROA…) as well as by name: a role deleted and created again under
 * the name starts with no trust policy, whatever a crash between DeleteRole's
 * two writes (identities.json, then this file) left here. A document whose
 * role id is no longer the role's is nobody's, and dropped when the file is
 * next opened.
 */
import { join } from 'node:path';
import { EbsdError } from '../../util/errors.js';
import { atomicWrite } from '../../util/atomic-write.js';
import { readTextIfExists } from '../../util/read-if-exists.js';
import { parseStrictJson } from '../../util/strict-json.js';
import type { Caller } from '../types.js';
import { compileConditions, type CompiledCondition, type ConditionContext } from '../authz/conditions.js';
import { UNIQUE_ID_RE, parsePrincipalArn } from '../authz/policy-document.js';
import { callerIds } from '../authz/caller-ids.js';
import { globMatcher } from '../authz/wildcard.js';
import { bindPrincipals, shownPolicy, type PrincipalBindings, type PrincipalDirectory } from '../authz/principal-bindings.js';
import { hasMember } from '../data-map.js';

export const TRUST_FILE = 'role-trust.json';

/**
 * A statement's principals, normalized as a key policy's PrincipalSet (src/kms/authz/policy-document.ts):
 * `roles` holds `role:<account>:<name>` for each role ARN in `arns`, the key a session's CallerIds carries;
 * `ids` the unique ids of the bound users and roles. A bound ARN is in `arns` too only in a Deny, so
 * the Deny still reaches a principal created again under the name (an Allow reaches only the one bound).
 */
interface TrustPrincipals { any: boolean; arns: ReadonlySet<string>; accounts: ReadonlySet<string>; roles: ReadonlySet<string>; ids: ReadonlySet<string> }

interface Statement { Effect: 'Allow' | 'Deny'; principals: TrustPrincipals; matchesAction: (action: string) => boolean; conditions: readonly CompiledCondition[] }

/** An unparseable principal string is kept as an exact ARN (it matches nobody's ARN but its own), as before. */
function principalsOf(list: readonly string[], bindings: PrincipalBindings | undefined, byName: boolean, named: Set<string>): TrustPrincipals {
  const arns = new Set<string>();
  const accounts = new Set<string>();
  const roles = new Set<string>();
  const ids = new Set<string>();
  let any = false;
  for (const p of list) {
    if (p === '*') { any = true; continue; }
    const form = /^\d{12}$/.test(p) ? ({ kind: 'root', account: p } as const) : parsePrincipalArn(p);
    if (form?.kind === 'root') { accounts.add(form.account); continue; }
    const userOrRole = form?.kind === 'user' || form?.kind === 'role';
    if (userOrRole) named.add(p);
    const bound = userOrRole && bindings !== undefined && hasMember(bindings, p) ? bindings[p]! : undefined;
    if (bound !== undefined && bound !== '') ids.add(bound); // '' binds to nobody
    if (bound !== undefined && !byName) continue;
    arns.add(p);
    if (form?.kind === 'role') roles.add(`role:${form.account}:${form.name}`);
  }
  return { any, arns, accounts, roles, ids };
}

/** 2: the statement names the caller itself (or anyone); 1: only the caller's account; 0: not the caller. */
function principalMatch(p: TrustPrincipals, caller: Caller): 0 | 1 | 2 {
  if (p.any) return 2;
  const id = callerIds(caller);
  if (p.arns.has(id.arn)) return 2;
  if (id.uniqueId !== undefined && p.ids.has(id.uniqueId)) return 2; // a bound user, or a bound role's session
  if (id.roleKey !== undefined && p.roles.has(id.roleKey)) return 2;
  return p.accounts.has(id.account) ? 1 : 0;
}

export class TrustPolicyError extends EbsdError {
  constructor(awsName: 'MalformedPolicyDocumentException' | 'NoSuchEntityException', message: string) {
    super(awsName === 'NoSuchEntityException' ? 'IAM_NO_SUCH_ENTITY' : 'IAM_MALFORMED_TRUST_POLICY', message, { awsName });
  }
}

const TRUST_STATEMENT_MEMBERS: ReadonlySet<string> = new Set(['Sid', 'Effect', 'Principal', 'Action', 'Condition']);

export interface TrustParseOptions {
  /** The policy's principal bindings (principal-bindings.ts): a user or role ARN bound here names the principal with that id. */
  bindings?: PrincipalBindings;
  /**
   * Given when the policy is put: each user and role of this account it names must exist (IAM refuses an
   * invalid principal), and a bare unique id (a deleted principal's, as a stored policy shows one) is refused.
   */
  directory?: PrincipalDirectory;
}

export interface ParsedTrustPolicy {
  statements: Statement[];
  /** The user and role ARNs (any account) named in a Principal: what binding binds. */
  principalArns: string[];
}

export function parseTrustPolicy(text: string, opts: TrustParseOptions = {}): ParsedTrustPolicy {
  let doc: unknown;
  try {
    doc = parseStrictJson(text, { what: 'trust policy', maxDepth: 8 });
  } catch (e) {
    throw new TrustPolicyError('MalformedPolicyDocumentException', `The trust policy is not valid JSON: ${(e as Error).message}`);
  }
  const stmts = (doc as { Statement?: unknown })?.Statement;
  const list = Array.isArray(stmts) ? stmts : stmts ? [stmts] : [];
  const variables = (doc as { Version?: unknown })?.Version === '2012-10-17'; // IAM policy variables: this Version only
  if (list.length === 0) throw new TrustPolicyError('MalformedPolicyDocumentException', 'The trust policy has no Statement.');
  const strs = (v: unknown, what: string): string[] => {
    const a = Array.isArray(v) ? v : [v];
    if (a.length === 0 || a.some((x) => typeof x !== 'string')) throw new TrustPolicyError('MalformedPolicyDocumentException', `${what} must be a string or a list of strings.`);
    return a as string[];
  };
  const named = new Set<string>();
  const statements = list.map((s: Record<string, unknown>, i): Statement => {
    if (!s || typeof s !== 'object' || Array.isArray(s)) throw new TrustPolicyError('MalformedPolicyDocumentException', `Statement ${i} must be an object.`);
    // Only what is evaluated: a NotPrincipal or NotAction ignored would trust more than written.
    for (const k of Object.keys(s)) {
      if (!TRUST_STATEMENT_MEMBERS.has(k)) throw new TrustPolicyError('MalformedPolicyDocumentException', `Statement ${i}: ${k} is not supported in a trust policy here (supported: ${[...TRUST_STATEMENT_MEMBERS].join(', ')}).`);
    }
    if (s.Effect !== 'Allow' && s.Effect !== 'Deny') throw new TrustPolicyError('MalformedPolicyDocumentException', `Statement ${i}: Effect must be Allow or Deny.`);
    const p = s.Principal;
    const principals = p === '*' ? ['*'] : p && typeof p === 'object' && 'AWS' in p ? strs((p as { AWS: unknown }).AWS, `Statement ${i}: Principal.AWS`) : [];
    if (principals.length === 0) throw new TrustPolicyError('MalformedPolicyDocumentException', `Statement ${i}: Principal must be "*" or {"AWS": ...}.`);
    if (opts.directory) _checkPrincipals(principals, i, opts.directory);
    let conditions: CompiledCondition[] = [];
    try {
      if (s.Condition !== undefined) conditions = compileConditions(s.Condition, `Statement ${i}`, { variables });
    } catch (e) {
      throw new TrustPolicyError('MalformedPolicyDocumentException', (e as Error).message);
    }
    const principalSet = principalsOf(principals, opts.bindings, s.Effect === 'Deny', named);
    return { Effect: s.Effect, principals: principalSet, matchesAction: globMatcher(strs(s.Action, `Statement ${i}: Action`), true), conditions };
  });
  return { statements, principalArns: [...named] };
}

/** IAM's answer to a principal it cannot resolve: "Invalid principal in policy". */
function _checkPrincipals(list: readonly string[], i: number, dir: PrincipalDirectory): void {
  for (const p of list) {
    if (UNIQUE_ID_RE.test(p)) {
      throw new TrustPolicyError('MalformedPolicyDocumentException', `Invalid principal in policy: Statement ${i}: "${p}" is a unique principal id (a deleted principal's, as a stored policy shows one), not a principal ARN; name an existing principal by its ARN or remove it.`);
    }
    const form = parsePrincipalArn(p);
    if ((form?.kind === 'user' || form?.kind === 'role') && form.account === dir.accountId && dir.uniqueIdOf(p) === undefined) {
      throw new TrustPolicyError('MalformedPolicyDocumentException', `Invalid principal in policy: Statement ${i}: "${p}" does not exist in account ${dir.accountId}.`);
    }
  }
}

const NO_CONTEXT: ConditionContext = { get: () => undefined };

/**
 * `role-trust.json`: the documents by role name, the unique id of the role each was put on (absent in a
 * file written before them: bound at open to the role then of that name), and the bindings of those
 * that name users or roles of the account.
 */
interface TrustFile { Roles: Record<string, string>; RoleIds?: Record<string, string>; Principals?: Record<string, Record<string, string>> }

/** What trust policies need from the identity store (src/kms/authz/identities.ts implements it). */
export interface RoleDirectory extends PrincipalDirectory {
  /** The unique id (RoleId, AROA…) of the role `name`, or undefined if there is none. */
  roleId(name: string): string | undefined;
}

export class TrustPolicies {
  /** Compiled statements per role, built on first use: an AssumeRole does not re-read JSON. */
  private readonly compiled = new Map<string, Statement[]>();
  /** Saves chained in call order, each writing the state as it is when its turn comes (as access-keys.ts does). */
  private writing: Promise<void> = Promise.resolve();
  private constructor(
    private readonly file: string,
    private readonly docs: Map<string, string>,
    private readonly roleIds: Map<string, string>,
    private readonly bindings: Map<string, PrincipalBindings>,
    private readonly principals: RoleDirectory,
  ) {}

  /**
   * `principals`: the account's identities (src/kms/authz/identities.ts), which policies are bound
   * with. A document stored without bindings (a file written before them) is bound now, to the
   * principals that exist now, and a document stored without its role's id is bound to the role
   * of its name; a document whose role (by id) no longer exists is dropped. Then the file is written
   * back once.
   */
  static async open(dir: string, principals: RoleDirectory, log?: { warn(o: object, msg: string): void }): Promise<TrustPolicies> {
    const file = join(dir, TRUST_FILE);
    const text = await readTextIfExists(file);
    const data = text ? (JSON.parse(text) as TrustFile) : { Roles: {} };
    const docs = new Map<string, string>(Object.entries(data.Roles));
    const roleIds = new Map<string, string>(Object.entries(data.RoleIds ?? {}));
    const bindings = new Map<string, PrincipalBindings>(Object.entries(data.Principals ?? {}));
    const t = new TrustPolicies(file, docs, roleIds, bindings, principals);
    let migrated = false;
    for (const role of docs.keys()) {
      const current = principals.roleId(role);
      if (!roleIds.has(role) && current !== undefined) { roleIds.set(role, current); migrated = true; }
      if (current === undefined || roleIds.get(role) !== current) {
        docs.delete(role); roleIds.delete(role); bindings.delete(role); migrated = true;
      }
    }
    for (const [role, doc] of docs) {
      if (bindings.has(role)) continue;
      let bound: PrincipalBindings | undefined;
      try {
        bound = bindPrincipals(parseTrustPolicy(doc).principalArns, principals);
      } catch {
        continue; // a document that does not parse trusts nobody (`allows` fails on it, as before)
      }
      if (bound) {
        bindings.set(role, bound);
        migrated = true;
        const nobody = Object.keys(bound).filter((arn) => bound[arn] === '');
        // A trust policy stored before bindings could name a user or role that did not exist (or a role
        // without its path): it now names nobody, where before it matched whoever held that name.
        if (nobody.length) log?.warn({ role, principals: nobody }, 'a stored trust policy names users or roles that do not exist (a role ARN needs its path): they are bound to nobody and may not assume the role (update the trust policy once they exist)');
      }
    }
    if (migrated) await t.save();
    return t;
  }

  /** UpdateAssumeRolePolicy: validate, bind the named users and roles to their unique ids, store for the role as it is now (its RoleId). */
  async put(role: string, document: string): Promise<void> {
    const roleId = this.principals.roleId(role);
    if (roleId === undefined) throw new TrustPolicyError('NoSuchEntityException', `The role with name ${role} cannot be found.`);
    const { principalArns } = parseTrustPolicy(document, { directory: this.principals });
    const bound = bindPrincipals(principalArns, this.principals);
    const stmts = parseTrustPolicy(document, bound ? { bindings: bound } : {}).statements;
    this.docs.set(role, document);
    this.roleIds.set(role, roleId);
    if (bound) this.bindings.set(role, bound);
    else this.bindings.delete(role);
    this.compiled.set(role, stmts);
    await this.save();
  }

  /** The role's trust policy as saved, or with a deleted principal's ARN shown as the unique id it was bound to (principal-bindings.ts). */
  get(role: string): string | undefined {
    const doc = this.ownDoc(role);
    return doc === undefined ? undefined : shownPolicy(doc, this.bindings.get(role), this.principals);
  }

  async delete(role: string): Promise<void> {
    this.compiled.delete(role);
    this.bindings.delete(role);
    this.roleIds.delete(role);
    if (this.docs.delete(role)) await this.save();
  }

  /**
   * Does the role's trust policy let `caller` assume it? `'session'`: a statement names the caller,
   * a role session, by its own session ARN (its session policy does not limit that; IAM User Guide,
   * "Session policies"); `'principal'`: a statement names the caller itself, its role (or `*`); `'account'`: only the caller's account is named, which in IAM
   * delegates the decision to the caller's identity policies (the caller must also be allowed
   * `sts:AssumeRole` on the role; IAM User Guide, "Granting a user permissions to switch roles").
   * A statement counts only if every condition it has holds in `ctx` (a Deny too: a Deny whose
   * condition fails does not apply). Without `ctx` every condition key is absent.
   */
  allows(role: string, caller: Caller, ctx: ConditionContext = NO_CONTEXT): 'session' | 'principal' | 'account' | false {
    const stmts = this.statements(role);
    if (stmts === undefined) return false;
    const applies = (s: Statement): 0 | 1 | 2 => (s.matchesAction('sts:AssumeRole') && s.conditions.every((c) => c.test(ctx)) ? principalMatch(s.principals, caller) : 0);
    if (stmts.some((s) => s.Effect === 'Deny' && applies(s) !== 0)) return false;
    if (caller.type === 'AssumedRole' && stmts.some((s) => s.Effect === 'Allow' && applies(s) === 2 && s.principals.arns.has(caller.arn))) return 'session';
    if (stmts.some((s) => s.Effect === 'Allow' && applies(s) === 2)) return 'principal';
    return stmts.some((s) => s.Effect === 'Allow' && applies(s) === 1) ? 'account' : false;
  }

  private statements(role: string): Statement[] | undefined {
    const text = this.ownDoc(role);
    if (text === undefined) return undefined;
    let stmts = this.compiled.get(role);
    if (stmts) return stmts;
    const bound = this.bindings.get(role);
    stmts = parseTrustPolicy(text, bound ? { bindings: bound } : {}).statements;
    this.compiled.set(role, stmts);
    return stmts;
  }

  /** The role's document if it was put on the role that now has the name (its RoleId), else undefined. */
  private ownDoc(role: string): string | undefined {
    const doc = this.docs.get(role);
    const id = this.roleIds.get(role);
    return doc !== undefined && id !== undefined && id === this.principals.roleId(role) ? doc : undefined;
  }

  /**
   * Postcondition: once a save resolves, the file holds the state as it was when that save was
   * called or later: writes are chained (overlapping atomicWrites could rename in either order,
   * an older document landing last), and each serializes the state when its turn comes.
   */
  private save(): Promise<void> {
    const next = this.writing.catch(() => {}).then(() => {
      const out: TrustFile = { Roles: Object.fromEntries(this.docs), RoleIds: Object.fromEntries(this.roleIds) };
      if (this.bindings.size > 0) out.Principals = Object.fromEntries(this.bindings);
      return atomicWrite(this.file, JSON.stringify(out, null, 1) + '\n', 0o600);
    });
    this.writing = next;
    return next;
  }
}
