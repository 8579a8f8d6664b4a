/**
 * The KMS as a network service (README.md, "KMS over the network"): one HTTP(S) listener
 * serving the KMS API (AWS JSON 1.1, `X-Amz-Target: TrentService.*`) and the
 * STS operations GetCallerIdentity and AssumeRole (Query protocol, XML).
 * Every request is authenticated with SigV4 before anything else looks at it;
 * a refusal is audited with the access key id and the source address and
 * never reaches a KMS operation. The authenticated principal then enters the
 * same authorizer as a Unix-socket caller's.
 *
 * What one client may consume is bounded by the daemon's shared connection
 * guard (connection-guard.ts), keyed by source address: connections per
 * address and overall, header and body bytes, bodies buffered at once, and
 * time. Loopback is not exempt: on `--kms-listen 127.0.0.1` every local user
 * arrives from loopback, so exempting it would lift the caps for all of them;
 * the operator's way in under a flood is the control socket, where root is exempt.
 * Refused connections are counted per (address, reason) and audited in aggregate.
 */
import { randomUUID } from 'node:crypto';
import { isLoopback } from '../util/loopback.js';
import { EbsdError } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { Caller } from '../kms/types.js';
import { callerParty } from '../kms/caller-party.js';
import { buildEvent, MAX_USER_AGENT, truncateField } from '../kms/audit/event.js';
import { SigV4Error } from '../kms/sigv4/errors.js';
import { SigV4Verifier } from '../kms/sigv4/verifier.js';
import { parseStrictJson } from '../util/strict-json.js';
import { MAX_BODY_VALUES } from './control-server.js';
import { StsError, type StsService } from '../kms/sts/sts-service.js';
import type { AssumeRoleParams } from '../kms/sts/assume-role-context.js';
import { decodeKmsRequest, encodeResponse, toWireError, wipeRequestSecrets } from './aws-json.js';
import { refusedKmsRequestEvent, refusedKmsRequestReason, throttledEvent } from './audit-events.js';
import { ebsRestRequest, ebsUnsignedPayload, sendEbsRest, sendEbsRestError } from './ebs-rest.js';
import { throttled, validation } from '../snapshot/ebs-direct-errors.js';
import { SNAPSHOT_BLOCK_BYTES } from '../snapshot/types.js';
import { ConnectionThrottledError, type RefusalReason, type RefusalSummary } from './connection-guard.js';
import type { RefusalParty } from '../kms/audit/refusal-aggregator.js';
import { loopbackLookupProblem } from './loopback-peers.js';
import {
  DEFAULT_LIMITS, HttpTransport, rawHeader, type ListenerLimits, type WireBodyError, type WireConnection, type WireRequest, type WireResponse,
} from './kms-transport.js';
import { FrontWorker } from './kms-front.js';

export { DEFAULT_LIMITS, type ListenerLimits, type WireRequest, type WireResponse } from './kms-transport.js';

export interface KmsListenerOptions {
  host: string;
  port: number;
  tls?: { cert: Buffer; key: Buffer };
  region: string;
  accountId: string;
  sts: StsService;
  /** The KMS core's entry point; the request id becomes the audit event's. */
  kms: (operation: string, request: Record<string, unknown>, caller: Caller, requestId: string) => Promise<unknown>;
  /** Append one CloudTrail-shaped record to the audit log. */
  audit: (event: Record<string, unknown>) => Promise<void>;
  /** The EBS direct APIs (REST, SigV4 service `ebs`, paths under /snapshots), when this daemon serves them. */
  ebs?: (op: string, members: Record<string, unknown>, caller: Caller, requestId: string) => Promise<Record<string, unknown>>;
  /**
   * Append the record of an unauthenticated request, aggregated per `key`
   * (AuditLog.appendRefusal), so a client looping bad signatures costs
   * bounded audit bytes. Without it, each refusal goes to `audit`.
   */
  auditRefusal?: (key: string, event: () => Record<string, unknown>, party?: RefusalParty) => Promise<void>;
  log: Logger;
  limits?: Partial<ListenerLimits>;
  /** Clock for SigV4 and session expiry (tests inject one). */
  now?: () => number;
  /**
   * Where TLS and HTTP run: 0 (default) on this thread; 1 in a front-end
   * worker thread (kms-front-worker.ts) that hands complete requests here.
   */
  frontThreads?: 0 | 1;
  /** The front-end worker died: the listener is down (the daemon exits non-zero). */
  onFatal?: (e: Error) => void;
  /**
   * A request's turn while the volume data path is busy (data-path-first.ts), by the connection's source
   * (as its admission counted it); undefined back: go now. Awaited before SigV4, so a held request costs
   * no verification yet; a request the transport already refused (its body not read) is answered at once.
   */
  admit?: (source: string) => Promise<void> | undefined;
}

