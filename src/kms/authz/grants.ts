import { promises as fsp } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { dirname } from 'node:path';
import { atomicWrite } from '../../util/atomic-write.js';
import { EbsdError, checkString } from '../../util/errors.js';
import { readTextIfExists } from '../../util/read-if-exists.js';
import type { Caller } from '../types.js';
import {
  InvalidGrantTokenException,
  LimitExceededException,
  NotFoundException,
  UnsupportedOperationException,
  ValidationException,
} from '../errors.js';
import type { GrantSource, GrantView } from './evaluate.js';
import { EC_OPERATIONS } from './evaluate.js';
import { isServicePrincipal, parsePrincipalArn } from './policy-document.js';
import { callerIds } from './caller-ids.js';
import { grantPrincipalId, type GrantPrincipalDirectory } from './principal-bindings.js';
import type { GrantConstraints } from './request-context.js';
import { dataMap } from '../data-map.js';
import { page } from '../paging.js';
import { isWellFormedUtf16 } from '../../util/strict-json.js';
import { parseStateJson } from '../../util/state-json.js';

/**
 * The grant store (KMS Developer Guide, "Grants in AWS KMS"; KMS API
 * reference CreateGrant, ListGrants, ListRetirableGrants, RetireGrant,
 * RevokeGrant). Grants only allow, never deny. Every change is on disk
 * (one JSON file, atomic replace) before the call returns, so a grant is
 * usable the moment CreateGrant answers, with or without its token.
 *
 * A grantee or retiring principal that is a user, role or role session of the account is bound,
 * when the grant is made, to its principal id (principal-bindings.ts, `grantPrincipalId`), as
 * AWS KMS binds it: a principal deleted and created again under the same ARN is not the grant's
 * grantee, nor its retiring principal, and ListGrants / ListRetirableGrants show a deleted
 * user's or role's ARN as the id it was bound to. docs/architecture.md §5.4.
 */

/**
 * Operations a grant may allow (KMS API reference, CreateGrant `Operations`). Encapsulate and
 * Decapsulate are for ML-KEM keys, which ebsd cannot create: `operationsForKey` never allows them.
 */
export const GRANT_OPERATIONS: readonly string[] = [
  'Decrypt', 'Encrypt', 'GenerateDataKey', 'GenerateDataKeyWithoutPlaintext', 'ReEncryptFrom', 'ReEncryptTo',
  'Sign', 'Verify', 'GetPublicKey', 'CreateGrant', 'RetireGrant', 'DescribeKey',
  'GenerateDataKeyPair', 'GenerateDataKeyPairWithoutPlaintext', 'GenerateMac', 'VerifyMac', 'DeriveSharedSecret',
  'Encapsulate', 'Decapsulate',
];

/**
 * A request member for grants to AWS service principals (CreateGrant GranteeServicePrincipal,
 * RetiringServicePrincipal, Constraints.SourceArn; ListGrants GranteeServicePrincipal;
 * ListRetirableGrants RetiringServicePrincipal): an API member ebsd does not support, refused
 * naming it rather than ignored (an ignored list filter would answer every grant).
 */
export function serviceGrantsUnsupported(member: string): UnsupportedOperationException {
  return new UnsupportedOperationException(`${member} is not supported by this KMS: ebsd has no grants to AWS service principals`, { code: 'KMS_SERVICE_GRANT_UNSUPPORTED' });
}
const GRANT_OPERATION_SET = new Set(GRANT_OPERATIONS);
/** Operations a constrained grant may carry: those with an encryption context, plus the three the constraint ignores. */
const CONSTRAINABLE = new Set([...EC_OPERATIONS, 'CreateGrant', 'RetireGrant', 'DescribeKey']);

/** AWS KMS quotas and API length limits. */
export const LIMITS = {
  grantsPerKey: 50_000,
  grantTokensPerRequest: 10,
  grantTokenMaxLength: 8192,
  nameMaxLength: 256,
  constraintPairs: 8,
  constraintValueChars: 384,
  listDefault: 50,
  listMax: 100,
} as const;

const NAME_RE = /^[a-zA-Z0-9:/_-]+$/;
const NONE: readonly GrantView[] = [];
const TOKEN_VERSION = 1;
const FILE_VERSION = 1;

/** One grant, in the shape ListGrants returns (GrantListEntry). */
export interface Grant extends GrantView {
  readonly KeyId: string;
  readonly GrantId: string;
  readonly Name?: string;
  /** Epoch seconds, as the AWS JSON protocol sends timestamps. */
  readonly CreationDate: number;
  readonly GranteePrincipal: string;
  readonly RetiringPrincipal?: string;
  readonly IssuingAccount: string;
  readonly Operations: readonly string[];
  readonly Constraints?: GrantConstraints;
}

