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
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { randomUUID } from 'node:crypto';
import { isIP } from 'node:net';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { EbsdError } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { Caller } from '../kms/types.js';
import { buildEvent, MAX_USER_AGENT, truncateField } from '../kms/audit/event.js';
import { SigV4Error } from '../kms/sigv4/errors.js';
import { SigV4Verifier } from '../kms/sigv4/verifier.js';
import { parseStrictJson } from '../util/strict-json.js';
import { MAX_BODY_VALUES } from './control-server.js';
import { StsError, type StsService } from '../kms/sts/sts-service.js';
import type { AssumeRoleParams } from '../kms/sts/assume-role-context.js';
import { decodeKmsRequest, encodeResponse, toWireError } from './aws-json.js';
import { throttledEvent } from './audit-events.js';
import { ebsRestRequest, sendEbsRest, sendEbsRestError } from './ebs-rest.js';
import {
  ConnectionGuard, ConnectionThrottledError, DEFAULT_LIMITS as GUARD_LIMITS, refuseSocket, type ConnectionLimits, type RefusalSummary,
} from './connection-guard.js';

/** Listener limits: the connection guard's, with `maxPerCaller` counted per source address. */
export type ListenerLimits = ConnectionLimits;

/**
 * The guard's defaults (sized for KMS requests: 4 KiB plaintext, 32 KiB
 * policy), with more room per address than a local uid gets: an AWS SDK
 * pools up to 50 sockets per client, and one address may front several
 * clients (a host, a NAT). The per-address cap stays below the overall one,
 * so one address cannot take every connection.
 */
export const DEFAULT_LIMITS: ListenerLimits = Object.freeze({ ...GUARD_LIMITS, maxPerCaller: 128, maxTotal: 1024 });

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
  auditRefusal?: (key: string, event: () => Record<string, unknown>) => Promise<void>;
  log: Logger;
  limits?: Partial<ListenerLimits>;
  /** Clock for SigV4 and session expiry (tests inject one). */
  now?: () => number;
}

const STS_NS = 'https://sts.amazonaws.com/doc/2011-06-15/';

/** True for 127.0.0.0/8, ::1 and `localhost`: the only addresses plain HTTP may listen on. */
export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  return host === '::1' || host === '[::1]' || /^::ffff:127\./.test(host);
}

/** The client's address as the guard counts it (an IPv4-mapped IPv6 address as IPv4). */
function sourceAddress(s: Socket): string {
  return (s.remoteAddress ?? 'unknown').replace(/^::ffff:/, '');
}

class BodyTooLarge extends EbsdError {
  constructor(limit: number) {
    super('BODY_TOO_LARGE', `request body over ${limit} bytes`, { awsName: 'RequestEntityTooLargeException' });
  }
}

export class KmsListener {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  /** Connections answered 503 at accept: anything the HTTP parser still makes of them is ignored. */
  private readonly refused = new WeakSet<Socket>();
  readonly guard: ConnectionGuard;
  private readonly limits: ListenerLimits;
  private readonly kmsVerifier: SigV4Verifier<Caller>;
  private readonly stsVerifier: SigV4Verifier<Caller>;
  private readonly ebsVerifier: SigV4Verifier<Caller>;
  private readonly now: () => number;

  constructor(private readonly o: KmsListenerOptions) {
    this.limits = { ...DEFAULT_LIMITS, ...o.limits };
    this.now = o.now ?? Date.now;
    // No exempt address (see the top of this file).
    this.guard = new ConnectionGuard(this.limits, { onRefusals: (rows) => this.auditThrottled(rows) });
    const v = (service: string) => new SigV4Verifier<Caller>({ region: o.region, services: [service], credentials: o.sts.credentials, now: this.now });
    this.kmsVerifier = v('kms');
    this.stsVerifier = v('sts');
    this.ebsVerifier = new SigV4Verifier<Caller>({ region: o.region, services: ['ebs'], credentials: o.sts.credentials, now: this.now, unsignedPayload: true });
  }

  /** Start listening; resolves with the bound address (port 0 picks a free one). */
  /** Wipe the cached signing keys: an access key was deactivated or deleted (its status is checked on every request anyway). */
  forgetSigningKeys(): void {
    this.kmsVerifier.forget();
    this.stsVerifier.forget();
    this.ebsVerifier.forget();
  }

