/**
 * The KMS listener's front end on a worker thread (`--kms-front-threads 1`,
 * docs/architecture.md, "KMS over the network"): the worker
 * (kms-front-worker.ts) runs TLS, node's HTTP server and the connection guard;
 * this thread gets each complete request and answers it with
 * `KmsListener.handleWire` (SigV4, credentials, STS, the KMS core, audit), as
 * with the listener on this thread. SigV4 signing keys, access keys and the
 * KMS stay here; the worker sees the TLS certificate and key, and requests and
 * answers as sent (which can carry plaintext: their bodies are zeroed once
 * copied or answered, docs/architecture.md §5.2).
 *
 * Hand-off, batched per event-loop turn both ways (one `postMessage` per
 * turn, as the HSM client does, or per HANDOFF_CHUNK requests or answers
 * when a turn has more, so that each thread starts on the first ones while
 * the other prepares the rest): requests as a flat array with one header
 * string each, and all bodies of a batch in one transferred ArrayBuffer; a
 * connection's address and TLS session once per connection. Answers as a flat
 * array. The worker keeps each body's bytes reserved in the guard's body budget
 * until the answer is written, and a connection may have at most
 * MAX_IN_FLIGHT_PER_CONNECTION requests unanswered (kms-transport.ts).
 *
 * The worker dying (an exception, an exit) takes the listener down: `onFatal`
 * is told, and the daemon stops with a non-zero exit.
 */
import { Worker } from 'node:worker_threads';
import { EbsdError } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { devLoaderUrl, HANDOFF_CHUNK } from '../kms/hsm/hsm-client.js';
import type { ConnectionGuard, RefusalSummary } from './connection-guard.js';
import { MAX_IN_FLIGHT_PER_CONNECTION, type ListenerLimits, type WireBodyError, type WireConnection, type WireRequest, type WireResponse } from './kms-transport.js';

/** Fields per request in a batch: id, connection id, method, url, headers ("\n"-joined), body offset, body length, body error. */
export const REQ_FIELDS = 8;
/** Fields per answer: id, status, content type or headers, request id or null, body. */
export const ANS_FIELDS = 5;
/** Where the body sits among an answer's fields. */
const ANS_BODY = 4;
/** `bodyError` on the wire: 0 none. */
export const BODY_ERRORS = ['', 'too-large', 'body-budget', 'aborted', 'in-flight'] as const;

export interface FrontInit {
  host: string;
  port: number;
  tls?: { cert: Buffer | string; key: Buffer | string };
  limits: ListenerLimits;
}

/** Worker -> main. */
export type FrontMessage =
  | { t: 'ready'; address: { host: string; port: number; protocol: 'http' | 'https' } }
  | { t: 'failed'; message: string; code?: string }
  | {
    t: 'batch';
    /** [connId, sourceIp, tlsVersion or '', cipherSuite or '', source or ''] per new connection. */
    conns: (number | string)[];
    reqs: (number | string)[];
    bodies: ArrayBuffer | null;
    /** Connections closed since the last batch. */
    gone: number[];
    refusals: RefusalSummary[] | null;
  }
  | { t: 'closed' }
  | { t: 'usage'; u: DetailedUsage };

/** Main -> worker. */
export type FrontCommand = { t: 'answers'; a: unknown[] } | { t: 'close' } | { t: 'usage'; top: number };

/** The guard's use as the worker reports it (ConnectionGuard.detailedUsage). */
export type DetailedUsage = ReturnType<ConnectionGuard['detailedUsage']>;

/** How long `usage` waits for the worker's answer (it answers between two batches: a busy worker still does within ms). */
const USAGE_WAIT_MS = 1_000;

export interface FrontWorkerOptions extends FrontInit {
  handle: (r: WireRequest) => Promise<WireResponse>;
  onRefusals: (rows: RefusalSummary[]) => void;
  onFatal: (e: Error) => void;
  log: Logger;
}

/** How long `close` waits for the worker to close its connections before terminating it. */
const CLOSE_GRACE_MS = 5_000;

export class FrontWorker {
  private readonly conns = new Map<number, WireConnection>();
  private out: unknown[] = [];
  private scheduled = false;
  private closing = false;
  private dead = false;
  private closedWaiter: (() => void) | undefined;
  /** `usage` calls waiting for the worker's answer, oldest first (it answers in order). */
  private readonly usageWaiters: ((u: DetailedUsage | undefined) => void)[] = [];