interface StoredGrant {
  KeyId: string;
  GrantId: string;
  Name?: string;
  CreationDate: number;
  GranteePrincipal: string;
  RetiringPrincipal?: string;
  IssuingAccount: string;
  Operations: string[];
  Constraints?: GrantConstraints;
  /** SHA-256 (hex) of each token issued for this grant; the tokens themselves are never stored. */
  tokenHashes: string[];
  /**
   * The principal id GranteePrincipal was bound to (`grantPrincipalId`): `''` nobody; absent, not
   * bound (root, service, another account), or a record written before bindings, bound at open.
   */
  granteeId?: string;
  /** The same for RetiringPrincipal. */
  retiringId?: string;
}

interface GrantFileV1 {
  version: 1;
  grants: StoredGrant[];
}

export interface CreateGrantInput {
  GranteePrincipal: unknown;
  RetiringPrincipal?: unknown;
  Operations: unknown;
  Constraints?: unknown;
  Name?: unknown;
}

/** A validated CreateGrant request (also the kms:Grant* condition keys). */
export interface PreparedGrant {
  granteePrincipal: string;
  retiringPrincipal?: string;
  /** The principal ids they are bound to, when the store has a directory (`grantPrincipalId`). */
  granteeId?: string;
  retiringId?: string;
  operations: readonly string[];
  constraints?: GrantConstraints;
  name?: string;
}

/** What `GrantStore.open` bound of the grants it read (`GrantStore.migration`). */
export interface GrantMigration {
  /** Grants given principal ids at open (stored before bindings, or bound across partitions). */
  readonly bound: number;
  /** Of those, the grants with a grantee or retiring principal bound to nobody: they serve nobody in that role. */
  readonly nobody: number;
}

export interface KeyFacts {
  arn: string;
  accountId: string;
  keySpec?: string;
  keyUsage?: string;
}

/**
 * A grant as ListGrants / ListRetirableGrants return it (GrantListEntry): a
 * fresh copy without the token hashes, optional members only when set.
 */
export function grantListEntry(g: Grant): Grant {
  return {
    KeyId: g.KeyId,
    GrantId: g.GrantId,
    ...(g.Name !== undefined ? { Name: g.Name } : {}),
    CreationDate: g.CreationDate,
    GranteePrincipal: g.GranteePrincipal,
    ...(g.RetiringPrincipal !== undefined ? { RetiringPrincipal: g.RetiringPrincipal } : {}),
    IssuingAccount: g.IssuingAccount,
    Operations: [...g.Operations],
    ...(g.Constraints ? { Constraints: g.Constraints } : {}),
  };
}

const _hash = (token: string): string => createHash('sha256').update(token).digest('hex');

/** List order: creation second (zero-padded, so strings sort as numbers), then the unique GrantId. */
const _orderKey = (g: StoredGrant): string => `${String(g.CreationDate).padStart(12, '0')}:${g.GrantId}`;
/** A grant with its order key, in a list sorted by that key. */
interface Ordered { g: StoredGrant; k: string }
const _byOrderKey = (a: Ordered, b: Ordered): number => (a.k < b.k ? -1 : a.k > b.k ? 1 : 0);

/**
 * Lookup key for a grant's principal, among the caller's `granteeKeys` (caller-ids.ts). Bound: the
 * principal id (a user's AIDA…, a role's AROA…, which its sessions carry too, a session's
 * `AROA…:name`), or undefined for one bound to nobody: it matches no caller. Not bound: a role
 * and its sessions share `role:<acct>:<name>`; any other principal is its ARN.
 */
function _principalKey(principal: string, boundId: string | undefined): string | undefined {
  if (boundId !== undefined) return boundId === '' ? undefined : boundId;
  const f = parsePrincipalArn(principal);
  if (f?.kind === 'role') return `role:${f.account}:${f.name}`;
  return principal;
}

/** Operations valid for a key's spec and usage (KMS Developer Guide, "Grant operations"). */
export function operationsForKey(keySpec = 'SYMMETRIC_DEFAULT', keyUsage = 'ENCRYPT_DECRYPT'): ReadonlySet<string> {
  const common = ['CreateGrant', 'RetireGrant', 'DescribeKey'];
  if (keySpec === 'SYMMETRIC_DEFAULT') {
    return new Set([...common, 'Decrypt', 'Encrypt', 'GenerateDataKey', 'GenerateDataKeyWithoutPlaintext', 'ReEncryptFrom', 'ReEncryptTo', 'GenerateDataKeyPair', 'GenerateDataKeyPairWithoutPlaintext']);
  }
  if (keySpec.startsWith('HMAC_')) return new Set([...common, 'GenerateMac', 'VerifyMac']);
  if (keyUsage === 'SIGN_VERIFY') return new Set([...common, 'Sign', 'Verify', 'GetPublicKey']);
  if (keyUsage === 'KEY_AGREEMENT') return new Set([...common, 'DeriveSharedSecret', 'GetPublicKey']);
  return new Set([...common, 'Decrypt', 'Encrypt', 'ReEncryptFrom', 'ReEncryptTo', 'GetPublicKey']);
}