  async listen(): Promise<{ host: string; port: number; protocol: 'http' | 'https' }> {
    const { o } = this;
    if (!o.tls && !isLoopback(o.host)) {
      throw new EbsdError('KMS_LISTEN_PLAINTEXT', `--kms-listen ${o.host}: plain HTTP is allowed only on a loopback address; give --tls-cert and --tls-key`);
    }
    const l = this.limits;
    const opts = {
      maxHeaderSize: l.maxHeaderBytes,
      headersTimeout: l.headersTimeoutMs,
      requestTimeout: l.requestTimeoutMs,
      keepAliveTimeout: l.keepAliveTimeoutMs,
      // How often node looks for connections past headersTimeout/requestTimeout (default 30 s).
      connectionsCheckingInterval: Math.min(1_000, l.headersTimeoutMs),
    };
    const handler = (req: IncomingMessage, res: ServerResponse): void => void this.serve(req, res);
    // handshakeTimeout: node's default (120 s) would let a caller hold slots with connections that
    // never finish the TLS handshake; headersTimeout only starts after it.
    const server = o.tls
      ? createHttpsServer({ ...opts, cert: o.tls.cert, key: o.tls.key, handshakeTimeout: l.headersTimeoutMs }, handler)
      : createHttpServer(opts, handler);
    // Admitted on the TCP connection, before any TLS handshake is paid for.
    server.on('connection', (s: Socket) => {
      const admitted = this.guard.admit(sourceAddress(s));
      if (admitted instanceof ConnectionThrottledError) {
        this.refused.add(s);
        // Over TLS a plaintext answer would be noise to the client: close at once.
        if (o.tls) s.destroy(); else refuseSocket(s, admitted);
        return;
      }
      this.sockets.add(s);
      s.on('close', () => { this.sockets.delete(s); admitted.release(); });
    });
    server.on('clientError', (_e, s: Socket) => { if (s.writable) s.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n'); else s.destroy(); });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(o.port, o.host, () => { server.off('error', reject); resolve(); });
    });
    this.server = server;
    const a = server.address() as { address: string; port: number };
    return { host: a.address, port: a.port, protocol: o.tls ? 'https' : 'http' };
  }

  async close(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    const closed = new Promise<void>((r) => server.close(() => r()));
    server.closeIdleConnections();
    for (const s of this.sockets) s.destroy();
    await closed;
    this.guard.flushRefusals();
  }

  /** Connections refused by the limits, already summed per (address, reason) by the guard. */
  private auditThrottled(rows: RefusalSummary[]): void {
    this.o.log.warn({ refusals: rows }, 'KMS network connections refused (connection limits)');
    for (const r of rows) {
      const e = throttledEvent(r, { accountId: this.o.accountId, region: this.o.region });
      e.eventName = 'KmsConnection';
      e.sourceIPAddress = r.caller;
      void this.o.audit(e).catch((x: unknown) => this.o.log.error({ err: x }, 'could not audit refused KMS connections'));
    }
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (this.refused.has(req.socket)) { req.resume(); return; } // answered 503 at accept; refuseSocket closes it
    const requestId = randomUUID();
    // From rawHeaders, as node builds req.headers (which it does lazily, header by header, on first use).
    const target = rawHeader(req.rawHeaders, 'x-amz-target', ', ');
    const query = typeof target !== 'string';
    const sourceIp = (req.socket.remoteAddress ?? '').replace(/^::ffff:/, '');
    const ua = rawHeader(req.rawHeaders, 'user-agent');
    let operation = typeof target === 'string' ? target.slice(target.indexOf('.') + 1) : 'Unknown';
    try {
      const body = await readBody(req, this.guard, sourceIp);
      const url = req.url ?? '/';
      if (query && this.o.ebs && url.startsWith('/snapshots')) return await this.serveEbs(req, res, body, requestId, sourceIp);
      const form = query ? new URLSearchParams(req.method === 'GET' ? url.slice(url.indexOf('?') + 1 || url.length) : body.toString('utf8')) : undefined;
      if (form) operation = form.get('Action') ?? 'Unknown';
      let verified;
      try {
        verified = await (query ? this.stsVerifier : this.kmsVerifier).verify({ method: req.method ?? 'GET', target: url, headers: { raw: req.rawHeaders }, body });
      } catch (e) {
        if (e instanceof SigV4Error) await this.auditRefusal(e, query ? 'sts.amazonaws.com' : 'kms.amazonaws.com', operation, requestId, sourceIp, req);
        throw e;
      }
      const caller: Caller = { ...verified.principal, sourceIp, accessKeyId: verified.accessKeyId, ...(typeof ua === 'string' ? { userAgent: ua } : {}) };
      if (!query) {
        if (!target.startsWith('TrentService.')) throw new EbsdError('UNKNOWN_TARGET', `unknown target "${target}"`, { awsName: 'UnknownOperationException' });
        const out = await this.o.kms(operation, decodeKmsRequest(parseJson(body)), caller, requestId);
        return sendJson(res, 200, encodeResponse(out ?? {}), requestId);
      }
      const xml = await this.sts(form!, caller, requestId);
      return sendXml(res, 200, xml, requestId);
    } catch (e) {
      const internal = query ? stsError(e).status >= 500 : toWireError(e).status >= 500;
      if (internal) this.o.log.error({ err: e, operation, requestId }, 'KMS network request failed');
      if (query) {
        const { status, code, message } = stsError(e);
        return sendXml(res, status, `<ErrorResponse xmlns="${STS_NS}"><Error><Type>${status >= 500 ? 'Receiver' : 'Sender'}</Type><Code>${esc(code)}</Code><Message>${esc(message)}</Message></Error><RequestId>${requestId}</RequestId></ErrorResponse>`, requestId);
      }
      const w = e instanceof BodyTooLarge ? { status: 413, body: { __type: e.awsName!, message: e.message } } : toWireError(e);
      return sendJson(res, w.status, w.body, requestId);
    } finally {
      this.o.log.debug({ operation, requestId, sourceIp }, 'KMS network request');
    }
  }