const STS_NS = 'https://sts.amazonaws.com/doc/2011-06-15/';

/** How many of the sources holding the most connections `usage` lists. */
const BUSIEST_SOURCES = 5;

/** `KmsListener.usage`, as `ebsd status` shows it (Daemon.KmsListener). */
export interface KmsListenerUsage {
  Connections: number;
  MaxConnections: number;
  /** Sources holding connections: an address, an IPv6 /64, or on loopback a local user (`uid:N`). */
  Sources: number;
  MaxConnectionsPerSource: number;
  BusiestSources: { Source: string; Connections: number }[];
  BufferedBodyBytes: number;
  /** Refusals of the current window, audited once it ends (`KmsConnection` events). */
  RefusalsPending: number;
  /** Connections and requests refused since start, per reason (`gave-slot`: closed to make room for another source). */
  RefusedSinceStart: Partial<Record<RefusalReason, number>>;
}

/** The only addresses plain HTTP may listen on (src/util/loopback.ts); the KMS client uses the same rule. */
export { isLoopback } from '../util/loopback.js';

class BodyTooLarge extends EbsdError {
  constructor(limit: number) {
    super('BODY_TOO_LARGE', `request body over ${limit} bytes`, { awsName: 'RequestEntityTooLargeException' });
  }
}

export class KmsListener {
  private transport: HttpTransport | FrontWorker | undefined;
  private readonly limits: ListenerLimits;
  private readonly kmsVerifier: SigV4Verifier<Caller>;
  private readonly stsVerifier: SigV4Verifier<Caller>;
  private readonly ebsVerifier: SigV4Verifier<Caller>;
  private readonly now: () => number;

  constructor(private readonly o: KmsListenerOptions) {
    this.limits = { ...DEFAULT_LIMITS, ...o.limits };
    this.now = o.now ?? Date.now;
    const v = (service: string) => new SigV4Verifier<Caller>({ region: o.region, services: [service], credentials: o.sts.credentials, holdsKey: o.sts.holdsAccessKey, now: this.now });
    this.kmsVerifier = v('kms');
    this.stsVerifier = v('sts');
    this.ebsVerifier = new SigV4Verifier<Caller>({ region: o.region, services: ['ebs'], credentials: o.sts.credentials, holdsKey: o.sts.holdsAccessKey, now: this.now, unsignedPayload: ebsUnsignedPayload });
  }

  /** Wipe the cached signing keys: an access key was deactivated or deleted (its status is checked on every request anyway). */
  forgetSigningKeys(): void {
    this.kmsVerifier.forget();
    this.stsVerifier.forget();
    this.ebsVerifier.forget();
  }

