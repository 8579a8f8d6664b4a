import { join } from 'node:path';
import { randomBytes, randomInt } from 'node:crypto';
import { atomicWrite } from '../../util/atomic-write.js';
import { EbsdError, ArgTypeError, ArgRangeError, checkString } from '../../util/errors.js';
import { readTextIfExists } from '../../util/read-if-exists.js';
import { REGION_RE } from '../../util/aws-names.js';
import type { Caller } from '../types.js';
import { parsePolicy, type CompiledPolicy, PolicyCache } from './policy-document.js';
import { callerIds } from './caller-ids.js';
import { dataMap, hasMember, toDataMap } from '../data-map.js';
import { parseStateJson } from '../../util/state-json.js';

/**
 * The account and its principals: one account per state dir, IAM users and
 * roles with their identity policies, and the local uid -> principal map
 * (docs/architecture.md §5.1, §5.3). Stored in `<state>/identities.json`, 0600, every
 * update atomic (write temp, fsync, rename, fsync dir).
 */

export const IDENTITIES_FILE = 'identities.json';
const FILE_VERSION = 1;

/** IAM errors (IAM API reference names). */
export class IamError extends EbsdError {
  constructor(awsName: 'NoSuchEntityException' | 'EntityAlreadyExistsException' | 'MalformedPolicyDocumentException' | 'InvalidInputException' | 'DeleteConflictException' | 'ValidationError', message: string) {
    super(`IAM_${awsName.replace(/Exception$/, '').replace(/([a-z])([A-Z])/g, '$1_$2').toUpperCase()}`, message, { awsName });
  }
}

interface EntityRecord {
  path: string;
  id: string;
  createDate: string;
  /** Inline identity policies, name -> document text. */
  policies: Record<string, string>;
  /** Roles only: the longest session AssumeRole may grant, seconds. Absent (files written before it existed): 3600. */
  maxSessionDuration?: number;
}

/**
 * A role's MaxSessionDuration (IAM API Reference, CreateRole / UpdateRole): 3600 to 43200 seconds,
 * 3600 when not given. AssumeRole's DurationSeconds may not exceed it.
 */
export const ROLE_MAX_SESSION_MIN = 3_600;
export const ROLE_MAX_SESSION_MAX = 43_200;
export const ROLE_MAX_SESSION_DEFAULT = 3_600;

function _checkMaxSessionDuration(v: unknown): asserts v is number {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new ArgTypeError('maxSessionDuration', 'an integer number of seconds', v);
  const broken = v < ROLE_MAX_SESSION_MIN ? `greater than or equal to ${ROLE_MAX_SESSION_MIN}` : v > ROLE_MAX_SESSION_MAX ? `less than or equal to ${ROLE_MAX_SESSION_MAX}` : undefined;
  if (broken) throw new IamError('ValidationError', `1 validation error detected: Value '${v}' at 'maxSessionDuration' failed to satisfy constraint: Member must have value ${broken}`);
}

interface UidRecord {
  principal: string;
  /** For a role: the session name the uid's calls use (assumed-role session). */
  session?: string;
}

interface IdentityFileV1 {
  version: 1;
  partition: string;
  accountId: string;
  region: string;
  users: Record<string, EntityRecord>;
  roles: Record<string, EntityRecord>;
  uids: Record<string, UidRecord>;
}

export interface IdentitiesInit {
  /** 12-digit account id; random when absent. Only used when the file does not exist yet. */
  accountId?: string;
  region?: string;
}

const NAME_RE = /^[\w+=,.@-]{1,64}$/;
const SESSION_RE = /^[\w+=,.@-]{2,64}$/;
const PATH_RE = /^\/(?:[\x21-\x7E]*\/)?$/;
const POLICY_NAME_RE = /^[\w+=,.@-]{1,128}$/;

function _id(prefix: 'AIDA' | 'AROA'): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  const b = randomBytes(17);
  let s = prefix;
  for (const x of b) s += alphabet[x & 31];
  return s;
}

function _checkName(what: string, name: unknown, re = NAME_RE): asserts name is string {
  checkString(what, name);
  if (!re.test(name)) throw new IamError('InvalidInputException', `${what} "${name}" does not match ${re}`);
}

/** DeleteUser's and DeleteRole's precondition: no inline policy left (IAM's DeleteConflict, HTTP 409, in its words). */
function _assertNoPolicies(rec: EntityRecord): void {
  if (Object.keys(rec.policies).length > 0) throw new IamError('DeleteConflictException', 'Cannot delete entity, must delete policies first.');
}

