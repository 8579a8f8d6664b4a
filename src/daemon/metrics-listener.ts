/**
 * The HTTP door to a daemon's metrics registry (`ebsd daemon --metrics-listen
 * HOST:PORT`, README "Running in production"): `GET /metrics`, bounded in
 * connections, time and collects, since it has no access control.
 */

import { createServer, type Server } from 'node:http';
import type { Socket } from 'node:net';
import type { Registry } from 'prom-client';
import { EbsdError } from '../util/errors.js';
import { parseMetricsListen } from './config.js';
import type { Logger } from '../util/logger.js';
import { isLoopback } from '../util/loopback.js';
import { connectionSource, loopbackLookupProblem } from './loopback-peers.js';
import { ConnectionGuard, ConnectionThrottledError, answerClientError, refuseSocket, type Admission } from './connection-guard.js';

/**
 * Limits of the metrics listener. Prometheus holds one keep-alive connection
 * per target and `ebsd top` one per viewer, so a few per source are plenty.
 * A source is an address (an IPv6 /64), except on loopback, where any local
 * user may use any address of 127.0.0.0/8: there the source is the local
 * user owning the client's socket (loopback-peers.ts). The total is what
 * keeps the daemon's file descriptors for its control socket and volumes.
 */
export const METRICS_LIMITS = Object.freeze({
  /** Open connections from one source: an address (an IPv6 /64, connection-guard.ts callerKey), or on loopback one local user. */
  maxPerSource: 16,
  /** Open connections of all sources together; node drops connections past twice this at accept. */
  maxTotal: 64,
  maxHeaderBytes: 8 * 1024,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 10_000,
  keepAliveTimeoutMs: 5_000,
  maxRequestsPerConnection: 1_000,
  /**
   * Requests one connection may have unanswered (pipelined); past it the
   * connection is closed. A scraper sends one at a time; without a cap a slow
   * reader pipelining hundreds would have each answer kept in memory (a
   * shared collect answers them all at once).
   */
  maxUnansweredPerConnection: 2,
  /** Least time between the end of one collect and the start of the next (scrapes in between share it). */
  minCollectGapMs: 100,
  /** A connection whose oldest request has waited this long (its answers unread) counts as idle when room is made. */
  stalledAnswerMs: 2_000,
  /**
   * Refused connections given a 503 and a moment to read it at once, and busy connections that gave
   * their slot still finishing their answers; past this many of either, such connections are closed at
   * once (they are outside the count of the limits above, and must not fill node's accept ceiling).
   */
  maxLingeringRefused: 16,
});

/**
 * An admitted connection: its source (`uid:N` on loopback, else
 * connection-guard.ts callerKey of its address), the requests it has being
 * answered and answered so far, its slot; `retired` once it gave its slot to
 * another while answering (closed when those answers are written).
 */
interface OpenConnection { key: string; busy: number; answered: number; admission: Admission; retired: boolean; busySince: number }

export class MetricsListener {
  private server: Server | undefined;
  private guard: ConnectionGuard | undefined;
  /** Admitted connections holding a slot; Map order is age. */
  private readonly open = new Map<Socket, OpenConnection>();
  /** Connections that gave their slot while answering: closed once those answers are written. */
  private readonly retiring = new WeakMap<Socket, OpenConnection>();
  /** Refused connections still open for their 503 (refuseSocket); retired ones still answering. */
  private lingering = 0;
  private retiringCount = 0;
  /** Requests that arrived on refused sockets (answered 503 already, closing within a second). */
  private readonly refusedRequests = new WeakMap<Socket, number>();
  /** The collect that scrapes arriving now will share, not started yet; the one running (see `collect`). */
  private queued: Promise<string> | undefined;
  private running: Promise<string> | undefined;
  private lastCollectEnd = -Infinity;

  /** `stalledAnswerMs`: METRICS_LIMITS.stalledAnswerMs unless a test needs a setup slower than it to count nothing as stalled. */
  constructor(private readonly registry: Registry, private readonly stalledAnswerMs: number = METRICS_LIMITS.stalledAnswerMs) {}

