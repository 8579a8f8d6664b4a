import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { promises as fsp } from 'node:fs';
import type { Socket } from 'node:net';
import { randomUUID } from 'node:crypto';
import { peerCred, type PeerCred } from '../native/addon.js';
import { EbsdError } from '../util/errors.js';
import { parseStrictJson } from '../util/strict-json.js';
import type { Logger } from '../util/logger.js';
import { encodeResponse, toWireError } from './aws-json.js';
import { truncateField } from '../kms/audit/event.js';
import { ConnectionGuard, ConnectionThrottledError, RequestTooLargeError, refuseSocket, whenWritten, type ConnectionLimits, type RefusalSummary } from './connection-guard.js';

/** Who is on the other end of a control connection, from the kernel (SO_PEERCRED), never from the request. */
export interface PeerIdentity {
  uid: number;
  gid: number;
  pid: number;
  userAgent?: string;
  requestId: string;
}

export type ControlHandler = (target: string, body: Record<string, unknown>, peer: PeerIdentity) => Promise<unknown>;

/** Deepest nesting a request body may have (the KMS and EC2 request shapes need fewer than 8). */
const MAX_BODY_DEPTH = 64;
/** Values in one body: the largest request (DescribeVolumes with 50 filters of 200 values) holds ~10,200. */
export const MAX_BODY_VALUES = 20_000;
/** The X-Amz-Target as logged: a header may be 16 KB long, a log line need not be (cut and marked, truncateField). */
export const MAX_LOGGED_TARGET = 128;

/**
 * Requests one connection may have waiting for answers (HTTP/1.1 pipelining;
 * the CLI and the daemon's own clients send one at a time). node's parser
 * reads pipelined requests as fast as they arrive, answered or not, so
 * without this cap one connection could put any number of calls into the
 * daemon at once, past every per-uid connection cap. Past it a request is
 * answered ThrottlingException without being read, and the refusals are
 * audited in aggregate, as on the KMS listener (kms-transport.ts). Root is
 * not capped, as it is nowhere on this socket.
 */
export const MAX_IN_FLIGHT_PER_CONNECTION = 32;

/**
 * What all uids mapped to no principal may hold together: they are refused
 * every operation (AccessDeniedException), so a few connections are enough to
 * read that answer, and nothing they send counts against mapped callers.
 */
export const UNMAPPED_LIMITS: Readonly<Pick<ConnectionLimits, 'maxPerCaller' | 'maxTotal' | 'maxBufferedBodyBytes'>> = Object.freeze({
  maxPerCaller: 4,
  maxTotal: 16,
  maxBufferedBodyBytes: 4 << 20,
});

export interface ControlServerOptions {
  /** Overrides of DEFAULT_LIMITS (connection-guard.ts). */
  limits?: Partial<ConnectionLimits>;
  /**
   * Whether a uid is mapped to a principal (root always is). Unmapped uids
   * are admitted by a guard of their own (UNMAPPED_LIMITS), checked at
   * accept: a flood of them cannot take the connections or body buffer
   * mapped callers need. Absent: every uid counts as mapped.
   */
  isMapped?: (uid: number) => boolean;
  /** Aggregated connection refusals, at most one call per refusal window. */
  onRefusals?: (s: RefusalSummary[]) => void;
  /**
   * A body that is not a JSON object (SerializationException), refused here before any handler
   * sees it: the daemon audits those of KMS targets as the core would have (docs/architecture.md §5.8).
   */
  onUnreadableBody?: (target: string, err: unknown, peer: PeerIdentity) => Promise<void>;
}

/**
 * The control API: HTTP/1.1 over the Unix socket `<state>/ebsd.sock`.
 * Every request is `POST /` with `X-Amz-Target: <Service>.<Operation>` and a
 * JSON body (AWS JSON 1.1); see daemon.ts for the targets.
 */
