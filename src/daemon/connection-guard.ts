/**
 * What one caller of a control listener may consume: connections (per uid and
 * overall), header and body bytes, body bytes buffered at once (per caller and
 * overall), and time. Shared by every listener the
 * daemon opens: the Unix control socket keys callers by uid, the KMS over TCP
 * (kms-listener.ts) by source address (`admit(key)` takes any string or number).
 *
 * Root (uid 0, `exemptKey`) always gets through: it is never counted against
 * the per-caller cap nor the overall cap, so a flood from another uid cannot
 * lock the operator out of `ebsd status` or `ebsd volume detach`.
 *
 * Refused connections are answered at once with a short `ThrottlingException`
 * and closed (`refuseSocket`): HTTP 503 on the control socket and the metrics
 * listener, 400 on the KMS listener, as AWS KMS answers it (kms-transport.ts); refusals are counted per
 * (caller, reason) and reported in aggregate through `onRefusals`, never one
 * report per connection. `readBody` reads a request body within the body
 * limits; the header and time limits are node's own server options, set from
 * `limits` by the listener (control-server.ts shows how).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { EbsdError } from '../util/errors.js';

export interface ConnectionLimits {
  /** Open connections one caller (uid) may hold; the exempt caller has no cap. */
  maxPerCaller: number;
  /** Open connections of all non-exempt callers together. */
  maxTotal: number;
  /** Request line and headers, bytes (node's `maxHeaderSize`). */
  maxHeaderBytes: number;
  /** Request body, bytes. */
  maxBodyBytes: number;
  /** Bytes of request bodies buffered at once over all connections; beyond it, requests are refused with 503. */
  maxBufferedBodyBytes: number;
  /**
   * Bytes of request bodies one caller may have buffered at once (the exempt caller: no cap); beyond it, that
   * caller's requests are refused like the overall budget's. Default: three eighths of `maxBufferedBodyBytes`
   * (48 MiB of 128), so one caller's connections (64 or 128 x 1 MiB) cannot take the whole budget from everyone
   * else, while an EBS direct uploader's 64 parallel 512 KiB PutSnapshotBlock bodies (32 MiB, coldsnap's
   * default) still fit.
   */
  maxBufferedBodyBytesPerCaller?: number;
  /** From connection (or the end of the previous request) to the end of the headers. */
  headersTimeoutMs: number;
  /** From the first byte to the end of the body. */
  requestTimeoutMs: number;
  /** Idle keep-alive connection between requests. */
  keepAliveTimeoutMs: number;
  /** Refusals are summed over this window before one report. */
  refusalWindowMs: number;
}

/**
 * Defaults sized for a host's control socket: the CLI opens one connection per
 * command, the attach path a handful; a 1 MiB body is far above the largest
 * KMS request (4 KiB plaintext, 32 KiB policy). Bodies buffered at once: 128 MiB
 * in all, and three eighths of that (48 MiB) per caller, below what one caller's
 * connections could otherwise hold (64 x 1 MiB here, 128 x 1 MiB per address on
 * the KMS listener), so one caller cannot starve the others' bodies.
 */
export const DEFAULT_LIMITS: ConnectionLimits = Object.freeze({
  maxPerCaller: 64,
  maxTotal: 512,
  maxHeaderBytes: 16 * 1024,
  maxBodyBytes: 1 << 20,
  maxBufferedBodyBytes: 128 << 20,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  keepAliveTimeoutMs: 5_000,
  refusalWindowMs: 10_000,
});

/**
 * Why a connection or request was refused; `gave-slot`: not a refusal of a new connection but an open one
 * closed to make room, past the overall cap, for a source holding fewer (kms-transport.ts, makeRoom).
 */
export const REFUSAL_REASONS = ['per-caller-limit', 'total-limit', 'body-budget', 'in-flight-limit', 'gave-slot'] as const;
export type RefusalReason = (typeof REFUSAL_REASONS)[number];

/** One aggregated report: `count` refusals of `caller` for `reason` between `firstTime` and `lastTime`. */
export interface RefusalSummary {
  /** Whom the limit counted (callerKey): a uid, an address, an IPv6 /64. */
  caller: string;
  /** The first address refused in this row, as the connection came (an IPv6 /64's caller is not an address). */
  sourceAddress?: string;
  reason: RefusalReason;
  count: number;
  firstTime: number;
  lastTime: number;
}

