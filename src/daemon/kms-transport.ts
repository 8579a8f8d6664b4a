/**
 * The KMS listener's transport (docs/architecture.md, "KMS over the network"):
 * node's HTTP(S) server with the listener's hardening, and nothing that knows
 * SigV4, credentials or the KMS. It hands each complete request over as plain
 * data (`TransportRequest`) and writes back the `WireResponse` it is given.
 *
 * It runs either on the daemon's main thread (`--kms-front-threads 0`) or in
 * the front-end worker (kms-front-worker.ts, `--kms-front-threads 1`); the
 * guard and its limits are the same object in both: admission per source
 * at accept (an address; on loopback, the local user owning the
 * client's socket; before any TLS handshake), a ThrottlingException on plain
 * HTTP past a cap (HTTP 400, as AWS KMS answers it), header and body size limits, header, request, idle and handshake
 * timeouts, and the bytes of bodies buffered at once (per source and in all).
 */
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import {
  ConnectionGuard, ConnectionThrottledError, DEFAULT_LIMITS as GUARD_LIMITS, answerClientError, refuseSocket, whenWritten, type Admission, type ConnectionLimits, type RefusalSummary,
} from './connection-guard.js';
import { connectionSource, sourceAddress } from './loopback-peers.js';
import { ANSWER_SLICE_BYTES, AnswerProgress, endPaced, hasHeader } from './answer-writer.js';
import { KMS_ERROR_STATUS } from './aws-json.js';

/**
 * The status of the transport's own ThrottlingExceptions (a connection past a cap, answers unread): AWS KMS
 * answers ThrottlingException with HTTP 400 (aws-json.ts, KMS_ERROR_STATUS), not the control socket's 503;
 * the SDKs retry it as a throttle by its `__type` either way.
 */
const THROTTLED_STATUS = KMS_ERROR_STATUS.ThrottlingException!;

/** Listener limits: the connection guard's, with `maxPerCaller` counted per source (an address, or on loopback a local user). */
export type ListenerLimits = ConnectionLimits;

/**
 * The guard's defaults (sized for KMS requests: 4 KiB plaintext, 32 KiB
 * policy), with more room per address than a local uid gets: an AWS SDK
 * pools up to 50 sockets per client, and one address may front several
 * clients (a host, a NAT). The per-address cap stays below the overall one,
 * so one address cannot take every connection.
 */
export const DEFAULT_LIMITS: ListenerLimits = Object.freeze({ ...GUARD_LIMITS, maxPerCaller: 128, maxTotal: 1024 });

/** What a request's connection says about its caller: one object per connection, built at its first request. */
export interface WireConnection {
  /** The client's address (an IPv4-mapped IPv6 address as IPv4). */
  sourceIp: string;
  /**
   * Whom the connection counts against, as its admission counted it (loopback-peers.ts connectionSource:
   * `uid:N` on loopback, an IPv6 address by its /64); absent where not known. The data path's pacing
   * (data-path-first.ts) takes turns by it.
   */
  source?: string;
  /** The TLS session, for CloudTrail's `tlsDetails`; absent on plain HTTP. */
  tls?: { tlsVersion: string; cipherSuite?: string };
}

/** Why a request's body was not read: the transport's limits, or the client going away. */
export type WireBodyError =
  | { kind: 'too-large'; limit: number }
  | { kind: 'body-budget' }
  | { kind: 'in-flight'; limit: number }
  | { kind: 'aborted' };

/**
 * Requests one connection may have waiting for answers (HTTP/1.1 pipelining;
 * the AWS SDKs and CLI send one at a time). node's parser reads pipelined
 * requests as fast as they arrive, whatever is still unanswered, so without
 * this cap one connection could queue any number of requests for the main
 * thread. Past it a request is answered ThrottlingException without being
 * read; node holds answers in order and stops reading the socket once they
 * pile up, so the refusals are bounded too.
 */
export const MAX_IN_FLIGHT_PER_CONNECTION = 32;