  private constructor(
    private readonly worker: Worker,
    readonly address: { host: string; port: number; protocol: 'http' | 'https' },
    private readonly o: FrontWorkerOptions,
  ) {
    worker.on('message', (m: FrontMessage) => this.onMessage(m));
    worker.on('error', (e) => this.died(e));
    worker.on('exit', (code) => this.died(new Error(`exit code ${code}`)));
  }

  static async start(o: FrontWorkerOptions): Promise<FrontWorker> {
    const dev = import.meta.url.endsWith('.ts');
    const url = new URL(dev ? './kms-front-worker.ts' : './kms-front-worker.js', import.meta.url);
    const init: FrontInit = { host: o.host, port: o.port, limits: { ...o.limits }, ...(o.tls ? { tls: o.tls } : {}) };
    const worker = new Worker(url, { workerData: init, execArgv: dev ? ['--import', devLoaderUrl()] : [], name: 'kms-front' });
    let onMsg!: (m: FrontMessage) => void;
    let onErr!: (e: Error) => void;
    let onExit!: (code: number) => void;
    const first = await new Promise<FrontMessage>((resolve, reject) => {
      onMsg = resolve;
      onErr = reject;
      onExit = (code) => reject(new EbsdError('KMS_FRONT_DIED', `the KMS front-end worker exited (code ${code}) before listening`));
      worker.once('message', onMsg);
      worker.once('error', onErr);
      worker.once('exit', onExit);
    }).catch(async (e: unknown) => { await worker.terminate(); throw e; });
    worker.off('error', onErr);
    worker.off('exit', onExit);
    if (first.t !== 'ready') {
      await worker.terminate();
      const m = first as { message?: string; code?: string };
      throw new EbsdError(m.code === 'EADDRINUSE' ? 'KMS_LISTEN_IN_USE' : 'KMS_LISTEN_FAILED', `--kms-listen ${o.host}:${o.port}: ${m.message ?? 'the front-end worker could not listen'}`);
    }
    return new FrontWorker(worker, first.address, o);
  }

  /** Connections the worker has named and not yet reported closed (kms-front.test.ts checks none is left behind). */
  get connectionsKnown(): number {
    return this.conns.size;
  }