  /** An EBS direct API request (ebs-rest.ts): SigV4 first, then the same checks, authorization and audit as on the socket. */
  private async serveEbs(req: IncomingMessage, res: ServerResponse, body: Buffer, requestId: string, sourceIp: string): Promise<void> {
    const ua = req.headers['user-agent'];
    try {
      let verified;
      try {
        verified = await this.ebsVerifier.verify({ method: req.method ?? 'GET', target: req.url ?? '/', headers: { raw: req.rawHeaders }, body });
      } catch (e) {
        if (e instanceof SigV4Error) await this.auditRefusal(e, 'ebs.amazonaws.com', 'Unknown', requestId, sourceIp, req);
        throw e;
      }
      const caller: Caller = { ...verified.principal, sourceIp, accessKeyId: verified.accessKeyId, ...(typeof ua === 'string' ? { userAgent: ua } : {}) };
      const r = ebsRestRequest(req, body);
      if (!r) throw new EbsdError('UNKNOWN_OPERATION', `no EBS direct API operation is ${req.method} ${(req.url ?? '').split('?')[0]!.slice(0, 128)}`, { awsName: 'UnknownOperationException' });
      return sendEbsRest(res, r.op, await this.o.ebs!(r.op, r.members, caller, requestId), requestId);
    } catch (e) {
      if (toWireError(e).status >= 500) this.o.log.error({ err: e, requestId }, 'EBS direct API network request failed');
      return sendEbsRestError(res, e, requestId);
    }
  }

  private async sts(form: URLSearchParams, caller: Caller, requestId: string): Promise<string> {
    const action = form.get('Action');
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
        r = await this.o.sts.assumeRole(caller, p, this.now());
      } catch (e) {
        err = e;
      }
      await this.auditSts('AssumeRole', caller, requestId, { roleArn: p.RoleArn, roleSessionName: p.RoleSessionName }, err);
      if (err) throw err;
      const c = r!.Credentials as Record<string, string>;
      const u = r!.AssumedRoleUser as Record<string, string>;
      // The secret and the token travel only in this answer; the audit record above has neither.
      return `<AssumeRoleResponse xmlns="${STS_NS}"><AssumeRoleResult><Credentials><AccessKeyId>${c.AccessKeyId}</AccessKeyId><SecretAccessKey>${esc(c.SecretAccessKey!)}</SecretAccessKey><SessionToken>${esc(c.SessionToken!)}</SessionToken><Expiration>${c.Expiration}</Expiration></Credentials><AssumedRoleUser><AssumedRoleId>${esc(u.AssumedRoleId!)}</AssumedRoleId><Arn>${esc(u.Arn!)}</Arn></AssumedRoleUser></AssumeRoleResult>${meta}</AssumeRoleResponse>`;
    }
    throw new StsError('InvalidAction', `Could not find operation ${action ?? '(none)'} for version ${form.get('Version') ?? '(none)'}`);
  }

  private async auditSts(eventName: string, caller: Caller, requestId: string, params: Record<string, unknown>, err: unknown): Promise<void> {
    const e = buildEvent({
      eventName, caller, accountId: this.o.accountId, region: this.o.region, requestId, eventId: randomUUID(), resources: [], readOnly: false, time: this.now(),
      ...(err ? { errorCode: (err as EbsdError).awsName ?? 'InternalFailure', errorMessage: (err as Error).message } : {}),
    });
    e.eventSource = 'sts.amazonaws.com';
    e.requestParameters = Object.fromEntries(Object.entries(params).filter(([, v]) => v !== undefined));
    await this.o.audit(e).catch((x: unknown) => this.o.log.error({ err: x, requestId }, 'could not audit an STS call'));
  }

  /** A request refused before authorization: who it claimed to be and where it came from, never its signature. */
  private async auditRefusal(err: SigV4Error, source: string, eventName: string, requestId: string, sourceIp: string, req: IncomingMessage): Promise<void> {
    const ua = req.headers['user-agent'];
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
      const tls = req.socket as Partial<TLSSocket>;
      if (typeof tls.getProtocol === 'function') e.tlsDetails = { tlsVersion: tls.getProtocol(), cipherSuite: tls.getCipher?.()?.standardName };
      return e;
    };
    this.o.log.debug({ refusal: err.awsName, accessKeyId: err.accessKeyId, sourceIp, eventName: name, requestId }, 'KMS network request refused');
    // Per (address, access key, operation, reason): the message says why (signature, clock skew, region, ...).
    const key = `kms-listener\0${sourceIp}\0${err.accessKeyId ?? '-'}\0${source}\0${name}\0${truncateField(err.message, 256)}`;
    const written = this.o.auditRefusal ? this.o.auditRefusal(key, build) : this.o.audit(build());
    await written.catch((x: unknown) => this.o.log.error({ err: x, requestId }, 'could not audit a refused request'));
  }
}

