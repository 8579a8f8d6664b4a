/**
 * The KMS core: `KmsService.open(opts)` wires the HSM simulator (worker
 * thread), the keystore, the audit log and the operation table; `call()` is
 * the one entry point (authorize -> execute -> audit, see dispatcher.ts).
 * Deletions and rotations happen when due: checked on every call against the
 * clock, and by `tick()`, which the daemon calls periodically; `tick()` also
 * seals the audit log when events were written since the last digest and that
 * digest is an hour old (docs/kms-format.md §Audit log).
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { silentLogger, type Logger } from '../util/logger.js';
import type { Caller, KmsCore, KmsRequest, KmsResponse } from './types.js';
import { AccountAuthorizer, AWS_MANAGED_KEY_POLICIES, type Authorizer } from './authorizer.js';
import { Dispatcher, type KeyPolicyBinder, type KeyPolicyValidator, type OperationContext, type OperationHandler } from './dispatcher.js';
import { Keystore } from './keystore.js';
import { startHsm, type Hsm } from './hsm/hsm-client.js';
import { AuditLog } from './audit/audit-log.js';
import { buildEvent } from './audit/event.js';
import { InvalidArnException, KMSInternalException, NotFoundException } from './errors.js';
import type { KeyRecord, KeyView } from './key-record.js';
import { EKT_VERSION, type KeyHandle } from './hsm/protocol.js';
import { createKeyRecord, registerKeyOperations } from './ops/keys.js';
import { registerCryptoOperations } from './ops/crypto.js';
import { registerAsymmetricOperations } from './ops/asymmetric.js';
import { registerAliasOperations } from './ops/aliases.js';
import { registerTagAndRotationOperations, rotateKey } from './ops/tags-rotation.js';
import { registerCustomKeyStoreOperations } from './ops/custom-key-stores.js';
import { FairGate } from './fair-gate.js';
import { callerParty } from './caller-party.js';

export interface KmsOptions {
  /** The `kms/` directory of the state dir (created 0700 if missing). */
  stateDir: string;
  accountId: string;
  region: string;
  logger?: Logger;
  /** Epoch-ms clock; tests pass a simulated one to move through rotation and deletion windows. */
  clock?: () => number;
  /**
   * HSM passphrase (the daemon takes it from EBSD_HSM_PASSPHRASE at start and removes it
   * from its environment, docs/architecture.md §5.10). Without one the KEK lives in `<kms>/hsm/kek`.
   */
  passphrase?: string;
  /** 'event': every audit event is fdatasync'ed before the call returns. Default 'none' (page cache). */
  auditFsync?: 'none' | 'event';
  /** Seal a signed audit digest every N events (default 1000), at most once a minute (`auditDigestMinIntervalMs`). */
  auditDigestEvery?: number;
  /** The least time between two audit digests due by count (default 60 s; 0: none). */
  auditDigestMinIntervalMs?: number;
  /** `tick()` seals the audit log once its last digest is this old (default 1 hour). */
  auditSealIntervalMs?: number;
  /** Rotate the live audit file past this size (default 64 MiB), and the full-disk reserve (default 4 MiB); audit-log.ts. */
  auditRotateBytes?: number;
  auditReserveBytes?: number;
  /**
   * Tests only: scrypt cost for a new passphrase domain, so suites need not
   * spend seconds per domain. Cheaper than production (N=2^15, r=8, p=1) is
   * refused outside a test runner (hsm/domain.ts, chooseScryptCost).
   */
  scryptCost?: { N: number; r: number; p: number };
  /** HSM transport; 'worker' (default) keeps all key material off the main thread. */
  hsmMode?: 'worker' | 'inline';
  /** Authorization engine; defaults to the same-account placeholder. */
  authorizer?: Authorizer;
  /** Calls in the core at once before callers take turns (fair-gate.ts); default MAX_ACTIVE_CALLS. */
  maxActiveCalls?: number;
  /** How long refused callers' repeats are summed before one aggregated event is written (refusal-aggregator.ts; default 10 s). */
  auditRefusalWindowMs?: number;
}

