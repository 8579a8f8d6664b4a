// A lean load generator for scripts/bench/kms-net.mjs: keep-alive sockets (TLS, plain TCP or the
// Unix control socket) each with one request in flight, writing byte for byte the request an AWS SDK
// sends (signed with @smithy/signature-v4, once per second: X-Amz-Date has one-second resolution, so an
// SDK sends the same bytes for the same request within a second) and reading each response by its
// Content-Length. No http.Agent, no IncomingMessage, no JSON parse of the answers while timing: its CPU
// per call is a small fraction of the daemon's, so the daemon gets the machine.
// Runs in the calling thread (threads 0) or in worker threads that each own `conns / threads` sockets.
// `lastLatency`: p10/p50/p90/p99 (µs) of the last run's calls, each from its write to its answer read whole.
import { connect as tlsConnect } from 'node:tls';
import { connect as netConnect } from 'node:net';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { createHash, createHmac } from 'node:crypto';
import { SignatureV4 } from '@smithy/signature-v4';

class Sha256 {
  constructor(secret) { this.h = secret === undefined ? createHash('sha256') : createHmac('sha256', secret); }
  update(d) { this.h.update(d); }
  async digest() { return this.h.digest(); }
  reset() {}
}

const CRLFCRLF = Buffer.from('\r\n\r\n');

/**
 * The request's bytes, re-signed when the second changes. `o.url` absent: the Unix socket (no signature).
 * Header names and order as @smithy/signature-v4 returns them (what the SDK's node handler then writes).
 */
function requestSource(o) {
  const text = JSON.stringify(o.body);
  const u = o.url ? new URL(o.url) : undefined;
  const signer = u && new SignatureV4({ credentials: { accessKeyId: o.accessKeyId, secretAccessKey: o.secretAccessKey }, region: o.region, service: 'kms', sha256: Sha256 });
  let second = -1;
  let bytes;
  return async () => {
    const s = Math.floor(Date.now() / 1000);
    if (s === second) return bytes;
    let headers = { host: 'localhost', 'x-amz-target': `TrentService.${o.op}`, 'content-type': 'application/x-amz-json-1.1', 'content-length': String(Buffer.byteLength(text)) };
    if (signer) {
      headers = (await signer.sign({ method: 'POST', protocol: u.protocol, hostname: u.hostname, port: Number(u.port), path: '/', query: {},
        headers: { ...headers, host: u.host }, body: text }, { signingDate: new Date(s * 1000) })).headers;
    }
    let head = 'POST / HTTP/1.1\r\n';
    for (const [k, v] of Object.entries(headers)) head += `${k}: ${v}\r\n`;
    bytes = Buffer.from(`${head}\r\n${text}`);
    second = s;
    return bytes;
  };
}

/**
 * One keep-alive connection: `send(bytes)` resolves with { status, body } of the answer. The server
 * closes a connection idle past its keep-alive timeout (between phases): the next send reconnects.
 */
function connection(o) {
  let c;
  return {
    send: async (bytes) => {
      if (!c || c.closed()) c = await openConnection(o);
      try {
        return await c.send(bytes);
      } catch (e) {
        // The server's idle close crossed our request on the wire: once more on a new connection.
        if (!c.closed()) throw e;
        c = await openConnection(o);
        return c.send(bytes);
      }
    },
    open: async () => { c = await openConnection(o); },
    close: () => c?.close(),
  };
}

function openConnection(o) {
  return new Promise((resolve, reject) => {
    let s;
    if (o.socketPath) s = netConnect(o.socketPath);
    else {
      const u = new URL(o.url);
      s = u.protocol === 'https:' ? tlsConnect({ host: u.hostname, port: Number(u.port), ca: o.ca, servername: 'localhost' }) : netConnect(Number(u.port), u.hostname);
    }
    s.setNoDelay(true);
    let buf = Buffer.alloc(0);
    let waiting; // { ok, fail }
    const onData = (c) => {
      buf = buf.length === 0 ? c : Buffer.concat([buf, c]);
      for (;;) {
        const end = buf.indexOf(CRLFCRLF);
        if (end < 0) return;
        const head = buf.latin1Slice(0, end);
        const m = /\r\ncontent-length:\s*(\d+)/i.exec(head);
        if (!m) { s.destroy(new Error(`answer without Content-Length: ${head.slice(0, 200)}`)); return; }
        const total = end + 4 + Number(m[1]);
        if (buf.length < total) return;
        const status = Number(head.slice(9, 12));
        const body = buf.subarray(end + 4, total);
        buf = buf.length === total ? Buffer.alloc(0) : buf.subarray(total);
        const w = waiting; waiting = undefined;
        w?.ok({ status, body });
      }
    };
    s.on('data', onData);
    s.on('error', (e) => { if (waiting) { const w = waiting; waiting = undefined; w.fail(e); } else reject(e); });
    let closed = false;
    s.on('end', () => { closed = true; }); // the server's FIN: this connection takes no more requests
    s.on('close', () => { closed = true; if (waiting) { const w = waiting; waiting = undefined; w.fail(new Error('connection closed')); } });
    s.once(o.socketPath || !o.url.startsWith('https:') ? 'connect' : 'secureConnect', () => resolve({
      send: (bytes) => new Promise((ok, fail) => { waiting = { ok, fail }; s.write(bytes); }),
      closed: () => closed || s.destroyed,
      close: () => s.destroy(),
    }));
  });
}

