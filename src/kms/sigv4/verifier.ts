/**
 * SigV4 verification of a request signed in the Authorization header
 * (AWS General Reference, "Signature Version 4 signing process"), with the
 * refusals AWS answers with. The signing key is derived where the secret
 * lives (the HSM) and cached here per credential, date, region and service:
 * it is only good for that day, region and service, and deriving it costs an
 * HSM round trip (README.md, "KMS over the network").
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { MAX_TIMER_MS, systemClock, type Clock, type TimerHandle } from '../../util/clock.js';
import { secretBuffer, wipe } from '../../util/wipe.js';
import { ALGORITHM, canonicalRequest, headerMap, sha256Hex, stringToSign, type WireRequest } from './canonical.js';
import { SigV4Error } from './errors.js';

/** AWS accepts a request whose date is within 15 minutes of its clock. */
export const MAX_SKEW_MS = 15 * 60_000;
const CACHE_MAX = 4096;

/** An access key known to the service, and what it stands for. */
export interface Credential<P> {
  principal: P;
  /** Names the secret behind this key: equal ids share a cached signing key (a session's id includes its token's digest). */
  cacheId: string;
  /** kSigning for the scope, derived from the secret (the HSM does it); a fresh buffer, which the verifier wipes. */
  signingKey(date: string, region: string, service: string): Promise<Uint8Array>;
}

/** Looks up an access key; throws SigV4Error UnrecognizedClient (unknown, inactive) or ExpiredToken. */
export type CredentialSource<P> = (accessKeyId: string, sessionToken: string | undefined, now: number) => Credential<P>;

export interface VerifierOptions<P> {
  region: string;
  /** Service names a credential scope may carry on this endpoint (`kms`, `sts`). */
  services: readonly string[];
  credentials: CredentialSource<P>;
  now?: () => number;
  /**
   * Arms the timer that wipes cached signing keys no request can use any more, on an idle
   * endpoint too (and gives `now` when that is absent): systemClock by default, whose timers
   * are unref'd.
   */
  clock?: Clock;
  /**
   * Whether `x-amz-content-sha256: UNSIGNED-PAYLOAD` is accepted for this request (the
   * literal then stands for the payload hash, SigV4 "Signature Calculations for the
   * Authorization Header"), and the headers that must then be signed: the EBS direct
   * APIs leave PutSnapshotBlock's block unsigned and bind it by the signed
   * x-amz-Checksum instead. Undefined (the default, and for KMS and STS): the payload
   * is hashed and a claimed UNSIGNED-PAYLOAD does not match it.
   */
  unsignedPayload?: (method: string, target: string) => { mustSign: readonly string[]; mustSignWhenPresent?: readonly string[] } | undefined;
  /**
   * Whether `accessKeyId` names a key the service holds, without deriving anything (a map lookup):
   * marks a refusal SigV4Error.keyHeld. A session key (stateless) is held only once its token has
   * authenticated in the HSM, which the verifier knows itself; so this answers for long-term keys.
   */
  holdsKey?: (accessKeyId: string) => boolean;
}

export interface Verified<P> {
  accessKeyId: string;
  principal: P;
  service: string;
  sessionToken?: string;
}

interface Parsed { accessKeyId: string; date: string; region: string; service: string; terminator: string; signedHeaders: string[]; signature: string }

/** Headers that decide what a request does or who makes it: signed whenever sent (the AWS SDKs and CLI sign them). */
const MUST_SIGN_WHEN_PRESENT = ['x-amz-target', 'content-type'] as const;

/** A cached signing key, and the last moment a request could use it (usableUntil of its scope date). */
interface CachedKey { key: Buffer; until: number }

const DAY_MS = 86_400_000;

/**
 * The last moment a key for the credential-scope date `date` (YYYYMMDD, checked by the caller) can
 * verify a request: the scope date is the request's X-Amz-Date day, and a request is accepted up to
 * MAX_SKEW_MS after it was signed, so up to the skew past the end of that day.
 */
function usableUntil(date: string): number {
  return Date.UTC(+date.slice(0, 4), +date.slice(4, 6) - 1, +date.slice(6, 8)) + DAY_MS + MAX_SKEW_MS;
}

export class SigV4Verifier<P> {
  private readonly keys = new Map<string, CachedKey>();
  /** The earliest `until` in the cache (Infinity when empty): past it, a sweep has keys to wipe. */
  private sweepAt = Infinity;
  /** The timer armed for sweepAt, so keys go on an idle endpoint too. */
  private timer: TimerHandle | undefined;
  private readonly clock: Clock;
  private readonly now: () => number;

  constructor(private readonly opts: VerifierOptions<P>) {
    const clock = opts.clock ?? systemClock;
    this.clock = clock;
    this.now = opts.now ?? (() => clock.now());
  }

