import { parsePolicy, parsePrincipalArn } from './policy-document.js';
import { dataMap, hasMember } from '../data-map.js';

/**
 * Principal bindings of a resource-based policy (a key policy, a role trust policy): when the
 * policy is saved, each exact user or role ARN of this account in a `Principal` or
 * `NotPrincipal` is bound to that principal's unique id (AIDA… for a user, AROA… for a role),
 * as AWS transforms such an ARN to the principal's unique id (IAM User Guide, "AWS JSON policy
 * elements: Principal"). A principal deleted and created again under the same name has a new
 * id, so it is not the principal the policy named: saving the policy again binds it. Account
 * roots, `*`, service principals and assumed-role session ARNs are not bound, nor are other
 * accounts' ARNs (their ids are not known here). docs/architecture.md §5.4.
 */

/**
 * Exact ARN as written in the policy -> the unique id it is bound to. `''`: no such principal
 * existed when the policy was bound (a policy stored before bindings, naming a principal
 * deleted by then): the ARN names nobody.
 */
export type PrincipalBindings = Readonly<Record<string, string>>;

/** What binding needs from the identity store (src/kms/authz/identities.ts implements it). */
export interface PrincipalDirectory {
  readonly accountId: string;
  /** The unique id of the user or role whose ARN is exactly `arn` (path and partition included), if one exists. */
  uniqueIdOf(arn: string): string | undefined;
}

/**
 * Bind each user or role ARN of `dir`'s account among `arns` to its principal's current unique
 * id (`''` if there is none). Undefined when there is nothing to bind, so a policy naming only
 * roots, services or sessions keeps sharing one compiled form across keys.
 */
export function bindPrincipals(arns: Iterable<string>, dir: PrincipalDirectory): PrincipalBindings | undefined {
  let out: Record<string, string> | undefined;
  for (const arn of arns) {
    const form = parsePrincipalArn(arn);
    if (!form || (form.kind !== 'user' && form.kind !== 'role') || form.account !== dir.accountId) continue;
    (out ??= dataMap<string>())[arn] = dir.uniqueIdOf(arn) ?? '';
  }
  return out;
}

/** What binding a grant's principals needs beyond a policy's: a session ARN names its role without its path. */
export interface GrantPrincipalDirectory extends PrincipalDirectory {
  /** The partition of the account (`aws`): a user, role or session ARN of the account in another one names nobody. */
  readonly partition: string;
  /** The unique id (RoleId, AROA…) of the role `name`, or undefined if there is none. */
  roleId(name: string): string | undefined;
  /** Bumped on every identity change (a principal deleted or created shows differently in a listing). */
  readonly generation: number;
}

/**
 * The principal id a grant's grantee or retiring principal is bound to when the grant is
 * made, as AWS KMS binds it (a grant to a principal since deleted is listed with that id, and
 * one created again under the name is not its grantee: docs/architecture.md §5.4): a user's
 * UserId (AIDA…), a role's RoleId (AROA…, which covers its sessions), and for an assumed-role
 * session ARN the session's principal id (`AROA…:session`, the role's id and the session
 * name). `''`: such a principal of the account does not exist (a grant stored before bindings,
 * naming one deleted by then), or the ARN is in another partition than the account's, whose
 * principals this account's never are (CreateGrant refuses such an ARN; one stored before that
 * binds here): it names nobody. Undefined: not bound (the account root, a service principal,
 * another account's ARN), matched by name.
 */
export function grantPrincipalId(arn: string, dir: GrantPrincipalDirectory): string | undefined {
  const form = parsePrincipalArn(arn);
  if (!form || form.account !== dir.accountId || form.kind === 'root') return undefined;
  // A session ARN names its role without path or partition: checked here, or `arn:aws-cn:…/app/s`
  // would bind to the local role `app`'s session `s` (uniqueIdOf checks a user's or role's ARN whole).
  if (!arn.startsWith(`arn:${dir.partition}:`)) return '';
  if (form.kind === 'user' || form.kind === 'role') return dir.uniqueIdOf(arn) ?? '';
  if (form.kind === 'session') {
    const rid = dir.roleId(form.role);
    return rid ? `${rid}:${form.session}` : '';
  }
  return undefined;
}

/** The key-policy binder the KMS core stores every key policy with (`KmsService.bindKeyPolicies`). */
export function keyPolicyBinder(dir: PrincipalDirectory): (policy: string) => Record<string, string> | undefined {
  return (policy) => bindPrincipals(parsePolicy(policy, { kind: 'key', maxBytes: Number.MAX_SAFE_INTEGER }).principalArns, dir);
}

/** The bound ids whose principal no longer exists with that id: ARN -> id. */
function _orphans(bindings: PrincipalBindings, dir: PrincipalDirectory): Map<string, string> {
  const gone = new Map<string, string>();
  for (const [arn, id] of Object.entries(bindings)) {
    // An ARN bound to nobody ('') has no id to show: it stays as written.
    if (id !== '' && dir.uniqueIdOf(arn) !== id) gone.set(arn, id);
  }
  return gone;
}

/**
 * The policy as GetKeyPolicy (or a trust policy's reader) shows it: the text exactly as saved
 * while every bound principal still exists with its bound id; otherwise the document with each
 * such ARN in a `Principal` / `NotPrincipal` replaced by the unique id it was bound to, as AWS
 * shows a deleted principal (IAM User Guide, "AWS JSON policy elements: Principal"). The
 * document is then written again (key order kept; indented when the saved text had lines).
 */
export function shownPolicy(text: string, bindings: PrincipalBindings | undefined, dir: PrincipalDirectory): string {
  if (!bindings) return text;
  const gone = _orphans(bindings, dir);
  if (gone.size === 0) return text;
  const doc = JSON.parse(text) as { Statement?: unknown };
  const swap = (v: unknown): unknown => (typeof v === 'string' && gone.has(v) ? gone.get(v) : v);
  const statements = Array.isArray(doc.Statement) ? doc.Statement : [doc.Statement];
  for (const st of statements) {
    if (st === null || typeof st !== 'object') continue;
    for (const el of ['Principal', 'NotPrincipal']) {
      const p = (st as Record<string, unknown>)[el];
      if (p === null || typeof p !== 'object' || Array.isArray(p) || !hasMember(p as Record<string, unknown>, 'AWS')) continue;
      const aws = (p as Record<string, unknown>).AWS;
      (p as Record<string, unknown>).AWS = Array.isArray(aws) ? aws.map(swap) : swap(aws);
    }
  }
  return text.includes('\n') ? JSON.stringify(doc, null, 2) : JSON.stringify(doc);
}