export class Identities {
  private data: IdentityFileV1;
  private readonly file: string;
  private writing: Promise<void> = Promise.resolve();
  private readonly policyCache = new PolicyCache(256);
  private readonly compiled = new Map<string, readonly CompiledPolicy[]>();
  /** Bumped on every change; evaluators may key caches on it. */
  generation = 0;

  private constructor(file: string, data: IdentityFileV1) {
    this.file = file;
    // Names are the operators' ("__proto__" and "constructor" pass NAME_RE): every name-keyed
    // map has no prototype, so a name is always a member, never an inherited property.
    const entities = (m: Record<string, EntityRecord>): Record<string, EntityRecord> => {
      const out = toDataMap(m);
      for (const k of Object.keys(out)) out[k] = { ...out[k]!, policies: toDataMap(out[k]!.policies) };
      return out;
    };
    this.data = { ...data, users: entities(data.users), roles: entities(data.roles), uids: toDataMap(data.uids) };
  }

  /** Open `<stateDir>/identities.json`, creating it (uid 0 -> account root) on first use. */
  static async open(stateDir: string, init: IdentitiesInit = {}): Promise<Identities> {
    checkString('stateDir', stateDir);
    const file = join(stateDir, IDENTITIES_FILE);
    const text = await readTextIfExists(file);
    if (text !== undefined) {
      const data = parseStateJson('IDENTITIES_CORRUPT', file, text) as IdentityFileV1;
      if (!data || data.version !== FILE_VERSION || !/^\d{12}$/.test(data.accountId)) {
        throw new EbsdError('IDENTITIES_CORRUPT', `${file}: unsupported or corrupt identity file`);
      }
      return new Identities(file, data);
    }
    const accountId = init.accountId ?? String(randomInt(100_000, 1_000_000)) + String(randomInt(0, 1_000_000)).padStart(6, '0');
    if (!/^\d{12}$/.test(accountId)) throw new ArgRangeError('accountId', `must be 12 digits, got "${accountId}"`);
    const region = init.region ?? 'us-east-1';
    if (!REGION_RE.test(region)) throw new ArgRangeError('region', `"${region}" is not a region name`);
    const data: IdentityFileV1 = {
      version: FILE_VERSION,
      partition: 'aws',
      accountId,
      region,
      users: {},
      roles: {},
      uids: { '0': { principal: `arn:aws:iam::${accountId}:root` } },
    };
    const ids = new Identities(file, data);
    await ids._persist();
    return ids;
  }

  get accountId(): string { return this.data.accountId; }
  get region(): string { return this.data.region; }
  get partition(): string { return this.data.partition; }
  get rootArn(): string { return `arn:${this.partition}:iam::${this.accountId}:root`; }
  /** The service principal ebsd acts as when it calls KMS on a caller's behalf (kms:ViaService). */
  get ec2ViaService(): string { return `ec2.${this.region}.amazonaws.com`; }

  userArn(name: string, path = this.data.users[name]?.path ?? '/'): string {
    return `arn:${this.partition}:iam::${this.accountId}:user${path}${name}`;
  }
  roleArn(name: string, path = this.data.roles[name]?.path ?? '/'): string {
    return `arn:${this.partition}:iam::${this.accountId}:role${path}${name}`;
  }
  /** The ARN, with its path, of this account's role `name`; undefined if there is no such role. */
  existingRoleArn(account: string, name: string): string | undefined {
    return account === this.accountId && this.data.roles[name] ? this.roleArn(name) : undefined;
  }
  sessionArn(role: string, session: string): string {
    return `arn:${this.partition}:sts::${this.accountId}:assumed-role/${role}/${session}`;
  }

  // ---- users and roles -------------------------------------------------------------

  async createUser(name: string, opts: { path?: string } = {}): Promise<Caller> {
    _checkName('user name', name);
    const path = opts.path ?? '/';
    if (!PATH_RE.test(path)) throw new IamError('InvalidInputException', `path "${path}" must start and end with /`);
    if (this.data.users[name]) throw new IamError('EntityAlreadyExistsException', `User with name ${name} already exists.`);
    this.data.users[name] = { path, id: _id('AIDA'), createDate: new Date().toISOString(), policies: dataMap<string>() };
    await this._changed();
    return this.callerFor(this.userArn(name))!;
  }

