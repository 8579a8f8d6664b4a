import { randomUUID } from 'node:crypto';
import { buildEvent, MAX_PARAMETERS_JSON, truncateField } from '../kms/audit/event.js';
import type { RefusalSummary } from './connection-guard.js';
import type { Caller } from '../kms/types.js';
import { callerParty } from '../kms/caller-party.js';
import type { RefusalParty } from '../kms/audit/refusal-aggregator.js';
import type { VolumeAuditEvent } from '../volume/volume-manager.js';
import { toWireError } from './aws-json.js';

/**
 * CloudTrail-shaped events for what the daemon does outside the KMS core:
 * EC2 volume operations, IAM calls and control-API denials. They go into the same
 * hash-chained log as the KMS events, so `ebsd audit verify` covers them.
 */
export function volumeEvent(ev: VolumeAuditEvent, o: { accountId: string; region: string; caller?: Caller; requestId?: string }): Record<string, unknown> {
  const e = ec2Event(ev.eventName, ev.time, ev.eventName === 'VolumeImpaired' || ev.eventName === 'VolumeRecovered', o);
  e.requestParameters = { volumeId: ev.volumeId, ...(ev.principal && !o.caller ? { principal: ev.principal } : {}) };
  if (ev.details) e.additionalEventData = safeDetails(ev.details);
  e.resources = [{ accountId: o.accountId, type: 'AWS::EC2::Volume', ARN: `arn:aws:ec2:${o.region}:${o.accountId}:volume/${ev.volumeId}` }];
  return e;
}

/**
 * Bounds for what a refused caller puts in its event: the operation name
 * (X-Amz-Target) and a volume id come from the request. CloudTrail truncates
 * over-long fields (see MAX_USER_AGENT in src/kms/audit/event.ts); a refused
 * caller gets tighter bounds, since it can send as many requests as it likes.
 */
export const MAX_REFUSED_NAME = 128;
export const MAX_REFUSED_VOLUME_ID = 64;

/** The key under which repeated refusals are aggregated (src/kms/audit/refusal-aggregator.ts). */
export function refusalKey(uid: number | undefined, eventSource: string, eventName: string, reason: string): string {
  return `${uid ?? '-'}\0${eventSource}\0${truncateField(eventName, MAX_REFUSED_NAME)}\0${reason}`;
}

/**
 * Whose refusal it is, for the aggregator's key budgets: a mapped local user (the kernel vouches for
 * its uid, the identity map for its principal), else the authenticated caller's party (a SigV4-verified
 * principal on the KMS listener, a session's origin: src/kms/caller-party.ts). An unmapped uid is nobody the daemon holds, and a user with a
 * subordinate uid range can connect under thousands of them: its refusals share the unauthenticated
 * budget (undefined), so they cannot fill the principals' backstop.
 */
export function refusalParty(uid: number | undefined, caller: Caller): RefusalParty | undefined {
  if (caller.type === 'Unknown') return undefined;
  return { kind: 'principal', id: uid !== undefined ? `uid:${uid}` : callerParty(caller) };
}

/**
 * A KMS request refused after its caller was identified (SigV4 on the listener, the peer's uid on
 * the socket) but before the KMS core saw it: a body that is not a JSON object, a blob that is not
 * base64 (SerializationException), a Recipient (UnsupportedOperationException). Recorded as the
 * core records a refused call, with the error the caller was answered (`toWireError`) and the
 * response's request id; no requestParameters, since the request could not be read.
 */
export function refusedKmsRequestEvent(operation: string, caller: Caller, err: unknown, o: { accountId: string; region: string; requestId: string }): Record<string, unknown> {
  const w = toWireError(err);
  const e = buildEvent({
    eventName: truncateField(operation, MAX_REFUSED_NAME), caller, accountId: o.accountId, region: o.region, requestId: o.requestId,
    eventId: randomUUID(), resources: [], readOnly: false, time: Date.now(), errorCode: w.body.__type, errorMessage: w.body.message,
  });
  if (caller.uid !== undefined) e.additionalEventData = { localUid: caller.uid };
  return e;
}