  /**
   * The worker's connection guard now (`top`: the busiest sources listed); undefined if the worker
   * is gone or does not answer within USAGE_WAIT_MS (`ebsd status` then says so rather than wait).
   */
  usage(top: number): Promise<DetailedUsage | undefined> {
    if (this.dead || this.closing) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      let done = false;
      const settle = (u: DetailedUsage | undefined): void => { if (!done) { done = true; clearTimeout(timer); resolve(u); } };
      const timer = setTimeout(() => settle(undefined), USAGE_WAIT_MS);
      timer.unref();
      this.usageWaiters.push(settle);
      this.worker.postMessage({ t: 'usage', top } satisfies FrontCommand);
    });
  }

  /** Stop: the worker closes its server and connections (answers still on their way here are dropped). */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (this.dead) return;
    const closed = new Promise<void>((r) => (this.closedWaiter = r));
    this.worker.postMessage({ t: 'close' } satisfies FrontCommand);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([closed, new Promise<void>((r) => { timer = setTimeout(r, CLOSE_GRACE_MS); })]);
    clearTimeout(timer);
    await this.worker.terminate();
  }

  private died(e: Error): void {
    if (this.dead) return;
    this.dead = true;
    this.closedWaiter?.();
    for (const w of this.usageWaiters.splice(0)) w(undefined);
    if (this.closing) return;
    const err = new EbsdError('KMS_FRONT_DIED', `the KMS front-end worker died (${e.message}): the KMS network listener is down`);
    this.o.log.error({ err: e }, err.message);
    this.o.onFatal(err);
  }

  private onMessage(m: FrontMessage): void {
    if (m.t === 'closed') { this.closedWaiter?.(); return; }
    if (m.t === 'usage') { this.usageWaiters.shift()?.(m.u); return; }
    if (m.t !== 'batch') return;
    const c = m.conns;
    for (let i = 0; i < c.length; i += 5) {
      const conn: WireConnection = { sourceIp: c[i + 1] as string };
      if (c[i + 4]) conn.source = c[i + 4] as string;
      if (c[i + 2]) conn.tls = { tlsVersion: c[i + 2] as string, ...(c[i + 3] ? { cipherSuite: c[i + 3] as string } : {}) };
      this.conns.set(c[i] as number, conn);
    }
    const r = m.reqs;
    for (let i = 0; i < r.length; i += REQ_FIELDS) {
      const id = r[i] as number;
      const conn = this.conns.get(r[i + 1] as number) ?? { sourceIp: 'unknown' };
      const block = r[i + 4] as string;
      const req: WireRequest = {
        method: r[i + 2] as string, url: r[i + 3] as string, rawHeaders: block === '' ? [] : block.split('\n'),
        body: m.bodies ? Buffer.from(m.bodies, r[i + 5] as number, r[i + 6] as number) : EMPTY, conn,
      };
      const be = r[i + 7] as number;
      if (be) req.bodyError = bodyError(be, this.o.limits.maxBodyBytes);
      this.o.handle(req).then(
        (w) => { req.body.fill(0); this.answer(id, w); },
        (e: unknown) => { req.body.fill(0); this.answer(id, internal(e, this.o.log)); },
      );
    }
    for (const id of m.gone) this.conns.delete(id);
    if (m.refusals) this.o.onRefusals(m.refusals);
  }

  private answer(id: number, w: WireResponse): void {
    if (this.dead || this.closing) {
      if (typeof w.body !== 'string') w.body.fill(0); // not sent: a binary answer is zeroed all the same
      return;
    }
    const h = w.headers;
    // The listener's JSON and XML answers travel as (content type, request id); node's flat form is rebuilt in the worker.
    if (Array.isArray(h) && h.length === 6 && h[0] === 'Content-Type' && h[2] === 'Content-Length' && h[4] === 'x-amzn-RequestId' && typeof w.body === 'string') {
      this.out.push(id, w.status, h[1], h[5], w.body);
    } else {
      // A binary body as its own bytes (a pooled Buffer would clone its whole pool), moved to the
      // worker (flush); the answer's buffer, which may hold a plaintext block, is zeroed once copied.
      let body: string | Uint8Array;
      if (typeof w.body === 'string') body = w.body;
      else {
        body = new Uint8Array(new ArrayBuffer(w.body.length)); // off V8's heap even when small (protocol.ts exactBytes says why)
        body.set(w.body);
        w.body.fill(0);
      }
      this.out.push(id, w.status, h, null, body);
    }
    if (this.out.length >= HANDOFF_CHUNK * ANS_FIELDS) return this.flush();
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  private flush(): void {
    this.scheduled = false;
    if (this.out.length === 0) return;
    if (this.dead) {
      for (let i = 4; i < this.out.length; i += ANS_FIELDS) { const b = this.out[i]; if (b instanceof Uint8Array) b.fill(0); }
      this.out = [];
      return;
    }
    const a = this.out;
    this.out = [];
    // Binary bodies are moved, not cloned: no copy of a block stays on this thread.
    const moved: ArrayBuffer[] = [];
    for (let i = ANS_BODY; i < a.length; i += ANS_FIELDS) if (a[i] instanceof Uint8Array) moved.push((a[i] as Uint8Array).buffer as ArrayBuffer);
    this.worker.postMessage({ t: 'answers', a } satisfies FrontCommand, moved);
  }
}

const EMPTY = Buffer.alloc(0);

function bodyError(code: number, limit: number): WireBodyError {
  const kind = BODY_ERRORS[code];
  if (kind === 'too-large') return { kind, limit };
  if (kind === 'body-budget') return { kind };
  if (kind === 'in-flight') return { kind, limit: MAX_IN_FLIGHT_PER_CONNECTION };
  return { kind: 'aborted' };
}

/** handleWire never rejects; should it, the client still gets an answer. */
function internal(e: unknown, log: Logger): WireResponse {
  log.error({ err: e }, 'KMS network request failed');
  const text = JSON.stringify({ __type: 'InternalFailure', message: 'An internal error occurred.' });
  return { status: 500, headers: ['Content-Type', 'application/x-amz-json-1.1', 'Content-Length', String(Buffer.byteLength(text))], body: text };
}