  /** Start listening; resolves with the bound address (port 0 picks a free one). */
  async listen(): Promise<{ host: string; port: number; protocol: 'http' | 'https' }> {
    const { o } = this;
    if (!o.tls && !isLoopback(o.host)) {
      throw new EbsdError('KMS_LISTEN_PLAINTEXT', `--kms-listen ${o.host}: plain HTTP is allowed only on a loopback address; give --tls-cert and --tls-key`);
    }
    const common = { host: o.host, port: o.port, limits: this.limits, onRefusals: (rows: RefusalSummary[]) => this.auditThrottled(rows), ...(o.tls ? { tls: o.tls } : {}) };
    void loopbackLookupProblem().then((problem) => {
      if (problem) o.log.warn({ problem }, 'KMS listener: loopback clients are counted per address, not per local user, so one local user can hold the connections remote hosts need');
    });
    if (o.frontThreads === 1) {
      const fatal = o.onFatal ?? ((e: Error) => { throw e; });
      const front = await FrontWorker.start({ ...common, handle: (r) => this.handleWire(r), log: o.log, onFatal: fatal });
      this.transport = front;
      return front.address;
    }
    const t = new HttpTransport({ ...common, onRequest: (r) => void this.handleWire(r).then((w) => { r.body.fill(0); r.respond(w); }) });
    const a = await t.listen();
    this.transport = t;
    return a;
  }

  /**
   * Its connections now, for `ebsd status` and the metrics: how many, from how many sources, the
   * sources holding the most, the limits, and the connections and requests refused since start per
   * reason (README, "KMS over the network"). Undefined when not listening, or when the front-end
   * worker did not answer in time.
   */
  async usage(): Promise<KmsListenerUsage | undefined> {
    const t = this.transport;
    if (!t) return undefined;
    const u = t instanceof FrontWorker ? await t.usage(BUSIEST_SOURCES) : t.guard.detailedUsage(BUSIEST_SOURCES);
    if (!u) return undefined;
    return {
      Connections: u.connections, MaxConnections: this.limits.maxTotal, Sources: u.callers, MaxConnectionsPerSource: this.limits.maxPerCaller,
      BusiestSources: u.busiest.map((b) => ({ Source: b.caller, Connections: b.connections })),
      BufferedBodyBytes: u.bufferedBodyBytes, RefusalsPending: u.refusalsPending, RefusedSinceStart: u.refused,
    };
  }

  async close(): Promise<void> {
    const t = this.transport;
    this.transport = undefined;
    await t?.close();
    this.forgetSigningKeys(); // no request can come any more: the cached keys and their timers go
  }

  /** Connections refused by the limits, already summed per (address, reason) by the guard. */
  private auditThrottled(rows: RefusalSummary[]): void {
    this.o.log.warn({ refusals: rows }, 'KMS network connections refused (connection limits)');
    for (const r of rows) {
      const build = (): Record<string, unknown> => {
        const e = throttledEvent(r, { accountId: this.o.accountId, region: this.o.region });
        e.eventName = 'KmsConnection';
        e.sourceIPAddress = r.sourceAddress ?? r.caller; // a row of an IPv6 /64: its first address (the /64 is additionalEventData.caller)
        return e;
      };
      // As a refusal (nobody's budget: the caller never authenticated), so that short of disk these are
      // dropped and counted before any audited call's event, as the control socket's are.
      const written = this.o.auditRefusal ? this.o.auditRefusal(`kms-listener-throttle\0${r.caller}\0${r.reason}`, build) : this.o.audit(build());
      void written.catch((x: unknown) => this.o.log.error({ err: x }, 'could not audit refused KMS connections'));
    }
  }