/** Why such a refusal happened, for its aggregation key: the error answered and its message, bounded. */
export function refusedKmsRequestReason(err: unknown): string {
  const w = toWireError(err).body;
  return `${w.__type}\0${truncateField(w.message, 256)}`;
}

/** A control-API call refused before it reached a service (unmapped uid, not root). */
export function deniedEvent(
  eventSource: string,
  eventName: string,
  caller: Caller,
  message: string,
  o: { accountId: string; region: string; requestId: string; volumeId?: string },
): Record<string, unknown> {
  const e = buildEvent({
    eventName: truncateField(eventName, MAX_REFUSED_NAME),
    caller,
    accountId: o.accountId,
    region: o.region,
    requestId: o.requestId,
    eventId: randomUUID(),
    resources: [],
    readOnly: false,
    time: Date.now(),
    errorCode: 'AccessDeniedException',
    errorMessage: message,
  });
  e.eventSource = eventSource;
  e.requestParameters = o.volumeId ? { volumeId: truncateField(o.volumeId, MAX_REFUSED_VOLUME_ID) } : null;
  if (caller.uid !== undefined) e.additionalEventData = { localUid: caller.uid };
  return e;
}

/**
 * Connections refused by the connection limits (connection-guard.ts), one
 * event per (caller, reason) and refusal window, with the count: the
 * ThrottlingException a flood was answered with, in aggregate.
 */
export function throttledEvent(r: RefusalSummary, o: { accountId: string; region: string; uid?: number; caller?: Caller }): Record<string, unknown> {
  const e = buildEvent({
    eventName: 'ControlConnection',
    ...(o.caller ? { caller: o.caller } : {}),
    accountId: o.accountId,
    region: o.region,
    requestId: randomUUID(),
    eventId: randomUUID(),
    resources: [],
    readOnly: true,
    time: r.lastTime,
    errorCode: 'ThrottlingException',
    errorMessage: r.reason === 'gave-slot' ? 'connection closed: it gave its slot to a source holding fewer connections (gave-slot)' : `connection refused: ${r.reason}`,
  });
  e.eventSource = 'ebsd';
  e.requestParameters = null;
  e.additionalEventData = {
    ...(o.uid !== undefined ? { localUid: o.uid } : { caller: truncateField(r.caller, MAX_REFUSED_NAME) }),
    aggregated: { count: r.count, firstTime: new Date(r.firstTime).toISOString(), lastTime: new Date(r.lastTime).toISOString() },
  };
  return e;
}

/**
 * The part every EC2 event shares (volumes, snapshots): eventSource
 * ec2.amazonaws.com, the caller's identity, or EC2's own for what the service
 * does by itself (`service`: an AwsServiceEvent). `requestId`: the control
 * request's `x-amzn-RequestId` when a request caused the event, as CloudTrail's
 * requestID is the id of the request the service answered; else a fresh one.
 */
export function ec2Event(eventName: string, time: string, service: boolean, o: { accountId: string; region: string; caller?: Caller; requestId?: string }): Record<string, unknown> {
  const e = buildEvent({
    eventName,
    ...(o.caller ? { caller: o.caller } : {}),
    accountId: o.accountId,
    region: o.region,
    requestId: o.requestId ?? randomUUID(),
    eventId: randomUUID(),
    resources: [],
    readOnly: false,
    time: Date.parse(time) || Date.now(),
    eventType: service ? 'AwsServiceEvent' : 'AwsApiCall',
  });
  e.eventSource = 'ec2.amazonaws.com';
  if (!o.caller) e.userIdentity = { type: 'AWSService', invokedBy: 'ec2.amazonaws.com', accountId: o.accountId };
  return e;
}

