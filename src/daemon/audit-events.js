import { randomUUID } from 'node:crypto';
import { buildEvent } from '../kms/audit/event.js';
/**
 * CloudTrail-shaped events for what the daemon does outside the KMS core:
 * EC2 volume operations and control-API denials. They go into the same
 * hash-chained log as the KMS events, so `ebsd audit verify` covers them.
 */
export function volumeEvent(ev, o) {
    const e = buildEvent({
        eventName: ev.eventName,
        ...(o.caller ? { caller: o.caller } : {}),
        accountId: o.accountId,
        region: o.region,
        requestId: randomUUID(),
        eventId: randomUUID(),
        resources: [],
        readOnly: false,
        time: Date.parse(ev.time) || Date.now(),
        eventType: ev.eventName === 'VolumeImpaired' || ev.eventName === 'VolumeRecovered' ? 'AwsServiceEvent' : 'AwsApiCall',
    });
    e.eventSource = 'ec2.amazonaws.com';
    if (!o.caller)
        e.userIdentity = { type: 'AWSService', invokedBy: 'ec2.amazonaws.com', accountId: o.accountId };
    e.requestParameters = { volumeId: ev.volumeId, ...(ev.principal && !o.caller ? { principal: ev.principal } : {}) };
    if (ev.details)
        e.additionalEventData = safeDetails(ev.details);
    e.resources = [{ accountId: o.accountId, type: 'AWS::EC2::Volume', ARN: `arn:aws:ec2:${o.region}:${o.accountId}:volume/${ev.volumeId}` }];
    return e;
}
/** A control-API call refused before it reached a service (unmapped uid, not root). */
export function deniedEvent(eventSource, eventName, caller, message, o) {
    const e = buildEvent({
        eventName,
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
    e.requestParameters = o.volumeId ? { volumeId: o.volumeId } : null;
    if (caller.uid !== undefined)
        e.additionalEventData = { localUid: caller.uid };
    return e;
}
/** Details from the volume layer are ids, sizes and flags; keep only scalars, never anything token-like. */
function safeDetails(d) {
    const out = {};
    for (const [k, v] of Object.entries(d)) {
        if (/token|key$|blob|plaintext/i.test(k) && k !== 'kmsKeyId')
            continue;
        if (v === null || ['string', 'number', 'boolean'].includes(typeof v))
            out[k] = v;
    }
    return out;
}
//# sourceMappingURL=audit-events.js.map