/** One HTTP request as the listener's transport-free half reads it (KmsListener.handleWire). */
export interface WireRequest {
  method: string;
  url: string;
  /** node's flat [name, value, name, value, ...] form, names as sent. */
  rawHeaders: string[];
  /** The body as sent (SigV4 hashes these bytes); empty when `bodyError` is set. */
  body: Buffer;
  bodyError?: WireBodyError;
  conn: WireConnection;
}

/** The answer: written with `writeHead(status, headers)` and `end(body)`. */
export interface WireResponse {
  status: number;
  headers: string[] | Record<string, string | number>;
  /** A Buffer is the answer's own: the transport zeroes it once written. */
  body: string | Buffer;
}

/** A request handed over by the transport; `respond` writes the answer (once). */
export interface TransportRequest extends WireRequest {
  respond(w: WireResponse): void;
}

export interface TransportOptions {
  host: string;
  port: number;
  tls?: { cert: Buffer | string; key: Buffer | string };
  limits: ListenerLimits;
  /** Connections refused by the limits, summed per (address, reason). */
  onRefusals: (rows: RefusalSummary[]) => void;
  /**
   * A body's reservation in the guard's body budget is kept until its answer
   * is written, not only until the body is read, on the main thread as in the
   * front-end worker: the budget bounds the requests being handled (512 KiB
   * PutSnapshotBlock bodies awaiting the store, requests queued for the main
   * thread), not only those being read.
   */
  onRequest: (r: TransportRequest) => void;
  /** A connection that carried at least one request closed. */
  onConnectionClosed?: (c: WireConnection) => void;
}


/**
 * Connections closed after their answers to make room for another source's (HttpTransport.makeRoom) are no
 * longer counted by the guard; past this many at once, one is closed at once instead, so they stay bounded.
 */
const MAX_RETIRING = 256;

/** An admitted connection, as makeRoom sees it: whose, and whether a request of it is being answered. */
interface HeldConnection {
  source: string;
  admission: Admission;
  /** Requests read and not yet answered and written out. */
  busy: number;
  /** Gave its slot to another source's connection: closed once its answers are written. */
  retired: boolean;
}

export class HttpTransport {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  /** Admitted connections (the accepted TCP sockets), oldest first, while the guard counts them. */
  private readonly held = new Map<Socket, HeldConnection>();
  /**
   * A request's socket's connection: over TLS the request comes on the TLS socket, not the TCP socket admitted,
   * so it is found by the peer's address and port (unique among open connections), kept from accept.
   */
  private readonly byPeer = new Map<string, HeldConnection>();
  private readonly heldOf = new WeakMap<Socket, HeldConnection | null>();
  private retiring = 0;
  /** Connections refused at accept: anything the HTTP parser still makes of them is ignored. */
  private readonly refused = new WeakSet<Socket>();
  private readonly conns = new WeakMap<Socket, WireConnection>();
  /** Each connection's source for the body budget and in-flight refusals (an address, or `uid:N` on loopback). */
  private readonly sources = new WeakMap<Socket, string>();
  /** Requests handed over and not yet answered, per connection. */
  private readonly inFlight = new WeakMap<Socket, number>();
  /** Answers handed to node and not yet written, per connection (held in the body budget until they are). */
  private readonly unwritten = new WeakMap<Socket, number>();
  /** Per connection with answers: how much of them the kernel has taken, and the idle timer over them. */
  private readonly progress = new WeakMap<Socket, AnswerProgress>();
  readonly guard: ConnectionGuard;

  constructor(private readonly o: TransportOptions) {
    // No exempt address (kms-listener.ts says why).
    this.guard = new ConnectionGuard(o.limits, { onRefusals: o.onRefusals });
  }

