/**
 * AssumeRole's inline session policy (STS API Reference, AssumeRole, member `Policy`; IAM User
 * Guide, "Session policies"): checked as an identity-based policy, packed into the session token,
 * read back from it. What a session policy does to a decision is the evaluator's
 * (src/kms/authz/evaluate.ts); the token's member is in docs/kms-format.md, "STS session token".
 *
 * Packing: the policy as sent, raw DEFLATE (RFC 1951) of its one-byte-per-character form (every
 * character it may hold is at most U+00FF). AWS, too, compresses session policies into a packed
 * form with a limit of its own, which a policy can exceed within the 2048-character limit; its
 * budget is not published, ebsd's is PACKED_POLICY_MAX bytes, and AssumeRole reports how much of
 * it a policy takes as PackedPolicySize, a percentage.
 */
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { parsePolicy } from '../authz/policy-document.js';
import { MalformedPolicyDocumentException } from '../errors.js';

/** AssumeRole Policy (STS API Reference, AssumeRole): 1 to 2048 characters of this set. */
export const SESSION_POLICY_MIN = 1;
export const SESSION_POLICY_MAX = 2048;
export const SESSION_POLICY_RE = /^[\t\n\r\u0020-\u00FF]*$/;
/** The packed policy's budget in the session token, bytes (PackedPolicySize 100). */
export const PACKED_POLICY_MAX = 1024;

/** Why `text` is not a valid session policy (the identity-policy parser's words), or undefined. */
export function sessionPolicyProblem(text: string): string | undefined {
  try {
    parsePolicy(text, { kind: 'identity' });
    return undefined;
  } catch (e) {
    // Only the parser's refusal is the policy's fault; anything else (a bug) is not answered as a bad policy.
    if (e instanceof MalformedPolicyDocumentException) return e.message;
    throw e;
  }
}

/**
 * Precondition: `text` met the member's constraints (length, SESSION_POLICY_RE).
 * `percent`: PackedPolicySize, rounded up, so a policy over the budget never reads 100.
 */
export function packSessionPolicy(text: string): { packed: string; percent: number } {
  const packed = deflateRawSync(Buffer.from(text, 'latin1'));
  return { packed: packed.toString('base64'), percent: Math.ceil((packed.length * 100) / PACKED_POLICY_MAX) };
}

/**
 * The policy text a token's packed member holds, or undefined if it is not one AssumeRole could
 * have packed (the caller refuses the token). Read before the HSM has authenticated the token, so
 * bounded: the packed form within the budget, its inflation within the member's length.
 */
export function unpackSessionPolicy(packed: unknown): string | undefined {
  if (typeof packed !== 'string' || packed.length === 0) return undefined;
  const raw = Buffer.from(packed, 'base64');
  if (raw.length > PACKED_POLICY_MAX || raw.toString('base64') !== packed) return undefined;
  let text: string;
  try {
    text = inflateRawSync(raw, { maxOutputLength: SESSION_POLICY_MAX }).toString('latin1');
  } catch {
    return undefined; // not DEFLATE, or longer than any policy AssumeRole accepts
  }
  return text.length >= SESSION_POLICY_MIN && SESSION_POLICY_RE.test(text) ? text : undefined;
}