/** A request body over `maxBodyBytes`: HTTP 413, named limit. */
export class RequestTooLargeError extends EbsdError {
  readonly httpStatus = 413;
  constructor(readonly limit: number, what = 'request body') {
    super('REQUEST_TOO_LARGE', `${what} is larger than the limit of ${limit} bytes`, { awsName: 'RequestEntityTooLargeException' });
  }
}

/**
 * Too many connections or buffered bytes: retry later (AWS SDKs back off on ThrottlingException, by its
 * name). `httpStatus` is the control socket's 503 (README.md, "Limits per caller"); the KMS listener
 * answers it with KMS's 400 (aws-json.ts, KMS_ERROR_STATUS).
 */
export class ConnectionThrottledError extends EbsdError {
  readonly httpStatus = 503;
  constructor(readonly reason: RefusalReason, detail: string) {
    super('CONNECTION_THROTTLED', `too many requests: ${detail}`, { awsName: 'ThrottlingException' });
  }
}

/** What a guard holds now (`ConnectionGuard.usage`). */
export interface GuardUsage {
  connections: number;
  callers: number;
  bufferedBodyBytes: number;
  /** Refusals of the current window, not yet reported (audited once the window ends). */
  refusalsPending: number;
}

export interface Admission {
  /** Call once when the connection closes; further calls do nothing. */
  release(): void;
}

/**
 * Whom a limit counts: a uid, an IPv4 address, or for IPv6 the address's /64
 * (`2001:db8:1:2::/64`). One host is routinely given a whole /64 and may take
 * any address in it, so per-address caps on IPv6 would be no caps at all.
 */
export function callerKey(caller: string | number): string {
  const s = String(caller);
  // Not an IPv6 address: an IPv4 address, a local user (`uid:0`), or a key this made already (`…::/64`).
  // The guard is given keys on every request (its body budget), so these return before any parsing.
  if (!s.includes(':') || !IPV6_TEXT.test(s)) return s;
  const g = ipv6Groups(s);
  if (!g) return s;
  // IPv4 clients seen through IPv4-mapped (::ffff:0:0/96) or NAT64 (64:ff9b::/96) addresses: each by its IPv4 address.
  const mapped = g[0] === 0 && g[1] === 0 && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0xffff;
  const nat64 = g[0] === 0x64 && g[1] === 0xff9b && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0;
  if (mapped || nat64) return `${g[6]! >> 8}.${g[6]! & 255}.${g[7]! >> 8}.${g[7]! & 255}`;
  // Link-local (fe80::/10): every link has the same /64, so each address, with its zone, is a caller of its own.
  if ((g[0]! & 0xffc0) === 0xfe80) return s;
  return `${g.slice(0, 4).map((x) => x.toString(16)).join(':')}::/64`;
}

/** What an IPv6 address in text form may hold before its zone id (`%eth0`). */
const IPV6_TEXT = /^[0-9a-fA-F:.]+(?:%.*)?$/;