  /** The credential scope's service for a request, or a refusal (SigV4Error, keyHeld set when it is). */
  verify(req: WireRequest): Promise<Verified<P>> {
    const derived = { done: false };
    return this.check(req, derived).catch((e: unknown) => {
      // The signing key derived: the key is held, and a session's token authenticated in the HSM.
      if (e instanceof SigV4Error && e.accessKeyId !== undefined && (derived.done || this.opts.holdsKey?.(e.accessKeyId) === true)) e.keyHeld = true;
      throw e;
    });
  }

  /** verify(), setting `derived.done` once the credential's signing key is in hand. */
  private async check(req: WireRequest, derived: { done: boolean }): Promise<Verified<P>> {
    const headers = headerMap(req.headers);
    const auth = headers.get('authorization');
    if (auth === undefined || auth === '') {
      const presigned = queryAuthentication(req.target);
      // Query-string authentication (a presigned URL) is SigV4 too, but this endpoint does not take it: a presigned
      // request may be replayed by whoever holds the URL for up to X-Amz-Expires (7 days), where a signed header's
      // is bounded by the 15 minutes of skew, and no ebsd client needs one (docs/architecture.md §5.2). Said so,
      // rather than "Missing Authentication Token" to a request that plainly carries a signature.
      if (presigned) {
        throw new SigV4Error('IncompleteSignature', 'Query-string authentication (a presigned URL: X-Amz-Signature, X-Amz-Credential in the query string) is not accepted by this endpoint; sign the request in the Authorization header.', presigned.accessKeyId);
      }
      throw new SigV4Error('MissingAuthenticationToken', 'Missing Authentication Token');
    }
    const p = parseAuthorization(auth);
    const amzDate = headers.get('x-amz-date') ?? httpDateToAmz(headers.get('date'));
    if (!amzDate) {
      throw new SigV4Error('IncompleteSignature', "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.", p.accessKeyId);
    }
    const signedAt = parseAmzDate(amzDate);
    if (signedAt === undefined) throw new SigV4Error('IncompleteSignature', `X-Amz-Date "${amzDate}" is not an ISO 8601 basic date (YYYYMMDD'T'HHMMSS'Z')`, p.accessKeyId);
    if (!p.signedHeaders.includes('host')) {
      throw new SigV4Error('IncompleteSignature', "'Host' must be a 'SignedHeader' in the AWS Authorization.", p.accessKeyId);
    }
    // The operation (X-Amz-Target) and the body's type must be covered by the signature: else a request
    // seen once could be replayed, within the skew, as another operation on the same body. (The session
    // token need not be: another token names another secret, so the signature would not match; AWS's
    // suite signs one without it, post-sts-header-after.)
    for (const h of MUST_SIGN_WHEN_PRESENT) {
      if (headers.has(h) && !p.signedHeaders.includes(h)) {
        throw new SigV4Error('IncompleteSignature', `'${h}' is present in the request and must be a 'SignedHeader' in the AWS Authorization.`, p.accessKeyId);
      }
    }
    for (const h of p.signedHeaders) {
      if (!headers.has(h)) throw new SigV4Error('InvalidSignature', `The signed header '${h}' is not in the request.`, p.accessKeyId);
    }
    if (p.terminator !== 'aws4_request') throw new SigV4Error('IncompleteSignature', `Credential should be scoped with a valid terminator: 'aws4_request', not '${p.terminator}'.`, p.accessKeyId);
    if (p.date !== amzDate.slice(0, 8)) {
      throw new SigV4Error('InvalidSignature', `Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '${p.date}' != '${amzDate.slice(0, 8)}', from '${amzDate}'.`, p.accessKeyId);
    }
    if (p.region !== this.opts.region) throw new SigV4Error('InvalidSignature', `Credential should be scoped to a valid region, not '${p.region}'.`, p.accessKeyId);
    if (!this.opts.services.includes(p.service)) {
      throw new SigV4Error('InvalidSignature', `Credential should be scoped to correct service: '${this.opts.services.join("' or '")}', not '${p.service}'.`, p.accessKeyId);
    }
    const now = this.now();
    if (Math.abs(now - signedAt) > MAX_SKEW_MS) {
      const early = signedAt < now;
      throw new SigV4Error('InvalidSignature', early
        ? `Signature expired: ${amzDate} is now earlier than ${toAmzDate(now - MAX_SKEW_MS)} (${toAmzDate(now)} - 15 min.)`
        : `Signature not yet current: ${amzDate} is still later than ${toAmzDate(now + MAX_SKEW_MS)} (${toAmzDate(now)} + 15 min.)`, p.accessKeyId);
    }
    const token = headers.get('x-amz-security-token');
    const cred = this.opts.credentials(p.accessKeyId, token, now);

    const claimed = headers.get('x-amz-content-sha256');
    const unsigned = claimed === 'UNSIGNED-PAYLOAD' ? this.opts.unsignedPayload?.(req.method, req.target) : undefined;
    if (unsigned) {
      // The body is not signed: what binds it must be.
      const missing = [...unsigned.mustSign, ...(unsigned.mustSignWhenPresent ?? []).filter((h) => headers.has(h))].find((h) => !p.signedHeaders.includes(h));
      if (missing !== undefined) {
        throw new SigV4Error('IncompleteSignature', `'${missing}' must be a 'SignedHeader' in the AWS Authorization when x-amz-content-sha256 is UNSIGNED-PAYLOAD.`, p.accessKeyId);
      }
    }
    const payloadHash = unsigned ? 'UNSIGNED-PAYLOAD' : sha256Hex(req.body);
    if (claimed !== undefined && claimed !== payloadHash) {
      throw new SigV4Error('InvalidSignature', "The provided 'x-amz-content-sha256' header does not match what was computed.", p.accessKeyId);
    }
    const canonical = canonicalRequest(req, p.signedHeaders, payloadHash, headers);
    const sts = stringToSign(amzDate, `${p.date}/${p.region}/${p.service}/aws4_request`, canonical);
    const expected = await this.expectedSignature(cred, p.date, p.region, p.service, now, sts);
    derived.done = true;
    const given = Buffer.from(p.signature, 'hex');
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      throw new SigV4Error('InvalidSignature', 'The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.', p.accessKeyId);
    }
    return { accessKeyId: p.accessKeyId, principal: cred.principal, service: p.service, ...(token !== undefined ? { sessionToken: token } : {}) };
  }

  /** Drop every cached signing key (an access key was deleted or deactivated, or the listener closes). */
  forget(): void {
    for (const c of this.keys.values()) wipe(c.key);
    this.keys.clear();
    this.sweepAt = Infinity;
    this.disarm();
  }

  /** Wipe and drop every key no request can use any more at `now`, then arm the timer for the next. */
  private sweep(now: number): void {
    let next = Infinity;
    for (const [id, c] of this.keys) {
      if (c.until < now) { wipe(c.key); this.keys.delete(id); } else if (c.until < next) next = c.until;
    }
    this.sweepAt = next;
    this.arm(now);
  }

  /** A timer for the first moment past sweepAt; none when the cache is empty. */
  private arm(now: number): void {
    this.disarm();
    if (this.sweepAt === Infinity) return;
    const delay = Math.min(MAX_TIMER_MS, Math.max(0, this.sweepAt + 1 - now));
    this.timer = this.clock.setTimeout(() => { this.timer = undefined; this.sweep(this.now()); }, delay);
  }

  private disarm(): void {
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }

  /**
   * The signature the request should carry: HMAC-SHA256 of the string to sign under the signing
   * key (kSigning), which is cached and wiped by forget() and once no request can use it (its scope
   * day and the skew past it are over): by the next request, or by a timer on an idle endpoint.
   *
   * Precondition: the HMAC is computed in the same turn as the key is taken from the cache (or put
   * there), with no await in between. A key handed back to the caller would be used a microtask
   * later, by when a forget() or a flush at CACHE_MAX (another request's) may have wiped it: the
   * expected signature would then be the one under an all-zero key, which anyone can compute.
   */
  private async expectedSignature(cred: Credential<P>, date: string, region: string, service: string, now: number, stringToSign: string): Promise<Buffer> {
    if (this.keys.size >= CACHE_MAX) this.forget();
    // A number compare per request; the timer does the same on an idle endpoint. The bound is the
    // entry's own field: a cache id may hold anything (a session's holds its token).
    if (now > this.sweepAt) this.sweep(now);
    const id = `${cred.cacheId}\0${date}\0${region}\0${service}`;
    let k = this.keys.get(id)?.key;
    if (!k) {
      const raw = await cred.signingKey(date, region, service);
      try {
        // A copy of its own, outside node's buffer pool, for as long as it is cached.
        k = secretBuffer(raw.length); // off V8's heap too (wipe.ts): a 32-byte key would be on it
        k.set(raw);
      } finally {
        wipe(raw); // best effort, as every wipe in JS
      }
      // Requests that arrived together derived it together: keep the first, wipe the others.
      const first = this.keys.get(id)?.key;
      if (first) { wipe(k); k = first; } else {
        const until = usableUntil(date);
        this.keys.set(id, { key: k, until });
        // The timer may have swept this day while the key was derived: armed again, it wipes it next turn.
        if (until < this.sweepAt || this.timer === undefined) { this.sweepAt = Math.min(this.sweepAt, until); this.arm(this.now()); }
      }
    }
    // node's HMAC: a hand-written one from cached pads saved under 1 µs of a verification's ~16
    // (docs/benchmarks.md, "KMS over the network"), not worth its code.
    return createHmac('sha256', k).update(stringToSign, 'utf8').digest();
  }
}

