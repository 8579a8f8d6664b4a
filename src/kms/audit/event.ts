/**
 * CloudTrail-format events for KMS calls (CloudTrail record contents, event
 * version 1.08). Request and response fields are copied through an allow-list,
 * so plaintext, ciphertext, key material, messages, signatures, MACs and grant
 * tokens can never reach the log, whatever an operation puts in its request.
 */
import type { Caller, KmsRequest, KmsResponse } from '../types.js';

/** Request fields that may be logged. Anything else is dropped. */
const SAFE_REQUEST = new Set([
  'KeyId', 'EncryptionContext', 'KeySpec', 'NumberOfBytes', 'EncryptionAlgorithm', 'SigningAlgorithm', 'MacAlgorithm',
  'MessageType', 'KeyUsage', 'Description', 'AliasName', 'TargetKeyId', 'PendingWindowInDays', 'RotationPeriodInDays',
  'Limit', 'Marker', 'DestinationKeyId', 'SourceKeyId', 'SourceEncryptionContext', 'DestinationEncryptionContext',
  'SourceEncryptionAlgorithm', 'DestinationEncryptionAlgorithm', 'KeyPairSpec', 'TagKeys', 'Tags', 'Origin', 'MultiRegion',
  'BypassPolicyLockoutSafetyCheck', 'GranteePrincipal', 'RetiringPrincipal', 'Operations', 'Constraints', 'GrantId',
  'Name', 'PolicyName', 'KeyMaterialId', 'IncludeKeyMaterial', 'DryRun',
  'DryRunModifiers',
]);
/** Response fields that may be logged (CloudTrail logs few; never blobs). */
const SAFE_RESPONSE = new Set(['KeyId', 'KeyMetadata', 'GrantId', 'KeyMaterialId', 'SigningAlgorithm', 'EncryptionAlgorithm',
  'MacAlgorithm', 'KeySpec', 'KeyPairSpec', 'SignatureValid', 'MacValid', 'DeletionDate', 'KeyState', 'PendingWindowInDays']);

export function safeFields(src: Record<string, unknown> | undefined, allow: Set<string>): Record<string, unknown> | null {
  if (!src) return null;
  let out: Record<string, unknown> | null = null;
  for (const k in src) {
    if (!allow.has(k)) continue;
    const v = src[k];
    if (v === undefined || v instanceof Uint8Array) continue;
    (out ??= {})[k[0]!.toLowerCase() + k.slice(1)] = v;
  }
  return out;
}

/**
 * Field bounds. CloudTrail truncates a field whose content exceeds the field's
 * maximum size and marks it with `omitted: true`; requestParameters and
 * responseElements are capped at 100 KB (CloudTrail record contents, "CloudTrail
 * record contents for management, data, and network activity events",
 * docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-event-reference-record-contents.html).
 * A caller-supplied userAgent is cut at 1 KiB (ebsd's bound, far above any SDK's
 * user agent): an 8 KB header no longer costs 8 KB of audit per request.
 */
export const MAX_USER_AGENT = 1024;
export const MAX_ERROR_MESSAGE = 2048;
export const MAX_PARAMETERS_JSON = 100 * 1024;
export const TRUNCATED_SUFFIX = '...(truncated)';

/** `s` cut to `max` UTF-16 units, marked when cut; a lone surrogate left by the cut is dropped. */
export function truncateField(s: string, max: number): string {
  if (s.length <= max) return s;
  let cut = s.slice(0, max);
  const last = cut.charCodeAt(cut.length - 1);
  if (last >= 0xd800 && last <= 0xdbff) cut = cut.slice(0, -1);
  return cut + TRUNCATED_SUFFIX;
}

/** requestParameters / responseElements over 100 KB serialized: replaced by `{"omitted":true}`, as CloudTrail does. */
function _boundParams(v: Record<string, unknown> | null): Record<string, unknown> | null {
  if (!v) return v;
  return JSON.stringify(v).length > MAX_PARAMETERS_JSON ? { omitted: true } : v;
}
const _OMITTED_JSON = '{"omitted":true}';
function _boundParamsJson(json: string): string {
  return json.length > MAX_PARAMETERS_JSON ? _OMITTED_JSON : json;
}

/**
 * Who a service event is by: CloudTrail records what KMS does by itself (RotateKey, DeleteKey)
 * as invoked by, from and with the agent "AWS Internal" (docs/kms-format.md, "Audit log").
 */
export const AWS_INTERNAL = 'AWS Internal';