/** The eight 16-bit groups of an IPv6 address in text form (zone id dropped, trailing dotted IPv4 allowed); undefined if it is not one. */
function ipv6Groups(text: string): number[] | undefined {
  let t = text.replace(/%.*$/, '');
  const v4 = /(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(t);
  if (v4) {
    const b = v4.slice(1).map(Number);
    if (b.some((x) => x > 255)) return undefined;
    t = `${t.slice(0, v4.index)}${((b[0]! << 8) | b[1]!).toString(16)}:${((b[2]! << 8) | b[3]!).toString(16)}`;
  }
  const halves = t.split('::');
  if (halves.length > 2) return undefined;
  const part = (h: string): number[] | undefined => {
    if (h === '') return [];
    const gs = h.split(':');
    return gs.every((g) => /^[0-9a-fA-F]{1,4}$/.test(g)) ? gs.map((g) => parseInt(g, 16)) : undefined;
  };
  const head = part(halves[0]!);
  const tail = halves.length === 2 ? part(halves[1]!) : [];
  if (!head || !tail) return undefined;
  if (halves.length === 1) return head.length === 8 ? head : undefined;
  const fill = 8 - head.length - tail.length;
  return fill >= 1 ? [...head, ...new Array<number>(fill).fill(0), ...tail] : undefined;
}

export class ConnectionGuard {
  readonly limits: ConnectionLimits;
  private readonly perCaller = new Map<string, number>();
  /** A caller that is not an address (a local user on loopback, `uid:N`): the address of its last connection, for refusal rows. */
  private readonly addressOf = new Map<string, string>();
  private total = 0;
  private buffered = 0;
  /** Body bytes buffered per (non-exempt) caller. */
  private readonly bufferedBy = new Map<string, number>();
  private readonly bodyPerCaller: number;
  private readonly refusals = new Map<string, RefusalSummary>();
  /** Refusals per reason since start (`refusals` holds the current window's, per caller). */
  private readonly refusedSinceStart: Partial<Record<RefusalReason, number>> = {};
  private timer: NodeJS.Timeout | undefined;

  constructor(
    limits: Partial<ConnectionLimits> = {},
    private readonly o: { exemptKey?: string; onRefusals?: (s: RefusalSummary[]) => void; now?: () => number } = {},
  ) {
    this.limits = { ...DEFAULT_LIMITS, ...limits };
    if (this.limits.maxBufferedBodyBytesPerCaller === undefined) delete this.limits.maxBufferedBodyBytesPerCaller;
    for (const [k, v] of Object.entries(this.limits)) {
      if (!Number.isSafeInteger(v) || v <= 0) throw new EbsdError('BAD_LIMIT', `connection limit ${k} must be a positive integer, got ${v}`);
    }
    const total = this.limits.maxBufferedBodyBytes;
    this.bodyPerCaller = Math.min(total, this.limits.maxBufferedBodyBytesPerCaller ?? Math.max(1, Math.floor((total * 3) / 8)));
  }

  private now(): number {
    return (this.o.now ?? Date.now)();
  }

  /**
   * Count a new connection of `caller`, or say why it is refused. `address`:
   * the connection's source address, for a refusal's row when the caller is
   * not an address (a local user on loopback, `uid:N`).
   */
  admit(caller: string | number, address?: string): Admission | ConnectionThrottledError {
    const key = callerKey(caller);
    if (key === this.o.exemptKey) return { release: () => {} };
    const mine = this.perCaller.get(key) ?? 0;
    if (mine >= this.limits.maxPerCaller) {
      return this.refuse(key, 'per-caller-limit', `caller ${key} already holds ${mine} connections (limit ${this.limits.maxPerCaller})`, address ?? String(caller));
    }
    if (this.total >= this.limits.maxTotal) {
      return this.refuse(key, 'total-limit', `${this.total} connections open (limit ${this.limits.maxTotal})`, address ?? String(caller));
    }
    this.perCaller.set(key, mine + 1);
    this.total++;
    if (address !== undefined && address !== key) this.addressOf.set(key, address);
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.total--;
        const n = (this.perCaller.get(key) ?? 1) - 1;
        if (n > 0) this.perCaller.set(key, n);
        else {
          this.perCaller.delete(key);
          this.addressOf.delete(key);
        }
      },
    };
  }

  /**
   * Reserve `bytes` of body buffer for `caller`; false (and a counted refusal)
   * when the daemon already buffers `maxBufferedBodyBytes`, or this caller its
   * share (`maxBufferedBodyBytesPerCaller`). The exempt caller is never
   * refused. Give the bytes back with `releaseBody(caller, bytes)`.
   */
  reserveBody(caller: string | number, bytes: number): boolean {
    const key = callerKey(caller);
    if (key === this.o.exemptKey) {
      this.buffered += bytes;
      return true;
    }
    const mine = this.bufferedBy.get(key) ?? 0;
    if (mine + bytes > this.bodyPerCaller) {
      this.refuse(key, 'body-budget', `caller ${key} has ${mine} bytes of request bodies buffered (limit ${this.bodyPerCaller})`, String(caller));
      return false;
    }
    if (this.buffered + bytes > this.limits.maxBufferedBodyBytes) {
      this.refuse(key, 'body-budget', 'request bodies buffered', String(caller));
      return false;
    }
    this.buffered += bytes;
    this.bufferedBy.set(key, mine + bytes);
    return true;
  }

  /**
   * Count `bytes` held for `caller` in the body budget whatever it holds
   * already (an answer a connection must be able to get even past the budget,
   * kms-transport.ts); given back with `releaseBody` as a reservation is.
   */
  holdBody(caller: string | number, bytes: number): void {
    const key = callerKey(caller);
    this.buffered += bytes;
    if (key !== this.o.exemptKey) this.bufferedBy.set(key, (this.bufferedBy.get(key) ?? 0) + bytes);
  }

  /**
   * A request refused because its connection already has `limit` requests
   * waiting for answers (HTTP/1.1 pipelining): counted with the other
   * refusals, audited in aggregate.
   */
  refuseInFlight(caller: string | number, limit: number): ConnectionThrottledError {
    return this.refuse(callerKey(caller), 'in-flight-limit', `${limit} requests already in flight on this connection`, String(caller));
  }

  /**
   * A connection of `caller` that gave its slot to another source's past the overall cap (closed now, or
   * once its answers are written): counted with the refusals, so the audit shows whose connections went.
   */
  noteGaveSlot(caller: string | number, address?: string): void {
    this.refuse(callerKey(caller), 'gave-slot', 'connection closed to make room for a source holding fewer', address ?? String(caller));
  }

  /** Give back `bytes` that `reserveBody(caller, …)` reserved. */
  releaseBody(caller: string | number, bytes: number): void {
    if (bytes <= 0) return;
    this.buffered = Math.max(0, this.buffered - bytes);
    const key = callerKey(caller);
    const left = (this.bufferedBy.get(key) ?? 0) - bytes;
    if (left > 0) this.bufferedBy.set(key, left);
    else this.bufferedBy.delete(key);
  }

  /**
   * A request body as UTF-8 text, within the limits: a declared
   * Content-Length over `maxBodyBytes` is refused before a byte is read, a
   * longer streamed body as soon as it passes the limit (RequestTooLargeError,
   * 413); past the shared buffer budget, ConnectionThrottledError (503). The
   * rest of a refused body is read and dropped, so the answer reaches the
   * client instead of a reset; the server's requestTimeout bounds how long.
   * Chunks are held only while the request is open: an aborted or timed-out
   * request drops them and gives its bytes back to the budget.
   */
  readBody(req: IncomingMessage, caller: string | number): Promise<string> {
    const max = this.limits.maxBodyBytes;
    const declared = Number(req.headers['content-length'] ?? NaN);
    if (declared > max) {
      req.resume(); // drop the body
      return Promise.reject(new RequestTooLargeError(max));
    }
    return new Promise((resolve, reject) => {
      let chunks: Buffer[] = [];
      let n = 0;
      let reserved = 0;
      let failed = false;
      const drop = (): void => {
        for (const c of chunks) c.fill(0); // best effort (the GC may have copied): bodies may hold plaintext
        chunks = [];
        this.releaseBody(caller, reserved);
        reserved = 0;
      };
      const fail = (e: Error): void => {
        if (failed) return;
        failed = true;
        drop();
        reject(e);
      };
      req.on('data', (c: Buffer) => {
        if (failed) return; // discarding the rest of a refused body
        n += c.length;
        if (n > max) return fail(new RequestTooLargeError(max));
        if (!this.reserveBody(caller, c.length)) {
          return fail(new ConnectionThrottledError('body-budget', 'the daemon is buffering too many request bodies; retry'));
        }
        reserved += c.length;
        chunks.push(c);
      });
      // Aborted, or destroyed by the request timeout: nothing will read these chunks again.
      const aborted = (): void => fail(new EbsdError('REQUEST_ABORTED', 'request closed before its body was complete', { awsName: 'RequestAbortedException' }));
      req.on('error', aborted);
      req.on('close', () => { if (!req.complete) aborted(); });
      req.on('end', () => {
        if (failed) return;
        const whole = Buffer.concat(chunks);
        const text = whole.toString('utf8');
        whole.fill(0);
        drop();
        resolve(text);
      });
    });
  }

  /** Current use, for `ebsd status`, the metrics and tests. */
  usage(): GuardUsage {
    let pending = 0;
    for (const s of this.refusals.values()) pending += s.count;
    return { connections: this.total, callers: this.perCaller.size, bufferedBodyBytes: this.buffered, refusalsPending: pending };
  }

  /**
   * `usage`, with the callers holding the most connections (at most `top`, most first) and the
   * refusals counted since start per reason: on a KMS host, which hosts hold its slots and who
   * was turned away (the audit has each refusal; this is the sum an operator looks at first).
   */
  detailedUsage(top: number): GuardUsage & { busiest: { caller: string; connections: number }[]; refused: Partial<Record<RefusalReason, number>> } {
    const busiest = [...this.perCaller].sort((a, b) => b[1] - a[1]).slice(0, top).map(([caller, connections]) => ({ caller, connections }));
    return { ...this.usage(), busiest, refused: { ...this.refusedSinceStart } };
  }

  /** Report what is pending now (also on close). */
  flushRefusals(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.refusals.size === 0) return;
    const out = [...this.refusals.values()];
    this.refusals.clear();
    this.o.onRefusals?.(out);
  }

  private refuse(key: string, reason: RefusalReason, detail: string, raw: string = key): ConnectionThrottledError {
    if (raw === key) raw = this.addressOf.get(key) ?? raw;
    this.refusedSinceStart[reason] = (this.refusedSinceStart[reason] ?? 0) + 1;
    const t = this.now();
    const k = `${key}\0${reason}`;
    const s = this.refusals.get(k);
    if (s) {
      s.count++;
      s.lastTime = t;
    } else {
      // Distinct callers are bounded by the uid space of the host; a network
      // listener keys by address, so cap the table and fold the rest into one row.
      const slot = this.refusals.size < 1024 ? k : `*\0${reason}`;
      const row = this.refusals.get(slot);
      if (row) { row.count++; row.lastTime = t; } else this.refusals.set(slot, { caller: slot === k ? key : '*', ...(slot === k && raw !== key ? { sourceAddress: raw } : {}), reason, count: 1, firstTime: t, lastTime: t });
    }
    if (!this.timer) {
      this.timer = setTimeout(() => this.flushRefusals(), this.limits.refusalWindowMs);
      this.timer.unref();
    }
    return new ConnectionThrottledError(reason, detail);
  }
}