/**
 * The form every AWS SDK and the CLI send, and nothing the general parser below would read
 * differently: one space after the algorithm, the three fields in this order, non-empty credential
 * parts, lower-case signed header names, a 64-digit lower-case hex signature.
 */
const SDK_FORM = /^AWS4-HMAC-SHA256 Credential=([^/,\s=]+)\/([^/,\s]+)\/([^/,\s]+)\/([^/,\s]+)\/([^/,\s]+), ?SignedHeaders=([a-z0-9-]+(?:;[a-z0-9-]+)*), ?Signature=([0-9a-f]{64})$/;

/** `AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/kms/aws4_request, SignedHeaders=a;b, Signature=hex`. */
export function parseAuthorization(auth: string): Parsed {
  // One regular expression instead of a Map and four splits: a tenth of a verification's CPU went here.
  const f = SDK_FORM.exec(auth);
  if (f) return { accessKeyId: f[1]!, date: f[2]!, region: f[3]!, service: f[4]!, terminator: f[5]!, signedHeaders: f[6]!.split(';'), signature: f[7]! };
  const sp = auth.indexOf(' ');
  const alg = sp < 0 ? auth : auth.slice(0, sp);
  if (alg !== ALGORITHM) throw new SigV4Error('IncompleteSignature', `Unsupported AWS 'algorithm': '${alg}'; only ${ALGORITHM} is accepted.`);
  const fields = new Map<string, string>();
  for (const part of auth.slice(sp + 1).split(',')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    fields.set(part.slice(0, eq).trim(), part.slice(eq + 1).trim());
  }
  const missing = ['Credential', 'SignedHeaders', 'Signature'].filter((f) => !fields.get(f));
  if (missing.length) {
    throw new SigV4Error('IncompleteSignature', `Authorization header requires ${missing.map((m) => `'${m}'`).join(', ')} parameter${missing.length > 1 ? 's' : ''}. Authorization=${ALGORITHM} ...`);
  }
  const cred = fields.get('Credential')!.split('/');
  if (cred.length !== 5 || cred.some((c) => c === '')) {
    throw new SigV4Error('IncompleteSignature', "Authorization header's Credential must be <access key id>/<YYYYMMDD>/<region>/<service>/aws4_request.");
  }
  const [accessKeyId, date, region, service, terminator] = cred as [string, string, string, string, string];
  const signature = fields.get('Signature')!;
  if (!/^[0-9a-f]{64}$/.test(signature)) throw new SigV4Error('IncompleteSignature', 'Signature must be 64 lower-case hex digits.', accessKeyId);
  const signedHeaders = fields.get('SignedHeaders')!.split(';');
  if (signedHeaders.some((h) => h === '' || h !== h.toLowerCase())) {
    throw new SigV4Error('IncompleteSignature', 'SignedHeaders must be lower-case header names separated by semicolons.', accessKeyId);
  }
  return { accessKeyId, date, region, service, terminator, signedHeaders, signature };
}