function _ecMap(v: unknown, where: string): Record<string, string> | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) throw new ValidationException(`${where} must be a map of strings`);
  const e = Object.entries(v as Record<string, unknown>);
  if (e.length === 0) return undefined; // an empty map is treated as not specified
  if (e.length > LIMITS.constraintPairs) throw new ValidationException(`${where} has ${e.length} pairs; at most ${LIMITS.constraintPairs} are allowed`);
  // No prototype: a "__proto__" pair is a member like any other, never dropped (dropping it would
  // leave an empty constraint that matches every context yet still counts as constrained).
  const out = dataMap<string>();
  for (const [k, x] of e) {
    if (typeof x !== 'string' || k.length === 0) throw new ValidationException(`${where} must map non-empty strings to strings`);
    if (!isWellFormedUtf16(k) || !isWellFormedUtf16(x)) throw new ValidationException(`${where}: pair ${JSON.stringify(k)} is not valid Unicode (lone surrogate)`);
    if (k.length + x.length > LIMITS.constraintValueChars) throw new ValidationException(`${where}: pair "${k}" exceeds ${LIMITS.constraintValueChars} characters`);
    out[k] = x;
  }
  return out;
}

/** Validate and normalize a `Constraints` request member. */
export function parseConstraints(v: unknown): GrantConstraints | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) throw new ValidationException('Constraints must be an object');
  for (const k of Object.keys(v)) {
    // An API member (KMS API reference, GrantConstraints) for grants to service principals, which ebsd does not have.
    if (k === 'SourceArn') throw serviceGrantsUnsupported('Constraints.SourceArn');
    if (k !== 'EncryptionContextEquals' && k !== 'EncryptionContextSubset') throw new ValidationException(`Constraints: unknown member "${k}"`);
  }
  const c = v as Record<string, unknown>;
  const eq = _ecMap(c.EncryptionContextEquals, 'Constraints.EncryptionContextEquals');
  const sub = _ecMap(c.EncryptionContextSubset, 'Constraints.EncryptionContextSubset');
  if (eq && sub) throw new ValidationException('Constraints: specify only one of EncryptionContextEquals and EncryptionContextSubset');
  if (eq) return { EncryptionContextEquals: eq };
  if (sub) return { EncryptionContextSubset: sub };
  return undefined;
}

/** Validate a `GrantTokens` request member (≤ 10 tokens, 1..8192 characters, issued by this store's format). */
export function checkGrantTokens(v: unknown): string[] | undefined {
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v)) throw new ValidationException('GrantTokens must be a list of strings');
  if (v.length > LIMITS.grantTokensPerRequest) {
    throw new ValidationException(`1 validation error detected: Value at 'grantTokens' failed to satisfy constraint: Member must have length less than or equal to ${LIMITS.grantTokensPerRequest}`);
  }
  for (const t of v) {
    if (typeof t !== 'string' || t.length < 1 || t.length > LIMITS.grantTokenMaxLength) throw new ValidationException('each grant token must be 1 to 8192 characters');
    const b = Buffer.from(t, 'base64url');
    if (b.length !== 49 || b[0] !== TOKEN_VERSION || b.toString('base64url') !== t) throw new InvalidGrantTokenException('The grant token is not valid.');
  }
  return v as string[];
}

function _sameGrant(g: StoredGrant, p: PreparedGrant, ops: string[], c: GrantConstraints | undefined): boolean {
  if (g.GranteePrincipal !== p.granteePrincipal || g.RetiringPrincipal !== p.retiringPrincipal) return false;
  // The same ARN bound to another principal (deleted and created again) is another grantee.
  if (g.granteeId !== p.granteeId || g.retiringId !== p.retiringId) return false;
  if (g.Operations.length !== ops.length || !ops.every((o) => g.Operations.includes(o))) return false;
  return JSON.stringify(g.Constraints ?? null) === JSON.stringify(c ?? null);
}

export class GrantStore implements GrantSource {
  private readonly byKey = new Map<string, Map<string, StoredGrant>>();
  /** keyArn -> grantee key -> grants: the Decrypt path's one lookup. */
  private readonly byGrantee = new Map<string, Map<string, StoredGrant[]>>();
  private readonly byToken = new Map<string, StoredGrant>();
  /**
   * List order, built on the first page and kept until a grant of that key
   * (or retiring principal) is added or removed: sorting every page cost a
   * full pagination of 10k grants ~1 s of main-thread CPU (O(n² log n)).
   */
  private readonly orderByKey = new Map<string, Ordered[]>();
  private readonly orderByRetiring = new Map<string, Ordered[]>();
  private _orderBuilds = 0;
  private writing: Promise<void> = Promise.resolve();
  /** The write not yet started, which changes made now join (_persist). */
  private pendingWrite: { undos: (() => void)[]; done: Promise<void> } | undefined;

