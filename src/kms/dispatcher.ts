/**
 * The operation table. Every call: check the request's shape and that its
 * audit record can be written (request-shape.ts; a failure refuses the call
 * before any effect) -> validate/resolve inside the handler ->
 * `call.authorize(...)` (the handler must call it before touching a key) ->
 * the operation's own checks -> `call.stopIfDryRun()` (DRY_RUN_OPERATIONS) ->
 * execute -> one audit event, whatever happened. Other modules (policies,
 * grants) add operations with `registerOperation(name, handler)`.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from '../util/logger.js';
import { EbsdError, noSpaceMessage } from '../util/errors.js';
import type { Caller, KmsRequest, KmsResponse } from './types.js';
import { callerParty } from './caller-party.js';
import type { AuthorizationRequest, Authorizer } from './authorizer.js';
import type { KeyRecord, KeyView } from './key-record.js';
import type { Keystore } from './keystore.js';
import type { Hsm } from './hsm/hsm-client.js';
import type { KeyHandle } from './hsm/protocol.js';
import type { AuditLog } from './audit/audit-log.js';
import { buildEvent, buildEventJson, MAX_ERROR_MESSAGE, truncateField, type AuditInput } from './audit/event.js';
import { AccessDeniedException, DryRunOperationException, KMSInternalException, KmsError, UnknownOperationException, ValidationException } from './errors.js';
import { checkRequestShape } from './request-shape.js';
import { checkKeyState } from './key-state.js';
import { UNSERVED_OPERATIONS, unservedOperation } from './unserved.js';

/**
 * The operations whose request has a DryRun member (the KMS API model; docs/architecture.md §5.4).
 * Elsewhere DryRun is a member the operation does not have: its type is checked like any
 * member's (request-shape.ts), and it is ignored, so CreateKey with DryRun creates the key.
 * Their handlers call `call.stopIfDryRun()` once every check of the real call has passed,
 * just before its first effect.
 */
export const DRY_RUN_OPERATIONS: ReadonlySet<string> = new Set([
  'CreateGrant', 'Decrypt', 'DeriveSharedSecret', 'Encrypt', 'GenerateDataKey', 'GenerateDataKeyPair',
  'GenerateDataKeyPairWithoutPlaintext', 'GenerateDataKeyWithoutPlaintext', 'GenerateMac', 'ReEncrypt', 'RetireGrant',
  'RevokeGrant', 'Sign', 'Verify', 'VerifyMac',
]);

/** What a handler may ask to authorize. */
export interface AuthorizeArgs {
  /** IAM action; defaults to `kms:<operation>`. */
  action?: string;
  key?: KeyRecord;
  /**
   * Without `key`: the ARN the action is judged on by identity policies alone (an alias ARN for
   * CreateAlias, UpdateAlias, DeleteAlias; docs/architecture.md §5.4). Default `*`.
   */
  resource?: string;
  encryptionContext?: Record<string, string>;
  grantTokens?: string[];
  requestAlias?: string;
  /**
   * ReEncrypt: whether the destination key is the key the ciphertext was encrypted under, as
   * resolved (kms:ReEncryptOnSameKey), never as the request spells them.
   */
  reEncryptOnSameKey?: boolean;
  /**
   * Condition values of request members with a default, as the handler resolved and will use them
   * (docs/architecture.md §5.4), so the authorizer judges what is done, not a second copy of the
   * defaults: kms:EncryptionAlgorithm (Encrypt, Decrypt; ReEncrypt's source algorithm for
   * kms:ReEncryptFrom, destination for kms:ReEncryptTo; SYMMETRIC_DEFAULT for the data-key
   * operations), kms:MessageType (Sign, Verify), kms:ScheduleKeyDeletionPendingWindowInDays,
   * kms:RotationPeriodInDays.
   */
  encryptionAlgorithm?: string;
  messageType?: string;
  pendingWindowInDays?: number;
  rotationPeriodInDays?: number;
  /** Key-state check to apply after authorization (default: the operation name; false: none). */
  stateCheck?: string | false;
}