/**
 * Calls in the KMS core at once before callers take turns (fair-gate.ts). Above
 * the 64 connections of a saturating client (scripts/bench/kms-net.mjs), so a
 * lone caller is never held back; low enough that another caller's call waits
 * behind at most this many, not behind everything one caller has queued.
 */
export const MAX_ACTIVE_CALLS = 128;

const KEY_ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const KMS_ARN_RE = /^arn:aws[a-z-]*:kms:([a-z0-9-]+):(\d{12}):((?:key|alias)\/.+)$/;

export class KmsService implements KmsCore {
  private readonly dispatcher: Dispatcher;
  private readonly gate: FairGate;
  private readonly deletedListeners: ((keyId: string) => void | Promise<void>)[] = [];
  private nextDue = Infinity;
  private ticking: Promise<void> | null = null;
  private readonly creatingManaged = new Map<string, Promise<KeyRecord>>();
  private closed = false;
  /**
   * Services handed to operation handlers (those registered from outside too).
   * Not public: a caller outside the core uses `call`, `audit`, `hsm` and
   * `onKeyDeleted` (docs/architecture.md §2.5).
   */
  private readonly context: OperationContext;

  private constructor(private readonly o: Required<Pick<KmsOptions, 'accountId' | 'region'>> & KmsOptions,
    private readonly log: Logger, private readonly clock: () => number,
    keystore: Keystore, hsm: Hsm, audit: AuditLog) {
    const self = this;
    this.context = {
      accountId: o.accountId,
      region: o.region,
      log,
      keystore,
      hsm,
      audit,
      authorizer: o.authorizer ?? new AccountAuthorizer(),
      now: clock,
      resolveKey: (id, opts) => self.resolveKey(id, opts?.aliases ?? true),
      view: (k) => self.view(k),
      handle: (k, mid) => self.handle(k, mid),
      scheduleDue: (t) => { if (t < self.nextDue) self.nextDue = t; },
      onKeyDeleted: (fn) => { self.deletedListeners.push(fn); },
    };
    this.dispatcher = new Dispatcher(this.context, (now) => (now >= this.nextDue ? this.runDueOnce() : undefined));
    this.gate = new FairGate(o.maxActiveCalls ?? MAX_ACTIVE_CALLS);
    registerKeyOperations(this.dispatcher);
    registerCryptoOperations(this.dispatcher);
    registerAsymmetricOperations(this.dispatcher);
    registerAliasOperations(this.dispatcher);
    registerTagAndRotationOperations(this.dispatcher);
    registerCustomKeyStoreOperations(this.dispatcher);
  }

  static async open(opts: KmsOptions): Promise<KmsService> {
    const log = (opts.logger ?? silentLogger).child({ component: 'kms' });
    const clock = opts.clock ?? Date.now;
    mkdirSync(opts.stateDir, { recursive: true, mode: 0o700 });
    const { passphrase } = opts;
    const hsm = await startHsm({
      stateDir: opts.stateDir, ...(passphrase !== undefined ? { passphrase } : {}), ...(opts.scryptCost ? { scryptCost: opts.scryptCost } : {}),
    }, opts.hsmMode ?? 'worker');
    try {
      const keystore = new Keystore(opts.stateDir, log);
      keystore.load();
      const audit = await AuditLog.open({
        dir: join(opts.stateDir, 'audit'), hsm, log, fsync: opts.auditFsync ?? 'none', clock,
        ...(opts.auditDigestEvery ? { digestEvery: opts.auditDigestEvery } : {}),
        ...(opts.auditDigestMinIntervalMs !== undefined ? { digestMinIntervalMs: opts.auditDigestMinIntervalMs } : {}),
        ...(opts.auditSealIntervalMs !== undefined ? { sealIntervalMs: opts.auditSealIntervalMs } : {}),
        ...(opts.auditRotateBytes ? { rotateBytes: opts.auditRotateBytes } : {}),
        ...(opts.auditReserveBytes !== undefined ? { reserveBytes: opts.auditReserveBytes } : {}),
        ...(opts.auditRefusalWindowMs !== undefined ? { refusalWindowMs: opts.auditRefusalWindowMs } : {}),
      });
      const svc = new KmsService(opts, log, clock, keystore, hsm, audit);
      svc.nextDue = -Infinity; // first call (or tick) computes the real schedule
      await svc.resealKeyTokens();
      return svc;
    } catch (e) {
      await hsm.close();
      throw e;
    }
  }

