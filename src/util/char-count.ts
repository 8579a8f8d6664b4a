/**
 * String lengths as AWS counts them: in Unicode characters (code points), not
 * UTF-16 code units. EC2's Tag ("Key: up to 128 Unicode characters; Value: up
 * to 256") and KMS's TagKey / TagValue (1–128, 0–256) are limits on
 * characters, so a key of 128 emoji (256 code units in JS) is within bounds.
 * A lone surrogate counts as one character, as `[...s]` counts it (the EC2
 * edge refuses lone surrogates separately).
 */
const SURROGATE = /[\uD800-\uDFFF]/;

export function charCount(s: string): number {
  // Most strings hold no surrogate at all: their length is already the count.
  return SURROGATE.test(s) ? [...s].length : s.length;
}