export class ControlServer {
  private server: Server | undefined;
  private readonly creds = new WeakMap<Socket, PeerCred>();
  private readonly sockets = new Set<Socket>();
  /** Connections answered 503 at accept: anything the HTTP parser still makes of them is ignored. */
  private readonly refused = new WeakSet<Socket>();
  readonly guard: ConnectionGuard;
  /** Connections of uids mapped to no principal (UNMAPPED_LIMITS). */
  readonly unmappedGuard: ConnectionGuard;
  /** The guard that admitted each connection: its bodies are read within that guard's budget. */
  private readonly guardOf = new WeakMap<Socket, ConnectionGuard>();
  private readonly isMapped: (uid: number) => boolean;
  private inflight = 0;
  /** Requests read and not yet answered, per connection (MAX_IN_FLIGHT_PER_CONNECTION). */
  private readonly inFlightOn = new WeakMap<Socket, number>();
  /** Answers handed to node and not yet written, per connection (held in the body budget until they are). */
  private readonly unwritten = new WeakMap<Socket, number>();
  private idle: (() => void)[] = [];

  constructor(
    private readonly path: string,
    private readonly handler: ControlHandler,
    private readonly log: Logger,
    private readonly o: ControlServerOptions = {},
  ) {
    const onRefusals = (rows: RefusalSummary[]): void => {
      this.log.warn({ refusals: rows }, 'control connections refused (connection limits)');
      o.onRefusals?.(rows);
    };
    // Root (uid 0) is exempt from every connection cap: the operator can always get in.
    this.guard = new ConnectionGuard(o.limits, { exemptKey: '0', onRefusals });
    this.unmappedGuard = new ConnectionGuard({
      ...o.limits,
      maxPerCaller: Math.min(UNMAPPED_LIMITS.maxPerCaller, o.limits?.maxPerCaller ?? Infinity),
      maxTotal: Math.min(UNMAPPED_LIMITS.maxTotal, o.limits?.maxTotal ?? Infinity),
      maxBufferedBodyBytes: Math.min(UNMAPPED_LIMITS.maxBufferedBodyBytes, o.limits?.maxBufferedBodyBytes ?? Infinity),
    }, { onRefusals });
    this.isMapped = o.isMapped ?? (() => true);
  }