/** One call in flight. */
export interface CallContext {
  readonly operation: string;
  readonly request: KmsRequest;
  readonly caller: Caller;
  readonly requestId: string;
  /** Clock time of the call (epoch ms). */
  readonly now: number;
  /** Ask the Authorizer; throws AccessDeniedException, then the key-state exception, if any. */
  authorize(a: AuthorizeArgs): Promise<void>;
  /** DryRun of an operation that has the member (DRY_RUN_OPERATIONS); false for every other operation. */
  readonly dryRun: boolean;
  /**
   * Ends a dry run with DryRunOperationException: a handler of DRY_RUN_OPERATIONS calls it
   * after authorization and every check the real call makes (key usage, algorithm, ciphertext,
   * grant existence, quotas), before the call's first effect. Does nothing when not a dry run.
   */
  stopIfDryRun(): void;
  /** Key ARNs named in the audit event (authorize adds the key it checked). */
  readonly resources: string[];
  /** Extra audit data (e.g. `keyMaterialId`), never secrets. */
  additionalEventData?: Record<string, unknown>;
}

/** What CreateKey asks the key-policy validator about. */
export interface NewKeyPolicyCheck {
  /** The policy text of the request. */
  policy: string;
  /** ARN, spec, usage and tags of the key about to be created (nothing is stored yet). */
  keyArn: string;
  keySpec: string;
  keyUsage: string;
  tags?: readonly { TagKey: string; TagValue: string }[];
  caller: Caller;
  request: Readonly<KmsRequest>;
  now: number;
  /** BypassPolicyLockoutSafetyCheck of the request. */
  bypassLockoutCheck: boolean;
}

/**
 * Validates the key policy of a new key: throws MalformedPolicyDocumentException
 * for a policy the engine cannot accept, or that would lock the caller out
 * (unless bypassLockoutCheck). Installed by the authorization engine
 * (`registerAuthzOperations`); without one, CreateKey checks only that the
 * policy is a JSON document with a Statement.
 */
export type KeyPolicyValidator = (c: NewKeyPolicyCheck) => void;

/**
 * Binds a key policy's user and role ARNs to their principals' unique ids (the record's
 * `policyPrincipals`; src/kms/authz/principal-bindings.ts). Undefined: nothing to bind.
 * Installed by the authorization engine (`KmsService.bindKeyPolicies`).
 */
export type KeyPolicyBinder = (policy: string) => Record<string, string> | undefined;

/** Services a handler can use. */
export interface OperationContext {
  readonly accountId: string;
  readonly region: string;
  readonly log: Logger;
  readonly keystore: Keystore;
  readonly hsm: Hsm;
  readonly audit: AuditLog;
  authorizer: Authorizer;
  /** Key-policy validation of the authorization engine, if one is plugged in. */
  keyPolicyValidator?: KeyPolicyValidator;
  /** Principal binding of the authorization engine, if one is plugged in: every key policy stored is bound with it. */
  keyPolicyBinder?: KeyPolicyBinder;
  now(): number;
  /**
   * Resolve a KeyId as AWS does: key id, key ARN, and (when `aliases` is true)
   * alias name or alias ARN. A service's AWS managed key (`alias/aws/ebs`,
   * AWS_MANAGED_KEY_POLICIES) is created on first use; any other unknown alias,
   * `alias/aws/...` included, is NotFoundException. Returns the record and the alias used, if any.
   */
  resolveKey(keyId: string, opts?: { aliases?: boolean }): Promise<{ key: KeyRecord; requestAlias?: string }>;
  /** Metadata + aliases, as given to authorizers. */
  view(key: KeyRecord): KeyView;
  /** HSM handle of the key's current material, or of a given material id (hex). */
  handle(key: KeyRecord, materialId?: string): KeyHandle;
  /** Ask the core to run `tick()` at or after `when` (epoch ms). */
  scheduleDue(when: number): void;
  /** Listeners run after a key is deleted (e.g. the grant store drops its grants). */
  onKeyDeleted(fn: (keyId: string) => void | Promise<void>): void;
}

export type OperationHandler = (ctx: OperationContext, call: CallContext) => Promise<KmsResponse>;

/**
 * The operations CloudTrail records with `readOnly: true`: every cryptographic
 * operation (Encrypt, Decrypt, ReEncrypt, GenerateDataKey*, GenerateRandom,
 * Sign, Verify, GenerateMac, VerifyMac, DeriveSharedSecret, Decapsulate) and
 * every Describe, Get and List; every other operation is `false`
 * (docs/kms-format.md, "Audit log"). One table, so an operation's flag does not
 * depend on the file that registers it.
 */
