/**
 * The request members of every KMS operation the CLI sends (AWS KMS API
 * Reference, "Request Syntax" of each action). `ebsd kms <op>` refuses a flag
 * that names none of them, as the AWS CLI does ("Unknown options: --kye-id, x"),
 * instead of sending a member the operation would ignore.
 */
const GRANT_TOKENS = 'GrantTokens';
const PAGING = ['Limit', 'Marker'] as const;

export const KMS_MEMBERS: Readonly<Record<string, readonly string[]>> = {
  CreateKey: ['Policy', 'Description', 'KeyUsage', 'CustomerMasterKeySpec', 'KeySpec', 'Origin', 'CustomKeyStoreId', 'BypassPolicyLockoutSafetyCheck', 'Tags', 'MultiRegion', 'XksKeyId'],
  DescribeKey: ['KeyId', GRANT_TOKENS],
  ListKeys: [...PAGING],
  UpdateKeyDescription: ['KeyId', 'Description'],
  EnableKey: ['KeyId'],
  DisableKey: ['KeyId'],
  ScheduleKeyDeletion: ['KeyId', 'PendingWindowInDays'],
  CancelKeyDeletion: ['KeyId'],
  EnableKeyRotation: ['KeyId', 'RotationPeriodInDays'],
  DisableKeyRotation: ['KeyId'],
  GetKeyRotationStatus: ['KeyId'],
  RotateKeyOnDemand: ['KeyId'],
  ListKeyRotations: ['KeyId', 'IncludeKeyMaterial', ...PAGING],
  CreateAlias: ['AliasName', 'TargetKeyId'],
  UpdateAlias: ['AliasName', 'TargetKeyId'],
  DeleteAlias: ['AliasName'],
  ListAliases: ['KeyId', ...PAGING],
  Encrypt: ['KeyId', 'Plaintext', 'EncryptionContext', GRANT_TOKENS, 'EncryptionAlgorithm', 'DryRun'],
  Decrypt: ['CiphertextBlob', 'EncryptionContext', GRANT_TOKENS, 'KeyId', 'EncryptionAlgorithm', 'Recipient', 'DryRun', 'DryRunModifiers'],
  ReEncrypt: [
    'CiphertextBlob', 'SourceEncryptionContext', 'SourceKeyId', 'DestinationKeyId', 'DestinationEncryptionContext',
    'SourceEncryptionAlgorithm', 'DestinationEncryptionAlgorithm', GRANT_TOKENS, 'DryRun', 'DryRunModifiers',
  ],
  GenerateDataKey: ['KeyId', 'EncryptionContext', 'NumberOfBytes', 'KeySpec', GRANT_TOKENS, 'Recipient', 'DryRun'],
  GenerateDataKeyWithoutPlaintext: ['KeyId', 'EncryptionContext', 'KeySpec', 'NumberOfBytes', GRANT_TOKENS, 'DryRun'],
  GenerateDataKeyPair: ['EncryptionContext', 'KeyId', 'KeyPairSpec', GRANT_TOKENS, 'Recipient', 'DryRun'],
  GenerateDataKeyPairWithoutPlaintext: ['EncryptionContext', 'KeyId', 'KeyPairSpec', GRANT_TOKENS, 'DryRun'],
  GenerateRandom: ['NumberOfBytes', 'CustomKeyStoreId', 'Recipient'],
  Sign: ['KeyId', 'Message', 'MessageType', GRANT_TOKENS, 'SigningAlgorithm', 'DryRun'],
  Verify: ['KeyId', 'Message', 'MessageType', 'Signature', 'SigningAlgorithm', GRANT_TOKENS, 'DryRun'],
  GetPublicKey: ['KeyId', GRANT_TOKENS],
  GenerateMac: ['Message', 'KeyId', 'MacAlgorithm', GRANT_TOKENS, 'DryRun'],
  VerifyMac: ['Message', 'KeyId', 'MacAlgorithm', 'Mac', GRANT_TOKENS, 'DryRun'],
  TagResource: ['KeyId', 'Tags'],
  UntagResource: ['KeyId', 'TagKeys'],
  ListResourceTags: ['KeyId', ...PAGING],
  PutKeyPolicy: ['KeyId', 'PolicyName', 'Policy', 'BypassPolicyLockoutSafetyCheck'],
  GetKeyPolicy: ['KeyId', 'PolicyName'],
  ListKeyPolicies: ['KeyId', ...PAGING],
  CreateGrant: ['KeyId', 'GranteePrincipal', 'RetiringPrincipal', 'Operations', 'Constraints', GRANT_TOKENS, 'Name', 'DryRun'],
  ListGrants: ['KeyId', 'GrantId', 'GranteePrincipal', ...PAGING],
  ListRetirableGrants: ['RetiringPrincipal', ...PAGING],
  RetireGrant: ['GrantToken', 'KeyId', 'GrantId', 'DryRun'],
  RevokeGrant: ['KeyId', 'GrantId', 'DryRun'],
  DescribeCustomKeyStores: ['CustomKeyStoreId', 'CustomKeyStoreName', ...PAGING],
};