  /**
   * DeleteUser. Refused while the user has inline policies (IAM API Reference, DeleteUser: they are
   * deleted first), before anything changes; its uid mappings go with it (ebsd's own: docs/architecture.md §5.3).
   */
  async deleteUser(name: string): Promise<void> {
    const rec = this.data.users[name];
    if (!rec) throw new IamError('NoSuchEntityException', `The user with name ${name} cannot be found.`);
    _assertNoPolicies(rec);
    const arn = this.userArn(name);
    delete this.data.users[name];
    for (const [uid, r] of Object.entries(this.data.uids)) if (r.principal === arn) delete this.data.uids[uid];
    await this._changed();
  }

  async createRole(name: string, opts: { path?: string; maxSessionDuration?: number } = {}): Promise<string> {
    _checkName('role name', name);
    const path = opts.path ?? '/';
    if (!PATH_RE.test(path)) throw new IamError('InvalidInputException', `path "${path}" must start and end with /`);
    const maxSessionDuration = opts.maxSessionDuration ?? ROLE_MAX_SESSION_DEFAULT;
    _checkMaxSessionDuration(maxSessionDuration);
    if (this.data.roles[name]) throw new IamError('EntityAlreadyExistsException', `Role with name ${name} already exists.`);
    this.data.roles[name] = { path, id: _id('AROA'), createDate: new Date().toISOString(), policies: dataMap<string>(), maxSessionDuration };
    await this._changed();
    return this.roleArn(name);
  }

  /** UpdateRole: change what can be changed after creation (here: MaxSessionDuration). */
  async updateRole(name: string, opts: { maxSessionDuration?: number }): Promise<void> {
    const rec = this.data.roles[name];
    if (!rec) throw new IamError('NoSuchEntityException', `The role with name ${name} cannot be found.`);
    if (opts.maxSessionDuration === undefined) return;
    _checkMaxSessionDuration(opts.maxSessionDuration);
    rec.maxSessionDuration = opts.maxSessionDuration;
    await this._changed();
  }

  /**
   * DeleteRole. Refused while the role has inline policies (IAM API Reference, DeleteRole: they are
   * deleted first; ebsd has no managed policies or instance profiles), before anything changes; its
   * uid mappings go with it (ebsd's own: docs/architecture.md §5.3).
   */
  async deleteRole(name: string): Promise<void> {
    const rec = this.data.roles[name];
    if (!rec) throw new IamError('NoSuchEntityException', `The role with name ${name} cannot be found.`);
    _assertNoPolicies(rec);
    const arn = this.roleArn(name);
    delete this.data.roles[name];
    for (const [uid, r] of Object.entries(this.data.uids)) if (r.principal === arn) delete this.data.uids[uid];
    await this._changed();
  }

  listUsers(): { UserName: string; Arn: string; UserId: string; Path: string; CreateDate: string; PolicyNames: string[] }[] {
    return Object.entries(this.data.users).map(([n, r]) => ({
      UserName: n, Arn: this.userArn(n), UserId: r.id, Path: r.path, CreateDate: r.createDate, PolicyNames: Object.keys(r.policies),
    }));
  }

  listRoles(): { RoleName: string; Arn: string; RoleId: string; Path: string; CreateDate: string; MaxSessionDuration: number; PolicyNames: string[] }[] {
    return Object.entries(this.data.roles).map(([n, r]) => ({
      RoleName: n, Arn: this.roleArn(n), RoleId: r.id, Path: r.path, CreateDate: r.createDate,
      MaxSessionDuration: r.maxSessionDuration ?? ROLE_MAX_SESSION_DEFAULT, PolicyNames: Object.keys(r.policies),
    }));
  }

  // ---- identity policies -----------------------------------------------------------

  /**
   * Attach (create or replace) an inline identity policy on a user or role,
   * named by ARN or by `user/<name>` / `role/<name>`. The document is
   * validated as an identity-based policy (no Principal).
   */
  async attachPolicy(principal: string, policyName: string, document: string): Promise<void> {
    _checkName('policy name', policyName, POLICY_NAME_RE);
    checkString('document', document);
    const ent = this._entity(principal);
    try {
      parsePolicy(document, { kind: 'identity' });
    } catch (e) {
      throw new IamError('MalformedPolicyDocumentException', (e as Error).message);
    }
    ent.policies[policyName] = document;
    await this._changed();
  }

  async detachPolicy(principal: string, policyName: string): Promise<void> {
    const ent = this._entity(principal);
    if (!hasMember(ent.policies, policyName)) throw new IamError('NoSuchEntityException', `The policy ${policyName} is not attached to ${principal}.`);
    delete ent.policies[policyName];
    await this._changed();
  }

  getPolicy(principal: string, policyName: string): string | undefined {
    return this._entity(principal).policies[policyName];
  }