  /**
   * One request, transport-free: SigV4, then the KMS, STS or EBS direct API
   * operation, and the answer as status, headers and body. Never rejects:
   * every failure becomes the protocol's error answer.
   */
  async handleWire(req: WireRequest): Promise<WireResponse> {
    const requestId = randomUUID();
    const raw = req.rawHeaders;
    // From rawHeaders, as node builds req.headers (which it does lazily, header by header, on first use).
    const target = rawHeader(raw, 'x-amz-target', ', ');
    const query = typeof target !== 'string';
    const sourceIp = req.conn.sourceIp;
    const ua = rawHeader(raw, 'user-agent');
    let operation = typeof target === 'string' ? target.slice(target.indexOf('.') + 1) : 'Unknown';
    const wait = req.bodyError ? undefined : this.o.admit?.(req.conn.source ?? sourceIp);
    if (wait) await wait;
    try {
      const { body, url } = req;
      // Before the body's refusal: an EBS direct API request is answered in its own protocol (REST-JSON), which its
      // clients can parse, never STS's XML.
      if (query && this.o.ebs && url.startsWith('/snapshots')) return await this.serveEbs(req, requestId);
      if (req.bodyError) throw bodyError(req.bodyError);
      const queryString = url.slice(url.indexOf('?') + 1 || url.length);
      const form = query ? new URLSearchParams(req.method === 'GET' ? queryString : body.toString('utf8')) : undefined;
      if (form) operation = form.get('Action') ?? 'Unknown';
      // An STS request's members are read from one place, a GET's query string or a POST's body: members
      // in the other are signed but would go unread, a session Policy among them (the session broader than
      // asked), so such a request is refused (after authentication, in sts()) rather than half read.
      const unread = query && (req.method === 'GET' ? body.length > 0 : new URLSearchParams(queryString).size > 0)
        ? new StsError('ValidationError', req.method === 'GET'
          ? 'A GET request to this STS carries its parameters in the query string only; this one also has a body, which would not be read: the request was refused'
          : 'A POST request to this STS carries its parameters in the body only; this one also has parameters in the URL query string, which would not be read: the request was refused')
        : undefined;
      let verified;
      try {
        verified = await (query ? this.stsVerifier : this.kmsVerifier).verify({ method: req.method, target: url, headers: { raw }, body });
      } catch (e) {
        if (e instanceof SigV4Error) await this.auditRefusal(e, query ? 'sts.amazonaws.com' : 'kms.amazonaws.com', operation, requestId, req.conn, ua);
        throw e;
      }
      const caller: Caller = { ...verified.principal, sourceIp, secureTransport: req.conn.tls !== undefined, accessKeyId: verified.accessKeyId, ...(typeof ua === 'string' ? { userAgent: ua } : {}) };
      if (!query) {
        let request: Record<string, unknown>;
        try {
          if (!target.startsWith('TrentService.')) throw new EbsdError('UNKNOWN_TARGET', `unknown target "${target}"`, { awsName: 'UnknownOperationException' });
          request = decodeKmsRequest(parseJson(body));
        } catch (e) {
          // Refused after authentication, before the core (which audits every call it sees): audited here.
          await this.auditUndecodable(e, operation, caller, requestId, req.conn);
          throw e;
        }
        try {
          const out = await this.o.kms(operation, request, caller, requestId);
          return json(200, encodeResponse(out ?? {}), requestId);
        } finally {
          wipeRequestSecrets(request); // decoded here: ours to wipe, as on the control socket (aws-json.ts)
        }
      }
      const xml = await this.sts(form!, caller, requestId, req.conn, unread);
      return xmlAnswer(200, xml, requestId);
    } catch (e) {
      const internal = query ? stsError(e).status >= 500 : toWireError(e).status >= 500;
      if (internal) this.o.log.error({ err: e, operation, requestId }, 'KMS network request failed');
      if (query) {
        const { status, code, message } = stsError(e);
        return xmlAnswer(status, `<ErrorResponse xmlns="${STS_NS}"><Error><Type>${status >= 500 ? 'Receiver' : 'Sender'}</Type><Code>${esc(code)}</Code><Message>${esc(message)}</Message></Error><RequestId>${requestId}</RequestId></ErrorResponse>`, requestId);
      }
      const w = e instanceof BodyTooLarge ? { status: 413, body: { __type: e.awsName!, message: e.message } } : toWireError(e);
      return json(w.status, w.body, requestId);
    } finally {
      this.o.log.debug({ operation, requestId, sourceIp }, 'KMS network request');
    }
  }

