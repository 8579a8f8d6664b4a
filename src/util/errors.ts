/**
 * Typed errors. Every error ebsd raises on purpose carries a stable `code`;
 * callers branch on `code` (or `instanceof`), never on message text.
 * KMS errors also carry `awsName` (the AWS exception `__type`); the edges
 * (fuse errno, control-API status, CLI exit code) translate from these once.
 */
export class EbsdError extends Error {
  /** Stable machine-readable code, e.g. `XTS_BAD_KEY`, `VOLUME_NOT_FOUND`. */
  readonly code: string;
  /** AWS exception name where one exists (`NotFoundException`, `InvalidVolume.NotFound`, ...). */
  readonly awsName?: string;

  constructor(code: string, message: string, opts: { awsName?: string; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = code;
    if (opts.awsName !== undefined) this.awsName = opts.awsName;
  }

  toJSON(): { code: string; awsName?: string; message: string } {
    return { code: this.code, ...(this.awsName ? { awsName: this.awsName } : {}), message: this.message };
  }
}

/** An errno error from writing through a handle carries no path; name the file written (ENOSPC, EIO). */
export function withPath(e: unknown, path: string): unknown {
  const err = e as NodeJS.ErrnoException | undefined;
  if (err && typeof err === 'object' && typeof err.code === 'string' && err.path === undefined) err.path = path;
  return e;
}

/** True for an errno error raised because the disk is full (ENOSPC) or the quota spent (EDQUOT). */
export function isNoSpace(e: unknown): e is NodeJS.ErrnoException & { code: 'ENOSPC' | 'EDQUOT' } {
  const c = (e as { code?: unknown } | undefined)?.code;
  return c === 'ENOSPC' || c === 'EDQUOT';
}

/** What a full disk (isNoSpace) is called: "no space left on device" or "disk quota exceeded"; undefined for any other error. */
export function noSpaceWhat(e: unknown): string | undefined {
  if (!isNoSpace(e)) return undefined;
  return e.code === 'ENOSPC' ? 'no space left on device' : 'disk quota exceeded';
}

/**
 * What a caller is told of an errno error raised because the disk is full
 * (ENOSPC) or the quota spent (EDQUOT): the condition and the file, so an
 * operator knows what to free (Node's own message names only the syscall:
 * "ENOSPC: no space left on device, write"). Undefined for any other error.
 */
export function noSpaceMessage(e: unknown, writing = 'the state directory'): string | undefined {
  const what = noSpaceWhat(e);
  if (what === undefined) return undefined;
  const err = e as NodeJS.ErrnoException;
  return `${what} (${err.code}) writing ${err.path ?? writing}`;
}

/** Invalid argument type at a public entry point (docs/architecture.md §11.3). */
export class ArgTypeError extends TypeError {
  readonly code = 'ERR_ARG_TYPE';
  constructor(name: string, expected: string, got: unknown) {
    super(`${name} must be ${expected}, got ${describe(got)}`);
    this.name = 'ArgTypeError';
  }
}

/** Argument of the right type but wrong size or range (docs/architecture.md §11.3). */
export class ArgRangeError extends RangeError {
  readonly code = 'ERR_ARG_RANGE';
  constructor(name: string, message: string) {
    super(`${name} ${message}`);
    this.name = 'ArgRangeError';
  }
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Buffer.isBuffer(v)) return `Buffer(${v.length})`;
  if (v instanceof Uint8Array) return `Uint8Array(${v.length})`;
  if (Array.isArray(v)) return 'array';
  return typeof v;
}

export function checkBytes(name: string, v: unknown, len?: number): asserts v is Uint8Array {
  if (!(v instanceof Uint8Array)) throw new ArgTypeError(name, 'a Uint8Array or Buffer', v);
  if (len !== undefined && v.length !== len) throw new ArgRangeError(name, `must be ${len} bytes, got ${v.length}`);
}

export function checkSafeInt(name: string, v: unknown, min = 0, max = Number.MAX_SAFE_INTEGER): asserts v is number {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new ArgTypeError(name, 'an integer', v);
  if (v < min || v > max) throw new ArgRangeError(name, `must be in [${min}, ${max}], got ${v}`);
}

export function checkString(name: string, v: unknown): asserts v is string {
  if (typeof v !== 'string') throw new ArgTypeError(name, 'a string', v);
}
