/**
 * Authorization seam. The dispatcher asks an Authorizer once per call, after
 * the target key is resolved and before any key-state check or execution.
 * The placeholder here allows the account's own principals; the policy and
 * grant engine (src/kms/authz) implements the same interface.
 */
import type { Caller, KmsRequest } from './types.js';
import type { KeyView } from './key-record.js';

export interface AuthorizationRequest {
  /** IAM action, e.g. `kms:Decrypt`. */
  action: string;
  /** AWS operation name, e.g. `Decrypt` (differs from the action for ReEncrypt: `kms:ReEncryptFrom`/`To`). */
  operation: string;
  caller: Caller;
  /** The account and region of this KMS. */
  accountId: string;
  region: string;
  /** Resolved target key; undefined for account-level actions (CreateKey, ListKeys, ListAliases, GenerateRandom, ...). */
  key?: KeyView;
  /** Resource ARN the action is evaluated against: the key ARN, or without a key `*` or an alias ARN (the alias operations). */
  resource: string;
  /** Encryption context of the request (for kms:EncryptionContext:* and kms:EncryptionContextKeys). */
  encryptionContext?: Readonly<Record<string, string>>;
  grantTokens?: readonly string[];
  /** The alias the caller named the key by, if any (kms:RequestAlias), e.g. `alias/app`. */
  requestAlias?: string;
  /**
   * ReEncrypt: whether the destination key is the source key, the one the ciphertext was
   * encrypted under (kms:ReEncryptOnSameKey). Set by the handler from the keys it resolved:
   * SourceKeyId is optional for a symmetric ciphertext, and an alias, a key id and an ARN may
   * name one key, so the request's strings say nothing reliable about it.
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
  /** The whole request (read-only), for condition keys such as kms:GrantOperations, kms:SigningAlgorithm, kms:KeySpec. */
  request: Readonly<KmsRequest>;
  /** Time of the call (epoch ms), from the core's clock. */
  now: number;
}

export interface AuthorizationDecision {
  allowed: boolean;
  /** Why it was denied, for the AccessDeniedException message (no secrets): the tail after "… because ". */
  reason?: string;
  /**
   * The whole AccessDeniedException message, used verbatim when present (no
   * secrets). AWS words explicit denies "… with an explicit deny in …", not
   * "… because …", so an engine that knows the wording gives the message itself.
   */
  message?: string;
  /** Grant that allowed the call, recorded in the audit event. */
  grantId?: string;
}

export interface Authorizer {
  /** May return synchronously: the Decrypt hot path avoids an extra promise when it can. */
  authorize(req: AuthorizationRequest): AuthorizationDecision | Promise<AuthorizationDecision>;
}

/** Placeholder until policies and grants exist: same-account principals are allowed, others denied. */
export class AccountAuthorizer implements Authorizer {
  authorize(req: AuthorizationRequest): AuthorizationDecision {
    if (req.caller.accountId === req.accountId) return { allowed: true };
    return { allowed: false, reason: 'no resource-based policy allows the action' };
  }
}

/** Default key policy (AWS "Default key policy"): the account root may do kms:* on the key. */
export function defaultKeyPolicy(accountId: string): string {
  return JSON.stringify({
    Version: '2012-10-17',
    Id: 'key-default-1',
    Statement: [{
      Sid: 'Enable IAM User Permissions',
      Effect: 'Allow',
      Principal: { AWS: `arn:aws:iam::${accountId}:root` },
      Action: 'kms:*',
      Resource: '*',
    }],
  });
}

/** Key policy of the AWS managed EBS key `alias/aws/ebs`, as AWS documents it. */
export function ebsManagedKeyPolicy(accountId: string, region: string): string {
  return JSON.stringify({
    Version: '2012-10-17',
    Id: 'auto-ebs-2',
    Statement: [
      {
        Sid: 'Allow access through EBS for all principals in the account that are authorized to use EBS',
        Effect: 'Allow',
        Principal: { AWS: '*' },
        Action: ['kms:Encrypt', 'kms:Decrypt', 'kms:ReEncrypt*', 'kms:GenerateDataKey*', 'kms:CreateGrant', 'kms:DescribeKey'],
        Resource: '*',
        Condition: { StringEquals: { 'kms:ViaService': `ec2.${region}.amazonaws.com`, 'kms:CallerAccount': accountId } },
      },
      {
        Sid: 'Allow direct access to key metadata to the account',
        Effect: 'Allow',
        Principal: { AWS: `arn:aws:iam::${accountId}:root` },
        Action: ['kms:Describe*', 'kms:Get*', 'kms:List*', 'kms:RevokeGrant'],
        Resource: '*',
      },
    ],
  });
}

/**
 * The AWS managed keys this KMS creates on first use, by alias, with the key
 * policy each gets. AWS creates an AWS managed key only for a service's
 * predefined alias, when the service first uses it; ebsd's only service is
 * EBS. Any other `alias/aws/...` names nothing (docs/architecture.md §5.4).
 */
export const AWS_MANAGED_KEY_POLICIES: ReadonlyMap<string, (accountId: string, region: string) => string> = new Map([
  ['alias/aws/ebs', ebsManagedKeyPolicy],
]);
