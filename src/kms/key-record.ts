/** What the keystore holds for one KMS key. Key material only as EKTs. */
import type { KeySpec, KeyUsage } from './key-spec.js';

export type KeyState = 'Enabled' | 'Disabled' | 'PendingDeletion' | 'PendingImport' | 'Unavailable' | 'Creating' | 'Updating';

export interface KeyMaterial {
  /** HBK id, 64 hex chars (AWS KeyMaterialId). */
  id: string;
  /** Exported key token, base64. */
  ekt: string;
  /** Epoch ms. */
  createdAt: number;
  /** How this material came to be: first material, or rotation type. */
  origin: 'CREATE' | 'AUTOMATIC' | 'ON_DEMAND';
}

export interface KeyRecord {
  keyId: string;
  arn: string;
  accountId: string;
  region: string;
  /** Epoch ms. */
  creationDate: number;
  description: string;
  keySpec: KeySpec;
  keyUsage: KeyUsage;
  keyState: KeyState;
  keyManager: 'CUSTOMER' | 'AWS';
  origin: 'AWS_KMS';
  /** Key policy JSON, stored as given (or the default key policy). */
  policy: string;
  /**
   * The policy's principal bindings: each user or role ARN of the account it names -> that
   * principal's unique id when the policy was saved (src/kms/authz/principal-bindings.ts).
   * Absent when it names none, and in records written before bindings: those are bound when
   * the KMS opens (`KmsService.bindKeyPolicies`).
   */
  policyPrincipals?: Record<string, string>;
  tags: { TagKey: string; TagValue: string }[];
  /** Epoch ms when PendingDeletion ends. */
  deletionDate?: number;
  pendingWindowInDays?: number;
  rotation: {
    enabled: boolean;
    periodDays?: number;
    /** Epoch ms of the next automatic rotation. */
    nextRotationDate?: number;
    onDemandCount: number;
  };
  /** Oldest first; the last one is current. */
  materials: KeyMaterial[];
  /** DER SPKI, base64, for asymmetric keys. */
  publicKey?: string;
}

/** Read-only view of a key given to authorizers and extension operations. */
export interface KeyView extends Readonly<Omit<KeyRecord, 'materials'>> {
  readonly aliases: readonly string[];
}