/**
 * Answer a refused connection with a complete HTTP/1.1 answer (`status`: the error's 503 unless the
 * listener's protocol says otherwise, the KMS listener's 400) and close it as soon as the answer is
 * handed to the kernel: the fd is freed at once, and a client that reads sees a ThrottlingException
 * rather than a reset.
 */
export function refuseSocket(s: Socket, e: ConnectionThrottledError, status: number = e.httpStatus): void {
  // {"__type","message"} only: a client that reads another member first would miss the typed exception.
  const body = JSON.stringify({ __type: e.awsName, message: e.message });
  answerAndClose(s, `HTTP/1.1 ${status} ${status === 400 ? 'Bad Request' : 'Service Unavailable'}\r\nContent-Type: application/x-amz-json-1.1\r\n`
    + `Content-Length: ${Buffer.byteLength(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n${body}`);
}

/**
 * Write `answer` (a whole HTTP response) and close the connection within
 * LINGER_MS whatever the client does. Half-close and keep reading what the
 * client sends: closing a Unix socket with unread data resets it, and the
 * client would see ECONNRESET instead of the answer. The socket closes when
 * the client does, or after the grace: node's servers allow half-open
 * connections, so a client that never reads nor closes (a slowloris still
 * trickling bytes) would otherwise keep the connection, and its slot in the
 * caps, for good. Past LINGER_MAX lingering sockets, closed at once (fds stay
 * bounded).
 */