  /** Start listening; resolves with the bound address (port 0 picks a free one). */
  async listen(): Promise<{ host: string; port: number; protocol: 'http' | 'https' }> {
    const { o } = this;
    const l = this.guard.limits;
    const opts = {
      maxHeaderSize: l.maxHeaderBytes,
      headersTimeout: l.headersTimeoutMs,
      requestTimeout: l.requestTimeoutMs,
      keepAliveTimeout: l.keepAliveTimeoutMs,
      // How often node looks for connections past headersTimeout/requestTimeout (default 30 s).
      connectionsCheckingInterval: Math.min(1_000, l.headersTimeoutMs),
    };
    const handler = (req: IncomingMessage, res: ServerResponse): void => this.serve(req, res);
    // handshakeTimeout: node's default (120 s) would let a caller hold slots with connections that
    // never finish the TLS handshake; headersTimeout only starts after it.
    const server = o.tls
      ? createHttpsServer({ ...opts, cert: o.tls.cert, key: o.tls.key, handshakeTimeout: l.headersTimeoutMs }, handler)
      : createHttpServer(opts, handler);
    // Admitted on the TCP connection, before any TLS handshake is paid for. A source is its address,
    // except on loopback, where any local user may use any address of 127.0.0.0/8: there it is the
    // local user owning the client's socket, so one user cannot take the connections remote hosts need.
    server.on('connection', (s: Socket) => void this.admit(s, connectionSource(s), sourceAddress(s)));
    // 431, 408 or 400, then closed within a second even if the client neither reads nor closes (a slowloris
    // trickling bytes past the timeouts would otherwise keep its half-open connection and its slot).
    server.on('clientError', (e: NodeJS.ErrnoException, s: Socket) => answerClientError(e, s));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(o.port, o.host, () => { server.off('error', reject); resolve(); });
    });
    this.server = server;
    const a = server.address() as { address: string; port: number };
    return { host: a.address, port: a.port, protocol: o.tls ? 'https' : 'http' };
  }

  /** Count `s` for `caller` (an address, or `uid:N` on loopback), or refuse it; whether it was admitted. */
  private admit(s: Socket, caller: string, address: string): boolean {
    if (s.destroyed) return false;
    let admitted = this.guard.admit(caller, address);
    if (admitted instanceof ConnectionThrottledError && admitted.reason === 'total-limit' && this.makeRoom(caller)) {
      admitted = this.guard.admit(caller, address);
    }
    if (admitted instanceof ConnectionThrottledError) {
      this.refused.add(s);
      // Over TLS a plaintext answer would be noise to the client: close at once.
      if (this.o.tls) s.destroy(); else refuseSocket(s, admitted, THROTTLED_STATUS);
      return false;
    }
    this.sockets.add(s);
    this.sources.set(s, caller); // the same source for its bodies (sourceOf): a plain HTTP request's socket is this one
    const held: HeldConnection = { source: caller, admission: admitted, busy: 0, retired: false };
    const peer = peerKey(s);
    this.held.set(s, held);
    if (peer) this.byPeer.set(peer, held);
    s.on('close', () => {
      this.sockets.delete(s);
      this.held.delete(s);
      if (peer && this.byPeer.get(peer) === held) this.byPeer.delete(peer);
      held.admission.release();
    });
    return true;
  }

  /**
   * Make room for a connection of `source` that the overall limit refused; true when a slot was freed.
   * Per-source caps alone leave the total to whoever fills it first: a host using a few addresses
   * (128 connections each) would keep every other host out, its refresh of volume keys included.
   * So, as the metrics listener does (metrics-listener.ts, makeRoom): the oldest connection with
   * no request being answered (a TLS handshake or headers still to come, or idle between requests)
   * of a source holding at least two more than `source` does is closed; else the oldest of the
   * source holding the most, if it holds at least two more, gives its slot now and is closed once
   * the answers it waits for are written (none is lost). A source holding none gets in while
   * another holds many; a source never takes the place of one holding as few as it would.
   */
  private makeRoom(source: string): boolean {
    const count = new Map<string, number>();
    for (const h of this.held.values()) count.set(h.source, (count.get(h.source) ?? 0) + 1);
    const mine = count.get(source) ?? 0;
    for (const [s, h] of this.held) {
      if (h.busy === 0 && count.get(h.source)! >= mine + 2) return this.giveUp(s, h, true);
    }
    let top: string | undefined;
    let most = 0;
    for (const [src, n] of count) if (n > most) { top = src; most = n; }
    if (top === undefined || most < mine + 2) return false;
    for (const [s, h] of this.held) if (h.source === top) return this.giveUp(s, h, h.busy === 0 || this.retiring >= MAX_RETIRING);
    return false;
  }

  /** `s` no longer counts: closed now, or (`now` false) once the answers it waits for are written. */
  private giveUp(s: Socket, h: HeldConnection, now: boolean): true {
    this.held.delete(s);
    h.admission.release();
    h.retired = true;
    this.guard.noteGaveSlot(h.source, sourceAddress(s));
    if (now) {
      s.destroy();
    } else {
      this.retiring++;
      s.once('close', () => this.retiring--);
    }
    return true;
  }

  /** The admitted connection a request's socket belongs to (the socket itself on plain HTTP, its TCP socket's over TLS). */
  private connectionOf(socket: Socket): HeldConnection | undefined {
    let h = this.heldOf.get(socket);
    if (h === undefined) {
      const peer = peerKey(socket);
      h = (peer && this.byPeer.get(peer)) || null;
      this.heldOf.set(socket, h);
    }
    return h ?? undefined;
  }

  /** Stop accepting, close every connection, report the refusals still pending. */
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

  /** The connection's address and TLS session, read once per connection (after the handshake). */
  private connection(s: Socket): WireConnection {
    let c = this.conns.get(s);
    if (c) return c;
    const t = s as Partial<TLSSocket>;
    const protocol = typeof t.getProtocol === 'function' ? t.getProtocol() : undefined;
    c = { sourceIp: (s.remoteAddress ?? '').replace(/^::ffff:/, ''), source: this.sourceOf(s) };
    if (protocol) c.tls = { tlsVersion: protocol, ...(t.getCipher?.()?.standardName ? { cipherSuite: t.getCipher!()!.standardName } : {}) };
    this.conns.set(s, c);
    // On the socket that carried the requests: over TLS that is the TLS socket, not the TCP socket admitted at
    // accept (whose close would find no connection under its own key, and the front-end worker would never
    // report the connection gone: kms-front.ts would keep it for good).
    const made = c;
    if (s.closed) this.o.onConnectionClosed?.(made); // the worker holds it until the request it is read for (closedEarly)
    else s.once('close', () => this.o.onConnectionClosed?.(made));
    return c;
  }

  /** The source a connection's bodies and requests count against, as its admission did (loopback-peers.ts); looked up once per TLS connection (its socket is not the one admitted). */
  private sourceOf(socket: Socket): string {
    let key = this.sources.get(socket);
    if (key === undefined) {
      key = connectionSource(socket);
      this.sources.set(socket, key);
    }
    return key;
  }

  /** The connection's answer progress (answer-writer.ts), made at its first answer; its idle period is the request timeout. */
  private progressOf(socket: Socket): AnswerProgress {
    let p = this.progress.get(socket);
    if (!p) {
      const made = new AnswerProgress(this.guard.limits.requestTimeoutMs, () => socket.destroy());
      socket.once('close', () => made.close());
      this.progress.set(socket, made);
      p = made;
    }
    return p;
  }

  private serve(req: IncomingMessage, res: ServerResponse): void {
    if (this.refused.has(req.socket)) { req.resume(); return; } // answered ThrottlingException at accept; refuseSocket closes it
    const socket = req.socket;
    // Each answer waits for its socket's 'close' (whenWritten), up to MAX_IN_FLIGHT_PER_CONNECTION of them at once.
    if (socket.getMaxListeners() < MAX_IN_FLIGHT_PER_CONNECTION + 16) socket.setMaxListeners(MAX_IN_FLIGHT_PER_CONNECTION + 16);
    const conn = this.connection(socket);
    const source = this.sourceOf(socket);
    const held = this.connectionOf(socket);
    if (held) held.busy++;
    /** The answer is written (or the connection gone): a connection that gave its slot closes once it has none left to write. */
    const done = (): void => {
      if (!held) return;
      held.busy--;
      if (held.retired && held.busy <= 0) socket.destroy();
    };
    let reserved = 0;
    let answered = false;
    /** A body refused while it streamed in: answered once it has been read to its end, then the connection closes. */
    let closeAfter = false;
    const respond = (answer: WireResponse): void => {
      if (answered) return;
      answered = true;
      this.inFlight.set(socket, (this.inFlight.get(socket) ?? 1) - 1);
      this.guard.releaseBody(source, reserved);
      reserved = 0;
      let w = answer;
      // The answer is held for the caller until it is written: in the body budget, as its request was, and only
      // while the client keeps reading (answer-writer.ts: the kernel must take 16 KiB of the connection's answers
      // in each request-timeout period). A client that pipelines and never reads would otherwise have node hold
      // every answer (512 KiB GetSnapshotBlock blocks, in the clear) for as long as it keeps the connection open.
      // Past the caller's share, a connection with none of its answers unwritten still gets this one (counted all
      // the same: a client that reads is never refused its answer, nor a refusal its own); one that has answers
      // it has not read yet gets a ThrottlingException instead.
      const bytes = typeof w.body === 'string' ? Buffer.byteLength(w.body) : w.body.length;
      const unwritten = this.unwritten.get(socket) ?? 0;
      let kept = bytes;
      // holdBody, not reserveBody, when the answer goes out whatever the budget: a failed reserveBody counts a
      // refusal, and the answer refused nothing (a reading client past its share would be audited as throttled).
      if (unwritten === 0) this.guard.holdBody(source, bytes);
      else if (!this.guard.reserveBody(source, bytes)) {
        if (typeof w.body !== 'string') w.body.fill(0);
        w = unreadAnswersRefusal();
        kept = 0;
      }
      this.unwritten.set(socket, unwritten + 1);
      const progress = this.progressOf(socket);
      const sent = typeof w.body === 'string' ? Buffer.byteLength(w.body) : w.body.length;
      let taken = 0;
      const took = (n: number): void => { taken += n; progress.took(n); };
      progress.owe(sent);
      try {
        // node sends Connection: close and ends the socket after the answer: a body refused while it streamed in,
        // or a connection that gave its slot to another source's (makeRoom).
        if (closeAfter || held?.retired) res.shouldKeepAlive = false;
        // Written a slice at a time (answer-writer.ts): node would send a body without a length chunked.
        if (sent > ANSWER_SLICE_BYTES && !hasHeader(w.headers, 'content-length')) res.setHeader('Content-Length', sent);
        res.writeHead(w.status, w.headers as string[]);
        const body = w.body;
        endPaced(res, body, took);
        // Once written ('close' comes after 'finish') or once the connection is gone: a binary body, the answer's
        // own (GetSnapshotBlock's block, in the clear), zeroed, and its bytes given back to the budget. A client gone
        // before the answer: the response's 'close' came already; an answer queued behind a pipelined one never
        // reaches the socket and gets no 'close' of its own: the socket's says it is gone. A string cannot be zeroed.
        whenWritten(res, socket, () => {
          took(sent - taken); // what it still counts as owed, if anything (nothing once the connection is gone)
          this.unwritten.set(socket, (this.unwritten.get(socket) ?? 1) - 1);
          if (typeof body !== 'string') body.fill(0);
          this.guard.releaseBody(source, kept);
          done();
        });
      } catch {
        took(sent - taken);
        this.unwritten.set(socket, (this.unwritten.get(socket) ?? 1) - 1);
        this.guard.releaseBody(source, kept);
        done();
        // An answer node will not write (a header it refuses): the connection is unusable, not the listener.
        if (typeof w.body !== 'string') w.body.fill(0);
        socket.destroy();
      }
    };
    const hand = (body: Buffer, bodyError?: WireBodyError): void => {
      const r: TransportRequest = { method: req.method ?? 'GET', url: req.url ?? '/', rawHeaders: req.rawHeaders, body, conn, respond };
      if (bodyError) r.bodyError = bodyError;
      this.o.onRequest(r);
    };
    const waiting = this.inFlight.get(socket) ?? 0;
    this.inFlight.set(socket, waiting + 1);
    if (waiting >= MAX_IN_FLIGHT_PER_CONNECTION) {
      this.guard.refuseInFlight(source, MAX_IN_FLIGHT_PER_CONNECTION);
      req.resume();
      hand(EMPTY, { kind: 'in-flight', limit: MAX_IN_FLIGHT_PER_CONNECTION });
      return;
    }
    readBody(req, this.guard, source).then(
      (b) => {
        if (!answered) reserved = b.reserved; else this.guard.releaseBody(source, b.reserved);
        hand(b.body);
      },
      (e: WireBodyError & { drained?: boolean }) => {
        if (e.drained) closeAfter = true;
        hand(EMPTY, e);
      },
    );
  }
}