/**
 * The members each operation requires ("Required: Yes" in its AWS KMS API Reference page). The AWS CLI
 * refuses a command without them before sending anything ("the following arguments are required:
 * --key-id"); so does `ebsd kms`, where the service's answer ("Value at 'keyId' failed to satisfy
 * constraint: Member must not be null", exit 7) named the wire member, not the flag to add.
 * PolicyName of PutKeyPolicy and GetKeyPolicy is optional (it defaults to `default`); RetireGrant
 * needs GrantToken or KeyId with GrantId, which the service checks.
 */
export const KMS_REQUIRED: Readonly<Record<string, readonly string[]>> = {
  DescribeKey: ['KeyId'],
  UpdateKeyDescription: ['KeyId', 'Description'],
  EnableKey: ['KeyId'],
  DisableKey: ['KeyId'],
  ScheduleKeyDeletion: ['KeyId'],
  CancelKeyDeletion: ['KeyId'],
  EnableKeyRotation: ['KeyId'],
  DisableKeyRotation: ['KeyId'],
  GetKeyRotationStatus: ['KeyId'],
  RotateKeyOnDemand: ['KeyId'],
  ListKeyRotations: ['KeyId'],
  CreateAlias: ['AliasName', 'TargetKeyId'],
  UpdateAlias: ['AliasName', 'TargetKeyId'],
  DeleteAlias: ['AliasName'],
  Encrypt: ['KeyId', 'Plaintext'],
  Decrypt: ['CiphertextBlob'],
  ReEncrypt: ['CiphertextBlob', 'DestinationKeyId'],
  GenerateDataKey: ['KeyId'],
  GenerateDataKeyWithoutPlaintext: ['KeyId'],
  GenerateDataKeyPair: ['KeyId', 'KeyPairSpec'],
  GenerateDataKeyPairWithoutPlaintext: ['KeyId', 'KeyPairSpec'],
  Sign: ['KeyId', 'Message', 'SigningAlgorithm'],
  Verify: ['KeyId', 'Message', 'Signature', 'SigningAlgorithm'],
  GetPublicKey: ['KeyId'],
  GenerateMac: ['Message', 'KeyId', 'MacAlgorithm'],
  VerifyMac: ['Message', 'KeyId', 'MacAlgorithm', 'Mac'],
  TagResource: ['KeyId', 'Tags'],
  UntagResource: ['KeyId', 'TagKeys'],
  ListResourceTags: ['KeyId'],
  PutKeyPolicy: ['KeyId', 'Policy'],
  GetKeyPolicy: ['KeyId'],
  ListKeyPolicies: ['KeyId'],
  CreateGrant: ['KeyId', 'GranteePrincipal', 'Operations'],
  ListGrants: ['KeyId'],
  ListRetirableGrants: ['RetiringPrincipal'],
  RevokeGrant: ['KeyId', 'GrantId'],
};

/**
 * The KMS list operations the AWS CLI pages through (input Marker, limit Limit, output NextMarker
 * while Truncated), and the member each gathers its results in.
 */
export const KMS_PAGED: Readonly<Record<string, string>> = {
  ListKeys: 'Keys',
  ListAliases: 'Aliases',
  ListGrants: 'Grants',
  ListRetirableGrants: 'Grants',
  ListKeyPolicies: 'PolicyNames',
  ListResourceTags: 'Tags',
  ListKeyRotations: 'Rotations',
  DescribeCustomKeyStores: 'CustomKeyStores',
};
