/**
 * Request field checks with AWS's ValidationException wording
 * ("1 validation error detected: Value at 'x' failed to satisfy constraint: ...").
 */
import { LimitExceededException, ValidationException } from './errors.js';
import type { KmsRequest } from './types.js';
import { dataMap } from './data-map.js';
import { isWellFormedUtf16 } from '../util/strict-json.js';
import { charCount } from '../util/char-count.js';

/**
 * Deepest nesting a policy document may have (parseStrictJson's limit for
 * key and identity policies). The grammar needs 6 (document, Statement list,
 * statement, Condition, operator block, value list); 32 leaves room and keeps
 * every recursive reader far from the end of the stack.
 */
export const MAX_POLICY_DEPTH = 32;

/** KMS quota: a key policy is at most 32 KiB, in UTF-8 bytes (docs/kms-format.md, "Quotas"). */
export const MAX_KEY_POLICY_BYTES = 32 * 1024;

/**
 * A key policy over the quota is LimitExceededException, as AWS answers CreateKey and
 * PutKeyPolicy; past the API's length constraint on the member (131,072 characters) the
 * request-shape check has already answered ValidationException.
 */
export function checkKeyPolicySize(policy: string): void {
  const size = Buffer.byteLength(policy, 'utf8');
  if (size > MAX_KEY_POLICY_BYTES) {
    throw new LimitExceededException(`The key policy is ${size} bytes; a key policy can be at most ${MAX_KEY_POLICY_BYTES} bytes (32 KiB).`);
  }
}

const lc = (s: string) => s[0]!.toLowerCase() + s.slice(1);
/**
 * `value` named as AWS names it where it can show one: `null` for a member that is missing, `'1001'`
 * for a number out of range. Strings and blobs are never shown (they may be a plaintext, a policy of
 * 32 KiB, or a caller's secret).
 */
const fail = (name: string, c: string, value?: null | number) =>
  new ValidationException(`1 validation error detected: Value ${value === undefined ? '' : value === null ? 'null ' : `'${value}' `}at '${lc(name)}' failed to satisfy constraint: ${c}`);
/** A required member that is absent, in AWS's words (`Value null at 'tags' … Member must not be null`). */
export const missing = (name: string) => fail(name, 'Member must not be null', null);

export function optStr(req: KmsRequest, name: string, min = 1, max = 2048): string | undefined {
  const v = req[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw fail(name, 'Member must be a string');
  if (v.length < min) throw fail(name, `Member must have length greater than or equal to ${min}`);
  if (v.length > max) throw fail(name, `Member must have length less than or equal to ${max}`);
  return v;
}

export function reqStr(req: KmsRequest, name: string, min = 1, max = 2048): string {
  const v = optStr(req, name, min, max);
  if (v === undefined) throw missing(name);
  return v;
}

export function optInt(req: KmsRequest, name: string, min: number, max: number): number | undefined {
  const v = req[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v)) throw fail(name, 'Member must be an integer');
  if (v < min) throw fail(name, `Member must have value greater than or equal to ${min}`, v);
  if (v > max) throw fail(name, `Member must have value less than or equal to ${max}`, v);
  return v;
}

export function reqInt(req: KmsRequest, name: string, min: number, max: number): number {
  const v = optInt(req, name, min, max);
  if (v === undefined) throw missing(name);
  return v;
}

export function optBool(req: KmsRequest, name: string): boolean | undefined {
  const v = req[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw fail(name, 'Member must be a boolean');
  return v;
}

export function optBytes(req: KmsRequest, name: string, min: number, max: number): Uint8Array | undefined {
  const v = req[name];
  if (v === undefined || v === null) return undefined;
  if (!(v instanceof Uint8Array)) throw fail(name, 'Member must be a blob (Uint8Array)');
  if (v.length < min) throw fail(name, `Member must have length greater than or equal to ${min}`);
  if (v.length > max) throw fail(name, `Member must have length less than or equal to ${max}`);
  return v;
}

export function reqBytes(req: KmsRequest, name: string, min: number, max: number): Uint8Array {
  const v = optBytes(req, name, min, max);
  if (v === undefined) throw missing(name);
  return v;
}

export function optEnum<T extends string>(req: KmsRequest, name: string, values: readonly T[]): T | undefined {
  const v = req[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string' || !values.includes(v as T)) throw fail(name, `Member must satisfy enum value set: [${values.join(', ')}]`);
  return v as T;
}

export function reqEnum<T extends string>(req: KmsRequest, name: string, values: readonly T[]): T {
  const v = optEnum(req, name, values);
  if (v === undefined) throw missing(name);
  return v;
}

/**
 * EncryptionContext: string -> string map (AWS: keys and values are strings; total ≤ 8192 bytes here).
 * The result has no prototype, so every key the caller sent, `__proto__` included, is a member and
 * reaches the AAD (blob.ts, canonicalContext). Strings with a lone UTF-16 surrogate are refused: they
 * have no UTF-8 form, and encoding them lossily (to U+FFFD) would make distinct contexts collide.
 */
export function optContext(req: KmsRequest, name = 'EncryptionContext'): Record<string, string> | undefined {
  const v = req[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v) || v instanceof Uint8Array) throw fail(name, 'Member must be a map of strings');
  let total = 0;
  const out = dataMap<string>();
  const src = v as Record<string, unknown>;
  for (const k of Object.keys(src)) {
    const x = src[k];
    if (typeof x !== 'string') throw fail(name, 'Member must be a map of strings');
    if (k.length === 0) throw fail(name, 'Map keys must have length greater than or equal to 1');
    if (!isWellFormedUtf16(k)) throw fail(name, `Map key ${JSON.stringify(k)} is not valid Unicode (lone surrogate)`);
    if (!isWellFormedUtf16(x)) throw fail(name, `Value of key ${JSON.stringify(k)} is not valid Unicode (lone surrogate)`);
    total += Buffer.byteLength(k) + Buffer.byteLength(x);
    out[k] = x;
  }
  if (total > 8192) throw fail(name, 'Member must have total length less than or equal to 8192');
  return out;
}

/** A list of at most `maxItems` strings, each 1..`maxLen` characters (UntagResource's TagKeys: 128, counted as AWS counts, src/util/char-count.ts). */
export function optStrList(req: KmsRequest, name: string, maxItems: number, maxLen = 8192): string[] | undefined {
  const v = req[name];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string' || x === '' || charCount(x) > maxLen)) throw fail(name, 'Member must be a list of strings');
  if (v.length > maxItems) throw fail(name, `Member must have length less than or equal to ${maxItems}`);
  return v as string[];
}

/** A list whose every element is one of `values` (e.g. DryRunModifiers). */
export function optEnumList<T extends string>(req: KmsRequest, name: string, values: readonly T[]): T[] | undefined {
  const v = req[name];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string' || !values.includes(x as T))) {
    throw fail(name, `Member must be a list of values of the enum value set: [${values.join(', ')}]`);
  }
  return v as T[];
}