  /** The identity generation `orderByRetiring` was built at: a listing shows a deleted principal by its id. */
  private _orderGeneration: number | undefined;

  /**
   * What `open` bound of the grants it read (`open`'s migration): `bound`, grants given principal
   * ids; `nobody`, those of them with a principal bound to nobody. The opener logs them
   * (open-kms.ts), as the key-policy migration logs its own.
   */
  private _migration: GrantMigration = { bound: 0, nobody: 0 };

  private constructor(
    private readonly file: string,
    private readonly principalExists?: (arn: string) => boolean,
    private readonly principals?: GrantPrincipalDirectory,
  ) {}

  /**
   * Open (or create on first change) the grant file, e.g. `<state>/kms/grants.json`.
   * `principalExists` validates grantee / retiring principals of the local account;
   * `principals` binds them to their principal ids (without it, nothing is bound: every
   * principal matches by ARN). A grant stored before bindings is bound here, to the principal
   * whose ARN is exactly its ARN now (`''`, nobody, if none), so a principal created later under
   * the name gets none of it. Most keep the access they had; not one whose ARN names no
   * principal exactly (deleted, or a role ARN of another path or partition, which matched the
   * role's sessions by name): it serves nobody (`migration` counts them). A principal of the
   * account bound across partitions (a session ARN of another partition, as the first version
   * of bindings bound it) is bound to nobody too. The file is written back once.
   */
  static async open(file: string, opts: { principalExists?: (arn: string) => boolean; principals?: GrantPrincipalDirectory } = {}): Promise<GrantStore> {
    checkString('file', file);
    await fsp.mkdir(dirname(file), { recursive: true, mode: 0o700 });
    const s = new GrantStore(file, opts.principalExists, opts.principals);
    const text = await readTextIfExists(file);
    let bound = 0;
    let nobody = 0;
    if (text !== undefined) {
      const data = parseStateJson('GRANTS_CORRUPT', file, text) as GrantFileV1;
      if (!data || data.version !== FILE_VERSION || !Array.isArray(data.grants)) throw new EbsdError('GRANTS_CORRUPT', `${file}: unsupported or corrupt grant file`);
      for (const g of data.grants) {
        if ((g.granteeId !== undefined && typeof g.granteeId !== 'string') || (g.retiringId !== undefined && typeof g.retiringId !== 'string')) {
          throw new EbsdError('GRANTS_CORRUPT', `${file}: grant ${String(g.GrantId)} has a principal id that is not a string`);
        }
        const b = s._bindStored(g);
        if (b !== 'kept') bound++;
        if (b === 'nobody') nobody++;
        s._index(g);
      }
    }
    if (bound > 0) await s._persist(() => {});
    s._migration = { bound, nobody };
    return s;
  }

  /** What `open` bound of the stored grants (see `open`); zero counts when there was nothing to bind. */
  get migration(): GrantMigration {
    return { ...this._migration };
  }

  // ---- GrantSource (evaluator) -----------------------------------------------------

  /** The stored records themselves (read-only by contract): no copy on the Decrypt path. */
  grantsFor(keyArn: string, caller: Caller): readonly GrantView[] {
    const m = this.byGrantee.get(keyArn);
    if (!m) return NONE;
    let out: readonly GrantView[] = NONE;
    for (const k of callerIds(caller).granteeKeys) {
      const l = m.get(k);
      if (l) out = out.length ? [...out, ...l] : l; // one hit (the usual case): the stored list itself
    }
    return out;
  }

  /**
   * Is `caller` the grant's grantee or retiring principal (`which`)? By the principal id it was
   * bound to: a principal created again under the ARN is not; a role names its sessions too.
   */
  isPrincipalOf(g: Pick<Grant, 'KeyId' | 'GrantId'>, which: 'GranteePrincipal' | 'RetiringPrincipal', caller: Caller): boolean {
    const s = this.byKey.get(g.KeyId)?.get(g.GrantId);
    const arn = s?.[which];
    if (!s || arn === undefined) return false;
    const k = _principalKey(arn, which === 'GranteePrincipal' ? s.granteeId : s.retiringId);
    return k !== undefined && callerIds(caller).granteeKeys.includes(k);
  }

  // ---- operations ------------------------------------------------------------------