/**
 * The service name CloudTrail records for a call a service makes for a caller: `invokedBy`,
 * `sourceIPAddress` and `userAgent` all name the service without a region (`ec2.amazonaws.com`;
 * docs/kms-format.md, "Audit log"). `viaService` is the `kms:ViaService` value, which has the
 * region (`ec2.us-east-1.amazonaws.com`) and stays what policies are judged on.
 */
export function invokedByOf(viaService: string): string {
  return viaService.replace(/^([a-z0-9-]+)\.[a-z]{2}(?:-[a-z]+)+-\d+\.(amazonaws\.com(?:\.cn)?)$/, '$1.$2');
}

/**
 * requestParameters: the allow-listed members, and what CloudTrail adds. A Decrypt always has
 * `encryptionAlgorithm`, SYMMETRIC_DEFAULT (the API's default) when the request named none
 * (docs/kms-format.md, "Audit log").
 */
function _requestFields(i: AuditInput): Record<string, unknown> | null {
  const out = safeFields(i.request, SAFE_REQUEST);
  if (i.eventName === 'Decrypt' && i.request && out?.encryptionAlgorithm === undefined) {
    return { ...out, encryptionAlgorithm: 'SYMMETRIC_DEFAULT' };
  }
  return out;
}

/**
 * responseElements: the allow-listed members, and what CloudTrail adds. A CreateGrant's has the key
 * ARN as `keyId`, though the operation does not return it (docs/kms-format.md, "Audit log").
 */
function _responseFields(i: AuditInput): Record<string, unknown> | null {
  const out = safeFields(i.response, SAFE_RESPONSE);
  if (i.eventName === 'CreateGrant' && out && i.resources[0] !== undefined) return { ...out, keyId: i.resources[0] };
  return out;
}

export interface AuditInput {
  eventName: string;
  caller?: Caller;
  accountId: string;
  region: string;
  request?: KmsRequest;
  response?: KmsResponse;
  errorCode?: string;
  errorMessage?: string;
  requestId: string;
  eventId: string;
  /** Key ARN(s) the call touched. */
  resources: string[];
  readOnly: boolean;
  time: number;
  /** `AwsServiceEvent` for rotations and deletions KMS performs itself. */
  eventType?: 'AwsApiCall' | 'AwsServiceEvent';
  additionalEventData?: Record<string, unknown>;
}

/**
 * CloudTrail userIdentity of a caller, members in CloudTrail's order. A caller
 * with STS session credentials carries `sessionContext` (sessionIssuer: the
 * role; attributes: creationDate, mfaAuthenticated), as in the CloudTrail
 * userIdentity element's "temporary security credentials" example.
 */
export function userIdentityOf(c: Caller): Record<string, unknown> {
  return {
    type: c.type,
    ...(c.principalId ? { principalId: c.principalId } : {}),
    arn: c.arn,
    accountId: c.accountId,
    ...(c.accessKeyId ? { accessKeyId: c.accessKeyId } : {}),
    ...(c.userName ? { userName: c.userName } : {}),
    ...(c.sessionContext ? { sessionContext: c.sessionContext } : {}),
    ...(c.viaService ? { invokedBy: invokedByOf(c.viaService) } : {}),
  };
}

/** sourceIPAddress: the caller's address, or the service that called for it (invokedByOf). */
function _sourceOf(c: Caller | undefined): string {
  return c ? (c.viaService ? invokedByOf(c.viaService) : c.sourceIp ?? '127.0.0.1') : AWS_INTERNAL;
}

/** userAgent: the caller's (bounded), or the service that called for it, as CloudTrail records either. */
function _agentOf(c: Caller | undefined): string {
  return c ? (c.viaService ? invokedByOf(c.viaService) : truncateField(c.userAgent ?? 'ebsd', MAX_USER_AGENT)) : AWS_INTERNAL;
}

export function buildEvent(i: AuditInput): Record<string, unknown> {
  const c = i.caller;
  const userIdentity = c ? userIdentityOf(c) : { accountId: i.accountId, invokedBy: AWS_INTERNAL };
  const ev: Record<string, unknown> = {
    eventVersion: '1.08',
    userIdentity,
    eventTime: new Date(i.time).toISOString().replace(/\.\d{3}Z$/, 'Z'),
    eventSource: 'kms.amazonaws.com',
    eventName: i.eventName,
    awsRegion: i.region,
    sourceIPAddress: _sourceOf(c),
    userAgent: _agentOf(c),
    requestParameters: _boundParams(_requestFields(i)),
    responseElements: _boundParams(_responseFields(i)),
  };
  if (i.errorCode) {
    ev.errorCode = i.errorCode;
    ev.errorMessage = i.errorMessage === undefined ? undefined : truncateField(i.errorMessage, MAX_ERROR_MESSAGE);
  }
  if (i.additionalEventData) ev.additionalEventData = i.additionalEventData;
  ev.requestID = i.requestId;
  ev.eventID = i.eventId;
  ev.readOnly = i.readOnly;
  ev.resources = i.resources.map((ARN) => ({ accountId: ARN.split(':')[4] ?? i.accountId, type: 'AWS::KMS::Key', ARN }));
  ev.eventType = i.eventType ?? 'AwsApiCall';
  ev.managementEvent = true;
  ev.recipientAccountId = i.accountId;
  ev.eventCategory = 'Management';
  return ev;
}