  listPolicies(principal: string): string[] {
    return Object.keys(this._entity(principal).policies);
  }

  /** Compiled identity policies that apply to `caller` (a user's, or the role's for a session). Cached until the next change. */
  identityPolicies(caller: Caller): readonly CompiledPolicy[] {
    if (caller.accountId !== this.accountId) return [];
    let ent: EntityRecord | undefined;
    let key: string;
    if (caller.type === 'IAMUser' && caller.userName) {
      key = `u:${caller.userName}`;
      ent = this.data.users[caller.userName];
    } else if (caller.type === 'AssumedRole' || caller.type === 'Role') {
      const role = callerIds(caller).roleName;
      key = role ? `r:${role}` : '';
      ent = role ? this.data.roles[role] : undefined;
    } else return [];
    if (!ent) return [];
    let list = this.compiled.get(key);
    if (!list) {
      list = Object.values(ent.policies).map((t) => this.policyCache.get(t, 'identity'));
      this.compiled.set(key, list);
    }
    return list;
  }

  // ---- principals and callers ------------------------------------------------------

  /**
   * Whether a principal ARN of this account names an existing identity (key-policy and grant
   * validation): partition, account and path included, as `uniqueIdOf` matches them; a session
   * ARN by its role's name (STS ARNs carry no path).
   */
  principalExists = (arn: string): boolean => {
    if (arn === this.rootArn) return true;
    const m = /^arn:([\w-]+):iam::(\d{12}):(user|role)(\/.*)?\/([^/]+)$/.exec(arn);
    if (m) {
      if (m[1] !== this.partition || m[2] !== this.accountId) return false;
      const rec = m[3] === 'user' ? this.data.users[m[5]!] : this.data.roles[m[5]!];
      return !!rec && rec.path === (m[4] ?? '') + '/';
    }
    const s = /^arn:([\w-]+):sts::(\d{12}):assumed-role\/([^/]+)\/[^/]+$/.exec(arn);
    if (s) return s[1] === this.partition && s[2] === this.accountId && !!this.data.roles[s[3]!];
    return false;
  };

  /**
   * The unique id (UserId AIDA…, RoleId AROA…) of the user or role whose ARN is exactly `arn`,
   * partition and path included; undefined if there is none. What a policy's principal
   * bindings are made with (principal-bindings.ts, PrincipalDirectory).
   */
  uniqueIdOf(arn: string): string | undefined {
    const m = /^arn:([\w-]+):iam::(\d{12}):(user|role)(\/.*)?\/([^/]+)$/.exec(arn);
    if (!m || m[1] !== this.partition || m[2] !== this.accountId) return undefined;
    const rec = m[3] === 'user' ? this.data.users[m[5]!] : this.data.roles[m[5]!];
    return rec && rec.path === (m[4] ?? '') + '/' ? rec.id : undefined;
  }

  /** The unique id (UserId, AIDA…) of the user `name`, or undefined if there is no such user. */
  userId(name: string): string | undefined {
    return hasMember(this.data.users, name) ? this.data.users[name]!.id : undefined;
  }

  /** The unique id (RoleId, AROA…) of the role `name`, or undefined if there is no such role. */
  roleId(name: string): string | undefined {
    return hasMember(this.data.roles, name) ? this.data.roles[name]!.id : undefined;
  }

  /** The Caller for a principal ARN of this account (root, user, role session), or undefined. */
  callerFor(arn: string): Caller | undefined {
    const acct = this.accountId;
    if (arn === this.rootArn) return { arn, accountId: acct, type: 'Root', principalId: acct };
    const u = /^arn:[\w-]+:iam::(\d{12}):user(\/.*)?\/([^/]+)$/.exec(arn);
    if (u && u[1] === acct) {
      const rec = this.data.users[u[3]!];
      if (!rec) return undefined;
      return { arn: this.userArn(u[3]!), accountId: acct, type: 'IAMUser', principalId: rec.id, userName: u[3]! };
    }
    const s = /^arn:[\w-]+:sts::(\d{12}):assumed-role\/([^/]+)\/([^/]+)$/.exec(arn);
    if (s && s[1] === acct) return this.assumeRole(s[2]!, s[3]!);
    return undefined;
  }

  /** An assumed-role session of one of this account's roles (no STS credentials: the daemon vouches for it). */
  assumeRole(role: string, session: string): Caller {
    const rec = this.data.roles[role];
    if (!rec) throw new IamError('NoSuchEntityException', `The role with name ${role} cannot be found.`);
    _checkName('session name', session, SESSION_RE);
    return { arn: this.sessionArn(role, session), accountId: this.accountId, type: 'AssumedRole', principalId: `${rec.id}:${session}` };
  }