  /**
   * Validate and create a grant (authorization is the caller's business).
   * Idempotent by Name: the same Name and properties return the existing
   * GrantId with a fresh token.
   */
  /** Validate a CreateGrant request against the key (ValidationException naming the problem). */
  prepare(key: KeyFacts, input: CreateGrantInput): PreparedGrant {
    const grantee = this._principal(input.GranteePrincipal, 'GranteePrincipal', true)!;
    const retiring = this._principal(input.RetiringPrincipal, 'RetiringPrincipal', false);
    const ops = this._operations(input.Operations, key);
    const constraints = parseConstraints(input.Constraints);
    if (constraints) {
      if ((key.keySpec ?? 'SYMMETRIC_DEFAULT') !== 'SYMMETRIC_DEFAULT') {
        throw new ValidationException('Grant constraints are not supported for asymmetric or HMAC KMS keys: their operations take no encryption context');
      }
      const bad = ops.filter((o) => !CONSTRAINABLE.has(o));
      if (bad.length) throw new ValidationException(`Grant constraints are not supported for operations that take no encryption context: ${bad.join(', ')}`);
    }
    let name: string | undefined;
    if (input.Name !== undefined && input.Name !== null) {
      if (typeof input.Name !== 'string' || input.Name.length < 1 || input.Name.length > LIMITS.nameMaxLength || !NAME_RE.test(input.Name)) {
        throw new ValidationException(`Name must be 1 to ${LIMITS.nameMaxLength} characters of [a-zA-Z0-9:/_-]`);
      }
      name = input.Name;
    }
    const granteeId = this._boundId(grantee);
    const retiringId = retiring !== undefined ? this._boundId(retiring) : undefined;
    return {
      granteePrincipal: grantee,
      ...(retiring !== undefined ? { retiringPrincipal: retiring } : {}),
      ...(granteeId !== undefined ? { granteeId } : {}),
      ...(retiringId !== undefined ? { retiringId } : {}),
      operations: ops,
      ...(constraints ? { constraints } : {}),
      ...(name !== undefined ? { name } : {}),
    };
  }

  /**
   * Create a grant (authorization is the caller's business). Idempotent by
   * Name: the same Name and properties return the existing GrantId with a
   * fresh token.
   */
  async create(key: KeyFacts, input: CreateGrantInput | PreparedGrant, now = Date.now()): Promise<{ GrantId: string; GrantToken: string; created: boolean }> {
    const p = 'granteePrincipal' in input ? input : this.prepare(key, input);
    const grantee = p.granteePrincipal;
    const retiring = p.retiringPrincipal;
    const granteeId = p.granteeId;
    const retiringId = p.retiringId;
    const ops = [...p.operations];
    const constraints = p.constraints;
    const name = p.name;

    const token = Buffer.concat([Buffer.from([TOKEN_VERSION]), randomBytes(48)]).toString('base64url');
    const same = this._sameNamed(key, p);
    if (same) {
      const g = same;
      const h = _hash(token);
      g.tokenHashes.push(h);
      this.byToken.set(h, g);
      await this._persist(() => { g.tokenHashes.pop(); this.byToken.delete(h); });
      return { GrantId: g.GrantId, GrantToken: token, created: false };
    }
    this._checkRoom(key);
    const g: StoredGrant = {
      KeyId: key.arn,
      GrantId: randomBytes(32).toString('hex'),
      ...(name !== undefined ? { Name: name } : {}),
      CreationDate: Math.floor(now / 1000),
      GranteePrincipal: grantee,
      ...(retiring !== undefined ? { RetiringPrincipal: retiring } : {}),
      IssuingAccount: `arn:aws:iam::${key.accountId}:root`,
      Operations: ops,
      ...(constraints ? { Constraints: constraints } : {}),
      tokenHashes: [_hash(token)],
      ...(granteeId !== undefined ? { granteeId } : {}),
      ...(retiringId !== undefined ? { retiringId } : {}),
    };
    this._index(g);
    await this._persist(() => this._unindex(g));
    return { GrantId: g.GrantId, GrantToken: token, created: true };
  }

  /**
   * Throw what `create` would refuse (the per-key grant quota) without creating anything: a
   * CreateGrant dry run answers DryRunOperationException only if the real call would succeed.
   */
  checkCreate(key: KeyFacts, p: PreparedGrant): void {
    if (!this._sameNamed(key, p)) this._checkRoom(key);
  }

  /** The grant a token was issued for, or undefined (retired, revoked, or never issued). */
  byGrantToken(token: string): Grant | undefined {
    checkGrantTokens([token]);
    const g = this.byToken.get(_hash(token));
    return g ? this._entry(g) : undefined;
  }

  get(keyArn: string, grantId: string): Grant | undefined {
    const g = this.byKey.get(keyArn)?.get(grantId);
    return g ? this._entry(g) : undefined;
  }

