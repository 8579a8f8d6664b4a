/**
 * AWS JSON 1.1 wire shapes for the control API: blobs travel as base64
 * strings, errors as `{"__type": ..., "message": ...}` (the shape the AWS
 * SDKs parse). In-process, KMS blobs are Uint8Array.
 */

/** KMS request members of type Blob (AWS KMS API reference). */
const REQUEST_BLOBS = new Set(['Plaintext', 'CiphertextBlob', 'Message', 'Signature', 'Mac']);

export function decodeKmsRequest(body: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(body)) {
    if (REQUEST_BLOBS.has(k) && typeof v === 'string') out[k] = Buffer.from(v, 'base64');
    else out[k] = v;
  }
  return out;
}

/** Every Uint8Array anywhere in the response becomes base64. */
export function encodeResponse(v: unknown): unknown {
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64');
  if (Array.isArray(v)) return v.map(encodeResponse);
  if (v && typeof v === 'object' && !(v instanceof Date)) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (x !== undefined) out[k] = encodeResponse(x);
    return out;
  }
  return v;
}

export interface WireError {
  status: number;
  body: { __type: string; message: string; code?: string };
}

/**
 * Typed error -> HTTP status + AWS error body; the one place the control API
 * decides statuses (STYLE §5). Client faults are 400 as in AWS JSON 1.1;
 * anything without an AWS name is an internal failure (500).
 */
export function toWireError(e: unknown): WireError {
  const err = e as { awsName?: unknown; code?: unknown; message?: unknown; name?: unknown };
  const awsName = typeof err?.awsName === 'string' ? err.awsName : undefined;
  const code = typeof err?.code === 'string' ? err.code : undefined;
  const message = typeof err?.message === 'string' ? err.message : String(e);
  if (awsName) {
    const internal = awsName === 'KMSInternalException' || awsName === 'InternalFailure' || awsName === 'DependencyTimeoutException';
    // An error may carry its service's status (EC2's UnauthorizedOperation is 403).
    const own = (e as { httpStatus?: unknown }).httpStatus;
    return { status: typeof own === 'number' ? own : internal ? 500 : 400, body: { __type: awsName, message, ...(code ? { code } : {}) } };
  }
  if (err instanceof TypeError || err instanceof RangeError || code === 'ERR_ARG_TYPE' || code === 'ERR_ARG_RANGE') {
    return { status: 400, body: { __type: 'ValidationException', message, ...(code ? { code } : {}) } };
  }
  return { status: 500, body: { __type: 'InternalFailure', message, ...(code ? { code } : {}) } };
}