/** The load of one thread: `conns` connections, each looping until `until` (ms epoch). */
async function threadLoad(o) {
  const source = requestSource(o);
  const conns = Array.from({ length: o.conns }, () => connection(o));
  await Promise.all(conns.map((c) => c.open()));
  let n = 0;
  let bad;
  /** Each answered call's latency, µs, from its write to its answer read whole (the last run's). */
  let lat = [];
  const run = async (until) => {
    n = 0;
    lat = [];
    await Promise.all(conns.map(async (c) => {
      while (Date.now() < until) {
        const bytes = await source();
        const t0 = process.hrtime.bigint();
        const r = await c.send(bytes);
        if (r.status !== 200) { bad ??= `HTTP ${r.status}: ${r.body.toString().slice(0, 300)}`; return; }
        lat.push(Number(process.hrtime.bigint() - t0) / 1000);
        n++;
      }
    }));
    if (bad) throw new Error(bad);
    return n;
  };
  /** One call on every connection; the Plaintext of each answer (undefined where it had none). */
  const plaintexts = () => Promise.all(conns.map(async (c) => {
    const r = await c.send(await source());
    return r.status === 200 ? JSON.parse(r.body.toString()).Plaintext : undefined;
  }));
  return { run, plaintexts, latencies: () => lat, close: () => { for (const c of conns) c.close(); } };
}

/** p10, p50, p90, p99 of latencies in µs. */
function percentiles(xs) {
  const s = Float64Array.from(xs).sort();
  const q = (f) => (s.length ? s[Math.min(s.length - 1, Math.floor(f * s.length))] : NaN);
  return { p10: q(0.1), p50: q(0.5), p90: q(0.9), p99: q(0.99) };
}

/**
 * A load generator of `threads` worker threads (0: this thread) over `conns` connections in all.
 * `run(seconds)` resolves with the number of calls answered 200. `check(expectPlaintext)` runs one call
 * on every connection and throws unless each answer's Plaintext is the data key.
 */
export async function leanClient(o) {
  if (!o.threads) {
    const t = await threadLoad(o);
    const c = {
      lastLatency: undefined,
      run: async (seconds) => {
        const n = await t.run(Date.now() + seconds * 1000);
        c.lastLatency = percentiles(t.latencies());
        return n;
      },
      check: async (plaintext) => {
        if ((await t.plaintexts()).some((p) => p !== plaintext)) throw new Error('lean client: a Decrypt did not return the data key; refusing to time');
      },
      close: async () => t.close(),
    };
    return c;
  }
  const workers = [];
  for (let i = 0; i < o.threads; i++) {
    const conns = Math.floor(o.conns / o.threads) + (i < o.conns % o.threads ? 1 : 0);
    const w = new Worker(new URL(import.meta.url), { workerData: { ...o, conns, ca: o.ca ? String(o.ca) : undefined } });
    await new Promise((ok, fail) => { w.once('message', ok); w.once('error', fail); });
    workers.push(w);
  }
  const ask = (w, m) => new Promise((ok, fail) => {
    const onMsg = (r) => { w.off('error', onErr); r.error ? fail(new Error(r.error)) : ok(r); };
    const onErr = (e) => { w.off('message', onMsg); fail(e); };
    w.once('message', onMsg); w.once('error', onErr); w.postMessage(m);
  });
  const c = {
    lastLatency: undefined,
    run: async (seconds) => {
      const until = Date.now() + seconds * 1000;
      const r = await Promise.all(workers.map((w) => ask(w, { until })));
      c.lastLatency = percentiles(r.flatMap((x) => x.lat));
      return r.reduce((a, x) => a + x.n, 0);
    },
    check: async (plaintext) => {
      for (const w of workers) {
        const r = await ask(w, { check: true });
        if (r.plaintexts.some((p) => p !== plaintext)) throw new Error('lean client (worker): a Decrypt did not return the data key; refusing to time');
      }
    },
    close: async () => { await Promise.all(workers.map((w) => w.terminate())); },
  };
  return c;
}

if (!isMainThread && workerData?.conns !== undefined) {
  const t = await threadLoad(workerData);
  parentPort.on('message', async (m) => {
    try {
      if (m.check) parentPort.postMessage({ plaintexts: await t.plaintexts() });
      else { const n = await t.run(m.until); parentPort.postMessage({ n, lat: t.latencies() }); }
    } catch (e) {
      parentPort.postMessage({ error: String(e?.stack ?? e) });
    }
  });
  parentPort.postMessage({ ready: true });
}