  /** A service principal such as `ec2.amazonaws.com`. */
  serviceCaller(service: string): Caller {
    checkString('service', service);
    if (!/^[a-z0-9][a-z0-9.-]*\.amazonaws\.com$/.test(service)) throw new ArgRangeError('service', `"${service}" is not a service principal`);
    return { arn: service, accountId: this.accountId, type: 'AWSService', principalId: service };
  }

  /**
   * The principal a local uid acts as. An unmapped uid gets an `Unknown`
   * caller (arn `arn:aws:iam::<acct>:uid/<n>`, which no policy can name);
   * the authorizer denies it everything and the core audits the denial.
   */
  callerForUid(uid: number, extra: Partial<Pick<Caller, 'sourceIp' | 'userAgent' | 'viaService'>> = {}): Caller {
    if (!Number.isInteger(uid) || uid < 0) throw new ArgTypeError('uid', 'a non-negative integer', uid);
    const rec = this.data.uids[String(uid)];
    let c: Caller | undefined;
    if (rec) {
      const role = /:role(?:\/.*)?\/([^/]+)$/.exec(rec.principal);
      c = role ? (this.data.roles[role[1]!] ? this.assumeRole(role[1]!, rec.session ?? `uid-${uid}`) : undefined) : this.callerFor(rec.principal);
    }
    c ??= { arn: `arn:${this.partition}:iam::${this.accountId}:uid/${uid}`, accountId: this.accountId, type: 'Unknown' };
    return { ...c, uid, ...extra };
  }

  /** Map a uid to the root, a user, or a role (calls then run as session `session` or `uid-<n>`). */
  async mapUid(uid: number, principal: string, opts: { session?: string } = {}): Promise<void> {
    if (!Number.isInteger(uid) || uid < 0) throw new ArgTypeError('uid', 'a non-negative integer', uid);
    const arn = this._resolve(principal);
    if (!this.principalExists(arn) || arn.includes(':sts::')) throw new IamError('NoSuchEntityException', `${principal} is not a user, role or the root of account ${this.accountId}`);
    if (opts.session !== undefined) {
      if (!arn.includes(':role/')) throw new IamError('InvalidInputException', 'a session name applies to roles only');
      _checkName('session name', opts.session, SESSION_RE);
    }
    this.data.uids[String(uid)] = { principal: arn, ...(opts.session ? { session: opts.session } : {}) };
    await this._changed();
  }

  async unmapUid(uid: number): Promise<void> {
    if (!hasMember(this.data.uids, String(uid))) throw new IamError('NoSuchEntityException', `uid ${uid} is not mapped`);
    delete this.data.uids[String(uid)];
    await this._changed();
  }

  listUidMappings(): { uid: number; principal: string; session?: string }[] {
    return Object.entries(this.data.uids).map(([u, r]) => ({ uid: Number(u), ...r }));
  }

  async setRegion(region: string): Promise<void> {
    if (!REGION_RE.test(region)) throw new ArgRangeError('region', `"${region}" is not a region name`);
    this.data.region = region;
    await this._changed();
  }

  /** Wait for pending writes. */
  async flush(): Promise<void> {
    await this.writing;
  }

  // ---- internals -------------------------------------------------------------------

  private _resolve(p: string): string {
    if (p === 'root' || p === this.accountId) return this.rootArn;
    const m = /^(user|role)\/([^/]+)$/.exec(p);
    if (m) return m[1] === 'user' ? this.userArn(m[2]!) : this.roleArn(m[2]!);
    return p;
  }

  private _entity(principal: string): EntityRecord {
    const arn = this._resolve(principal);
    const m = /^arn:[\w-]+:iam::(\d{12}):(user|role)(?:\/.*)?\/([^/]+)$/.exec(arn);
    const rec = m && m[1] === this.accountId ? (m[2] === 'user' ? this.data.users[m[3]!] : this.data.roles[m[3]!]) : undefined;
    if (!rec) throw new IamError('NoSuchEntityException', `${principal} is not a user or role of account ${this.accountId}`);
    return rec;
  }

  private async _changed(): Promise<void> {
    this.generation++;
    this.compiled.clear();
    await this._persist();
  }

  /** Serialize writes; each caller returns once a snapshot including its change is on disk. */
  private _persist(): Promise<void> {
    const next = this.writing.catch(() => {}).then(() => atomicWrite(this.file, JSON.stringify(this.data, null, 2) + '\n', 0o600));
    this.writing = next;
    return next;
  }
}
