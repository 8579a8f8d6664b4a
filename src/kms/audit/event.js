/** Request fields that may be logged. Anything else is dropped. */
const SAFE_REQUEST = new Set([
    'KeyId', 'EncryptionContext', 'KeySpec', 'NumberOfBytes', 'EncryptionAlgorithm', 'SigningAlgorithm', 'MacAlgorithm',
    'MessageType', 'KeyUsage', 'Description', 'AliasName', 'TargetKeyId', 'PendingWindowInDays', 'RotationPeriodInDays',
    'Limit', 'Marker', 'DestinationKeyId', 'SourceKeyId', 'SourceEncryptionContext', 'DestinationEncryptionContext',
    'SourceEncryptionAlgorithm', 'DestinationEncryptionAlgorithm', 'KeyPairSpec', 'TagKeys', 'Tags', 'Origin', 'MultiRegion',
    'BypassPolicyLockoutSafetyCheck', 'GranteePrincipal', 'RetiringPrincipal', 'Operations', 'Constraints', 'GrantId',
    'Name', 'PolicyName', 'KeyMaterialId', 'IncludeKeyMaterial', 'DryRun',
]);
/** Response fields that may be logged (CloudTrail logs few; never blobs). */
const SAFE_RESPONSE = new Set(['KeyId', 'KeyMetadata', 'GrantId', 'KeyMaterialId', 'SigningAlgorithm', 'EncryptionAlgorithm',
    'MacAlgorithm', 'KeySpec', 'KeyPairSpec', 'SignatureValid', 'MacValid', 'DeletionDate', 'KeyState', 'PendingWindowInDays']);
export function safeFields(src, allow) {
    if (!src)
        return null;
    let out = null;
    for (const k in src) {
        if (!allow.has(k))
            continue;
        const v = src[k];
        if (v === undefined || v instanceof Uint8Array)
            continue;
        (out ??= {})[k[0].toLowerCase() + k.slice(1)] = v;
    }
    return out;
}
export function buildEvent(i) {
    const c = i.caller;
    const userIdentity = c
        ? {
            type: c.type,
            ...(c.principalId ? { principalId: c.principalId } : {}),
            arn: c.arn,
            accountId: c.accountId,
            ...(c.userName ? { userName: c.userName } : {}),
            ...(c.viaService ? { invokedBy: c.viaService } : {}),
        }
        : { accountId: i.accountId, invokedBy: 'kms.amazonaws.com' };
    const ev = {
        eventVersion: '1.08',
        userIdentity,
        eventTime: new Date(i.time).toISOString().replace(/\.\d{3}Z$/, 'Z'),
        eventSource: 'kms.amazonaws.com',
        eventName: i.eventName,
        awsRegion: i.region,
        sourceIPAddress: c ? (c.viaService ?? c.sourceIp ?? '127.0.0.1') : 'kms.amazonaws.com',
        userAgent: c ? (c.userAgent ?? 'ebsd') : 'kms.amazonaws.com',
        requestParameters: safeFields(i.request, SAFE_REQUEST),
        responseElements: safeFields(i.response, SAFE_RESPONSE),
    };
    if (i.errorCode) {
        ev.errorCode = i.errorCode;
        ev.errorMessage = i.errorMessage;
    }
    if (i.additionalEventData)
        ev.additionalEventData = i.additionalEventData;
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
//# sourceMappingURL=event.js.map