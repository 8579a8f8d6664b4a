import { EbsdError } from '../util/errors.js';

/**
 * The EBS direct APIs' exceptions (EBS direct APIs reference, "Common
 * errors" and each operation's "Errors"): the exception name, its HTTP
 * status and the `Reason` member the SDKs parse (ValidationExceptionReason,
 * ResourceNotFoundExceptionReason, AccessDeniedExceptionReason,
 * RequestThrottledExceptionReason, ServiceQuotaExceededExceptionReason).
 */
export type ValidationReason =
  | 'INVALID_CUSTOMER_KEY' | 'INVALID_PAGE_TOKEN' | 'INVALID_BLOCK_TOKEN' | 'INVALID_GRANT_TOKEN' | 'INVALID_SNAPSHOT_ID'
  | 'UNRELATED_SNAPSHOTS' | 'INVALID_BLOCK' | 'INVALID_CONTENT_ENCODING' | 'INVALID_TAG' | 'INVALID_DEPENDENCY_REQUEST'
  | 'INVALID_PARAMETER_VALUE' | 'INVALID_VOLUME_SIZE' | 'CONFLICTING_BLOCK_UPDATE' | 'INVALID_IMAGE_ID' | 'WRITE_REQUEST_TIMEOUT';
export type NotFoundReason = 'SNAPSHOT_NOT_FOUND' | 'GRANT_NOT_FOUND' | 'DEPENDENCY_RESOURCE_NOT_FOUND' | 'IMAGE_NOT_FOUND';
export type AccessDeniedReason = 'UNAUTHORIZED_ACCOUNT' | 'DEPENDENCY_ACCESS_DENIED';
export type ThrottledReason = 'ACCOUNT_THROTTLED' | 'DEPENDENCY_REQUEST_THROTTLED' | 'RESOURCE_LEVEL_THROTTLE';
/** ServiceQuotaExceededExceptionReason has this one value. */
export type QuotaReason = 'DEPENDENCY_SERVICE_QUOTA_EXCEEDED';

export type EbsDirectErrorCode =
  | 'EBS_VALIDATION'
  | 'EBS_NOT_FOUND'
  | 'EBS_ACCESS_DENIED'
  | 'EBS_CONFLICT'
  | 'EBS_THROTTLED'
  | 'EBS_CONCURRENT_LIMIT'
  | 'EBS_QUOTA'
  | 'EBS_INTERNAL';

export class EbsDirectError extends EbsdError {
  declare readonly code: EbsDirectErrorCode;
  readonly httpStatus: number;
  /** Members of the error body besides `__type` and `message` (the wire adds them, src/daemon/aws-json.ts). */
  readonly wireMembers: { Reason?: string };
  constructor(code: EbsDirectErrorCode, awsName: string, httpStatus: number, message: string, reason?: string, cause?: unknown) {
    super(code, message, { awsName, ...(cause !== undefined ? { cause } : {}) });
    this.httpStatus = httpStatus;
    this.wireMembers = reason ? { Reason: reason } : {};
  }

  get reason(): string | undefined {
    return this.wireMembers.Reason;
  }
}

export const validation = (reason: ValidationReason, message: string): EbsDirectError =>
  new EbsDirectError('EBS_VALIDATION', 'ValidationException', 400, message, reason);

export const notFound = (snapshotId: string): EbsDirectError =>
  new EbsDirectError('EBS_NOT_FOUND', 'ResourceNotFoundException', 404, `The snapshot '${snapshotId}' does not exist.`, 'SNAPSHOT_NOT_FOUND');

export const accessDenied = (reason: AccessDeniedReason, message: string, cause?: unknown): EbsDirectError =>
  new EbsDirectError('EBS_ACCESS_DENIED', 'AccessDeniedException', 403, message, reason, cause);

export const conflict = (message: string): EbsDirectError =>
  new EbsDirectError('EBS_CONFLICT', 'ConflictException', 409, message);

export const concurrentLimit = (message: string): EbsDirectError =>
  new EbsDirectError('EBS_CONCURRENT_LIMIT', 'ConcurrentLimitExceededException', 400, message);

/** A per-snapshot or per-account request rate was exceeded (src/snapshot/ebs-direct-throttle.ts): HTTP 400, as EBS answers it. */
export const throttled = (reason: ThrottledReason, message: string): EbsDirectError =>
  new EbsDirectError('EBS_THROTTLED', 'RequestThrottledException', 400, message, reason);

/**
 * A limit of this service was reached (a snapshot's block count): HTTP 402, as the
 * EBS model gives ServiceQuotaExceededException, a client fault the SDKs do not retry.
 */
export const quotaExceeded = (message: string): EbsDirectError =>
  new EbsDirectError('EBS_QUOTA', 'ServiceQuotaExceededException', 402, message, 'DEPENDENCY_SERVICE_QUOTA_EXCEEDED' satisfies QuotaReason);

export const internal = (message: string, cause?: unknown): EbsDirectError =>
  new EbsDirectError('EBS_INTERNAL', 'InternalServerException', 500, message, undefined, cause);

/**
 * A KMS refusal met while acting for the caller (Decrypt of the snapshot's
 * data key, GenerateDataKeyWithoutPlaintext): denied is AccessDeniedException
 * DEPENDENCY_ACCESS_DENIED, a disabled, missing or wrong key is
 * ValidationException INVALID_CUSTOMER_KEY, anything else (KMS unreachable)
 * InternalServerException. The KMS message is kept: it names the key and the
 * caller, never key material.
 */
export function fromKmsError(operation: string, e: unknown): EbsDirectError {
  if (e instanceof EbsDirectError) return e;
  const awsName = (e as { awsName?: unknown })?.awsName;
  const msg = `${operation} failed: ${(e as Error)?.message ?? String(e)}`;
  if (awsName === 'AccessDeniedException') return accessDenied('DEPENDENCY_ACCESS_DENIED', msg, e);
  if (typeof awsName === 'string' && /^(DisabledException|KMSInvalidStateException|NotFoundException|InvalidCiphertextException|IncorrectKeyException|InvalidKeyUsageException|InvalidArnException|ValidationException)$/.test(awsName)) {
    return new EbsDirectError('EBS_VALIDATION', 'ValidationException', 400, msg, 'INVALID_CUSTOMER_KEY', e);
  }
  return internal(msg, e);
}