  /** An EBS direct API request (ebs-rest.ts): SigV4 first, then the same checks, authorization and audit as on the socket. */
  private async serveEbs(req: WireRequest, requestId: string): Promise<WireResponse> {
    const ua = rawHeader(req.rawHeaders, 'user-agent');
    const out = new Answer();
    try {
      if (req.bodyError) throw ebsBodyError(bodyError(req.bodyError));
      let verified;
      try {
        verified = await this.ebsVerifier.verify({ method: req.method, target: req.url, headers: { raw: req.rawHeaders }, body: req.body });
      } catch (e) {
        if (e instanceof SigV4Error) await this.auditRefusal(e, 'ebs.amazonaws.com', 'Unknown', requestId, req.conn, ua);
        throw e;
      }
      const caller: Caller = { ...verified.principal, sourceIp: req.conn.sourceIp, secureTransport: req.conn.tls !== undefined, accessKeyId: verified.accessKeyId, ...(typeof ua === 'string' ? { userAgent: ua } : {}) };
      const r = ebsRestRequest(headersOf(req), req.body);
      if (!r) throw new EbsdError('UNKNOWN_OPERATION', `no EBS direct API operation is ${req.method} ${req.url.split('?')[0]!.slice(0, 128)}`, { awsName: 'UnknownOperationException' });
      sendEbsRest(out, r.op, await this.o.ebs!(r.op, r.members, caller, requestId), requestId);
    } catch (e) {
      if (toWireError(e).status >= 500) this.o.log.error({ err: e, requestId }, 'EBS direct API network request failed');
      sendEbsRestError(out, e, requestId);
    }
    return out.w;
  }

  /** `unread`: the request also carries members where they are not read (handleWire): refused, an AssumeRole audited as refused. */
  private async sts(form: URLSearchParams, caller: Caller, requestId: string, conn: WireConnection, unread?: StsError): Promise<string> {
    const action = form.get('Action');
    if (unread && action !== 'AssumeRole') throw unread;
    const meta = `<ResponseMetadata><RequestId>${requestId}</RequestId></ResponseMetadata>`;
    if (action === 'GetCallerIdentity') {
      const r = this.o.sts.getCallerIdentity(caller);
      return `<GetCallerIdentityResponse xmlns="${STS_NS}"><GetCallerIdentityResult><Arn>${esc(r.Arn)}</Arn><UserId>${esc(r.UserId)}</UserId><Account>${r.Account}</Account></GetCallerIdentityResult>${meta}</GetCallerIdentityResponse>`;
    }
    if (action === 'AssumeRole') {
      // Every member but Action and Version goes to the service, which refuses the ones it does not implement.
      const p: AssumeRoleParams = Object.create(null) as AssumeRoleParams;
      for (const [k, v] of form) if (k !== 'Action' && k !== 'Version' && !(k in p)) p[k] = v;
      let r: Record<string, unknown> | undefined;
      let err: unknown;
      try {
        if (unread) throw unread;
        r = await this.o.sts.assumeRole(caller, p, this.now());
      } catch (e) {
        err = e;
      }
      try {
        // CloudTrail records a session policy among the request parameters (it is not secret); bounded below.
        // durationSeconds as CloudTrail records it, a number (as sent when it is not digits: refused anyway).
        const duration = p.DurationSeconds === undefined ? undefined : /^\d{1,9}$/.test(p.DurationSeconds) ? Number(p.DurationSeconds) : p.DurationSeconds;
        await this.auditSts('AssumeRole', caller, requestId, { roleArn: p.RoleArn, roleSessionName: p.RoleSessionName, durationSeconds: duration, policy: p.Policy }, err, conn, r && assumeRoleResponseElements(r));
      } catch (x) {
        // A call that cannot be audited does not take effect (docs/architecture.md §5.8): the credentials are not handed out.
        this.o.log.error({ err: x, requestId }, 'could not audit an STS call');
        throw new EbsdError('STS_NOT_AUDITED', `sts:AssumeRole could not be recorded in the audit log: ${(x as Error)?.message ?? String(x)}`, { cause: x });
      }
      if (err) throw err;
      const c = r!.Credentials as Record<string, string>;
      const u = r!.AssumedRoleUser as Record<string, string>;
      // The secret and the token travel only in this answer; the audit record above has neither.
      return `<AssumeRoleResponse xmlns="${STS_NS}"><AssumeRoleResult><Credentials><AccessKeyId>${c.AccessKeyId}</AccessKeyId><SecretAccessKey>${esc(c.SecretAccessKey!)}</SecretAccessKey><SessionToken>${esc(c.SessionToken!)}</SessionToken><Expiration>${c.Expiration}</Expiration></Credentials><AssumedRoleUser><AssumedRoleId>${esc(u.AssumedRoleId!)}</AssumedRoleId><Arn>${esc(u.Arn!)}</Arn></AssumedRoleUser>${typeof r!.PackedPolicySize === 'number' ? `<PackedPolicySize>${r!.PackedPolicySize}</PackedPolicySize>` : ''}</AssumeRoleResult>${meta}</AssumeRoleResponse>`;
    }
    throw new StsError('InvalidAction', `Could not find operation ${action ?? '(none)'} for version ${form.get('Version') ?? '(none)'}`);
  }

