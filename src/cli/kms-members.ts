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
};