  /**
   * ListGrants: the key's grants, oldest first, optionally filtered (paging: `_page`). The
   * GranteePrincipal filter matches the grantee as listed: a deleted one by its id.
   */
  list(keyArn: string, opts: { Limit?: unknown; Marker?: unknown; GrantId?: unknown; GranteePrincipal?: unknown } = {}): { Grants: Grant[]; NextMarker?: string; Truncated: boolean } {
    let all = this._ordered(this.orderByKey, keyArn, () => this.byKey.get(keyArn)?.values() ?? []);
    if (opts.GrantId !== undefined) all = all.filter((x) => x.g.GrantId === opts.GrantId);
    if (opts.GranteePrincipal !== undefined) all = all.filter((x) => this._shown(x.g.GranteePrincipal, x.g.granteeId) === opts.GranteePrincipal);
    return this._page(all, opts.Limit, opts.Marker);
  }

  /**
   * ListRetirableGrants: grants in any key whose RetiringPrincipal, as listed, is `principal`, and
   * that `principal` may retire: a grant whose retiring user or role was deleted is listed under
   * the id it was bound to, not under the ARN (nor for a principal created again under it). A
   * grant listed under its ARN whose binding is not the ARN's holder now (bound to nobody; a
   * session's, `AROA…:name`, of a role since deleted or created again) is not listed for the
   * ARN, whose holder could not retire it; a session's is listed under that id instead.
   */
  listRetirable(principal: string, opts: { Limit?: unknown; Marker?: unknown } = {}): { Grants: Grant[]; NextMarker?: string; Truncated: boolean } {
    const gen = this.principals?.generation;
    if (gen !== this._orderGeneration) {
      this.orderByRetiring.clear(); // a principal deleted or created since: a grant may be listed under another name
      this._orderGeneration = gen;
    }
    const all = this._ordered(this.orderByRetiring, principal, function* (this: GrantStore) {
      for (const m of this.byKey.values()) {
        for (const g of m.values()) if (this._retirableBy(g, principal)) yield g;
      }
    }.bind(this));
    return this._page(all, opts.Limit, opts.Marker);
  }

  /** Remove a grant (RetireGrant / RevokeGrant after their authorization). */
  async remove(keyArn: string, grantId: string): Promise<Grant> {
    const g = this.byKey.get(keyArn)?.get(grantId);
    if (!g) throw new NotFoundException(`Grant ID ${grantId} not found for key ${keyArn}`);
    this._unindex(g);
    await this._persist(() => this._index(g));
    return this._entry(g);
  }

  /** Drop every grant of a deleted key (named by ARN or by key id). */
  async removeKey(keyArnOrId: string): Promise<number> {
    let keyArn = keyArnOrId;
    if (!keyArn.startsWith('arn:')) {
      for (const k of this.byKey.keys()) if (k.endsWith(`:key/${keyArnOrId}`)) keyArn = k;
    }
    const m = this.byKey.get(keyArn);
    if (!m) return 0;
    const gs = [...m.values()];
    for (const g of gs) this._unindex(g);
    await this._persist(() => gs.forEach((g) => this._index(g)));
    return gs.length;
  }

  /** How many times a list order was built (sorted); tests check that paging does not rebuild it per page. */
  get orderBuilds(): number {
    return this._orderBuilds;
  }

  countForKey(keyArn: string): number {
    return this.byKey.get(keyArn)?.size ?? 0;
  }

  async flush(): Promise<void> {
    await this.writing;
  }

  // ---- internals -------------------------------------------------------------------

  /** The key's grant with the same Name and properties (CreateGrant is idempotent by Name), if any. */
  private _sameNamed(key: KeyFacts, p: PreparedGrant): StoredGrant | undefined {
    const keyGrants = this.byKey.get(key.arn);
    if (p.name === undefined || !keyGrants) return undefined;
    for (const g of keyGrants.values()) {
      if (g.Name === p.name && _sameGrant(g, p, [...p.operations], p.constraints)) return g;
    }
    return undefined;
  }

  private _checkRoom(key: KeyFacts): void {
    if ((this.byKey.get(key.arn)?.size ?? 0) >= LIMITS.grantsPerKey) {
      throw new LimitExceededException(`The KMS key ${key.arn} already has ${LIMITS.grantsPerKey} grants, the maximum.`);
    }
  }

  /**
   * One page, in a stable order (creation time, then GrantId). The marker names the last
   * grant returned (src/kms/paging.ts), so a grant retired or created between two pages
   * neither breaks the next call nor hides or repeats another (docs/kms-format.md, "List markers").
   */
  private _page(sorted: readonly Ordered[], limit: unknown, marker: unknown): { Grants: Grant[]; NextMarker?: string; Truncated: boolean } {
    const p = page({ Limit: limit, Marker: marker }, sorted, LIMITS.listDefault, LIMITS.listMax, (x) => x.k);
    return { Grants: p.items.map((x) => this._entry(x.g)), ...(p.NextMarker ? { NextMarker: p.NextMarker } : {}), Truncated: p.Truncated };
  }