  /**
   * An STS call's event. An accepted call (or one that failed inside, a 5xx) is written in full; a
   * refused one (4xx: had no effect) is aggregated as the core aggregates a denied KMS call
   * (dispatcher.ts), in the budget of the caller's party (caller-party.ts; docs/architecture.md
   * §5.7), so a caller looping a refused AssumeRole, each with a session policy of up to 2048
   * characters, costs bounded audit bytes.
   */
  private async auditSts(eventName: string, caller: Caller, requestId: string, params: Record<string, unknown>, err: unknown, conn: WireConnection, response?: Record<string, unknown>): Promise<void> {
    const build = (): Record<string, unknown> => {
      const e = buildEvent({
        eventName, caller, accountId: this.o.accountId, region: this.o.region, requestId, eventId: randomUUID(), resources: [], readOnly: false, time: this.now(),
        // The code the client was answered with (stsError: Throttling, not KMS's ThrottlingException).
        ...(err ? { errorCode: stsError(err).code, errorMessage: (err as Error).message } : {}),
      });
      e.eventSource = 'sts.amazonaws.com';
      // Set after buildEvent, so bounded here: each value cut as CloudTrail cuts a long field (a refused
      // request's RoleArn may be most of a 1 MiB body); the longest valid one (RoleArn, 2048 characters) stays whole.
      const max = 2048;
      e.requestParameters = Object.fromEntries(Object.entries(params).flatMap(([k, v]) => (v === undefined ? [] : [[k, typeof v === 'string' ? truncateField(v, max) : v]])));
      if (response && !err) e.responseElements = response;
      return e;
    };
    const refused = err !== undefined && stsError(err).status < 500;
    if (!refused || !this.o.auditRefusal) return this.o.audit(build());
    // Per (address, access key, operation, error and its message), as the listener's other refusals; the
    // caller passed SigV4 here, so its party's budget (an unauthenticated caller never reaches STS).
    const { code, message } = stsError(err);
    const key = `kms-listener\0${conn.sourceIp}\0${caller.accessKeyId ?? '-'}\0sts.amazonaws.com\0${truncateField(eventName, 128)}\0${code}\0${truncateField(message, 256)}`;
    return this.o.auditRefusal(key, build, { kind: 'principal', id: callerParty(caller) });
  }

