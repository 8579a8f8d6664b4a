/**
 * AWS JSON 1.1 wire shapes for the control API: blobs travel as base64
 * strings, errors as `{"__type": ..., "message": ...}` (the shape the AWS
 * SDKs parse). In-process, KMS blobs are Uint8Array.
 */

import { KmsError, UnsupportedOperationException } from '../kms/errors.js';
import { noSpaceMessage } from '../util/errors.js';
import { wipe } from '../util/wipe.js';

/** KMS request members of type Blob (AWS KMS API reference). */
const REQUEST_BLOBS = new Set(['Plaintext', 'CiphertextBlob', 'Message', 'Signature', 'Mac']);
/**
 * RFC 4648 §4 base64 with padding, nothing else (no whitespace, no URL alphabet): a multiple of
 * four characters of the alphabet, the last one or two of them `=`. The same strings as
 * `^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$`, whose groups made it
 * 2 % of a Decrypt's listener time on a 300-character blob.
 */
const BASE64_CHARS = /^[A-Za-z0-9+/]*={0,2}$/;
const isBase64 = (v: string): boolean => v.length % 4 === 0 && BASE64_CHARS.test(v);

/**
 * `out[k] = v` with `k` = "__proto__" would set the prototype (or, for a
 * string, do nothing): members from the wire are defined, as JSON.parse
 * defines them, so any UTF-8 key is carried faithfully.
 */
function _put(out: Record<string, unknown>, k: string, v: unknown): void {
  // Plain assignment for every other name: defineProperty per member was ~1 % of a Decrypt's daemon time.
  if (k === '__proto__') Object.defineProperty(out, k, { value: v, enumerable: true, writable: true, configurable: true });
  else out[k] = v;
}

/**
 * JSON request -> in-process request: blob members decoded strictly (a
 * malformed one is a SerializationException naming it, as AWS answers, not
 * a shorter plaintext). `Recipient` (Nitro Enclave attestation) is refused:
 * ebsd cannot check an attestation document, and answering in the clear
 * would hand the plaintext to whoever asked for it sealed to an enclave.
 */
export function decodeKmsRequest(body: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  try {
    for (const [k, v] of Object.entries(body)) {
      if (k === 'Recipient' && v !== undefined && v !== null) {
        throw new UnsupportedOperationException('Recipient (attestation-bound responses for Nitro Enclaves) is not supported by this KMS.', { code: 'KMS_RECIPIENT_UNSUPPORTED' });
      }
      if (REQUEST_BLOBS.has(k) && v !== null && v !== undefined) {
        if (typeof v !== 'string' || !isBase64(v)) {
          throw new KmsError('SerializationException', `${k} must be a base64-encoded blob (RFC 4648 with padding)`, { code: 'KMS_BAD_BLOB' });
        }
        _put(out, k, Buffer.from(v, 'base64'));
      } else _put(out, k, v);
    }
  } catch (e) {
    // Refused part way: a Plaintext decoded before the refusal is nobody's but ours, so wiped here.
    wipeRequestSecrets(out);
    throw e;
  }
  return out;
}

/**
 * Members of a response that hold secrets (AWS KMS API Reference): `Plaintext` of Decrypt,
 * GenerateDataKey and GenerateRandom, `PrivateKeyPlaintext` of GenerateDataKeyPair; and
 * `BlockData` of EBS direct GetSnapshotBlock (EBS direct APIs reference), the block in the
 * clear when the snapshot is encrypted.
 */
export const RESPONSE_SECRETS: readonly string[] = ['Plaintext', 'PrivateKeyPlaintext', 'BlockData'];

/**
 * Every Uint8Array anywhere in the response becomes base64; every key is kept (`__proto__` too).
 *
 * Precondition: the response was built for this answer, as every handler behind
 * the control socket and the KMS listener builds it: its byte members were
 * allocated for it (the HSM's replies, src/kms/hsm/serve-batch.ts), so once the
 * handler has returned, the edge encoding it owns them and nobody reads them after.
 * Postcondition: its top-level secret members (RESPONSE_SECRETS) are zero. The
 * base64 text still holds the secret until it is sent and collected: a string
 * cannot be wiped (best effort, src/util/wipe.ts).
 */