  private _principal(v: unknown, name: string, required: boolean): string | undefined {
    if (v === undefined || v === null) {
      if (required) throw new ValidationException(`${name} is required`);
      return undefined;
    }
    if (typeof v !== 'string' || v.length < 1 || v.length > 256) throw new ValidationException(`${name} must be 1 to 256 characters`);
    if (isServicePrincipal(v)) return v;
    const f = parsePrincipalArn(v);
    if (!f) throw new ValidationException(`${name} "${v}" is not a valid principal ARN`);
    // A user, role or session ARN of another partition is refused below as one that does not exist;
    // a root ARN is not looked up (another account's root is a valid grantee), so its partition is
    // checked here: no caller of this KMS is ever in another partition, so such a grant serves nobody.
    if (f.kind === 'root' && !this._inPartition(v)) {
      throw new ValidationException(`${name} "${v}" is not a valid principal: not in partition ${this.principals!.partition}, the partition of this KMS`);
    }
    if (this.principalExists && f.kind !== 'root' && !this.principalExists(v)) {
      throw new ValidationException(`${name} "${v}" is not a valid principal: no such identity`);
    }
    return v;
  }

  /** The principal id `arn` binds to now (`grantPrincipalId`); undefined without a directory or for an unbound principal. */
  private _boundId(arn: string): string | undefined {
    return this.principals ? grantPrincipalId(arn, this.principals) : undefined;
  }

  /**
   * Bind a record stored before bindings (no ids) to the principals existing now, and unbind a
   * principal bound across partitions (a session ARN of another partition, which the first
   * version of bindings bound to the local role's session). `kept`: nothing changed; `nobody`:
   * a principal of it is now bound to nobody; `bound`: bound, each to a principal.
   */
  private _bindStored(g: StoredGrant): 'kept' | 'bound' | 'nobody' {
    const grantee = this._rebound(g.GranteePrincipal, g.granteeId);
    const retiring = g.RetiringPrincipal !== undefined ? this._rebound(g.RetiringPrincipal, g.retiringId) : undefined;
    if (grantee !== undefined) g.granteeId = grantee;
    if (retiring !== undefined) g.retiringId = retiring;
    if (grantee === undefined && retiring === undefined) return 'kept';
    return grantee === '' || retiring === '' ? 'nobody' : 'bound';
  }

  /** The id a stored principal binds to now if that changes (`_bindStored`), else undefined. */
  private _rebound(arn: string, stored: string | undefined): string | undefined {
    if (stored === undefined) return this._boundId(arn);
    // A stored binding is kept, unless across partitions: grantPrincipalId gives '' for those.
    return stored !== '' && this._boundId(arn) === '' && !this._inPartition(arn) ? '' : undefined;
  }

  /** Whether `arn` is in the partition of the principal directory (true without one). */
  private _inPartition(arn: string): boolean {
    return !this.principals || arn.startsWith(`arn:${this.principals.partition}:`);
  }

  /** Whether ListRetirableGrants for `principal` lists `g` (see `listRetirable`). */
  private _retirableBy(g: StoredGrant, principal: string): boolean {
    const arn = g.RetiringPrincipal;
    if (arn === undefined) return false;
    const id = g.retiringId;
    const shown = this._shown(arn, id);
    if (!this.principals || id === undefined) return shown === principal; // not bound: by name
    // A session's binding is shown as its ARN: while that ARN names another session (or none), under the id.
    if (shown !== principal) return id === principal && id.includes(':') && this._boundId(arn) !== id;
    // Shown as its ARN: for the ARN only while it binds to the same principal now; shown as a deleted principal's id: for that id.
    return arn !== principal || (id !== '' && this._boundId(arn) === id);
  }

  /**
   * A grant's principal as ListGrants shows it: its ARN while the user or role it was bound to
   * still holds it; otherwise the unique id it was bound to, as AWS KMS shows a deleted
   * principal (and as GetKeyPolicy does, principal-bindings.ts `shownPolicy`). One bound to
   * nobody, or a session's (`AROA…:name`), stays as written.
   */
  private _shown(arn: string, boundId: string | undefined): string {
    if (boundId === undefined || boundId === '' || boundId.includes(':') || !this.principals) return arn;
    return this.principals.uniqueIdOf(arn) === boundId ? arn : boundId;
  }

  /** `grantListEntry` of a stored grant, its principals as `_shown`. */
  private _entry(g: StoredGrant): Grant {
    const e = grantListEntry(g);
    const grantee = this._shown(g.GranteePrincipal, g.granteeId);
    const retiring = g.RetiringPrincipal !== undefined ? this._shown(g.RetiringPrincipal, g.retiringId) : undefined;
    if (grantee === e.GranteePrincipal && retiring === e.RetiringPrincipal) return e;
    return { ...e, GranteePrincipal: grantee, ...(retiring !== undefined ? { RetiringPrincipal: retiring } : {}) };
  }

