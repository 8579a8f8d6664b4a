import { validation } from './ebs-direct-errors.js';
import type { StartSnapshotInput } from './ebs-direct-input.js';

/**
 * StartSnapshot's encryption outcome: AWS's "Encryption outcomes for EBS
 * direct APIs" tables (EBS user guide), keyed on ParentSnapshotId, Encrypted,
 * KmsKeyArn and whether the account has EBS encryption by default.
 *
 * A daemon has encryption by default unless it was started with
 * `--allow-unencrypted`, the flag that also lets it hold plaintext volumes
 * (src/volume/volume-manager.ts): a daemon that never stores a plaintext
 * volume never stores a plaintext snapshot either (docs/architecture.md,
 * "EBS direct APIs", "Encryption outcomes").
 *
 * Member combinations refused whatever the setting (ParentSnapshotId with
 * Encrypted or KmsKeyArn, KmsKeyArn with Encrypted false) are refused earlier,
 * by parseStartSnapshot.
 */
export type StartEncryption =
  | { encrypted: false }
  /** A new data key under `keyId` (an ARN, key id or alias). */
  | { encrypted: true; keyId: string }
  /** The parent's KMS key and data key. */
  | { encrypted: true; fromParent: true };

export interface StartEncryptionContext {
  /** The parent named by ParentSnapshotId, once read (completed). */
  parent?: { snapshotId: string; encrypted: boolean };
  /** EBS encryption by default: on unless the daemon was started with --allow-unencrypted. */
  byDefault: boolean;
  /** The account's default KMS key for EBS (`alias/aws/ebs`). */
  defaultKey: string;
}

const BY_DEFAULT = 'this daemon encrypts every snapshot (EBS encryption by default: it was started without --allow-unencrypted)';

export function startSnapshotEncryption(i: StartSnapshotInput, c: StartEncryptionContext): StartEncryption {
  if (c.parent) {
    if (c.parent.encrypted) return { encrypted: true, fromParent: true };
    // "Encryption outcomes: Unencrypted parent snapshot": enabled -> "The request fails with ValidationException".
    if (c.byDefault) {
      throw validation('INVALID_PARAMETER_VALUE', `ParentSnapshotId ${c.parent.snapshotId} is an unencrypted snapshot, and ${BY_DEFAULT}, so no snapshot may start from it: copy it encrypted first (ebsd snapshot copy ${c.parent.snapshotId} --encrypted) and name the copy as ParentSnapshotId`);
    }
    return { encrypted: false };
  }
  // "Encryption outcomes: No parent snapshot".
  if (i.Encrypted === true) return { encrypted: true, keyId: i.KmsKeyArn ?? c.defaultKey };
  if (i.Encrypted === false) {
    // Enabled, Encrypted False, KmsKeyArn omitted: "The request fails with ValidationException".
    if (c.byDefault) throw validation('INVALID_PARAMETER_VALUE', `Encrypted false asks for an unencrypted snapshot, but ${BY_DEFAULT}: omit Encrypted or set it to true`);
    return { encrypted: false };
  }
  // Encrypted omitted. Enabled: encrypted under KmsKeyArn, or the account's default KMS key for EBS.
  if (c.byDefault) return { encrypted: true, keyId: i.KmsKeyArn ?? c.defaultKey };
  // Disabled: unencrypted. KmsKeyArn alone stays refused here, as it always was on such a daemon.
  if (i.KmsKeyArn !== undefined) throw validation('INVALID_PARAMETER_VALUE', 'KmsKeyArn needs Encrypted set to true');
  return { encrypted: false };
}
