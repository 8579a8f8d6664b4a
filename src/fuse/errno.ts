/**
 * The one place errno exists in ebsd (docs/architecture.md §7). Block-device failures are
 * translated here, once, at the FUSE boundary; everything below speaks typed
 * errors with a stable `code`.
 */

// Linux errno values (asm-generic/errno-base.h). Negative, as FUSE replies take them.
export const EPERM = -1;
export const ENOENT = -2;
export const EIO = -5;
export const EBADF = -9;
export const ENOMEM = -12;
export const EACCES = -13;
export const EBUSY = -16;
export const EISDIR = -21;
export const EINVAL = -22;
export const ENOSPC = -28;
export const EROFS = -30;

/** Error codes (ours or Node's system ones) that mean "no room to write". */
const NOSPACE = new Set(['ENOSPC', 'EDQUOT', 'EFBIG']);

/**
 * Error codes that mean the request itself was outside the volume or malformed:
 * ours (util/errors.ts ArgRangeError, ArgTypeError) and Node's. Only these: a
 * RangeError without one of them is not a bad argument (V8's "Array buffer
 * allocation failed" is a RangeError, as are bugs).
 */
const OUT_OF_RANGE = new Set(['ERR_ARG_RANGE', 'ERR_ARG_TYPE', 'ERR_OUT_OF_RANGE', 'ERR_INVALID_ARG_TYPE', 'ERR_INVALID_ARG_VALUE', 'ERR_BUFFER_OUT_OF_BOUNDS']);

/** Error codes of a failed allocation (Node's, and a system call's ENOMEM). */
const NO_MEMORY = new Set(['ERR_MEMORY_ALLOCATION_FAILED', 'ENOMEM']);

/**
 * Map a failure from a BlockDevice to a negative errno.
 * - out-of-range / bad-argument errors (by code only) -> EINVAL
 * - ENOSPC (anywhere in the cause chain) -> ENOSPC
 * - a failed allocation (V8's "Array buffer allocation failed" RangeError,
 *   ERR_MEMORY_ALLOCATION_FAILED, ENOMEM) -> ENOMEM
 * - everything else (impaired volume, key gone, backing-file I/O error,
 *   a bug) -> EIO, which is what a disk returns when it cannot serve a sector.
 */
export function toErrno(err: unknown): number {
  for (let e: unknown = err, depth = 0; e && depth < 5; depth++) {
    const code = codeOf(e);
    if (code && NOSPACE.has(code)) return ENOSPC;
    if (code && (OUT_OF_RANGE.has(code) || /OUT_OF_RANGE/.test(code))) return EINVAL;
    if (code && NO_MEMORY.has(code)) return ENOMEM;
    if (e instanceof RangeError && /allocation failed/i.test(e.message)) return ENOMEM;
    e = (e as { cause?: unknown }).cause;
  }
  return EIO;
}

function codeOf(e: unknown): string | undefined {
  if (typeof e !== 'object' || e === null) return undefined;
  const c = (e as { code?: unknown }).code;
  return typeof c === 'string' ? c : undefined;
}