  /** `requestId`: the id the caller answers with (x-amzn-RequestId), so the audit event carries the same one. */
  call(operation: string, request: KmsRequest, caller: Caller, requestId?: string): Promise<KmsResponse> {
    if (this.closed) return Promise.reject(new KMSInternalException('KMS core is closed', { code: 'KMS_CLOSED' }));
    // Turns are per party (caller-party.ts): each user, root and local uid's principal, and each session's origin,
    // so that minting sessions gets no more turns. Closed while it waited for its turn: refused as a call after
    // close is, not run against a stopped HSM and audit log.
    return this.gate.run(callerParty(caller), () => (this.closed
      ? Promise.reject(new KMSInternalException('KMS core is closed', { code: 'KMS_CLOSED' }))
      : this.dispatcher.call(operation, request, caller, requestId)));
  }

  /** Calls in the core and calls waiting for a turn (fair-gate.ts). */
  get callLoad(): { active: number; waiting: number; callers: number } {
    return this.gate.load;
  }

  /** Add or replace an operation (policies and grants register theirs here). */
  registerOperation(name: string, handler: OperationHandler): void {
    this.dispatcher.registerOperation(name, handler);
  }

  operations(): string[] {
    return this.dispatcher.operations();
  }

  setAuthorizer(a: Authorizer): void {
    this.context.authorizer = a;
  }

  get accountId(): string {
    return this.o.accountId;
  }

  get region(): string {
    return this.o.region;
  }

  /** CreateKey's key-policy validation, installed by the authorization engine (registerAuthzOperations). */
  setKeyPolicyValidator(v: KeyPolicyValidator): void {
    this.context.keyPolicyValidator = v;
  }

  /**
   * Install the authorization engine's principal binder (CreateKey and the AWS managed keys bind
   * their policy with it), then bind every stored key policy that has no bindings yet (records
   * written before bindings existed): to the principals that exist now, so each keeps the access
   * it had, and a principal created later under a named one's name gets none of it. A record
   * so bound is written back, once. docs/architecture.md §5.4.
   */
  async bindKeyPolicies(binder: KeyPolicyBinder): Promise<void> {
    this.context.keyPolicyBinder = binder;
    const ks = this.context.keystore;
    for (const k of ks.all()) {
      if (k.policyPrincipals !== undefined) continue;
      let bound: Record<string, string> | undefined;
      try {
        bound = binder(k.policy);
      } catch (err) {
        // A stored policy that does not compile fails every call on the key anyway; the other keys still bind.
        this.log.error({ err, keyArn: k.arn }, 'the stored key policy does not compile; its principals are not bound');
        continue;
      }
      if (!bound) continue; // names no user or role of the account: nothing to bind, nothing to write
      const b = bound;
      await ks.update(k.keyId, (r) => { if (r.policy === k.policy && r.policyPrincipals === undefined) r.policyPrincipals = b; });
      this.log.info({ keyArn: k.arn, principals: Object.keys(b).length }, 'bound the principals of a stored key policy to their unique ids');
      const nobody = Object.keys(b).filter((arn) => b[arn] === '');
      if (nobody.length) this.log.warn({ keyArn: k.arn, principals: nobody }, 'a stored key policy names users or roles that do not exist: they are bound to nobody and get nothing (put the policy again once they exist)');
    }
  }

