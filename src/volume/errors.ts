import { EbsdError } from '../util/errors.js';

/**
 * Why a LUKS2 image was refused. Reading never modifies the image when it
 * throws one of these (the repair of a single bad copy happens only after the
 * other copy validated completely). A refused image is a volume the operation
 * cannot use as it is: `awsName` is EC2's `IncorrectState` (exit 6), except
 * LUKS2_BAD_FIELD, a value ebsd was asked to write (`InvalidParameterValue`).
 * `field` names what was wrong (`segments.0.offset`, `seqid`, `(file)`).
 */
export type Luks2ErrorCode =
  | 'LUKS2_TRUNCATED' // file shorter than the header area / data area
  | 'LUKS2_BAD_MAGIC' // neither copy carries LUKS\xba\xbe / SKUL\xba\xbe
  | 'LUKS2_BAD_VERSION' // a copy with the right magic but version != 2
  | 'LUKS2_BAD_CHECKSUM' // every copy with the right magic fails its checksum
  | 'LUKS2_BAD_JSON' // checksum fine, JSON area unparsable, not LUKS2-shaped, or a value out of range
  | 'LUKS2_UNSUPPORTED' // valid LUKS2, but not an ebsd layout (cipher, sector size, segments, requirements)
  | 'LUKS2_NO_TOKEN' // no usable `ebsd-kms` token
  | 'LUKS2_NOT_A_FILE' // the image path is a symlink, a directory, a device: not a regular file
  | 'LUKS2_BAD_FIELD' // a header field ebsd was asked to write does not fit (label, uuid, subsystem)
  | 'LUKS2_DIGEST_MISMATCH'; // the unwrapped key does not match the LUKS2 digest

export class Luks2Error extends EbsdError {
  declare readonly code: Luks2ErrorCode;
  /** The header or JSON field at fault, as a dotted path (`digests.0.iterations`), when one is. */
  readonly field?: string;
  constructor(code: Luks2ErrorCode, message: string, opts: { field?: string; cause?: unknown } = {}) {
    super(code, message, { awsName: code === 'LUKS2_BAD_FIELD' ? 'InvalidParameterValue' : 'IncorrectState', cause: opts.cause });
    if (opts.field !== undefined) this.field = opts.field;
  }
}

/** Volume-layer errors; `awsName` is the EC2 error code where EC2 has one. */
export type VolumeErrorCode =
  | 'VOLUME_NOT_FOUND' // InvalidVolume.NotFound
  | 'VOLUME_IN_USE' // VolumeInUse
  | 'VOLUME_INVALID_PARAMETER' // InvalidParameterValue
  | 'VOLUME_TOO_LARGE_FOR_FILESYSTEM' // InvalidParameterValue: the image would pass the backing filesystem's file size limit
  | 'VOLUME_INCORRECT_STATE' // IncorrectState
  | 'VOLUME_NOT_ATTACHED' // IncorrectState
  | 'VOLUME_OPEN' // VolumeInUse: detach while the FUSE file is open
  | 'VOLUME_LOCKED' // VolumeInUse: another live process holds the image lock
  | 'VOLUME_TOKEN_MISMATCH' // the image's token names another volume or context
  | 'VOLUME_IMPAIRED' // I/O refused: key revoked / KMS gone past max-stale
  | 'VOLUME_CLOSED' // I/O after detach
  | 'VOLUME_OUT_OF_RANGE'
  | 'VOLUME_NO_SPACE' // ENOSPC on the backing file
  | 'VOLUME_IMAGE_CORRUPT' // IncorrectState: the image file is not what its header must be (plain-image.ts)
  | 'VOLUME_INSTANCE_NOT_FOUND' // InvalidInstanceID.NotFound: AttachVolume/DetachVolume naming an instance other than this host
  | 'VOLUME_MODIFICATION_NOT_FOUND' // InvalidVolumeModification.NotFound: DescribeVolumesModifications of a volume never modified
  | 'VOLUME_MODIFICATION_IN_PROGRESS' // IncorrectModificationState: ModifyVolume while the previous modification is under way
  | 'VOLUME_MODIFICATION_RATE_EXCEEDED' // VolumeModificationRateExceeded: ModifyVolume past the modifications a volume may have in the window
  | 'VOLUME_IDEMPOTENT_MISMATCH' // IdempotentParameterMismatch: a CreateVolume ClientToken reused with other parameters
  | 'VOLUME_IO'; // EIO or any other backing-file failure

export class VolumeError extends EbsdError {
  declare readonly code: VolumeErrorCode;
  constructor(code: VolumeErrorCode, message: string, opts: { awsName?: string; cause?: unknown } = {}) {
    super(code, message, opts);
  }
}

export const notFound = (id: string): VolumeError =>
  new VolumeError('VOLUME_NOT_FOUND', `The volume '${id}' does not exist.`, { awsName: 'InvalidVolume.NotFound' });

export const invalidParameter = (msg: string): VolumeError =>
  new VolumeError('VOLUME_INVALID_PARAMETER', msg, { awsName: 'InvalidParameterValue' });

export const incorrectState = (msg: string): VolumeError =>
  new VolumeError('VOLUME_INCORRECT_STATE', msg, { awsName: 'IncorrectState' });

/**
 * A KMS call made for a volume failed. `awsName` is the KMS exception
 * (`DisabledException`, `AccessDeniedException`, ...), surfaced unchanged.
 * `authoritative` says KMS answered "no" (as opposed to not answering).
 */
export class KeyServiceError extends EbsdError {
  readonly authoritative: boolean;
  readonly operation: string;
  constructor(operation: string, awsName: string | undefined, authoritative: boolean, message: string, cause?: unknown) {
    super(authoritative ? 'KMS_REFUSED' : 'KMS_UNAVAILABLE', `${operation}: ${message}`, {
      ...(awsName ? { awsName } : {}),
      cause,
    });
    this.authoritative = authoritative;
    this.operation = operation;
  }
}

/**
 * What may be logged about an error: its class, code and AWS name, never payloads.
 */
export function errInfo(e: unknown): Record<string, unknown> {
  if (e instanceof EbsdError || (e instanceof Error && 'code' in e)) {
    const x = e as Error & { code?: unknown; awsName?: unknown };
    return { type: x.name, code: x.code, awsName: x.awsName, message: x.message };
  }
  return { type: (e as Error)?.name ?? typeof e, message: (e as Error)?.message };
}
