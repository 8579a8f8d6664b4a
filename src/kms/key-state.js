/**
 * AWS's key state / operation matrix ("Key states of AWS KMS keys"), for
 * the states this core produces: Enabled, Disabled, PendingDeletion.
 * `checkKeyState` throws the exception AWS returns, or returns if allowed.
 */
import { DisabledException, KMSInvalidStateException, NotFoundException } from './errors.js';
/** Operations that use the key's material: Disabled -> DisabledException, PendingDeletion -> KMSInvalidStateException. */
const CRYPTO = new Set([
    'Encrypt', 'Decrypt', 'ReEncrypt', 'GenerateDataKey', 'GenerateDataKeyWithoutPlaintext', 'GenerateDataKeyPair',
    'GenerateDataKeyPairWithoutPlaintext', 'Sign', 'Verify', 'GenerateMac', 'VerifyMac', 'GetPublicKey', 'CreateGrant',
    'EnableKeyRotation', 'DisableKeyRotation', 'RotateKeyOnDemand',
]);
/** Allowed while Disabled, refused while PendingDeletion. */
const NOT_WHILE_PENDING_DELETION = new Set([
    'EnableKey', 'DisableKey', 'ScheduleKeyDeletion', 'UpdateKeyDescription', 'TagResource', 'UntagResource',
    'CreateAlias', 'UpdateAlias',
]);
export function checkKeyState(op, k) {
    const s = k.keyState;
    if (op === 'CancelKeyDeletion') {
        if (s !== 'PendingDeletion')
            throw new KMSInvalidStateException(`${k.arn} is not pending deletion (it is ${s})`);
        return;
    }
    if (s === 'Enabled')
        return;
    if (s === 'Disabled') {
        if (CRYPTO.has(op))
            throw new DisabledException(`${k.arn} is disabled.`);
        return;
    }
    if (s === 'PendingDeletion') {
        if (CRYPTO.has(op) || NOT_WHILE_PENDING_DELETION.has(op))
            throw new KMSInvalidStateException(`${k.arn} is pending deletion.`);
        return;
    }
    throw new NotFoundException(`${k.arn} is in state ${s}`);
}
//# sourceMappingURL=key-state.js.map