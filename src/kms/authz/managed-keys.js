/**
 * AWS managed keys (`alias/aws/<service>`), and EBS's in particular.
 *
 * The policy texts live beside the core's placeholder authorizer
 * (`src/kms/authorizer.ts`), which creates the keys; they are re-exported
 * here so the authorization layer has one place to say what they mean.
 * `ebsManagedKeyPolicy` is AWS's documented `auto-ebs-2` policy: any
 * principal of the account may Encrypt, Decrypt, ReEncrypt*,
 * GenerateDataKey*, CreateGrant and DescribeKey, but only through EC2
 * (kms:ViaService = ec2.<region>.amazonaws.com) and only from the account
 * (kms:CallerAccount); the account root gets Describe*, Get*, List* and
 * RevokeGrant directly.
 */
export { defaultKeyPolicy, ebsManagedKeyPolicy } from '../authorizer.js';
export const EBS_ALIAS = 'alias/aws/ebs';
export const AWS_ALIAS_PREFIX = 'alias/aws/';
/**
 * What a customer can never do to an AWS managed key, whatever its policy
 * says (KMS Developer Guide, "AWS managed keys": "you cannot change any
 * properties of AWS managed keys, rotate them, change their key policies, or
 * schedule them for deletion").
 */
export const MANAGED_KEY_FORBIDDEN_ACTIONS = new Set([
    'kms:PutKeyPolicy', 'kms:DisableKey', 'kms:EnableKey', 'kms:ScheduleKeyDeletion', 'kms:CancelKeyDeletion',
    'kms:EnableKeyRotation', 'kms:DisableKeyRotation', 'kms:RotateKeyOnDemand', 'kms:UpdateKeyDescription',
    'kms:CreateAlias', 'kms:UpdateAlias', 'kms:DeleteAlias', 'kms:TagResource', 'kms:UntagResource',
    'kms:ImportKeyMaterial', 'kms:DeleteImportedKeyMaterial', 'kms:UpdatePrimaryRegion', 'kms:ReplicateKey',
]);
const ALIAS_ACTIONS = new Set(['kms:CreateAlias', 'kms:UpdateAlias', 'kms:DeleteAlias']);
/**
 * Why `action` is refused outright on this key or alias, or undefined.
 * Checked before policy evaluation; the refusal is an AccessDeniedException.
 */
export function managedKeyRefusal(action, key, request) {
    if (key?.keyManager === 'AWS' && MANAGED_KEY_FORBIDDEN_ACTIONS.has(action)) {
        return `${action} is not allowed on an AWS managed key`;
    }
    if (ALIAS_ACTIONS.has(action)) {
        const name = request.AliasName;
        if (typeof name === 'string' && name.startsWith(AWS_ALIAS_PREFIX)) {
            return `alias names beginning with ${AWS_ALIAS_PREFIX} are reserved for AWS managed keys`;
        }
    }
    return undefined;
}
//# sourceMappingURL=managed-keys.js.map