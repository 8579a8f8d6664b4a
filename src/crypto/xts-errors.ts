import { EbsdError } from '../util/errors.js';

/**
 * Stable codes of XTS errors. Callers branch on `code`, never on the message.
 * The native addon throws the same codes for the same conditions.
 */
export type XtsErrorCode =
  | 'XTS_BAD_KEY_LENGTH' // key is not 64 bytes (K1 ‖ K2)
  | 'XTS_WEAK_KEY' // K1 = K2 (IEEE 1619-2018 §5.1, SP 800-38E)
  | 'XTS_BAD_UNIT_SIZE' // data-unit size other than 512 or 4096
  | 'XTS_BAD_TWEAK_STEP' // tweak step not an integer in [1, 2^32)
  | 'XTS_PARTIAL_UNIT' // buffer is not a whole number of data units
  | 'XTS_TWEAK_OVERFLOW' // a unit's tweak would be >= 2^64
  | 'XTS_DESTROYED' // context used after destroy()
  | 'XTS_ENGINE_UNAVAILABLE' // the requested engine cannot run here
  | 'XTS_SELF_TEST_FAILED' // an engine produced wrong output for a known vector
  | 'XTS_CIPHER'; // the cipher library (libgcrypt, in the native addon) reported a failure

/** An XTS error; `argument` names the offending argument where there is one. */
export class XtsError extends EbsdError {
  readonly argument?: string;
  constructor(code: XtsErrorCode, message: string, opts: { argument?: string; cause?: unknown } = {}) {
    super(code, opts.argument ? `${opts.argument}: ${message}` : message, { cause: opts.cause });
    if (opts.argument !== undefined) this.argument = opts.argument;
  }
}