export function answerAndClose(s: Socket, answer: string): void {
  s.on('error', () => {}); // the peer may already be gone
  if (lingering >= LINGER_MAX) {
    s.end(answer, () => s.destroy());
    return;
  }
  lingering++;
  s.once('close', () => lingering--);
  s.end(answer);
  setTimeout(() => s.destroy(), LINGER_MS).unref();
}

/**
 * Answer what node's HTTP parser refused on a connection (a server's
 * 'clientError') and close it with answerAndClose: 431 for headers over the
 * limit, 408 for a request not sent within the header or request timeout,
 * 400 otherwise. `detail` says which limit, for the answer's text.
 */
export function answerClientError(e: NodeJS.ErrnoException, s: Socket, detail: (status: 400 | 408 | 431) => string = () => ''): void {
  if (!s.writable) { s.destroy(); return; }
  const [status, text] = e.code === 'HPE_HEADER_OVERFLOW' ? [431, 'Request Header Fields Too Large'] as const
    : e.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? [408, 'Request Timeout'] as const : [400, 'Bad Request'] as const;
  const body = `${text}${detail(status) ? `: ${detail(status)}` : ''}\n`;
  answerAndClose(s, `HTTP/1.1 ${status} ${text}\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
}

/**
 * Run `done` once, when `res` is written or its connection is gone, whichever
 * comes first. A client gone before the answer: the response's 'close' came
 * already; an answer queued behind a pipelined one never reaches the socket
 * and gets no 'close' of its own: the socket's says it is gone.
 */
export function whenWritten(res: ServerResponse, socket: Socket, done: () => void): void {
  if (res.closed || res.destroyed || socket.destroyed) {
    done();
    return;
  }
  const once = (): void => {
    res.off('close', once);
    socket.off('close', once);
    done();
  };
  res.once('close', once);
  socket.once('close', once);
}

const LINGER_MAX = 256;
const LINGER_MS = 1_000;
let lingering = 0;