/**
 * A header's value as `req.headers` would give it: the first one (`join` absent: node keeps the
 * first user-agent, content-length), or all joined with `join` (node joins unknown repeated headers
 * with ", "). `name` is lower-case.
 */
function rawHeader(raw: string[], name: string, join?: string): string | undefined {
  let out: string | undefined;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const k = raw[i]!;
    if (k.length !== name.length || k.toLowerCase() !== name) continue;
    if (out === undefined) out = raw[i + 1]!;
    else if (join === undefined) return out;
    else out += join + raw[i + 1]!;
  }
  return out;
}

/**
 * The body as bytes (SigV4 hashes them as sent), within the guard's limits:
 * over `maxBodyBytes` a 413; past the bytes all connections may buffer at
 * once, a ThrottlingException. The reservation is given back when the body
 * is complete or the request ends early.
 */
function readBody(req: IncomingMessage, guard: ConnectionGuard, address: string): Promise<Buffer> {
  const limit = guard.limits.maxBodyBytes;
  return new Promise((resolve, reject) => {
    const declared = Number(rawHeader(req.rawHeaders, 'content-length'));
    if (declared > limit) { reject(new BodyTooLarge(limit)); req.resume(); return; }
    const chunks: Buffer[] = [];
    let n = 0;
    let reserved = 0;
    let failed = false;
    const fail = (e: Error): void => {
      if (failed) return;
      failed = true;
      guard.releaseBody(reserved);
      reserved = 0;
      reject(e);
    };
    req.on('data', (c: Buffer) => {
      if (failed) return;
      n += c.length;
      if (n > limit) { fail(new BodyTooLarge(limit)); req.destroy(); return; }
      if (!guard.reserveBody(address, c.length)) {
        fail(new ConnectionThrottledError('body-budget', 'the daemon is buffering too many request bodies; retry'));
        req.destroy();
        return;
      }
      reserved += c.length;
      chunks.push(c);
    });
    req.on('error', fail);
    req.on('close', () => { if (!req.complete) fail(new EbsdError('REQUEST_ABORTED', 'request closed before its body was complete', { awsName: 'RequestAbortedException' })); });
    req.on('end', () => {
      if (failed) return;
      guard.releaseBody(reserved);
      reserved = 0;
      resolve(Buffer.concat(chunks));
    });
  });
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
  return { status: 500, code: 'InternalFailure', message: 'An internal error occurred.' };
}

function esc(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!);
}

function sendJson(res: ServerResponse, status: number, body: unknown, requestId: string): void {
  const text = JSON.stringify(body);
  // The flat-array form: node copies it as it is, without a pass over an object's keys.
  res.writeHead(status, ['Content-Type', 'application/x-amz-json-1.1', 'Content-Length', String(Buffer.byteLength(text)), 'x-amzn-RequestId', requestId]);
  res.end(text);
}

function sendXml(res: ServerResponse, status: number, xml: string, requestId: string): void {
  res.writeHead(status, ['Content-Type', 'text/xml', 'Content-Length', String(Buffer.byteLength(xml)), 'x-amzn-RequestId', requestId]);
  res.end(xml);
}