export const READ_ONLY_OPERATIONS: ReadonlySet<string> = new Set([
  'Encrypt', 'Decrypt', 'ReEncrypt', 'GenerateDataKey', 'GenerateDataKeyWithoutPlaintext', 'GenerateDataKeyPair',
  'GenerateDataKeyPairWithoutPlaintext', 'GenerateRandom', 'Sign', 'Verify', 'GenerateMac', 'VerifyMac',
  'DeriveSharedSecret', 'Decapsulate',
  'DescribeKey', 'DescribeCustomKeyStores', 'GetKeyPolicy', 'GetKeyRotationStatus', 'GetPublicKey', 'GetParametersForImport',
  'ListAliases', 'ListGrants', 'ListKeyPolicies', 'ListKeyRotations', 'ListKeys', 'ListResourceTags', 'ListRetirableGrants',
]);

/**
 * Serialize every member but blobs, and drop the text: the audit record's
 * requestParameters are a subset of these members (audit/event.ts copies an
 * allow-list of them), so if this succeeds, the record after the call can be
 * written. Member by member, without building an object or the event (a
 * third of a dry-run event's CPU on a Decrypt request). Nothing here is kept
 * or logged.
 */
function _serializable(req: KmsRequest): void {
  for (const k of Object.keys(req)) {
    const v = req[k];
    if (v !== undefined && !(v instanceof Uint8Array)) JSON.stringify(v);
  }
}

/**
 * Denials are aggregated per (principal, operation, reason): the message names the
 * principal, action, resource and why, so it is the reason; bounded like the record's field.
 */
function _refusalKey(caller: Caller, operation: string, message: string): string {
  return `kms\0${caller.arn}\0${operation}\0${truncateField(message, MAX_ERROR_MESSAGE)}`;
}

export class Dispatcher {
  private readonly ops = new Map<string, { handler: OperationHandler; readOnly: boolean }>();

  constructor(readonly context: OperationContext, private readonly beforeCall: (now: number) => Promise<void> | void) {}

  registerOperation(name: string, handler: OperationHandler): void {
    if (!/^[A-Z][A-Za-z]+$/.test(name)) throw new TypeError(`operation name ${name} is not an AWS operation name`);
    this.ops.set(name, { handler, readOnly: READ_ONLY_OPERATIONS.has(name) });
  }

  get accountId(): string {
    return this.context.accountId;
  }

  get region(): string {
    return this.context.region;
  }

  setKeyPolicyValidator(v: KeyPolicyValidator): void {
    this.context.keyPolicyValidator = v;
  }

  has(name: string): boolean {
    return this.ops.has(name);
  }

  operations(): string[] {
    return [...this.ops.keys()].sort();
  }

