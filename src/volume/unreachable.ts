/**
 * Network errors: the KMS or STS endpoint did not answer (as opposed to refusing or lacking credentials).
 * Name resolution counts: a service-discovery name answers NXDOMAIN while its KMS is unhealthy
 * (getaddrinfo EAI_NONAME/EAI_NODATA, which Node reports as ENOTFOUND), or the resolver fails
 * (EAI_AGAIN, EAI_FAIL). A mistyped host name waits too, its error shown in `ebsd status`.
 * Other EAI_* codes (bad flags, family, service) are this process's own mistakes: waiting would not change them.
 */
const NETWORK_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN', 'ENETDOWN', 'EPIPE', 'ECONNABORTED',
  'ENOTFOUND', 'EAI_NONAME', 'EAI_NODATA', 'EAI_AGAIN', 'EAI_FAIL',
]);

/**
 * True when `e` (or what it wraps) says the endpoint could not be reached:
 * its name did not resolve, a socket error, or a timeout. Missing credentials and refusals are not:
 * waiting would not change them.
 */
export function isUnreachable(e: unknown): boolean {
  for (let x = e as { code?: unknown; name?: unknown; cause?: unknown } | undefined, depth = 0; x && depth < 8; x = x.cause as typeof x, depth++) {
    if (typeof x.code === 'string' && NETWORK_CODES.has(x.code)) return true;
    if (x.name === 'TimeoutError' || x.name === 'RequestTimeout') return true;
  }
  return false;
}