const EMPTY = Buffer.alloc(0);

/** A connection's peer as `address|port`, the same on its TCP and its TLS socket; undefined once it is gone. */
function peerKey(s: Socket): string | undefined {
  return s.remoteAddress !== undefined && s.remotePort !== undefined ? `${s.remoteAddress}|${s.remotePort}` : undefined;
}

/**
 * A header's value as `req.headers` would give it: the first one (`join` absent: node keeps the
 * first user-agent, content-length), or all joined with `join` (node joins unknown repeated headers
 * with ", "). `name` is lower-case.
 */
export function rawHeader(raw: string[], name: string, join?: string): string | undefined {
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
 * over `maxBodyBytes`, `too-large` (a 413); past the bytes all connections, or
 * this address, may buffer at once, `body-budget` (a ThrottlingException). The
 * caller gives `reserved` back to the guard; a failed read has given its bytes
 * back already.
 *
 * A declared Content-Length over the limit is refused before a byte is read
 * (node then reads and drops the body before the connection's next request).
 * A body refused while it streams in (chunked, or past the budget) is no
 * longer buffered but still read to its end, and only then refused, marked
 * `drained`: the transport answers and closes the connection. Answering before
 * the end and closing would reset a client still sending, which then never
 * reads the answer; the request timeout bounds how long the rest may take.
 */
function readBody(req: IncomingMessage, guard: ConnectionGuard, address: string): Promise<{ body: Buffer; reserved: number }> {
  const limit = guard.limits.maxBodyBytes;
  return new Promise((resolve, reject) => {
    const declared = Number(rawHeader(req.rawHeaders, 'content-length'));
    if (declared > limit) { reject({ kind: 'too-large', limit } satisfies WireBodyError); req.resume(); return; }
    let chunks: Buffer[] = [];
    let n = 0;
    let reserved = 0;
    let settled = false;
    let refused: (WireBodyError & { drained: true }) | undefined;
    const drop = (): void => {
      for (const c of chunks) c.fill(0); // best effort (the GC may have copied): bodies may hold plaintext
      chunks = [];
      guard.releaseBody(address, reserved);
      reserved = 0;
    };
    const fail = (e: WireBodyError): void => {
      if (settled) return;
      settled = true;
      drop();
      reject(e);
    };
    const refuse = (e: WireBodyError): void => {
      refused = { ...e, drained: true };
      drop();
    };
    req.on('data', (c: Buffer) => {
      if (settled || refused) return; // the rest of a refused body: read and dropped
      n += c.length;
      if (n > limit) { refuse({ kind: 'too-large', limit }); return; }
      if (!guard.reserveBody(address, c.length)) { refuse({ kind: 'body-budget' }); return; }
      reserved += c.length;
      chunks.push(c);
    });
    req.on('error', () => fail({ kind: 'aborted' }));
    req.on('close', () => { if (!req.complete) fail({ kind: 'aborted' }); });
    req.on('end', () => {
      if (refused) { fail(refused); return; }
      if (settled) return;
      settled = true; // settled: a later 'close' must not give the bytes back twice
      if (chunks.length === 1) { resolve({ body: chunks[0]!, reserved }); return; }
      // Joined into one buffer, which its owner zeroes once answered: the pieces are zeroed now
      // (best effort, as every wipe in JS), or a plaintext would outlive the body it was read into.
      const body = Buffer.concat(chunks);
      for (const c of chunks) c.fill(0);
      resolve({ body, reserved });
    });
  });
}

/**
 * The answer instead of one that would take the caller past its share of the body budget: it holds that much
 * in answers it has not read yet (or bodies being read). ThrottlingException, as a refused connection's.
 */
function unreadAnswersRefusal(): WireResponse {
  const body = JSON.stringify({ __type: 'ThrottlingException', message: 'too many requests: this caller has too many answers it has not read yet; read them, then retry' });
  return { status: THROTTLED_STATUS, headers: { 'Content-Type': 'application/x-amz-json-1.1', 'Content-Length': Buffer.byteLength(body), 'Retry-After': 1 }, body };
}