  /**
   * An authenticated KMS request refused before the core saw it (refusedKmsRequestEvent): the
   * caller as the core would record it, aggregated per (address, access key, operation, error and
   * its message) as the listener's other refusals are.
   */
  private async auditUndecodable(err: unknown, operation: string, caller: Caller, requestId: string, conn: WireConnection): Promise<void> {
    const build = (): Record<string, unknown> => {
      const e = refusedKmsRequestEvent(operation, caller, err, { accountId: this.o.accountId, region: this.o.region, requestId });
      if (conn.tls) e.tlsDetails = { ...conn.tls };
      return e;
    };
    const key = `kms-listener\0${conn.sourceIp}\0${caller.accessKeyId ?? '-'}\0kms.amazonaws.com\0${truncateField(operation, 128)}\0${refusedKmsRequestReason(err)}`;
    const written = this.o.auditRefusal ? this.o.auditRefusal(key, build, { kind: 'principal', id: callerParty(caller) }) : this.o.audit(build());
    await written.catch((x: unknown) => this.o.log.error({ err: x, requestId }, 'could not audit a refused request'));
  }

  /** A request refused before authorization: who it claimed to be and where it came from, never its signature. */
  private async auditRefusal(err: SigV4Error, source: string, eventName: string, requestId: string, conn: WireConnection, ua: string | undefined): Promise<void> {
    const sourceIp = conn.sourceIp;
    // The operation name comes from the wire: bounded in the record and in the aggregation key.
    const name = truncateField(eventName, 128);
    const build = (): Record<string, unknown> => {
      const e = buildEvent({
        eventName: name, accountId: this.o.accountId, region: this.o.region, requestId, eventId: randomUUID(), resources: [], readOnly: false,
        time: this.now(), errorCode: err.awsName!, errorMessage: err.message,
      });
      e.eventSource = source;
      e.userIdentity = { type: 'Unknown', ...(err.accessKeyId ? { accessKeyId: err.accessKeyId } : {}) };
      e.sourceIPAddress = sourceIp;
      e.userAgent = typeof ua === 'string' ? truncateField(ua, MAX_USER_AGENT) : '';
      if (conn.tls) e.tlsDetails = { ...conn.tls };
      return e;
    };
    this.o.log.debug({ refusal: err.awsName, accessKeyId: err.accessKeyId, sourceIp, eventName: name, requestId }, 'KMS network request refused');
    // Per (address, access key, operation, reason): the message says why (signature, clock skew, region, ...).
    const key = `kms-listener\0${sourceIp}\0${err.accessKeyId ?? '-'}\0${source}\0${name}\0${truncateField(err.message, 256)}`;
    // Unauthenticated (a budget shared by all, refusal-aggregator.ts) unless the access key id names a key the
    // daemon holds (SigV4Error.keyHeld): then the key's own budget, so made-up ids cannot fold its refusals away.
    const party: RefusalParty | undefined = err.keyHeld && err.accessKeyId !== undefined ? { kind: 'access-key', id: err.accessKeyId } : undefined;
    const written = this.o.auditRefusal ? this.o.auditRefusal(key, build, party) : this.o.audit(build());
    await written.catch((x: unknown) => this.o.log.error({ err: x, requestId }, 'could not audit a refused request'));
  }
}

function parseJson(body: Buffer): Record<string, unknown> {
  const text = body.toString('utf8');
  if (text.trim() === '') return {};
  // As on the control socket: duplicate members, deep nesting and huge value counts refused while parsing.
  const v = parseStrictJson(text, { what: 'request body', maxDepth: 64, maxValues: MAX_BODY_VALUES });
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new EbsdError('BAD_JSON', 'request body is not a JSON object', { awsName: 'SerializationException' });
  return v as Record<string, unknown>;
}

function stsError(e: unknown): { status: number; code: string; message: string } {
  if (e instanceof SigV4Error) return { status: e.queryStatus, code: e.queryCode, message: e.message };
  if (e instanceof StsError) return { status: e.status, code: e.awsName!, message: e.message };
  if (e instanceof BodyTooLarge) return { status: 413, code: 'RequestEntityTooLarge', message: e.message };
  // STS throttles with 400 `Throttling` (Sender), not KMS's ThrottlingException; SDKs retry on either code.
  if (e instanceof ConnectionThrottledError) return { status: 400, code: 'Throttling', message: e.message };
  return { status: 500, code: 'InternalFailure', message: 'An internal error occurred.' };
}