  /**
   * Serve `GET /metrics` on HOST:PORT; resolves with the bound address (PORT 0: a free port).
   *
   * The listener has no access control (README "Running in production"), so
   * whoever can connect must not be able to take the daemon's file descriptors
   * or its main thread: connections are counted per source address and in all
   * (ConnectionGuard, as the KMS listener counts them), node drops anything
   * past a hard ceiling at accept, idle
   * and slow connections are closed by the header, request and keep-alive
   * timeouts, and scrapes share collects (`collect`). A connection over a
   * limit may take the place of another (`makeRoom` says which): holding
   * connections open (keep-alive, or headers sent slowly) cannot keep a
   * scraper out, and connections kept busy take no more than their sources'
   * equal shares of the total. Otherwise the new one is refused (503,
   * closed). On loopback a source is a local user, not an address.
   */
  async listen(spec: string, log: Logger): Promise<{ host: string; port: number }> {
    const { host, port } = parseMetricsListen(spec);
    const l = METRICS_LIMITS;
    const guard = new ConnectionGuard({
      maxPerCaller: l.maxPerSource, maxTotal: l.maxTotal, headersTimeoutMs: l.headersTimeoutMs,
      requestTimeoutMs: l.requestTimeoutMs, keepAliveTimeoutMs: l.keepAliveTimeoutMs,
    }, { onRefusals: (rows) => log.warn({ refusals: rows }, 'metrics listener refused connections over its limits') });
    this.guard = guard;
    const server = createServer({
      maxHeaderSize: l.maxHeaderBytes,
      headersTimeout: l.headersTimeoutMs,
      requestTimeout: l.requestTimeoutMs,
      keepAliveTimeout: l.keepAliveTimeoutMs,
      // How often node looks for connections past headersTimeout/requestTimeout (default 30 s).
      connectionsCheckingInterval: 1_000,
    }, (req, res) => {
      req.resume(); // a GET has no body; anything sent is dropped
      const socket = req.socket;
      const c = this.open.get(socket) ?? this.retiring.get(socket);
      if (!c) {
        // A refused socket was answered 503 and closes within a second; a client pipelining on it is cut off.
        const n = (this.refusedRequests.get(socket) ?? 0) + 1;
        this.refusedRequests.set(socket, n);
        if (n > l.maxUnansweredPerConnection) socket.destroy();
        return;
      }
      if (c.retired || c.busy >= l.maxUnansweredPerConnection) {
        socket.destroy();
        return;
      }
      if (c.busy++ === 0) c.busySince = performance.now();
      res.once('close', () => {
        c.busy--;
        if (res.writableFinished) c.answered++;
        if (c.retired && c.busy === 0) socket.destroy();
      });
      if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
        res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found: GET /metrics\n');
        return;
      }
      this.collect().then(
        (text) => res.writeHead(200, { 'Content-Type': this.registry.contentType, ...(c.retired ? { Connection: 'close' } : {}) }).end(text),
        (err) => { log.error({ err }, 'metrics scrape failed'); res.writeHead(500).end(); },
      );
    });
    // Admitted ones, plus room for the 503 answers of refused ones (refuseSocket closes them within a second).
    server.maxConnections = l.maxTotal * 2;
    // Requests over the life of one connection; past this many, node answers 503 and closes.
    server.maxRequestsPerSocket = l.maxRequestsPerConnection;
    // A connection that sends nothing at all (not even a request line) is closed after this much silence.
    server.timeout = l.headersTimeoutMs;
    server.on('connection', (s: Socket) => void this.admit(s, connectionSource(s), guard));
    // What node found wrong, said: 431 for headers over the limit, 408 for a request not sent in time, 400 otherwise;
    // then closed within a second even if the client neither reads nor closes (answerAndClose).
    server.on('clientError', (e: NodeJS.ErrnoException, s: Socket) => answerClientError(e, s, (status) => (status === 431
      ? `headers over ${l.maxHeaderBytes} bytes` : status === 408 ? `the request was not sent within ${l.requestTimeoutMs / 1000} s`
        : 'not an HTTP request this listener reads (GET /metrics)')));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e) => reject(new EbsdError('METRICS_LISTEN', `--metrics-listen ${spec}: ${(e as Error).message}`)));
      server.listen(port, host, () => resolve());
    });
    this.server = server;
    const addr = server.address();
    const bound = typeof addr === 'object' && addr ? addr.port : port;
    if (!isLoopback(host)) {
      // Allowed (an operator may firewall it), but said: the listener has no access control (README "Running in production").
      log.warn({ metricsListen: spec, host, port: bound }, '--metrics-listen is not a loopback address: anyone who can reach it reads every attached volume\'s id, I/O and key-cache state; bind it to 127.0.0.1 or firewall the port');
    }
    void loopbackLookupProblem().then((problem) => {
      if (problem) log.warn({ problem }, 'metrics listener: loopback clients are counted per address, not per local user, so one local user can keep a scraper out');
    });
    return { host, port: bound };
  }

  /** Count `s` for `key` (making room if a limit is reached), or refuse it; undefined when refused or already gone. */
  private admit(s: Socket, key: string, guard: ConnectionGuard): OpenConnection | undefined {
    if (s.destroyed) return undefined;
    let admitted = guard.admit(key);
    if (admitted instanceof ConnectionThrottledError && this.makeRoom(key, admitted.reason === 'per-caller-limit')) {
      admitted = guard.admit(key);
    }
    if (admitted instanceof ConnectionThrottledError) {
      // A 503 for the first few; past them, closed at once, so refused connections lingering for their
      // answer cannot fill node's accept ceiling (server.maxConnections) and keep everyone out.
      if (this.lingering < METRICS_LIMITS.maxLingeringRefused) {
        this.lingering++;
        s.once('close', () => this.lingering--);
        refuseSocket(s, admitted);
      } else {
        s.destroy();
      }
      return undefined;
    }
    const admission = admitted;
    const c: OpenConnection = { key, busy: 0, answered: 0, admission, retired: false, busySince: 0 };
    this.open.set(s, c);
    s.on('close', () => {
      this.open.delete(s);
      admission.release();
    });
    return c;
  }

  /**
   * Make room for a connection of source `key` that a limit refused; true
   * when a slot was freed.
   *
   * Idle below means no request being answered, or answers left unread past
   * METRICS_LIMITS.stalledAnswerMs (a slow reader holding its slot).
   *
   * Over the per-source limit: the oldest of `key` with no request being
   * answered, closed; if every one is busy, the source competes only with
   * itself and is refused. Over the total: the oldest with no request being
   * answered of a source holding more than `key` does, closed; else the
   * oldest connection already answered once of the source holding the most,
   * when it holds at least two more than `key`: it gives its slot now and is
   * closed once the answers it is waiting for are written (its scrape is not
   * lost). So connections held open cannot keep a scraper out, connections
   * kept busy take no more than their sources' equal shares of the total, a
   * source holding none gets in while another holds many, and a source never
   * takes the place of one holding as few as it does, nor of a connection
   * waiting for its first answer.
   */
  private makeRoom(key: string, perSource: boolean): boolean {
    // No request being answered, or answers unread for longer than a scraper takes (a slow reader holding its slot).
    const now = performance.now();
    const idle = (c: OpenConnection): boolean => c.busy === 0 || now - c.busySince > this.stalledAnswerMs;
    const close = (s: Socket, c: OpenConnection): true => {
      this.open.delete(s);
      c.admission.release();
      s.destroy();
      return true;
    };
    if (perSource) {
      for (const [s, c] of this.open) if (idle(c) && c.key === key) return close(s, c);
      return false;
    }
    const held = new Map<string, number>();
    for (const c of this.open.values()) held.set(c.key, (held.get(c.key) ?? 0) + 1);
    const mine = held.get(key) ?? 0;
    for (const [s, c] of this.open) if (idle(c) && held.get(c.key)! > mine) return close(s, c);
    // Sources by what they hold, most first: the first with an answered connection gives it.
    const bySize = [...held].filter(([, n]) => n >= mine + 2).sort((x, y) => y[1] - x[1]);
    for (const [top] of bySize) {
      for (const [s, c] of this.open) {
        if (c.key !== top || c.answered === 0) continue;
        // Past a few connections already closing after their answers, closed at once: they are outside
        // the guard's count, and must not fill node's accept ceiling.
        if (this.retiringCount >= METRICS_LIMITS.maxLingeringRefused) return close(s, c);
        this.open.delete(s);
        c.admission.release();
        c.retired = true; // closed when its busy answers are written (the request handler)
        this.retiring.set(s, c);
        this.retiringCount++;
        s.once('close', () => this.retiringCount--);
        return true;
      }
    }
    return false;
  }

  /**
   * The registry's text, shared: every scrape that arrives while a collect
   * runs, or within METRICS_LIMITS.minCollectGapMs of the last one's end,
   * gets the next collect's result. Each answer is still taken after its
   * request arrived, and a flood of scrapes runs at most one collect per gap
   * on the main thread.
   */
  private collect(): Promise<string> {
    if (this.queued) return this.queued;
    const next = (async (): Promise<string> => {
      await null; // `queued` is set before this goes on
      if (this.running) await this.running.catch(() => {});
      const wait = this.lastCollectEnd + METRICS_LIMITS.minCollectGapMs - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait).unref());
      // From here a new scrape waits for the collect after this one: it may have come after state this one read.
      this.queued = undefined;
      const run = this.registry.metrics();
      this.running = run;
      try {
        return await run;
      } finally {
        this.lastCollectEnd = performance.now();
        if (this.running === run) this.running = undefined;
      }
    })();
    this.queued = next;
    return next;
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
    this.guard?.flushRefusals();
  }
}