  private _operations(v: unknown, key: KeyFacts): string[] {
    if (!Array.isArray(v) || v.length === 0) throw new ValidationException('Operations must be a non-empty list');
    const valid = operationsForKey(key.keySpec, key.keyUsage);
    const out: string[] = [];
    for (const o of v) {
      if (typeof o !== 'string' || !GRANT_OPERATION_SET.has(o)) {
        throw new ValidationException(`1 validation error detected: Value '${String(o)}' at 'operations' failed to satisfy constraint: Member must satisfy enum value set: [${GRANT_OPERATIONS.join(', ')}]`);
      }
      if (!valid.has(o)) throw new ValidationException(`Grant operation ${o} is not valid for a key with KeySpec ${key.keySpec ?? 'SYMMETRIC_DEFAULT'} and KeyUsage ${key.keyUsage ?? 'ENCRYPT_DECRYPT'}`);
      if (!out.includes(o)) out.push(o);
    }
    return out;
  }

  /** The cached list order under `id` in `cache`, built (sorted) from `grants` when absent. Read-only by contract. */
  private _ordered(cache: Map<string, Ordered[]>, id: string, grants: () => Iterable<StoredGrant>): Ordered[] {
    let o = cache.get(id);
    if (!o) {
      o = Array.from(grants(), (g) => ({ g, k: _orderKey(g) })).sort(_byOrderKey);
      this._orderBuilds++;
      if (o.length) cache.set(id, o);
    }
    return o;
  }

  /** A grant was added or removed: its key's and its retiring principal's list orders are rebuilt on the next page. */
  private _orderChanged(g: StoredGrant): void {
    this.orderByKey.delete(g.KeyId);
    // Listed under its ARN, or under the id it was bound to once that principal is deleted.
    if (g.RetiringPrincipal !== undefined) this.orderByRetiring.delete(g.RetiringPrincipal);
    if (g.retiringId) this.orderByRetiring.delete(g.retiringId);
  }

  private _index(g: StoredGrant): void {
    this._orderChanged(g);
    let m = this.byKey.get(g.KeyId);
    if (!m) this.byKey.set(g.KeyId, (m = new Map()));
    m.set(g.GrantId, g);
    const k = _principalKey(g.GranteePrincipal, g.granteeId);
    if (k !== undefined) { // bound to nobody: in no caller's lookup
      let gm = this.byGrantee.get(g.KeyId);
      if (!gm) this.byGrantee.set(g.KeyId, (gm = new Map()));
      const list = gm.get(k);
      if (list) list.push(g);
      else gm.set(k, [g]);
    }
    for (const h of g.tokenHashes) this.byToken.set(h, g);
  }

  private _unindex(g: StoredGrant): void {
    this._orderChanged(g);
    const m = this.byKey.get(g.KeyId);
    m?.delete(g.GrantId);
    if (m?.size === 0) this.byKey.delete(g.KeyId);
    const gm = this.byGrantee.get(g.KeyId);
    const k = _principalKey(g.GranteePrincipal, g.granteeId);
    const list = k === undefined ? undefined : gm?.get(k)?.filter((x) => x !== g);
    if (gm && k !== undefined) {
      if (list && list.length) gm.set(k, list);
      else gm.delete(k);
      if (gm.size === 0) this.byGrantee.delete(g.KeyId);
    }
    for (const h of g.tokenHashes) this.byToken.delete(h);
  }

  /**
   * Write the whole store (atomic replace), resolving once a write that holds this change is
   * on disk. Writes are serialized, and the changes made while one is under way share the next
   * (group commit): a whole-file rewrite is O(grants), and one per change put every host's
   * CreateGrant behind every other's queued rewrites (docs/architecture.md §5.4 has the figures). If a write fails, the undos of
   * every change it held restore the in-memory state, newest first, and each change's caller
   * gets the error.
   */
  private _persist(undo: () => void): Promise<void> {
    const open = this.pendingWrite;
    if (open) {
      open.undos.push(undo);
      return open.done;
    }
    const batch: { undos: (() => void)[]; done: Promise<void> } = { undos: [undo], done: Promise.resolve() };
    const run = async (): Promise<void> => {
      this.pendingWrite = undefined; // a change from here on is not in this snapshot: it waits for the next write
      const grants: StoredGrant[] = [];
      for (const m of this.byKey.values()) for (const g of m.values()) grants.push(g);
      const doc: GrantFileV1 = { version: FILE_VERSION, grants };
      try {
        await atomicWrite(this.file, JSON.stringify(doc) + '\n', 0o600);
      } catch (e) {
        for (const u of batch.undos.reverse()) u();
        throw e;
      }
    };
    batch.done = this.writing.catch(() => {}).then(run);
    this.pendingWrite = batch;
    this.writing = batch.done;
    return batch.done;
  }
}