/**
 * An accepted AssumeRole's responseElements, as CloudTrail records them (the credentials' access key id
 * and expiration, the assumed-role user, packedPolicySize), so that a later call's ASIA access key id
 * leads to the AssumeRole event and the identity that minted it. Unlike CloudTrail, no sessionToken:
 * nothing of a credential but its access key id reaches the audit (README, Security model, Audit).
 */
function assumeRoleResponseElements(r: Record<string, unknown>): Record<string, unknown> {
  const c = r.Credentials as Record<string, string>;
  const u = r.AssumedRoleUser as Record<string, string>;
  return {
    // In whole seconds, as the event's eventTime.
    credentials: { accessKeyId: c.AccessKeyId, expiration: c.Expiration!.replace(/\.\d{3}Z$/, 'Z') },
    assumedRoleUser: { assumedRoleId: u.AssumedRoleId, arn: u.Arn },
    ...(typeof r.PackedPolicySize === 'number' ? { packedPolicySize: r.PackedPolicySize } : {}),
  };
}

function esc(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!);
}

function json(status: number, body: unknown, requestId: string): WireResponse {
  const text = JSON.stringify(body);
  // The flat-array form: node copies it as it is, without a pass over an object's keys.
  return { status, headers: ['Content-Type', 'application/x-amz-json-1.1', 'Content-Length', String(Buffer.byteLength(text)), 'x-amzn-RequestId', requestId], body: text };
}

function xmlAnswer(status: number, xml: string, requestId: string): WireResponse {
  return { status, headers: ['Content-Type', 'text/xml', 'Content-Length', String(Buffer.byteLength(xml)), 'x-amzn-RequestId', requestId], body: xml };
}

/** What the transport could not read, as the error the protocol answers with. */
function bodyError(e: WireBodyError): Error {
  if (e.kind === 'too-large') return new BodyTooLarge(e.limit);
  if (e.kind === 'body-budget') return new ConnectionThrottledError('body-budget', 'the daemon is buffering too many request bodies; retry');
  if (e.kind === 'in-flight') return new ConnectionThrottledError('in-flight-limit', `${e.limit} requests already in flight on this connection; wait for their answers`);
  return new EbsdError('REQUEST_ABORTED', 'request closed before its body was complete', { awsName: 'RequestAbortedException' });
}

/**
 * A body the transport refused, as the EBS direct APIs name it, so the SDKs parse it as a modeled exception: one
 * over the size limit is ValidationException (a PutSnapshotBlock body is one 524288-byte block, every other body
 * a few KB), a full body budget or too many requests on one connection RequestThrottledException, which the SDKs
 * retry with back-off.
 */
function ebsBodyError(e: Error): Error {
  if (e instanceof BodyTooLarge) return validation('INVALID_PARAMETER_VALUE', `${e.message}: a PutSnapshotBlock body is one block of ${SNAPSHOT_BLOCK_BYTES} bytes (DataLength); the request was not read`);
  if (e instanceof ConnectionThrottledError) return throttled('ACCOUNT_THROTTLED', e.message);
  return e;
}

/** The request as ebs-rest.ts reads it: method, url and `headers` as node would build them (repeated ones joined with ", "). */
function headersOf(req: WireRequest): { method: string; url: string; headers: Record<string, string> } {
  const headers: Record<string, string> = Object.create(null) as Record<string, string>;
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    const k = req.rawHeaders[i]!.toLowerCase();
    headers[k] = k in headers ? `${headers[k]}, ${req.rawHeaders[i + 1]!}` : req.rawHeaders[i + 1]!;
  }
  return { method: req.method, url: req.url, headers };
}

/** Collects what ebs-rest.ts writes (`writeHead`, `end`) as a WireResponse. */
class Answer {
  w: WireResponse = { status: 500, headers: [], body: '' };
  writeHead(status: number, headers: Record<string, string | number>): void {
    this.w.status = status;
    this.w.headers = headers;
  }
  end(body?: Buffer | string): void {
    this.w.body = body ?? '';
  }
}