// ---- the same event, serialized directly ---------------------------------------

/** JSON string literal; strings of plain characters (ids, ARNs, names) skip JSON.stringify's call overhead. */
const _PLAIN = /^[\w.:\/@+=,-]*$/;
const _q = (v: unknown): string => (typeof v === 'string' && _PLAIN.test(v) ? '"' + v + '"' : JSON.stringify(v));
/**
 * By ARN, not by Caller object: both doors build a new Caller per request (the
 * socket from the uid, the listener from the access key), so a per-object cache
 * never hit. Bounded like the resources' cache below.
 */
const _identityJson = new Map<string, { s: string; c: Caller }>();

function _identity(c: Caller): string {
  const hit = _identityJson.get(c.arn);
  // Checked field by field: a caller object changed in place must not log its old identity.
  const h = hit?.c;
  if (h && h.type === c.type && h.arn === c.arn && h.accountId === c.accountId && h.principalId === c.principalId
    && h.userName === c.userName && h.viaService === c.viaService && h.accessKeyId === c.accessKeyId
    && h.sessionContext === c.sessionContext) return hit.s; // sessionContext is frozen: compared by reference
  const s = _q(userIdentityOf(c));
  if (_identityJson.size > 10_000) _identityJson.clear();
  _identityJson.set(c.arn, { s, c: { ...c } });
  return s;
}

const _resourceJson = new Map<string, string>();
let _lastTime = NaN;
let _lastTimeJson = '';

function _resource(arn: string, accountId: string): string {
  let s = _resourceJson.get(arn);
  if (s === undefined) {
    s = _q({ accountId: arn.split(':')[4] ?? accountId, type: 'AWS::KMS::Key', ARN: arn });
    if (_resourceJson.size > 10_000) _resourceJson.clear();
    _resourceJson.set(arn, s);
  }
  return s;
}

function _time(t: number): string {
  if (t !== _lastTime) {
    _lastTime = t;
    _lastTimeJson = _q(new Date(t).toISOString().replace(/\.\d{3}Z$/, 'Z'));
  }
  return _lastTimeJson;
}

/**
 * `JSON.stringify(buildEvent(i))` without its closing brace, built as a
 * string: the static parts and each caller's userIdentity are serialized
 * once, not per call. The audit log appends the chain fields and the brace
 * (AuditLog.appendJson). test/kms/audit.test.ts checks it is byte-for-byte
 * the same as the object path.
 */
export function buildEventJson(i: AuditInput): string {
  const c = i.caller;
  let s = '{"eventVersion":"1.08","userIdentity":' + (c ? _identity(c) : _q({ accountId: i.accountId, invokedBy: AWS_INTERNAL }))
    + ',"eventTime":' + _time(i.time)
    + ',"eventSource":"kms.amazonaws.com","eventName":' + _q(i.eventName)
    + ',"awsRegion":' + _q(i.region)
    + ',"sourceIPAddress":' + _q(_sourceOf(c))
    + ',"userAgent":' + _q(_agentOf(c))
    + ',"requestParameters":' + _boundParamsJson(_q(_requestFields(i)))
    + ',"responseElements":' + _boundParamsJson(_q(_responseFields(i)));
  if (i.errorCode) {
    s += ',"errorCode":' + _q(i.errorCode) + (i.errorMessage === undefined ? '' : ',"errorMessage":' + _q(truncateField(i.errorMessage, MAX_ERROR_MESSAGE)));
  }
  if (i.additionalEventData) s += ',"additionalEventData":' + _q(i.additionalEventData);
  s += ',"requestID":' + _q(i.requestId) + ',"eventID":' + _q(i.eventId) + ',"readOnly":' + (i.readOnly ? 'true' : 'false') + ',"resources":[';
  for (let k = 0; k < i.resources.length; k++) s += (k ? ',' : '') + _resource(i.resources[k]!, i.accountId);
  return s + '],"eventType":' + _q(i.eventType ?? 'AwsApiCall') + ',"managementEvent":true,"recipientAccountId":' + _q(i.accountId)
    + ',"eventCategory":"Management"';
}
