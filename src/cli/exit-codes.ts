/**
 * Exit codes: the one place they exist (docs/architecture.md §7). Documented in `ebsd --help`.
 */
export const EXIT = {
  OK: 0,
  /**
   * Unexpected failure (a bug, or a service error without an AWS name); also `ebsd daemon` giving up a stop
   * that outlasted --stop-timeout, or whose process was still held after it stopped (src/daemon/stop-deadline.ts).
   */
  INTERNAL: 1,
  /** Bad command line: an unknown option, a missing argument, a value not of its flag's form (`ebsd daemon --region Mars`), a flag without the one it needs. */
  USAGE: 2,
  /**
   * The daemon is not running or its socket cannot be reached; or it did not answer in time (`ebsd status`,
   * `ebsd top`: --status-timeout), stuck or overloaded.
   */
  NO_DAEMON: 3,
  /** AccessDeniedException (KMS, IAM) or UnauthorizedOperation (EC2): the caller's uid/principal may not do this. */
  DENIED: 4,
  /** The key, alias, volume, user or grant does not exist. */
  NOT_FOUND: 5,
  /** Conflict with current state: volume in use/open, key disabled or pending deletion, already exists. */
  CONFLICT: 6,
  /** The service rejected the request as invalid (validation, malformed policy, bad ciphertext, ...). */
  INVALID: 7,
  /** `ebsd audit verify` found the audit log modified, truncated or reordered. */
  AUDIT_FAILED: 8,
  /**
   * The daemon could not start (another daemon holds the state dir, mount failed) or refused a well-formed
   * configuration (plain HTTP off loopback, credentials in --kms-endpoint). A malformed flag is USAGE, checked first.
   */
  DAEMON_START: 9,
  /** A service-side failure (KMS internal error, dependency timeout) or throttling (retry later). */
  SERVICE: 10,
} as const;

export const EXIT_CODES_HELP = `Exit codes:
  0  success
  1  unexpected internal error (ebsd daemon: a stop that did not finish within --stop-timeout)
  2  usage error (bad command line, an ebsd daemon flag's value included)
  3  daemon not running / control socket unreachable, or it did not answer in time
     (--status-timeout of ebsd status and ebsd top: stuck or overloaded)
  4  access denied (AccessDeniedException, UnauthorizedOperation; unmapped uid)
  5  not found (NotFoundException, ResourceNotFoundException, InvalidVolume.NotFound, InvalidVolumeID.Malformed, NoSuchEntity)
  6  conflicting state (VolumeInUse, IncorrectState, IncorrectModificationState, VolumeModificationRateExceeded,
     ConcurrentSnapshotLimitExceeded, DisabledException, KMSInvalidStateException, AlreadyExists,
     DeleteConflict: an IAM user or role that still has access keys or inline policies)
  7  invalid request (ValidationException, InvalidParameterValue, InvalidFilter, TagLimitExceeded, UnknownParameter,
     MalformedPolicyDocument, InvalidCiphertextException,
     OperationNotPermitted: --cipher none on a daemon started without --allow-unencrypted, ...)
  8  audit verification failed
  9  daemon could not start (already running on this state dir, mount failed, refused configuration: plain HTTP off loopback, ...)
 10  service failure (KMSInternalException, DependencyTimeoutException, InternalFailure, EC2's InternalError, IAM's ServiceFailure, a corrupt image: *.Corrupt;
     ThrottlingException, RequestLimitExceeded: too many requests or connections, retry later)`;

const NOT_FOUND = new Set(['ResourceNotFoundException', 'NotFoundException', 'InvalidVolume.NotFound', 'InvalidVolumeModification.NotFound', 'InvalidVolumeID.Malformed', 'InvalidSnapshot.NotFound', 'InvalidSnapshotID.Malformed', 'InvalidInstanceID.NotFound', 'InvalidInstanceID.Malformed', 'NoSuchEntityException', 'InvalidGrantIdException', 'InvalidAliasNameException']);
const CONFLICT = new Set([
  'VolumeInUse', 'InvalidSnapshot.InUse', 'IncorrectState', 'IncorrectModificationState', 'VolumeModificationRateExceeded', 'ConcurrentSnapshotLimitExceeded', 'DisabledException', 'KMSInvalidStateException', 'AlreadyExistsException',
  'EntityAlreadyExistsException', 'DeleteConflictException', 'LimitExceededException', 'ConflictException',
]);
/**
 * Throttled (the request was fine, the service is busy: retry later, as the AWS SDKs do) is a service-side
 * condition, not an invalid request. LimitExceededException stays a conflict: it is a quota of the state
 * (grants, rotations), which a retry does not lift.
 */
const THROTTLED = new Set([
  'ThrottlingException', 'Throttling', 'RequestLimitExceeded', 'TooManyRequestsException', 'SlowDown', 'RequestThrottledException', 'ConcurrentLimitExceededException',
]);
const SERVICE = new Set(['KMSInternalException', 'InternalServerException', 'InternalFailure', 'InternalError', 'ServiceFailure', 'DependencyTimeoutException', 'KeyUnavailableException', 'ServiceUnavailable', ...THROTTLED]);

/** AWS exception name -> exit code. */
export function exitCodeFor(awsName: string | undefined, httpStatus?: number): number {
  if (!awsName) return httpStatus && httpStatus < 500 ? EXIT.INVALID : EXIT.INTERNAL;
  if (awsName === 'AccessDeniedException' || awsName === 'UnauthorizedOperation') return EXIT.DENIED;
  if (NOT_FOUND.has(awsName)) return EXIT.NOT_FOUND;
  if (CONFLICT.has(awsName)) return EXIT.CONFLICT;
  if (SERVICE.has(awsName)) return EXIT.SERVICE;
  // A corrupt image or state file (`InvalidVolume.Corrupt`, `CorruptImage`, ...): the request was fine, the data is not.
  if (/(^|\.)Corrupt/.test(awsName)) return EXIT.SERVICE;
  return EXIT.INVALID;
}
