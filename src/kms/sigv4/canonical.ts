/**
 * SigV4 canonical request and string to sign, as the verifying side computes
 * them (AWS General Reference, "Create a canonical request for Signature
 * Version 4" and "Create a string to sign"). Pinned by the AWS test suite in
 * test/vectors/sigv4-aws-suite.json and by @smithy/signature-v4 as signer.
 */
import { hash } from 'node:crypto';

export const ALGORITHM = 'AWS4-HMAC-SHA256';

/** A request as it arrived: method, request-target as on the request line, headers in order, body. */
export interface WireRequest {
  method: string;
  /** Path and query exactly as sent (`/`, `/?Action=x`). */
  target: string;
  /**
   * Header name/value pairs as received, repeated names kept; or Node's `rawHeaders` as it is
   * (names and values alternating in one array), which saves the listener building the pairs.
   */
  headers: readonly (readonly [string, string])[] | { readonly raw: readonly string[] };
  body: Uint8Array;
}

/** One-shot `crypto.hash`: a third of createHash's cost for the two hashes of every verification. */
export function sha256Hex(data: Uint8Array | string): string {
  return hash('sha256', data, 'hex');
}

/** RFC 3986 percent-encoding of everything but the unreserved set, upper-case hex (SigV4 "UriEncode"). */
export function uriEncode(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
}

function decode(s: string): string {
  try {
    return decodeURIComponent(s.replace(/\+/g, '%20'));
  } catch {
    return s; // a malformed escape stays as sent; the signature then fails to match
  }
}

/**
 * Canonical URI: dot segments removed and empty segments collapsed (every
 * service but S3 normalizes), each segment decoded once and URI-encoded.
 */
export function canonicalUri(path: string): string {
  const out: string[] = [];
  for (const seg of path.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') { out.pop(); continue; }
    out.push(uriEncode(decode(seg)));
  }
  const trailing = path.length > 1 && path.endsWith('/') && out.length > 0;
  return '/' + out.join('/') + (trailing ? '/' : '');
}

/** Canonical query string: each name and value encoded, sorted by name then value. */
export function canonicalQuery(query: string): string {
  if (query === '') return '';
  const pairs = query.split('&').filter((p) => p !== '').map((p) => {
    const eq = p.indexOf('=');
    const k = eq < 0 ? p : p.slice(0, eq);
    const v = eq < 0 ? '' : p.slice(eq + 1);
    return [uriEncode(decode(k)), uriEncode(decode(v))] as const;
  });
  pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  return pairs.map(([k, v]) => `${k}=${v}`).join('&');
}

/** Whitespace other than a single space between words: what canonicalValue has to change. */
const NOT_CANONICAL = /[^\S ]| {2}|^ | $/;

/** Header value: outer whitespace trimmed, inner runs of spaces collapsed to one. */
function canonicalValue(v: string): string {
  // Most values (every one an SDK sends) are canonical already: test, don't rebuild.
  return NOT_CANONICAL.test(v) ? v.trim().replace(/\s+/g, ' ') : v;
}

function _add(m: Map<string, string>, name: string, value: string): void {
  const k = name.toLowerCase();
  const v = canonicalValue(value);
  const prev = m.get(k);
  m.set(k, prev === undefined ? v : `${prev},${v}`);
}

/** Lower-cased name -> canonical value; repeated headers joined with commas in arrival order. */
export function headerMap(headers: WireRequest['headers']): Map<string, string> {
  const m = new Map<string, string>();
  if ('raw' in headers) {
    const raw = headers.raw;
    for (let i = 0; i + 1 < raw.length; i += 2) _add(m, raw[i]!, raw[i + 1]!);
  } else {
    for (const [name, value] of headers) _add(m, name, value);
  }
  return m;
}

/**
 * The canonical request: method, URI, query, the signed headers with their
 * values, the signed-header list, and the payload hash. `signedHeaders` are
 * lower-case names in the order the Authorization header lists them.
 */
export function canonicalRequest(req: WireRequest, signedHeaders: readonly string[], payloadHash: string, headers = headerMap(req.headers)): string {
  const q = req.target.indexOf('?');
  const path = q < 0 ? req.target : req.target.slice(0, q);
  const query = q < 0 ? '' : req.target.slice(q + 1);
  let canonHeaders = '';
  for (const h of signedHeaders) canonHeaders += `${h}:${headers.get(h) ?? ''}\n`;
  return [req.method.toUpperCase(), canonicalUri(path), canonicalQuery(query), canonHeaders, signedHeaders.join(';'), payloadHash].join('\n');
}

/** `AWS4-HMAC-SHA256 \n <amzDate> \n <date>/<region>/<service>/aws4_request \n hex(sha256(canonical request))`. */
export function stringToSign(amzDate: string, scope: string, canonical: string): string {
  return `${ALGORITHM}\n${amzDate}\n${scope}\n${sha256Hex(canonical)}`;
}
