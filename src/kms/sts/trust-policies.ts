/**
 * Role trust policies ("assume role policy documents"): who may call
 * sts:AssumeRole on a role. Evaluated as IAM does for the parts ebsd supports:
 * an explicit Deny wins, then any Allow; a principal matches by its ARN, by
 * "*", or by the account (root ARN or account id), which trusts a
 * principal of the account whose identity policies also allow it. A
 * statement's Condition is compiled by the same engine as key and identity
 * policies (src/kms/authz/conditions.ts) and read against the AssumeRole
 * request context (assume-role-context.ts); a statement applies only when all
 * its conditions hold. A role without a trust policy can be assumed by nobody
 * over STS. A statement member ebsd does not evaluate (NotPrincipal,
 * NotAction) is refused when the policy is put, never ignored.
 */
import { join } from 'node:path';
import { EbsdError } from '../../util/errors.js';
import { atomicWrite } from '../../util/atomic-write.js';
import { readTextIfExists } from '../../util/read-if-exists.js';
import { parseStrictJson } from '../../util/strict-json.js';
import type { Caller } from '../types.js';
import { compileConditions, type CompiledCondition, type ConditionContext } from '../authz/conditions.js';

export const TRUST_FILE = 'role-trust.json';

interface Statement { Effect: 'Allow' | 'Deny'; principals: string[]; actions: string[]; conditions: readonly CompiledCondition[] }

export class TrustPolicyError extends EbsdError {
  constructor(awsName: 'MalformedPolicyDocumentException' | 'NoSuchEntityException', message: string) {
    super(awsName === 'NoSuchEntityException' ? 'IAM_NO_SUCH_ENTITY' : 'IAM_MALFORMED_TRUST_POLICY', message, { awsName });
  }
}

const TRUST_STATEMENT_MEMBERS: ReadonlySet<string> = new Set(['Sid', 'Effect', 'Principal', 'Action', 'Condition']);

export function parseTrustPolicy(text: string): Statement[] {
  let doc: unknown;
  try {
    doc = parseStrictJson(text, { what: 'trust policy', maxDepth: 8 });
  } catch (e) {
    throw new TrustPolicyError('MalformedPolicyDocumentException', `The trust policy is not valid JSON: ${(e as Error).message}`);
  }
  const stmts = (doc as { Statement?: unknown })?.Statement;
  const list = Array.isArray(stmts) ? stmts : stmts ? [stmts] : [];
  if (list.length === 0) throw new TrustPolicyError('MalformedPolicyDocumentException', 'The trust policy has no Statement.');
  const strs = (v: unknown, what: string): string[] => {
    const a = Array.isArray(v) ? v : [v];
    if (a.length === 0 || a.some((x) => typeof x !== 'string')) throw new TrustPolicyError('MalformedPolicyDocumentException', `${what} must be a string or a list of strings.`);
    return a as string[];
  };
  return list.map((s: Record<string, unknown>, i) => {
    if (!s || typeof s !== 'object' || Array.isArray(s)) throw new TrustPolicyError('MalformedPolicyDocumentException', `Statement ${i} must be an object.`);
    // Only what is evaluated: a NotPrincipal or NotAction ignored would trust more than written.
    for (const k of Object.keys(s)) {
      if (!TRUST_STATEMENT_MEMBERS.has(k)) throw new TrustPolicyError('MalformedPolicyDocumentException', `Statement ${i}: ${k} is not supported in a trust policy here (supported: ${[...TRUST_STATEMENT_MEMBERS].join(', ')}).`);
    }
    if (s.Effect !== 'Allow' && s.Effect !== 'Deny') throw new TrustPolicyError('MalformedPolicyDocumentException', `Statement ${i}: Effect must be Allow or Deny.`);
    const p = s.Principal;
    const principals = p === '*' ? ['*'] : p && typeof p === 'object' && 'AWS' in p ? strs((p as { AWS: unknown }).AWS, `Statement ${i}: Principal.AWS`) : [];
    if (principals.length === 0) throw new TrustPolicyError('MalformedPolicyDocumentException', `Statement ${i}: Principal must be "*" or {"AWS": ...}.`);
    let conditions: CompiledCondition[] = [];
    try {
      if (s.Condition !== undefined) conditions = compileConditions(s.Condition, `Statement ${i}`);
    } catch (e) {
      throw new TrustPolicyError('MalformedPolicyDocumentException', (e as Error).message);
    }
    return { Effect: s.Effect, principals, actions: strs(s.Action, `Statement ${i}: Action`), conditions };
  });
}

const NO_CONTEXT: ConditionContext = { get: () => undefined };

export class TrustPolicies {
  /** Compiled statements per role, built on first use: an AssumeRole does not re-read JSON. */
  private readonly compiled = new Map<string, Statement[]>();
  private constructor(private readonly file: string, private readonly docs: Map<string, string>) {}

  static async open(dir: string): Promise<TrustPolicies> {
    const file = join(dir, TRUST_FILE);
    const text = await readTextIfExists(file);
    const docs = new Map<string, string>(text ? Object.entries((JSON.parse(text) as { Roles: Record<string, string> }).Roles) : []);
    return new TrustPolicies(file, docs);
  }

  async put(role: string, document: string): Promise<void> {
    const stmts = parseTrustPolicy(document);
    this.docs.set(role, document);
    this.compiled.set(role, stmts);
    await this.save();
  }

  get(role: string): string | undefined {
    return this.docs.get(role);
  }

  async delete(role: string): Promise<void> {
    this.compiled.delete(role);
    if (this.docs.delete(role)) await this.save();
  }

  /**
   * Does the role's trust policy let `caller` assume it? `'principal'`: a statement names the
   * caller itself (or `*`); `'account'`: only the caller's account is named, which in IAM
   * delegates the decision to the caller's identity policies (the caller must also be allowed
   * `sts:AssumeRole` on the role; IAM User Guide, "Granting a user permissions to switch roles").
   * A statement counts only if every condition it has holds in `ctx` (a Deny too: a Deny whose
   * condition fails does not apply). Without `ctx` every condition key is absent.
   */
  allows(role: string, caller: Caller, rootArn: string, ctx: ConditionContext = NO_CONTEXT): 'principal' | 'account' | false {
    const stmts = this.statements(role);
    if (stmts === undefined) return false;
    const acts = (s: Statement): boolean => s.actions.some((a) => a === '*' || a === 'sts:*' || a === 'sts:AssumeRole');
    const holds = (s: Statement): boolean => s.conditions.every((c) => c.test(ctx));
    const direct = (s: Statement): boolean => acts(s) && s.principals.some((p) => p === '*' || p === caller.arn) && holds(s);
    const viaAccount = (s: Statement): boolean => acts(s) && s.principals.some((p) => p === rootArn || p === caller.accountId) && holds(s);
    if (stmts.some((s) => s.Effect === 'Deny' && (direct(s) || viaAccount(s)))) return false;
    if (stmts.some((s) => s.Effect === 'Allow' && direct(s))) return 'principal';
    return stmts.some((s) => s.Effect === 'Allow' && viaAccount(s)) ? 'account' : false;
  }

  private statements(role: string): Statement[] | undefined {
    let stmts = this.compiled.get(role);
    if (stmts) return stmts;
    const text = this.docs.get(role);
    if (text === undefined) return undefined;
    stmts = parseTrustPolicy(text);
    this.compiled.set(role, stmts);
    return stmts;
  }

  private async save(): Promise<void> {
    await atomicWrite(this.file, JSON.stringify({ Roles: Object.fromEntries(this.docs) }, null, 1) + '\n', 0o600);
  }
}