/**
 * Whether the request-target carries SigV4 query-string authentication (AWS General Reference, "Authentication
 * methods": X-Amz-Algorithm, X-Amz-Credential, X-Amz-Signature, … in the query), and the access key id it names.
 * Read only for a request without an Authorization header.
 */
function queryAuthentication(target: string): { accessKeyId?: string } | undefined {
  const q = target.indexOf('?');
  if (q < 0) return undefined;
  const params = new URLSearchParams(target.slice(q + 1));
  if (!params.has('X-Amz-Signature') && !params.has('X-Amz-Algorithm') && !params.has('X-Amz-Credential')) return undefined;
  const id = (params.get('X-Amz-Credential') ?? '').split('/')[0]!.slice(0, 128);
  return id === '' ? {} : { accessKeyId: id };
}

/**
 * The last date parsed: every request signed within the same second carries the
 * same X-Amz-Date, and the round trip through toISOString below was a fifth of
 * a verification's CPU.
 */
let _lastAmzDate = '';
let _lastAmzMs: number | undefined;

/** `20150830T123600Z` -> epoch ms, or undefined if malformed. */
export function parseAmzDate(s: string): number | undefined {
  if (s === _lastAmzDate) return _lastAmzMs;
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(s);
  if (!m) return undefined;
  const t = Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!);
  const ok = toAmzDate(t) === s ? t : undefined;
  _lastAmzDate = s;
  _lastAmzMs = ok;
  return ok;
}

export function toAmzDate(ms: number): string {
  return new Date(ms).toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
}

function httpDateToAmz(d: string | undefined): string | undefined {
  if (!d) return undefined;
  const t = Date.parse(d);
  return Number.isNaN(t) ? undefined : toAmzDate(t);
}