  /**
   * Re-seal every key material token older than EKT_VERSION (docs/kms-format.md §Exported key
   * token): version 1 tokens do not authenticate the key spec and usage stored beside them, so
   * whoever can edit a key file could relabel the material (a symmetric key as HMAC_256, whose
   * GenerateMac computes the one-time keys of its ciphertexts, hsm/kdf.ts). The HSM opens each
   * one as version 1 (its material must fit the stored spec and usage) and seals it again bound
   * to them; the record is written back once, and only if a token in it was replaced. A token
   * that does not open is left as it is and logged: calls on that key fail as they did before
   * (KMS_KEY_MATERIAL_CORRUPT), the KMS still opens.
   *
   * Each re-sealed material is logged at warn level and recorded as an `AwsServiceEvent`
   * `ReSealKeyMaterial` in the audit log (docs/kms-format.md §Audit log): a state dir is re-sealed
   * once, so the same material re-sealed again on a later start is the visible trace of a key
   * file rolled back to its version 1 copy. Neither names a token or material byte.
   */
  private async resealKeyTokens(): Promise<void> {
    const ks = this.context.keystore;
    let resealed = 0;
    for (const k of ks.all()) {
      const fresh = new Map<string, { from: string; to: string }>();
      for (const m of k.materials) {
        if (Buffer.from(m.ekt, 'base64')[0] === EKT_VERSION) continue;
        try {
          const r = await this.context.hsm.call({ op: 'resealKeyToken', key: this.handle(k, m.id) });
          fresh.set(m.id, { from: m.ekt, to: Buffer.from(r.ekt).toString('base64') });
        } catch (err) {
          this.log.error({ err, keyArn: k.arn, materialId: m.id }, 'a key material token of an older format does not open; it is not re-sealed, and the key cannot use this material');
        }
      }
      if (fresh.size === 0) continue;
      const replaced: string[] = [];
      try {
        await ks.updateIfChanged(k.keyId, (r) => {
          replaced.length = 0;
          // Bound to the spec and usage the HSM checked: written only over the record it was given.
          if (r.keySpec !== k.keySpec || r.keyUsage !== k.keyUsage) return false;
          for (const m of r.materials) {
            const f = fresh.get(m.id);
            if (f && m.ekt === f.from) { m.ekt = f.to; replaced.push(m.id); }
          }
          return replaced.length > 0;
        });
      } catch (err) {
        // The old tokens still serve (checked against spec and usage); the next open tries again.
        this.log.error({ err, keyArn: k.arn }, 'could not write the re-sealed key material tokens of a key');
        continue;
      }
      resealed += replaced.length;
      for (const materialId of replaced) {
        const fields = { keyArn: k.arn, materialId, keySpec: k.keySpec, keyUsage: k.keyUsage };
        this.log.warn({ ...fields, version: EKT_VERSION }, 're-sealed a key material token of an older format to bind its key spec and usage; the same material re-sealed again on a later start means its key file was rolled back');
        try {
          await this.serviceEvent('ReSealKeyMaterial', k, this.clock(), {
            keyMaterialId: materialId, keySpec: k.keySpec, keyUsage: k.keyUsage, keyMaterialTokenVersion: EKT_VERSION,
          });
        } catch (err) {
          this.log.error({ err, ...fields }, 'could not record the re-seal of a key material token in the audit log');
        }
      }
    }
    if (resealed > 0) this.log.info({ tokens: resealed, version: EKT_VERSION }, 're-sealed key material tokens to bind their key spec and usage');
  }

  /** The audit log every KMS call is recorded in; the daemon appends its volume events and refusals to it. */
  get audit(): AuditLog {
    return this.context.audit;
  }

  /** The HSM (access-key secrets are sealed under its domain key, src/kms/sts). */
  get hsm(): Hsm {
    return this.context.hsm;
  }

  /** Run `fn` after a key is deleted at the end of its waiting period (the grant store drops its grants). */
  onKeyDeleted(fn: (keyId: string) => void | Promise<void>): void {
    this.deletedListeners.push(fn);
  }

