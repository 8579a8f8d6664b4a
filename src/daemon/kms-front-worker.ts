/**
 * The KMS listener's front-end worker thread (kms-front.ts says what crosses
 * and why): the transport (kms-transport.ts: TLS, HTTP, the connection guard)
 * runs here, each complete request goes to the main thread, and its answer is
 * written back here. Nothing here knows SigV4, access keys or the KMS.
 */
import { writeFileSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import type { RefusalSummary } from './connection-guard.js';
import { HttpTransport, type TransportRequest, type WireConnection } from './kms-transport.js';
import { BODY_ERRORS, ANS_FIELDS, REQ_FIELDS, type FrontCommand, type FrontInit, type FrontMessage } from './kms-front.js';
import { HANDOFF_CHUNK } from '../kms/hsm/hsm-client.js';

const port = parentPort!;

// The thread's name in `top -H`, /proc/<pid>/task/*/comm and the benchmarks' per-thread lines.
try { writeFileSync('/proc/thread-self/comm', 'ebsd-kms-front'); } catch { /* not Linux, or /proc read-only: unnamed */ }
const init = workerData as FrontInit;

const pending = new Map<number, TransportRequest>();
const connIds = new WeakMap<WireConnection, number>();
/** Connections that closed before their first request was handed over (an aborted body): "gone" goes with that request. */
const closedEarly = new WeakSet<WireConnection>();
let nextReq = 1;
let nextConn = 1;

let conns: (number | string)[] = [];
let reqs: (number | string)[] = [];
let bodies: Buffer[] = [];
let bodyBytes = 0;
let gone: number[] = [];
let refusals: RefusalSummary[] | null = null;
let scheduled = false;

function schedule(): void {
  if (scheduled) return;
  scheduled = true;
  setImmediate(flush);
}

/** One message for everything this turn produced; the bodies in one transferred buffer. */
function flush(): void {
  scheduled = false;
  if (reqs.length === 0 && gone.length === 0 && refusals === null) return;
  let ab: ArrayBuffer | null = null;
  if (bodyBytes > 0) {
    ab = new ArrayBuffer(bodyBytes);
    const u = new Uint8Array(ab);
    let off = 0;
    // The copy is what crosses; this thread's bytes (an Encrypt's plaintext, say) are wiped now.
    for (const b of bodies) { u.set(b, off); off += b.length; b.fill(0); }
  }
  const m: FrontMessage = { t: 'batch', conns, reqs, bodies: ab, gone, refusals };
  conns = [];
  reqs = [];
  bodies = [];
  bodyBytes = 0;
  gone = [];
  refusals = null;
  port.postMessage(m, ab ? [ab] : []);
}

function onRequest(r: TransportRequest): void {
  let cid = connIds.get(r.conn);
  if (cid === undefined) {
    cid = nextConn++;
    connIds.set(r.conn, cid);
    conns.push(cid, r.conn.sourceIp, r.conn.tls?.tlsVersion ?? '', r.conn.tls?.cipherSuite ?? '', r.conn.source ?? '');
    if (closedEarly.has(r.conn)) gone.push(cid); // the main thread reads a batch's requests before its "gone"
  }
  const id = nextReq++;
  pending.set(id, r);
  const be = r.bodyError ? BODY_ERRORS.indexOf(r.bodyError.kind) : 0;
  reqs.push(id, cid, r.method, r.url, r.rawHeaders.join('\n'), bodyBytes, r.body.length, be);
  if (r.body.length > 0) { bodies.push(r.body); bodyBytes += r.body.length; }
  // A full chunk goes now: the main thread starts on it while this thread reads the next requests.
  if (reqs.length >= HANDOFF_CHUNK * REQ_FIELDS) return flush();
  schedule();
}

const transport = new HttpTransport({
  host: init.host,
  port: init.port,
  ...(init.tls ? { tls: init.tls } : {}),
  limits: init.limits,
  onRequest,
  onRefusals: (rows) => { refusals = (refusals ?? []).concat(rows); schedule(); },
  onConnectionClosed: (c) => {
    const id = connIds.get(c);
    if (id !== undefined) { gone.push(id); schedule(); } else closedEarly.add(c);
  },
});

port.on('message', (m: FrontCommand) => {
  if (m.t === 'answers') {
    const a = m.a;
    for (let i = 0; i < a.length; i += ANS_FIELDS) {
      const r = pending.get(a[i] as number);
      if (!r) {
        // Its connection went meanwhile: a binary answer's bytes (a plaintext block) are zeroed, not dropped.
        const gone = a[i + 4];
        if (gone instanceof Uint8Array) gone.fill(0);
        continue;
      }
      pending.delete(a[i] as number);
      const status = a[i + 1] as number;
      const body = a[i + 4] as string | Uint8Array;
      const requestId = a[i + 3];
      if (typeof requestId === 'string') {
        const text = body as string;
        r.respond({ status, headers: ['Content-Type', a[i + 2] as string, 'Content-Length', String(Buffer.byteLength(text)), 'x-amzn-RequestId', requestId], body: text });
      } else {
        r.respond({ status, headers: a[i + 2] as string[], body: typeof body === 'string' ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength) });
      }
    }
    return;
  }
  if (m.t === 'usage') {
    port.postMessage({ t: 'usage', u: transport.guard.detailedUsage(m.top) } satisfies FrontMessage);
    return;
  }
  if (m.t === 'close') {
    void transport.close().then(() => {
      flush(); // the refusals the close reported
      port.postMessage({ t: 'closed' } satisfies FrontMessage);
      port.close();
    });
  }
});

transport.listen().then(
  (address) => port.postMessage({ t: 'ready', address } satisfies FrontMessage),
  (e: NodeJS.ErrnoException) => {
    port.postMessage({ t: 'failed', message: e.message, ...(e.code ? { code: e.code } : {}) } satisfies FrontMessage);
    port.close();
  },
);