  async listen(): Promise<void> {
    // We hold the state-dir lock, so a socket file left here is a dead daemon's.
    await fsp.rm(this.path, { force: true });
    const l = this.guard.limits;
    const server = createServer({
      keepAliveTimeout: l.keepAliveTimeoutMs,
      headersTimeout: l.headersTimeoutMs,
      requestTimeout: l.requestTimeoutMs,
      maxHeaderSize: l.maxHeaderBytes,
      // How often node looks for connections past headersTimeout/requestTimeout (default 30 s).
      connectionsCheckingInterval: Math.min(1_000, l.headersTimeoutMs),
    }, (req, res) => void this.serve(req, res));
    server.on('connection', (s: Socket) => {
      let cred: PeerCred;
      try {
        cred = readPeer(s);
      } catch (e) {
        this.log.error({ err: e }, 'cannot read control-socket peer credentials; dropping connection');
        s.destroy();
        return;
      }
      const guard = cred.uid === 0 || this.isMapped(cred.uid) ? this.guard : this.unmappedGuard;
      const admitted = guard.admit(cred.uid);
      if (admitted instanceof ConnectionThrottledError) {
        this.refused.add(s);
        refuseSocket(s, admitted);
        return;
      }
      this.creds.set(s, cred);
      this.guardOf.set(s, guard);
      this.sockets.add(s);
      s.on('close', () => { this.sockets.delete(s); admitted.release(); });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.path, () => { server.off('error', reject); resolve(); });
    });
    // 0666: any local user may connect; the uid then decides (docs/architecture.md §5.1).
    await fsp.chmod(this.path, 0o666);
    this.server = server;
  }

  /** Connections and buffered body bytes now, of all callers, and of unmapped uids alone (for `ebsd status`). */
  usage(): { Connections: number; Callers: number; BufferedBodyBytes: number; RefusalsPending: number; Unmapped: { Connections: number; BufferedBodyBytes: number } } {
    const u = this.guard.usage();
    const n = this.unmappedGuard.usage();
    return {
      Connections: u.connections + n.connections, Callers: u.callers + n.callers, BufferedBodyBytes: u.bufferedBodyBytes + n.bufferedBodyBytes,
      RefusalsPending: u.refusalsPending + n.refusalsPending, Unmapped: { Connections: n.connections, BufferedBodyBytes: n.bufferedBodyBytes },
    };
  }

  /** Stop accepting, let running requests finish (bounded), drop idle keep-alive connections. */
  async close(timeoutMs = 10_000): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    const closed = new Promise<void>((r) => server.close(() => r()));
    server.closeIdleConnections();
    if (this.inflight > 0) {
      await Promise.race([new Promise<void>((r) => this.idle.push(r)), new Promise((r) => setTimeout(r, timeoutMs).unref())]);
    }
    for (const s of this.sockets) s.destroy();
    await closed;
    this.guard.flushRefusals();
    this.unmappedGuard.flushRefusals();
    await fsp.rm(this.path, { force: true });
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (this.refused.has(req.socket)) { req.resume(); return; } // answered 503 at accept; refuseSocket closes it
    const started = process.hrtime.bigint();
    const requestId = randomUUID();
    const cred = this.creds.get(req.socket);
    const target = String(req.headers['x-amz-target'] ?? '');
    const socket = req.socket;
    // Each answer waits for its socket's 'close' (whenWritten), up to MAX_IN_FLIGHT_PER_CONNECTION of them at once.
    if (socket.getMaxListeners() < MAX_IN_FLIGHT_PER_CONNECTION + 16) socket.setMaxListeners(MAX_IN_FLIGHT_PER_CONNECTION + 16);
    const waiting = this.inFlightOn.get(socket) ?? 0;
    this.inFlightOn.set(socket, waiting + 1);
    this.inflight++;
    let status = 200;
    let errorType: string | undefined;
    let throttled = false;
    try {
      if (!cred) throw new EbsdError('PEER_UNKNOWN', 'peer credentials unavailable', { awsName: 'AccessDeniedException' });
      if (waiting >= MAX_IN_FLIGHT_PER_CONNECTION && cred.uid !== 0) {
        req.resume(); // not read: node drops the body before the connection's next request
        throw (this.guardOf.get(socket) ?? this.guard).refuseInFlight(cred.uid, MAX_IN_FLIGHT_PER_CONNECTION);
      }
      if (req.method !== 'POST') throw new EbsdError('BAD_METHOD', 'use POST with X-Amz-Target', { awsName: 'ValidationException' });
      if (!target) throw new EbsdError('NO_TARGET', 'missing X-Amz-Target header', { awsName: 'ValidationException' });
      const ua = req.headers['user-agent'];
      const peer: PeerIdentity = { ...cred, requestId, ...(typeof ua === 'string' ? { userAgent: ua } : {}) };
      let body: Record<string, unknown>;
      try {
        body = await this.readJson(req, cred.uid, this.guardOf.get(req.socket) ?? this.guard);
      } catch (e) {
        // Not the guard's refusals (too large, throttled: audited in aggregate by it), only an unreadable body.
        if ((e as EbsdError).awsName === 'SerializationException') await this.o.onUnreadableBody?.(target, e, peer);
        throw e;
      }
      const out = await this.handler(target, body, peer);
      // An answer replaced by a ThrottlingException (answer): a limit's refusal, logged at debug as the others.
      status = this.answer(res, cred.uid, 200, encodeResponse(out ?? {}), requestId);
      throttled = status !== 200;
    } catch (e) {
      const w = toWireError(e);
      // 413 and 503 come from the connection limits, not from a service.
      if (e instanceof RequestTooLargeError || e instanceof ConnectionThrottledError) w.status = e.httpStatus;
      throttled = e instanceof ConnectionThrottledError;
      status = w.status;
      errorType = w.body.__type;
      if (status >= 500 && status !== 503) this.log.error({ target: truncateField(target, MAX_LOGGED_TARGET), requestId, err: e }, 'control request failed');
      const sent = this.answer(res, cred?.uid, w.status, w.body, requestId);
      if (sent !== status) throttled = true;
      status = sent;
    } finally {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      // Never the body: requests carry plaintext and blobs. A refused or unmapped caller's line is at debug:
      // its refusals are audited in aggregate, and it may send as many as the connection limits let it; so are
      // the limits' own refusals (ConnectionThrottledError), which the guard reports in aggregate.
      const refused = throttled || !cred || !(this.o.isMapped?.(cred.uid) ?? true) || errorType === 'AccessDeniedException' || errorType === 'UnauthorizedOperation';
      // An answered ebsd.Status too: `ebsd top` and monitoring poll it every second or so (86,400 lines a day each).
      const polled = target === 'ebsd.Status' && status === 200;
      this.log[refused || polled ? 'debug' : 'info']({ target: truncateField(target, MAX_LOGGED_TARGET), uid: cred?.uid, peerPid: cred?.pid, status, errorType, requestId, ms: Math.round(ms * 10) / 10 }, 'control request');
      this.inFlightOn.set(socket, (this.inFlightOn.get(socket) ?? 1) - 1);
      if (--this.inflight === 0) for (const r of this.idle.splice(0)) r();
    }
  }

  /**
   * Write an answer, held in the caller's body budget until node has written it: a client pipelining
   * GetSnapshotBlock (~700 KB of JSON each) without reading would otherwise have node hold every answer for as
   * long as it keeps the connection. Past the caller's share, a connection with answers it has not read gets
   * ThrottlingException instead (one with none unwritten always gets its answer); an answer not written within
   * the request timeout closes its connection. As on the KMS listener (kms-transport.ts). Returns the status sent.
   */
  private answer(res: ServerResponse, uid: number | undefined, status: number, body: unknown, requestId: string): number {
    const socket = res.socket;
    const guard = socket ? this.guardOf.get(socket) : undefined;
    if (!socket || !guard || uid === undefined) {
      send(res, status, body, requestId);
      return status;
    }
    let text = JSON.stringify(body);
    const bytes = Buffer.byteLength(text);
    const unwritten = this.unwritten.get(socket) ?? 0;
    let held = bytes;
    // holdBody when the answer goes out whatever the budget: a failed reserveBody counts a refusal (kms-transport.ts).
    if (unwritten === 0) guard.holdBody(uid, bytes);
    else if (!guard.reserveBody(uid, bytes)) {
      status = 503;
      text = JSON.stringify({ __type: 'ThrottlingException', message: 'too many requests: this caller has too many answers it has not read yet; read them, then retry' });
      held = 0;
    }
    this.unwritten.set(socket, unwritten + 1);
    const unsent = setTimeout(() => socket.destroy(), guard.limits.requestTimeoutMs);
    unsent.unref();
    whenWritten(res, socket, () => {
      clearTimeout(unsent);
      this.unwritten.set(socket, (this.unwritten.get(socket) ?? 1) - 1);
      guard.releaseBody(uid, held);
    });
    sendText(res, status, text, requestId);
    return status;
  }

  /** The body as a JSON object: read within the limits (ConnectionGuard.readBody), then parsed strictly. */
  private async readJson(req: IncomingMessage, uid: number, guard: ConnectionGuard): Promise<Record<string, unknown>> {
    const text = await guard.readBody(req, uid);
    if (text.trim() === '') return {};
    // Duplicate members and nesting past 64 are refused here, before any service sees the body.
    const v = parseStrictJson(text, { what: 'request body', maxDepth: MAX_BODY_DEPTH, maxValues: MAX_BODY_VALUES });
    if (!v || typeof v !== 'object' || Array.isArray(v)) {
      throw new EbsdError('BAD_JSON', 'request body is not a JSON object', { awsName: 'SerializationException' });
    }
    return v as Record<string, unknown>;
  }
}

function readPeer(s: Socket): PeerCred {
  const fd = (s as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new EbsdError('PEER_UNKNOWN', 'control connection has no fd');
  return peerCred(fd);
}

function send(res: ServerResponse, status: number, body: unknown, requestId: string): void {
  sendText(res, status, JSON.stringify(body), requestId);
}

function sendText(res: ServerResponse, status: number, text: string, requestId: string): void {
  res.writeHead(status, {
    'Content-Type': 'application/x-amz-json-1.1',
    'Content-Length': Buffer.byteLength(text),
    'x-amzn-RequestId': requestId,
  });
  res.end(text);
}
