import { EbsdError } from '../util/errors.js';

/**
 * Snapshot errors. `awsName` is EC2's error code for the EC2 operations
 * (CreateSnapshot, DescribeSnapshots, CopySnapshot, DeleteSnapshot,
 * CreateVolume --snapshot-id) and the EBS direct APIs' exception name for
 * those (ListSnapshotBlocks, GetSnapshotBlock, PutSnapshotBlock, ...).
 */
export type SnapshotErrorCode =
  | 'SNAPSHOT_NOT_FOUND' // InvalidSnapshot.NotFound / ResourceNotFoundException
  | 'SNAPSHOT_IN_USE' // InvalidSnapshot.InUse
  | 'SNAPSHOT_INCORRECT_STATE' // IncorrectState / ValidationException
  | 'SNAPSHOT_INVALID_PARAMETER' // InvalidParameterValue / ValidationException
  | 'SNAPSHOT_BLOCK_NOT_FOUND' // a block a manifest names is missing from the store
  | 'SNAPSHOT_CORRUPT' // a manifest or block that does not read back as written (hash, JSON)
  | 'SNAPSHOT_STORE' // the store failed (I/O, S3 error)
  | 'SNAPSHOT_CONCURRENT_LIMIT' // ConcurrentSnapshotLimitExceeded: CreateSnapshot of a volume whose snapshot is still pending
  | 'SNAPSHOT_NOT_AUDITED'; // its SnapshotCompleted event could not be written: it does not complete

/**
 * `SnapshotCompleted` through `onAudit`, awaited before the manifest that says `completed`:
 * once DescribeSnapshots (on this host or, on a shared store, any other) shows the state, its
 * event is in the audit log, as CloudTrail records an event no later than its effect shows. An
 * event that cannot be written fails the snapshot (docs/architecture.md §5.8: what cannot be
 * audited does not take effect). Should the manifest's write fail after it, `SnapshotFailed`
 * follows in the log.
 */
export async function auditCompletion<E>(onAudit: ((ev: E) => void | Promise<void>) | undefined, ev: E): Promise<void> {
  try {
    await onAudit?.(ev);
  } catch (e) {
    throw new SnapshotError('SNAPSHOT_NOT_AUDITED', `its SnapshotCompleted event could not be written to the audit log: ${(e as Error)?.message ?? String(e)}`, { cause: e });
  }
}

export class SnapshotError extends EbsdError {
  declare readonly code: SnapshotErrorCode;
  constructor(code: SnapshotErrorCode, message: string, opts: { awsName?: string; cause?: unknown } = {}) {
    super(code, message, opts);
  }
}

export const snapshotNotFound = (id: string): SnapshotError =>
  new SnapshotError('SNAPSHOT_NOT_FOUND', `The snapshot '${id}' does not exist.`, { awsName: 'InvalidSnapshot.NotFound' });

/**
 * Why a signed-manifest check refused a manifest (docs/architecture.md §13.5): it has no
 * `manifestMac`; the member is not of the shape ebsd writes; the KMS said the MAC does not verify
 * (or did not answer MacValid true); its content cannot be put in canonical form to be checked.
 */
export type ManifestMacRefusal = 'missing' | 'malformed' | 'invalid' | 'uncanonical';

/**
 * A manifest the signed store refuses (SNAPSHOT_CORRUPT, so every reader that skips or stops on a
 * corrupt manifest treats it so), with `refusal` saying which check failed. Its message may quote
 * what the manifest claims (the key it names); `refusal` holds nothing read from it.
 */
export class ManifestMacRefused extends SnapshotError {
  /** The canonical digest of the content refused, when it was computed ('invalid'): the same content is refused the same way. */
  readonly digest: string | undefined;
  constructor(readonly snapshotId: string, readonly refusal: ManifestMacRefusal, message: string, opts: { cause?: unknown; digest?: string } = {}) {
    super('SNAPSHOT_CORRUPT', message, opts.cause === undefined ? {} : { cause: opts.cause });
    this.digest = opts.digest;
  }
}
