import { ArgTypeError } from '../util/errors.js';
import type { XtsRunOptions, XtsUnitSize } from './xts.js';
import { XtsError } from './xts-errors.js';

/** 2^64: tweaks are little-endian u64 (dm-crypt plain64). */
export const TWEAK_LIMIT = 1n << 64n;
export const XTS_KEY_BYTES = 64;

/** A run after validation: what every engine needs, with defaults applied. */
export interface CheckedRun {
  unitSize: XtsUnitSize;
  tweakStep: number;
  firstTweak: bigint;
  units: number;
}

/**
 * Validates a 64-byte XTS key (K1 ‖ K2). K1 = K2 is refused: IEEE 1619-2018
 * §5.1 requires two independent keys and SP 800-38E / FIPS 140-3 IG C.I make
 * it a hard check. The halves are compared in constant time.
 */
export function _checkKey(key: unknown, name = 'key'): asserts key is Uint8Array {
  if (!(key instanceof Uint8Array)) throw new ArgTypeError(name, 'a Uint8Array or Buffer', key);
  if (key.length !== XTS_KEY_BYTES) {
    throw new XtsError('XTS_BAD_KEY_LENGTH', `must be ${XTS_KEY_BYTES} bytes (K1 ‖ K2), got ${key.length}`, {
      argument: name,
    });
  }
  if (xtsKeyHalvesEqual(key)) throw new XtsError('XTS_WEAK_KEY', 'halves K1 and K2 must differ', { argument: name });
}

/**
 * Whether the halves K1 and K2 of a 64-byte XTS key are equal, compared in
 * place and in constant time. In place matters: a copy such as
 * `Buffer.from(key.subarray(0, 32))` lands in Node's shared 8 KiB Buffer pool,
 * which nobody wipes, so key material would outlive the caller's wipe().
 */
export function xtsKeyHalvesEqual(key: Uint8Array): boolean {
  let diff = 0;
  for (let i = 0; i < 32; i++) diff |= key[i]! ^ key[i + 32]!;
  return diff === 0;
}

/**
 * Validates one run (shared by all engines, so they fail identically):
 * `data` whole units of `unitSize` bytes, unit i gets `firstTweak + i*tweakStep`,
 * and the last unit's tweak must be below 2^64.
 */
export function _checkRun(data: unknown, firstTweak: unknown, opts: XtsRunOptions | undefined): CheckedRun {
  if (!(data instanceof Uint8Array)) throw new ArgTypeError('data', 'a Uint8Array or Buffer', data);
  if (opts !== undefined && (opts === null || typeof opts !== 'object')) {
    throw new ArgTypeError('opts', 'an object', opts);
  }
  const unitSize = opts?.unitSize ?? 4096;
  if (unitSize !== 512 && unitSize !== 4096) {
    throw new XtsError('XTS_BAD_UNIT_SIZE', `must be 512 or 4096, got ${String(unitSize)}`, {
      argument: 'opts.unitSize',
    });
  }
  const tweakStep = opts?.tweakStep ?? (unitSize === 4096 ? 8 : 1);
  if (typeof tweakStep !== 'number' || !Number.isInteger(tweakStep) || tweakStep < 1 || tweakStep > 0xffffffff) {
    throw new XtsError('XTS_BAD_TWEAK_STEP', `must be an integer in [1, 2^32), got ${String(tweakStep)}`, {
      argument: 'opts.tweakStep',
    });
  }
  let tweak: bigint;
  if (typeof firstTweak === 'bigint') tweak = firstTweak;
  else if (typeof firstTweak === 'number' && Number.isSafeInteger(firstTweak)) tweak = BigInt(firstTweak);
  else throw new ArgTypeError('firstTweak', 'a bigint or a safe integer', firstTweak);
  if (tweak < 0n) throw new XtsError('XTS_TWEAK_OVERFLOW', 'must not be negative', { argument: 'firstTweak' });
  if (data.length % unitSize !== 0) {
    throw new XtsError(
      'XTS_PARTIAL_UNIT',
      `length ${data.length} is not a whole number of ${unitSize}-byte units`,
      { argument: 'data' },
    );
  }
  const units = data.length / unitSize;
  const last = tweak + BigInt(Math.max(units - 1, 0)) * BigInt(tweakStep);
  if (tweak >= TWEAK_LIMIT || last >= TWEAK_LIMIT) {
    throw new XtsError('XTS_TWEAK_OVERFLOW', `the last unit's tweak 0x${last.toString(16)} is not below 2^64`, {
      argument: 'firstTweak',
    });
  }
  return { unitSize, tweakStep, firstTweak: tweak, units };
}

/** Writes `tweak` as a little-endian u64 into iv[0..8], zeroing iv[8..16] (plain64). */
export function _tweakBlock(iv: Uint8Array, tweak: bigint): Uint8Array {
  let t = tweak;
  for (let i = 0; i < 8; i++) {
    iv[i] = Number(t & 0xffn);
    t >>= 8n;
  }
  iv.fill(0, 8, 16);
  return iv;
}