/** Scalar details only, and never a member that could hold a token, key, blob or plaintext. */
export function safeDetails(d: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(d)) {
    if (/token|key$|blob|plaintext/i.test(k) && k !== 'kmsKeyId') continue;
    if (v === null || ['string', 'number', 'boolean'].includes(typeof v)) out[k] = v;
  }
  return out;
}

// ---- IAM --------------------------------------------------------------------

/** How an IAM event names the principal a policy call is about: a role (`role/<n>`, a role ARN) or a user. */
function _roleNamed(principal: unknown): boolean {
  return typeof principal === 'string' && (/^role\//.test(principal) || /^arn:[\w-]+:iam::\d{12}:role\//.test(principal));
}

/**
 * The control API's `ebsd.Iam<Op>` operations and the IAM API name each is
 * recorded under (IAM API Reference). `PutPolicy`, `GetPolicy`,
 * `DeletePolicy` and `ListPolicies` name a user or a role, as IAM's
 * `Put{User,Role}Policy` etc. do; ebsd's uid mappings (`MapUid`, `UnmapUid`,
 * `ListUidMappings`) have no IAM counterpart and keep their names.
 */
type IamName = (b: Readonly<Record<string, unknown>>) => string;
const _byPrincipal = (user: string, role: string): IamName => (b) => (_roleNamed(b.Principal) ? role : user);
const IAM_EVENT_NAMES: ReadonlyMap<string, IamName> = new Map<string, IamName>([
  ...['CreateUser', 'DeleteUser', 'ListUsers', 'CreateRole', 'DeleteRole', 'ListRoles', 'MapUid', 'UnmapUid', 'ListUidMappings',
    'CreateAccessKey', 'ListAccessKeys', 'UpdateAccessKey', 'DeleteAccessKey', 'UpdateAssumeRolePolicy'].map((n): [string, IamName] => [n, () => n]),
  ['PutPolicy', _byPrincipal('PutUserPolicy', 'PutRolePolicy')],
  ['DeletePolicy', _byPrincipal('DeleteUserPolicy', 'DeleteRolePolicy')],
  ['GetPolicy', _byPrincipal('GetUserPolicy', 'GetRolePolicy')],
  ['ListPolicies', _byPrincipal('ListUserPolicies', 'ListRolePolicies')],
]);

/** Whether `op` (the part after `ebsd.Iam`) is an IAM operation the daemon serves. */
export function isIamOperation(op: string): boolean {
  return IAM_EVENT_NAMES.has(op);
}

/** The eventName an `ebsd.Iam<op>` call is recorded under; `op` itself when it is none of ours. */
export function iamEventName(op: string, body: Readonly<Record<string, unknown>>): string {
  return IAM_EVENT_NAMES.get(op)?.(body) ?? op;
}

/**
 * Bounds for what an IAM event copies from the request: names as IAM caps them
 * (a path 512 characters, the longest), a policy document at 10,240 characters
 * (IAM's largest inline policy, a role's); over that it is cut and marked, as
 * CloudTrail marks a truncated field.
 */
export const MAX_IAM_NAME = 512;
export const MAX_IAM_POLICY_DOCUMENT = 10_240;

/** Request members an IAM event may record, as CloudTrail names them; never a secret (there is none in an IAM request). */
const IAM_REQUEST_FIELDS: ReadonlyMap<string, { name: string; max: number }> = new Map([
  ['UserName', { name: 'userName', max: MAX_IAM_NAME }],
  ['RoleName', { name: 'roleName', max: MAX_IAM_NAME }],
  ['Path', { name: 'path', max: MAX_IAM_NAME }],
  ['PolicyName', { name: 'policyName', max: MAX_IAM_NAME }],
  ['PolicyDocument', { name: 'policyDocument', max: MAX_IAM_POLICY_DOCUMENT }],
  ['AccessKeyId', { name: 'accessKeyId', max: MAX_IAM_NAME }],
  ['Status', { name: 'status', max: MAX_IAM_NAME }],
  ['SessionName', { name: 'sessionName', max: MAX_IAM_NAME }],
]);

function _iamRequest(op: string, b: Readonly<Record<string, unknown>>): Record<string, unknown> | null {
  const out: Record<string, unknown> = {};
  for (const [k, f] of IAM_REQUEST_FIELDS) {
    const v = b[k];
    if (typeof v === 'string') out[f.name] = truncateField(v, f.max);
  }
  // A policy call names its user or role by `Principal` (user/<n>, role/<n>, an ARN): recorded as IAM's userName / roleName.
  if (typeof b.Principal === 'string') {
    const name = truncateField(b.Principal.slice(b.Principal.lastIndexOf('/') + 1), MAX_IAM_NAME);
    if (op === 'MapUid') out.principal = truncateField(b.Principal, MAX_IAM_NAME);
    else out[_roleNamed(b.Principal) ? 'roleName' : 'userName'] = name;
  }
  if (typeof b.Uid === 'number' && Number.isSafeInteger(b.Uid)) out.uid = b.Uid;
  return Object.keys(out).length ? out : null;
}

/**
 * What a successful call created, as CloudTrail records IAM responses: the
 * new user, role, uid mapping, and an access key's id, status and dates, never
 * its SecretAccessKey. Read-only calls record none (CloudTrail logs no
 * responseElements for IAM's Get and List calls).
 */
function _iamResponse(op: string, r: unknown): Record<string, unknown> | null {
  const o = (r ?? {}) as Record<string, Record<string, unknown> | undefined>;
  const pick = (v: Record<string, unknown> | undefined, keys: [string, string][]): Record<string, unknown> | null => {
    if (!v) return null;
    const out: Record<string, unknown> = {};
    for (const [from, to] of keys) if (v[from] !== undefined && v[from] !== null && typeof v[from] !== 'object') out[to] = v[from];
    return out;
  };
  switch (op) {
    case 'CreateUser': return { user: pick(o.User, [['UserName', 'userName'], ['Arn', 'arn'], ['UserId', 'userId']]) };
    case 'CreateRole': return { role: pick(o.Role, [['RoleName', 'roleName'], ['Arn', 'arn']]) };
    case 'CreateAccessKey': return { accessKey: pick(o.AccessKey, [['AccessKeyId', 'accessKeyId'], ['Status', 'status'], ['UserName', 'userName'], ['CreateDate', 'createDate']]) };
    case 'MapUid': return { mapping: pick(o.Mapping, [['uid', 'uid'], ['principal', 'principal'], ['session', 'session']]) };
    default: return null;
  }
}

/**
 * One `ebsd.Iam<Op>` call as CloudTrail records an IAM call: eventSource
 * iam.amazonaws.com, the IAM API name, the caller's identity, the request's
 * names and documents (bounded) and what it created, never a secret. IAM is a
 * global service: CloudTrail records its events in us-east-1.
 */
export function iamEvent(
  op: string,
  body: Readonly<Record<string, unknown>>,
  caller: Caller,
  o: { accountId: string; requestId: string; response?: unknown; error?: { awsName?: string; message: string } },
): Record<string, unknown> {
  const eventName = iamEventName(op, body);
  const readOnly = /^(List|Get)/.test(eventName);
  const e = buildEvent({
    eventName,
    caller,
    accountId: o.accountId,
    region: 'us-east-1',
    requestId: o.requestId,
    eventId: randomUUID(),
    resources: [],
    readOnly,
    time: Date.now(),
    ...(o.error ? { errorCode: o.error.awsName ?? 'ServiceFailure', errorMessage: o.error.message } : {}),
  });
  e.eventSource = 'iam.amazonaws.com';
  e.requestParameters = _boundIam(_iamRequest(op, body));
  e.responseElements = o.error || readOnly ? null : _boundIam(_iamResponse(op, o.response));
  if (caller.uid !== undefined) e.additionalEventData = { localUid: caller.uid };
  return e;
}

/** requestParameters / responseElements over 100 KB: `{"omitted": true}`, as CloudTrail (event.ts, MAX_PARAMETERS_JSON). */
function _boundIam(v: Record<string, unknown> | null): Record<string, unknown> | null {
  return v && JSON.stringify(v).length > MAX_PARAMETERS_JSON ? { omitted: true } : v;
}

/**
 * `ebsd audit prune` (AuditLog.prune), written before anything is removed: who asked, the time
 * asked for, and what goes (the last event removed and the sealed files). eventSource `ebsd`, as
 * the daemon's other own operations are recorded.
 */
export function auditPruneEvent(
  caller: Caller,
  o: { accountId: string; region: string; requestId: string; before: string; prunedThrough?: number; files?: string[]; error?: { code: string; message: string } },
): Record<string, unknown> {
  const e = buildEvent({
    eventName: 'AuditPrune', caller, accountId: o.accountId, region: o.region, requestId: o.requestId,
    eventId: randomUUID(), resources: [], readOnly: false, time: Date.now(),
    ...(o.error ? { errorCode: o.error.code, errorMessage: o.error.message } : {}),
  });
  e.eventSource = 'ebsd';
  e.requestParameters = { before: truncateField(o.before, 64) };
  // A refused call removed nothing and answered no elements (CloudTrail records a failed call's as null).
  e.responseElements = o.error ? null : { prunedThroughSequence: o.prunedThrough, filesRemoved: o.files ?? [] };
  if (caller.uid !== undefined) e.additionalEventData = { localUid: caller.uid };
  return e;
}

/** Snapshots (id and digest, ~100 bytes each) one SignManifests event names: a store with more is recorded in several events. */
export const SIGN_EVENT_IDS = 200;

/**
 * `ebsd snapshot sign-manifests` (docs/architecture.md §13.5). A dry run (no `--confirm`) is
 * recorded as a read: what it listed and the plan digest. With `--confirm` it is written before
 * any manifest is signed: who asked, the key and store, the plan digest, and which snapshots
 * (id and canonical digest) are about to be trusted (`toSign`: at most SIGN_EVENT_IDS, the caller
 * writes one event per such part) and which stay refused (the first SIGN_EVENT_IDS and their
 * count). eventSource `ebsd`, as the daemon's other own operations.
 */
export function signManifestsEvent(caller: Caller, o: {
  accountId: string; region: string; requestId: string; keyArn: string; store: string; dryRun: boolean; planDigest: string;
  unsigned: { snapshotId: string; digest: string }[]; alreadySigned: number; refused: string[];
  /** A confirmation refused (the plan it names is not the store's now): `confirm` is the digest it named, nothing was signed. */
  error?: { code: string; message: string; confirm: string };
}): Record<string, unknown> {
  const e = buildEvent({
    eventName: 'SignManifests', caller, accountId: o.accountId, region: o.region, requestId: o.requestId,
    eventId: randomUUID(), resources: [o.keyArn], readOnly: o.dryRun || o.error !== undefined, time: Date.now(),
    ...(o.error ? { errorCode: o.error.code, errorMessage: o.error.message } : {}),
  });
  e.eventSource = 'ebsd';
  e.requestParameters = { snapshotManifestKey: o.keyArn, snapshotStore: o.store, ...(o.dryRun ? { dryRun: true } : { confirm: o.error?.confirm ?? o.planDigest }) };
  if (o.error) {
    e.responseElements = null;
    if (caller.uid !== undefined) e.additionalEventData = { localUid: caller.uid };
    return e;
  }
  e.responseElements = {
    planDigest: o.planDigest, toSign: o.unsigned.map((u) => ({ snapshotId: u.snapshotId, digest: u.digest })), alreadySigned: o.alreadySigned,
    refused: o.refused.slice(0, SIGN_EVENT_IDS), refusedCount: o.refused.length,
  };
  if (caller.uid !== undefined) e.additionalEventData = { localUid: caller.uid };
  return e;
}