  /** Seal the audit log now (a signed digest over everything written so far). */
  sealAudit(): Promise<void> {
    return this.context.audit.seal();
  }

  /**
   * Run deletions and rotations that are due, then seal the audit log if
   * events were written since its last digest and that digest is an hour old
   * (`auditSealIntervalMs`; a call's own path runs only the first part: a seal
   * is two HSM signatures, fdatasyncs and a file kept for good). Safe to call
   * at any rate.
   */
  async tick(): Promise<void> {
    await this.runDueOnce();
    if (!this.closed) await this.context.audit.sealIfDue();
  }

  private runDueOnce(): Promise<void> {
    if (this.ticking) return this.ticking;
    this.ticking = this.runDue().finally(() => { this.ticking = null; });
    return this.ticking;
  }

  private async runDue(): Promise<void> {
    const ctx = this.context;
    const now = this.clock();
    let next = Infinity;
    for (const k of ctx.keystore.all()) {
      if (k.keyState === 'PendingDeletion' && k.deletionDate !== undefined) {
        if (k.deletionDate <= now) await this.deleteKey(k, now);
        else next = Math.min(next, k.deletionDate);
        continue;
      }
      const due = k.rotation.enabled ? k.rotation.nextRotationDate : undefined;
      if (due === undefined) continue;
      if (due <= now) {
        // A disabled key does not rotate; EnableKey reschedules it.
        if (k.keyState !== 'Enabled') continue;
        try {
          const after = await rotateKey(ctx, k, 'AUTOMATIC', now);
          await this.serviceEvent('RotateKey', after, now, { keyMaterialId: after.materials[after.materials.length - 1]!.id });
          next = Math.min(next, after.rotation.nextRotationDate ?? Infinity);
        } catch (e) {
          this.log.error({ err: e, keyArn: k.arn }, 'automatic key rotation failed');
        }
      } else {
        next = Math.min(next, due);
      }
    }
    this.nextDue = next;
  }

  private async deleteKey(k: KeyRecord, now: number): Promise<void> {
    await this.context.keystore.remove(k.keyId);
    this.log.info({ keyArn: k.arn }, 'KMS key deleted after its waiting period');
    await this.serviceEvent('DeleteKey', k, now);
    for (const fn of this.deletedListeners) {
      try { await fn(k.keyId); } catch (e) { this.log.error({ err: e, keyArn: k.arn }, 'key-deleted listener failed'); }
    }
  }

  private async serviceEvent(name: string, k: KeyRecord, now: number, extra?: Record<string, unknown>): Promise<void> {
    await this.context.audit.append(buildEvent({
      eventName: name, accountId: this.o.accountId, region: this.o.region, requestId: randomUUID(), eventId: randomUUID(),
      resources: [k.arn], readOnly: false, time: now, eventType: 'AwsServiceEvent',
      ...(extra ? { additionalEventData: extra } : {}),
    }));
  }

  /**
   * Views and handles are cached per record object: the keystore replaces a
   * record on every update (copy on write) and the alias map on every alias
   * change, so a cached entry can never be stale. They hold no secrets
   * (handles carry exported key tokens only). Building them was ~4 % of a
   * Decrypt's main-thread time.
   */
  private readonly views = new WeakMap<KeyRecord, { aliases: object; view: KeyView }>();
  private readonly handles = new WeakMap<KeyRecord, Map<string, KeyHandle>>();

  private view(k: KeyRecord): KeyView {
    const ks = this.context.keystore;
    const c = this.views.get(k);
    if (c && c.aliases === ks.aliasVersion) return c.view;
    const { materials: _m, ...meta } = k;
    const view: KeyView = Object.freeze({ ...meta, aliases: Object.freeze(ks.aliasesOf(k.keyId)) });
    this.views.set(k, { aliases: ks.aliasVersion, view });
    return view;
  }