  async call(operation: string, request: KmsRequest, caller: Caller, requestId: string = randomUUID()): Promise<KmsResponse> {
    const ctx = this.context;
    const now = ctx.now();
    const due = this.beforeCall(now);
    if (due) await due;
    const entry = this.ops.get(operation);
    let authorized = false;
    let response: KmsResponse | undefined;
    let error: KmsError | undefined;
    // Every call is audited or has no effect: the request's shape is checked and
    // its members serialized before the handler can change anything. A request
    // that cannot be recorded is refused here, and the refusal is recorded
    // without its parameters.
    let checked: KmsRequest = {};
    let recordable = false;
    try {
      checked = checkRequestShape(request);
      _serializable(checked);
      recordable = true;
    } catch (e) {
      error = e instanceof KmsError ? e : new ValidationException(`The request cannot be recorded in the audit log: ${(e as Error)?.message ?? String(e)}`, { cause: e });
    }
    const dryRun = checked.DryRun === true && DRY_RUN_OPERATIONS.has(operation);
    const call: CallContext = {
      operation,
      request: checked,
      caller,
      requestId,
      now,
      resources: [],
      dryRun,
      stopIfDryRun: () => {
        if (!dryRun) return;
        // A stop before authorization would tell an unauthorized caller its call would succeed.
        if (!authorized) throw new KMSInternalException(`operation ${operation} ended a dry run before authorizing its caller`, { code: 'KMS_UNAUTHORIZED_HANDLER' });
        throw new DryRunOperationException('The request would have succeeded, but the DryRun option is set.');
      },
      authorize: async (a) => {
        const key = a.key;
        const resource = key ? key.arn : (a.resource ?? '*');
        const action = a.action ?? `kms:${operation}`;
        // Optional members assigned one by one: object spreads here cost measurable garbage on the Decrypt path.
        const req: AuthorizationRequest = { action, operation, caller, accountId: ctx.accountId, region: ctx.region, resource, request: call.request, now };
        if (key) req.key = ctx.view(key);
        if (a.encryptionContext) req.encryptionContext = a.encryptionContext;
        if (a.grantTokens) req.grantTokens = a.grantTokens;
        if (a.requestAlias) req.requestAlias = a.requestAlias;
        if (a.reEncryptOnSameKey !== undefined) req.reEncryptOnSameKey = a.reEncryptOnSameKey;
        if (a.encryptionAlgorithm) req.encryptionAlgorithm = a.encryptionAlgorithm;
        if (a.messageType) req.messageType = a.messageType;
        if (a.pendingWindowInDays !== undefined) req.pendingWindowInDays = a.pendingWindowInDays;
        if (a.rotationPeriodInDays !== undefined) req.rotationPeriodInDays = a.rotationPeriodInDays;
        if (key && !call.resources.includes(key.arn)) call.resources.push(key.arn);
        let d = ctx.authorizer.authorize(req);
        if (d instanceof Promise) d = await d;
        if (!d.allowed) {
          throw new AccessDeniedException(d.message
            ?? `User: ${caller.arn} is not authorized to perform: ${action} on resource: ${resource} because ${d.reason ?? 'no policy allows the action'}`);
        }
        if (d.grantId) (call.additionalEventData ??= {}).grantId = d.grantId;
        authorized = true;
        if (key && a.stateCheck !== false) checkKeyState(a.stateCheck ?? operation, key);
      },
    };
    if (recordable) {
      try {
        if (!entry) {
          // An AWS KMS operation ebsd does not serve is a typed refusal naming it (unserved.ts); any other name is unknown.
          throw UNSERVED_OPERATIONS.has(operation) ? unservedOperation(operation) : new UnknownOperationException(`Unknown operation ${operation}`);
        }
        response = await entry.handler(ctx, call);
        if (!authorized) throw new KMSInternalException(`operation ${operation} did not authorize its caller`, { code: 'KMS_UNAUTHORIZED_HANDLER' });
        // A dry run that returns never reached its stop (a handler bug): its answer is withheld.
        if (dryRun) throw new KMSInternalException(`operation ${operation} did not stop its dry run`, { code: 'KMS_DRY_RUN_NOT_STOPPED' });
      } catch (e) {
        error = e instanceof KmsError ? e
          : e instanceof EbsdError && e.awsName ? new KmsError(e.awsName, e.message, { code: e.code })
          : new KMSInternalException(internalMessage(e), { cause: e });
        if (!(e instanceof KmsError)) ctx.log.error({ err: e, operation, requestId: call.requestId }, 'KMS operation failed unexpectedly');
      }
    }
    const input: AuditInput = {
      eventName: operation,
      caller,
      accountId: ctx.accountId,
      region: ctx.region,
      ...(recordable ? { request: call.request } : {}),
      ...(response ? { response } : {}),
      ...(error ? { errorCode: error.awsName!, errorMessage: error.message } : {}),
      requestId: call.requestId,
      eventId: randomUUID(),
      resources: call.resources,
      readOnly: entry?.readOnly ?? READ_ONLY_OPERATIONS.has(operation),
      time: now,
      ...(call.additionalEventData ? { additionalEventData: call.additionalEventData } : {}),
    };
    try {
      // A denied call had no effect, so its record may be aggregated: a caller looping a refused call
      // costs bounded audit bytes (refusal-aggregator.ts), as the daemon's own refusals do.
      if (error?.awsName === 'AccessDeniedException') await ctx.audit.appendRefusal(_refusalKey(caller, operation, error.message), () => buildEvent(input), { kind: 'principal', id: callerParty(caller) });
      else await ctx.audit.appendJson(buildEventJson(input));
    } catch (e) {
      // The call is not on record: the caller learns why (a full disk is named).
      throw new KMSInternalException(internalMessage(e, 'the audit log kms/audit/events.ndjson'), { cause: e });
    }
    if (error) throw error;
    return response!;
  }
}

/**
 * KMSInternalException's message: a full disk is named (errno and file), so
 * an operator knows what to free; anything else stays opaque (no internals leak).
 */
function internalMessage(e: unknown, writing = 'the KMS state directory'): string {
  const full = noSpaceMessage(e, writing);
  return full === undefined ? 'An internal error occurred.' : `An internal error occurred: ${full}`;
}
