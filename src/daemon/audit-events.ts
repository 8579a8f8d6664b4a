import { randomUUID } from 'node:crypto';
import { buildEvent, truncateField } from '../kms/audit/event.js';
import type { RefusalSummary } from './connection-guard.js';
import type { Caller } from '../kms/types.js';
import type { VolumeAuditEvent } from '../volume/volume-manager.js';
import { toWireError } from './aws-json.js';

/**
 * CloudTrail-shaped events for what the daemon does outside the KMS core:
 * EC2 volume operations and control-API denials. They go into the same
 * hash-chained log as the KMS events, so `ebsd audit verify` covers them.
 */
export function volumeEvent(ev: VolumeAuditEvent, o: { accountId: string; region: string; caller?: Caller }): Record<string, unknown> {
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
    errorMessage: `connection refused: ${r.reason}`,
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
 * does by itself (`service`: an AwsServiceEvent).
 */
export function ec2Event(eventName: string, time: string, service: boolean, o: { accountId: string; region: string; caller?: Caller }): Record<string, unknown> {
  const e = buildEvent({
    eventName,
    ...(o.caller ? { caller: o.caller } : {}),
    accountId: o.accountId,
    region: o.region,
    requestId: randomUUID(),
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