export function encodeResponse(v: unknown): unknown {
  const out = _encode(v);
  if (v && typeof v === 'object' && !Array.isArray(v)) {
    for (const k of RESPONSE_SECRETS) {
      const x = (v as Record<string, unknown>)[k];
      if (x instanceof Uint8Array) wipe(x);
    }
  }
  return out;
}

function _encode(v: unknown): unknown {
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64');
  if (Array.isArray(v)) return v.map(_encode);
  if (v && typeof v === 'object' && !(v instanceof Date)) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (x !== undefined) _put(out, k, _encode(x));
    return out;
  }
  return v;
}

/**
 * Wipe the `Plaintext` of a request decodeKmsRequest built, once the call has
 * answered: decodeKmsRequest allocated it, so the edge that decoded it owns it
 * (a response never shares a request's buffers: the HSM's replies are its own).
 */
export function wipeRequestSecrets(req: Record<string, unknown>): void {
  const p = req.Plaintext;
  if (p instanceof Uint8Array) wipe(p);
}

/**
 * `{"__type","message"}` and nothing else: clients that read another member
 * first (aws-sdk-go-v2; @aws-sdk/client-kms up to 3.972 read `code`) would
 * otherwise report ebsd's internal code instead of the typed exception.
 */
export interface WireError {
  status: number;
  body: { __type: string; message: string; Reason?: string };
}

/**
 * The HTTP status AWS KMS answers each exception with, where it is not 400
 * (AWS KMS API Reference: the "Errors" of each operation, and "Common
 * Errors"). KMS answers 400 for every client fault, ThrottlingException and
 * LimitExceededException included; the service model's `httpError` traits
 * (NotFoundException 404, DisabledException, KMSInvalidStateException and
 * AlreadyExistsException 409, DependencyTimeoutException 503) are not what the
 * service sends, and the SDKs classify by `__type` either way. The 5xx ones
 * are those KMS documents as "can be retried": an SDK retries them.
 */
export const KMS_ERROR_STATUS: Readonly<Record<string, number>> = Object.freeze({
  DryRunOperationException: 412,
  KMSInternalException: 500,
  KeyUnavailableException: 500,
  DependencyTimeoutException: 500,
  InternalFailure: 500,
  ServiceUnavailable: 503,
  ThrottlingException: 400,
});

/**
 * Typed error -> HTTP status + AWS error body; the one place the control API
 * and the KMS listener decide statuses (docs/architecture.md §7, §11.5): a
 * KMS exception as in KMS_ERROR_STATUS, else the status an error carries for
 * its own service (EC2's UnauthorizedOperation is 403), else 400; anything
 * without an AWS name is an internal failure (500).
 */
export function toWireError(e: unknown): WireError {
  const err = e as { awsName?: unknown; code?: unknown; message?: unknown; name?: unknown };
  const awsName = typeof err?.awsName === 'string' ? err.awsName : undefined;
  const code = typeof err?.code === 'string' ? err.code : undefined;
  const message = typeof err?.message === 'string' ? err.message : String(e);
  if (awsName) {
    const own = (e as { httpStatus?: unknown }).httpStatus;
    // An EBS direct API exception also carries its Reason member (src/snapshot/ebs-direct-errors.ts).
    const reason = (e as { wireMembers?: { Reason?: unknown } }).wireMembers?.Reason;
    const status = KMS_ERROR_STATUS[awsName] ?? (typeof own === 'number' ? own : 400);
    return { status, body: { __type: awsName, message, ...(typeof reason === 'string' ? { Reason: reason } : {}) } };
  }
  if (err instanceof TypeError || err instanceof RangeError || code === 'ERR_ARG_TYPE' || code === 'ERR_ARG_RANGE') {
    return { status: 400, body: { __type: 'ValidationException', message } };
  }
  // A full disk under an operation that raised no typed error (a catalog or lock write of the
  // EC2 volume operations): named with its file, as the KMS names it, not Node's bare message.
  const full = noSpaceMessage(e);
  if (full !== undefined) return { status: 500, body: { __type: 'InternalFailure', message: `An internal error occurred: ${full}` } };
  return { status: 500, body: { __type: 'InternalFailure', message } };
}