  private handle(k: KeyRecord, materialId?: string): KeyHandle {
    let byId = this.handles.get(k);
    if (!byId) this.handles.set(k, byId = new Map());
    const cacheId = materialId ?? '';
    const hit = byId.get(cacheId);
    if (hit) return hit;
    const m = materialId === undefined ? k.materials[k.materials.length - 1] : k.materials.find((x) => x.id === materialId);
    if (!m) throw new KMSInternalException(`key material ${materialId} of ${k.arn} not found`);
    // Exact-size arrays: they cross postMessage on every call (protocol.ts, exactBytes).
    const h: KeyHandle = Object.freeze({ arn: k.arn, hbkId: new Uint8Array(Buffer.from(m.id, 'hex')), ekt: new Uint8Array(Buffer.from(m.ekt, 'base64')), spec: k.keySpec, usage: k.keyUsage });
    byId.set(cacheId, h);
    return h;
  }

  private async resolveKey(id: string, aliases: boolean): Promise<{ key: KeyRecord; requestAlias?: string }> {
    const { accountId, region } = this.o;
    const ks = this.context.keystore;
    let keyId: string | undefined;
    let alias: string | undefined;
    if (id.startsWith('arn:')) {
      const m = KMS_ARN_RE.exec(id);
      if (!m) throw new InvalidArnException(`Invalid arn ${id}`);
      if (m[1] !== region || m[2] !== accountId) throw new NotFoundException(`${m[3]!.startsWith('alias/') ? 'Alias' : 'Key'} '${id}' does not exist`);
      if (m[3]!.startsWith('key/')) keyId = m[3]!.slice(4);
      else alias = m[3]!;
    } else if (id.startsWith('alias/')) {
      alias = id;
    } else {
      keyId = id;
    }
    if (alias !== undefined) {
      const aliasArn = `arn:aws:kms:${region}:${accountId}:${alias}`;
      if (!aliases) throw new NotFoundException(`Key '${aliasArn}' does not exist`);
      const rec = ks.alias(alias);
      if (rec) keyId = rec.TargetKeyId;
      else if (AWS_MANAGED_KEY_POLICIES.has(alias)) return { key: await this.managedKey(alias), requestAlias: alias };
      else throw new NotFoundException(`Alias ${aliasArn} is not found.`);
    }
    if (!KEY_ID_RE.test(keyId!)) throw new NotFoundException(`Invalid keyId '${keyId}'`);
    const key = ks.get(keyId!);
    if (!key) throw new NotFoundException(`Key 'arn:aws:kms:${region}:${accountId}:key/${keyId}' does not exist`);
    return alias !== undefined ? { key, requestAlias: alias } : { key };
  }

  /** The AWS managed key of a service alias (AWS_MANAGED_KEY_POLICIES), created on first use. */
  private managedKey(alias: string): Promise<KeyRecord> {
    let p = this.creatingManaged.get(alias);
    if (!p) {
      p = (async () => {
        const { accountId, region } = this.o;
        const svc = alias.slice('alias/aws/'.length);
        const key = await createKeyRecord(this.context, {
          keySpec: 'SYMMETRIC_DEFAULT', keyUsage: 'ENCRYPT_DECRYPT',
          description: `Default key that protects my ${svc.toUpperCase()} resources when no other key is defined`,
          policy: AWS_MANAGED_KEY_POLICIES.get(alias)!(accountId, region),
          keyManager: 'AWS', now: this.clock(),
        });
        await this.context.keystore.updateAliases((m) => {
          m.set(alias, { AliasName: alias, TargetKeyId: key.keyId, CreationDate: key.creationDate, LastUpdatedDate: key.creationDate });
        });
        await this.serviceEvent('CreateKey', key, key.creationDate);
        return key;
      })().finally(() => this.creatingManaged.delete(alias));
      this.creatingManaged.set(alias, p);
    }
    return p;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.ticking) await this.ticking.catch(() => {});
    try {
      await this.context.audit.close();
    } finally {
      await this.context.hsm.close();
    }
  }
}

export function createKmsCore(opts: KmsOptions): Promise<KmsService> {
  return KmsService.open(opts);
}
