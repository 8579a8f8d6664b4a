#!/usr/bin/env node
// Decrypt of a 64-byte data key: over HTTPS + SigV4 (keep-alive) against the Unix-socket path,
// same daemon, same run. The daemon runs as a child process (`--kms-only --kms-listen 127.0.0.1:0`
// with a certificate this script makes with openssl); this process is the client, and its own CPU
// is reported apart from the daemon's (/proc/<pid>/stat: all the daemon's threads, HSM worker included).
// Build first:  npx tsc -p .   then:
//   node scripts/bench/kms-net.mjs [--seconds 5] [--concurrency 64] [--runs 3] [--baseline DIR] [--cpu-prof DIR]
//                                  [--sign each|per-second] [--listener https|http] [--client lean|node] [--client-threads N] [--only socket|net|floor]
//                                  [--daemon-node-args '--max-semi-space-size=64'] [--floor] [--kms-front-threads 0|1] [--warmup-seconds 5]
// --warmup-seconds N (default 5): before the first timed run, each path of each daemon serves the same load for N
//          seconds, untimed. V8 optimises a daemon's code on three isolates (main, front end, HSM), and under this
//          load that went on for ~10 s (--trace-opt, perf): after 300 sequential calls alone, the first timed phase
//          paid for that compilation on V8's helper threads (docs/benchmarks.md, "JIT warm-up").
// --kms-front-threads N: passed to this build's daemon (not the baseline's): 0 TLS and HTTP on the main thread,
//          1 on the front-end worker (the default with --kms-only). The per-thread line names that worker
//          `ebsd-kms-front` (it names its own thread), the HSM worker `ebsd-hsm`; every other unnamed thread is `node`.
// --floor: also time kms-net-floor.mjs, node's HTTPS server answering the same Decrypt response and doing nothing
//          else, with the same client: the floor under any daemon built on node:https (the reference figure).
// --client lean (default): kms-lean-client.mjs, raw keep-alive sockets writing the SDK's bytes (signed once per
//                 second) and reading answers by Content-Length, in --client-threads worker threads (0: the
//                 main thread, the default), so the client's CPU per call is a small fraction of the daemon's;
//                 `node`: node's http/https request with an Agent per path (what this bench used before);
//                 `h2load`: nghttp2's h2load (C, --h1) on the HTTPS path replaying one request signed as each phase
//                 starts (kms-h2load-client.mjs; `apt-get install nghttp2-client`), the lean client on the socket.
// --baseline DIR: a second build (a checkout with dist/ and native/build/, e.g. the commit before a change)
//                 runs as a second daemon; phases alternate baseline/this build in every run (A/B interleaved),
//                 so both see the same machine load.
// --cpu-prof DIR: this build's daemon writes a V8 CPU profile there when it stops.
// --sign per-second (default): the client signs each distinct request once per second, which is byte for
//                 byte what an SDK sends (X-Amz-Date has one-second resolution) and leaves the CPU to the
//                 daemon; `each` runs @smithy/signature-v4 for every request.
// It checks one Decrypt on each path of each daemon returns the data key before timing anything
// (docs/architecture.md §11.14). `daemon µs/call` is daemon CPU (every thread) per served call;
// `calls per daemon CPU-s` its inverse: what the daemon serves per second of one core.
// `run-queue wait`: per thread of the daemon, the time it was runnable but waiting for a CPU
// (/proc/<pid>/task/*/schedstat) per served call; with `request latency` (lean client: each call from
// its write to its answer) it tells a rate held by CPU time from one held by hand-offs between threads
// waiting for their turn on the cores.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, readFileSync, readdirSync, writeFileSync, createWriteStream } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { request as httpRequest, Agent as HttpAgent } from 'node:http';
import { request as httpsRequest, Agent as HttpsAgent } from 'node:https';
import { createHash, createHmac } from 'node:crypto';
import { SignatureV4 } from '@smithy/signature-v4';
import { leanClient } from './kms-lean-client.mjs';
import { h2loadClient } from './kms-h2load-client.mjs';

const arg = (n, d) => { const i = process.argv.indexOf(`--${n}`); return i > 0 ? process.argv[i + 1] : d; };
const seconds = Number(arg('seconds', '5'));
const concurrency = Number(arg('concurrency', '64'));
const runs = Number(arg('runs', '3'));
const baseline = arg('baseline', undefined);
const cpuProf = arg('cpu-prof', undefined);
const signMode = arg('sign', 'per-second');
const clientKind = arg('client', 'lean');
const clientThreads = Number(arg('client-threads', '0'));
const listener = arg('listener', 'https');
const nodeArgs = (arg('daemon-node-args', '') || '').split(' ').filter(Boolean); // V8/node flags for this build's daemon (e.g. --max-semi-space-size=64)
const frontThreads = arg('kms-front-threads', undefined);
const floor = process.argv.includes('--floor'); // also time kms-net-floor.mjs: node's HTTPS server answering a fixed body, nothing else
const warmupSeconds = Number(arg('warmup-seconds', '5'));
const only = arg('only', undefined); // socket | net: time one path alone (for a profile of it); floor (with --floor): the floor alone // http: the listener without TLS (loopback), to tell TLS's cost from SigV4's
const NET = `${listener}+sigv4`;
const ROOT = resolve(import.meta.dirname, '..', '..');
const dir = mkdtempSync(join(tmpdir(), 'ebsd-kmsnet-bench-'));

class Sha256 {
  constructor(secret) { this.h = secret === undefined ? createHash('sha256') : createHmac('sha256', secret); }
  update(d) { this.h.update(d); }
  async digest() { return this.h.digest(); }
  reset() {}
}

const cpuOf = (pid) => { const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' '); return (Number(f[11]) + Number(f[12])) * 10; }; // ms, CLK_TCK 100
/**
 * Per thread name (comm) of a process, ms: its CPU time (where the daemon's CPU goes: main thread, HSM worker,
 * GC helpers, libuv pool) and its time runnable but waiting for a CPU (/proc/<pid>/task/<tid>/schedstat, second
 * field, ns: the scheduler's share of a request's latency, which CPU time does not show).
 */
const threadsOf = (pid) => {
  const cpu = new Map();
  const wait = new Map();
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      const st = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      const comm = t === String(pid) ? 'main' : st.slice(st.indexOf('(') + 1, st.lastIndexOf(')'));
      const f = st.slice(st.lastIndexOf(') ') + 2).split(' ');
      cpu.set(comm, (cpu.get(comm) ?? 0) + (Number(f[11]) + Number(f[12])) * 10);
      wait.set(comm, (wait.get(comm) ?? 0) + Number(readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[1]) / 1e6);
    } catch { /* the thread ended */ }
  }
  return { cpu, wait };
};
const median = (a) => { const s = [...a].sort((x, y) => x - y); return s[s.length >> 1]; };
const daemons = [];
const leanClients = [];

/** One daemon of one build, with a user, an access key and a data key to decrypt. */
async function startDaemon(name, root, prof, extraNodeArgs = [], extraArgs = []) {
  const cliPath = join(root, 'dist', 'cli', 'main.js');
  const state = join(dir, `${name}-state`);
  const cli = (...a) => JSON.parse(execFileSync(process.execPath, [cliPath, ...a, '--output', 'json'], { env: { ...process.env, EBSD_STATE_DIR: state } }).toString() || '{}');
  const log = createWriteStream(join(dir, `${name}-daemon.log`));
  const child = spawn(process.execPath, [...extraNodeArgs, ...(prof ? ['--cpu-prof', '--cpu-prof-dir', resolve(prof)] : []), cliPath, 'daemon', '--state-dir', state, '--kms-only',
    '--kms-listen', '127.0.0.1:0', ...extraArgs, ...(listener === 'https' ? ['--tls-cert', join(dir, 'c.pem'), '--tls-key', join(dir, 'k.pem')] : [])], { stdio: ['ignore', 'pipe', 'pipe'] });
  daemons.push(child);
  const url = await new Promise((ok, fail) => {
    let buf = '';
    child.stdout.on('data', (c) => { log.write(c); if (buf.length < 1e5) buf += c; const m = /"kmsUrl":"([^"]+)"/.exec(buf); if (m) ok(m[1]); });
    child.stderr.on('data', (c) => { log.write(c); if (buf.length < 1e5) buf += c; });
    child.on('exit', (c) => fail(new Error(`${name} daemon exited ${c}: ${buf}`)));
  });
  cli('iam', 'create-user', 'bench');
  cli('iam', 'put-policy', 'user/bench', '--policy-name', 'kms', '--policy-document', JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'kms:*', Resource: '*' }] }));
  const key = cli('iam', 'create-access-key', '--user-name', 'bench').AccessKey;

  const sockAgent = new HttpAgent({ keepAlive: true, maxSockets: concurrency });
  const sock = (op, body) => new Promise((ok, fail) => {
    const text = JSON.stringify(body);
    const req = httpRequest({ socketPath: join(state, 'ebsd.sock'), agent: sockAgent, method: 'POST', path: '/', headers: { 'X-Amz-Target': `TrentService.${op}`, 'Content-Type': 'application/x-amz-json-1.1', 'Content-Length': Buffer.byteLength(text) } }, (res) => {
      let t = ''; res.on('data', (c) => (t += c)); res.on('end', () => res.statusCode === 200 ? ok(JSON.parse(t)) : fail(new Error(t)));
    });
    req.on('error', fail); req.end(text);
  });
  const u = new URL(url);
  const signer = new SignatureV4({ credentials: { accessKeyId: key.AccessKeyId, secretAccessKey: key.SecretAccessKey }, region: 'us-east-1', service: 'kms', sha256: Sha256 });
  const netAgent = u.protocol === 'https:' ? new HttpsAgent({ keepAlive: true, maxSockets: concurrency, ca: readFileSync(join(dir, 'c.pem')) }) : new HttpAgent({ keepAlive: true, maxSockets: concurrency });
  const netRequest = u.protocol === 'https:' ? httpsRequest : httpRequest;
  const signed = new Map(); // text -> { second, headers }: an SDK sends the same bytes for the same request within one second
  const sign = async (op, text) => {
    const second = Math.floor(Date.now() / 1000);
    const hit = signMode === 'per-second' ? signed.get(text) : undefined;
    if (hit && hit.second === second) return hit.headers;
    const s = await signer.sign({ method: 'POST', protocol: u.protocol, hostname: u.hostname, port: Number(u.port), path: '/', query: {},
      headers: { host: u.host, 'x-amz-target': `TrentService.${op}`, 'content-type': 'application/x-amz-json-1.1', 'content-length': String(Buffer.byteLength(text)) }, body: text },
    { signingDate: new Date(second * 1000) });
    if (signMode === 'per-second') signed.set(text, { second, headers: s.headers });
    return s.headers;
  };
  const net = async (op, body) => {
    const text = JSON.stringify(body);
    const headers = await sign(op, text);
    return new Promise((ok, fail) => {
      const req = netRequest({ host: u.hostname, port: u.port, agent: netAgent, method: 'POST', path: '/', headers }, (res) => {
        let t = ''; res.on('data', (c) => (t += c)); res.on('end', () => res.statusCode === 200 ? ok(JSON.parse(t)) : fail(new Error(t)));
      });
      req.on('error', fail); req.end(text);
    });
  };

  const keyId = (await sock('CreateKey', {})).KeyMetadata.KeyId;
  const EncryptionContext = { purpose: 'bench' };
  const dk = await sock('GenerateDataKey', { KeyId: keyId, NumberOfBytes: 64, EncryptionContext });
  const req = { CiphertextBlob: dk.CiphertextBlob, EncryptionContext };
  for (const [p, f] of [['socket', sock], [NET, net]]) {
    const r = await f('Decrypt', req);
    if (r.Plaintext !== dk.Plaintext) throw new Error(`${name} ${p}: Decrypt returned the wrong plaintext; refusing to time`);
    for (let i = 0; i < 300; i++) await f('Decrypt', req); // warm-up: connections, JIT, signing-key cache
  }
  const lean = {};
  if (clientKind === 'lean' || clientKind === 'h2load') {
    const base = { op: 'Decrypt', body: req, conns: concurrency, threads: clientThreads };
    const netClient = { ...base, url, ca: readFileSync(join(dir, 'c.pem')), accessKeyId: key.AccessKeyId, secretAccessKey: key.SecretAccessKey, region: 'us-east-1' };
    lean.socket = await leanClient({ ...base, socketPath: join(state, 'ebsd.sock') });
    lean[NET] = clientKind === 'h2load' ? await h2loadClient(netClient) : await leanClient(netClient);
    for (const c of Object.values(lean)) { await c.check(dk.Plaintext); await c.run(0.5); } // every connection answers the data key; warm-up
    leanClients.push(...Object.values(lean));
    sockAgent.destroy(); netAgent.destroy(); // their sockets would count against the listener's per-address cap
  }
  return { name, child, paths: { socket: sock, [NET]: net }, lean, req, floorAnswer: { KeyId: keyId, Plaintext: dk.Plaintext, EncryptionAlgorithm: 'SYMMETRIC_DEFAULT' }, key };
}

/** The floor (kms-net-floor.mjs): node's HTTPS server and nothing else, driven by the same lean client. */
async function startFloor(answer, key, req) {
  const file = join(dir, 'floor-answer.json');
  writeFileSync(file, JSON.stringify(answer));
  const child = spawn(process.execPath, [join(ROOT, 'scripts', 'bench', 'kms-net-floor.mjs'), join(dir, 'c.pem'), join(dir, 'k.pem'), file, listener], { stdio: ['ignore', 'pipe', 'inherit'] });
  daemons.push(child);
  const url = await new Promise((ok, fail) => {
    let buf = '';
    child.stdout.on('data', (c) => { buf += c; const m = /"url":"([^"]+)"/.exec(buf); if (m) ok(m[1]); });
    child.on('exit', (c) => fail(new Error(`floor server exited ${c}`)));
  });
  const c = await leanClient({ op: 'Decrypt', body: req, conns: concurrency, threads: clientThreads, url, ca: readFileSync(join(dir, 'c.pem')), accessKeyId: key.AccessKeyId, secretAccessKey: key.SecretAccessKey, region: 'us-east-1' });
  await c.check(answer.Plaintext);
  await c.run(0.5);
  leanClients.push(c);
  return { name: 'floor', child, paths: {}, lean: { [NET]: c } };
}

async function phase(d, path) {
  const f = d.paths[path];
  if (d.lean[path]) await d.lean[path].run(0.3); // reconnect what the server closed while the other phases ran, outside the timing
  const until = Date.now() + seconds * 1000;
  let n = 0;
  const c0 = process.cpuUsage(); const d0 = cpuOf(d.child.pid); const th0 = threadsOf(d.child.pid); const t0 = process.hrtime.bigint();
  if (d.lean[path]) n = await d.lean[path].run(seconds);
  else await Promise.all(Array.from({ length: concurrency }, async () => { while (Date.now() < until) { await f('Decrypt', d.req); n++; } }));
  const s = Number(process.hrtime.bigint() - t0) / 1e9; const c = process.cpuUsage(c0); const dcpu = (cpuOf(d.child.pid) - d0) / 1000;
  const threads = {};
  const waits = {};
  const th1 = threadsOf(d.child.pid);
  for (const [k, v] of th1.cpu) threads[k] = (v - (th0.cpu.get(k) ?? 0)) * 1000 / n; // µs per call
  for (const [k, v] of th1.wait) waits[k] = (v - (th0.wait.get(k) ?? 0)) * 1000 / n;
  // h2load's CPU is its own process's (kms-h2load-client.mjs); this process only waits meanwhile.
  const clientCpu = d.lean[path]?.lastCpuSeconds ?? (c.user + c.system) / 1e6;
  return { threads, waits, latency: d.lean[path]?.lastLatency, perSec: n / s, daemonCores: dcpu / s, clientCores: clientCpu / s, daemonUs: (dcpu * 1e6) / n, load: loadavg()[0] };
}

// Killed mid-run: stop the daemons and remove the directory too (the finally below would not run).
for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => { for (const d of daemons) d.kill('SIGTERM'); rmSync(dir, { recursive: true, force: true }); process.exit(130); });
try {
  const ossl = (...a) => execFileSync('openssl', a, { stdio: 'ignore' });
  ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(dir, 'k.pem'), '-out', join(dir, 'c.pem'), '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1');
  const builds = [];
  if (baseline) builds.push(await startDaemon('baseline', resolve(baseline)));
  builds.push(await startDaemon('this', ROOT, cpuProf, nodeArgs, frontThreads !== undefined ? ['--kms-front-threads', frontThreads] : []));
  if (floor) builds.push(await startFloor(builds.at(-1).floorAnswer, builds.at(-1).key, builds.at(-1).req));
  const rows = new Map();
  const loads = [];
  const paths = only === 'socket' ? ['socket'] : only === 'net' || only === 'floor' ? [NET] : ['socket', NET];
  if (warmupSeconds > 0) {
    for (const path of paths) {
      for (const d of builds) {
        if (d.lean[path]) await d.lean[path].run(warmupSeconds);
        else if (d.paths[path]) { const until = Date.now() + warmupSeconds * 1000; await Promise.all(Array.from({ length: concurrency }, async () => { while (Date.now() < until) await d.paths[path]('Decrypt', d.req); })); }
      }
    }
  }
  for (let r = 0; r < runs; r++) {
    for (const path of paths) {
      for (const d of r % 2 ? [...builds].reverse() : builds) {
        if (!d.lean[path] && !d.paths[path]) continue; // the floor has no socket path
        if (only === 'floor' && d.name !== 'floor') continue;
        const x = await phase(d, path);
        loads.push(x.load);
        const k = `${d.name}\0${path}`;
        rows.set(k, [...(rows.get(k) ?? []), x]);
      }
    }
  }
  console.log(`Decrypt (64-byte data key), ${seconds} s per phase after ${warmupSeconds} s of warm-up per path, ${runs} run(s), concurrency ${concurrency}, client ${clientKind}${clientKind === 'lean' ? ` (${clientThreads} thread(s))` : clientKind === 'h2load' ? ' over HTTPS, lean on the socket' : ''}, signing ${clientKind === 'lean' ? 'per-second' : clientKind === 'h2load' ? 'once per phase' : signMode}, load average ${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)}; medians`);
  console.log('build     path          calls/s  daemon CPU (cores)  daemon µs/call  calls per daemon CPU-s  client CPU (cores)');
  for (const [k, xs] of rows) {
    const [name, path] = k.split('\0');
    const m = (f) => median(xs.map(f));
    console.log(`${name.padEnd(9)} ${path.padEnd(12)} ${m((x) => x.perSec).toFixed(0).padStart(8)}  ${m((x) => x.daemonCores).toFixed(2).padStart(18)}  ${m((x) => x.daemonUs).toFixed(0).padStart(14)}  ${m((x) => 1e6 / x.daemonUs).toFixed(0).padStart(22)}  ${m((x) => x.clientCores).toFixed(2).padStart(18)}`);
  }
  console.log('daemon µs/call per thread (median):');
  for (const [k, xs] of rows) {
    const names = [...new Set(xs.flatMap((x) => Object.keys(x.threads)))].sort();
    const [name, path] = k.split('\0');
    console.log(`${name.padEnd(9)} ${path.padEnd(12)} ${names.map((t) => `${t} ${median(xs.map((x) => x.threads[t] ?? 0)).toFixed(0)}`).join(', ')}`);
  }
  console.log('daemon threads\' run-queue wait, µs/call (median; runnable, waiting for a CPU):');
  for (const [k, xs] of rows) {
    const names = [...new Set(xs.flatMap((x) => Object.keys(x.waits)))].filter((t) => xs.some((x) => (x.waits[t] ?? 0) >= 1)).sort();
    const [name, path] = k.split('\0');
    console.log(`${name.padEnd(9)} ${path.padEnd(12)} ${names.map((t) => `${t} ${median(xs.map((x) => x.waits[t] ?? 0)).toFixed(0)}`).join(', ')}`);
  }
  if ([...rows.values()].some((xs) => xs[0].latency)) {
    console.log('request latency at the client, ms (median of runs):');
    for (const [k, xs] of rows) {
      if (!xs[0].latency) continue;
      const [name, path] = k.split('\0');
      const m = (q) => median(xs.map((x) => x.latency[q])) / 1000;
      console.log(`${name.padEnd(9)} ${path.padEnd(12)} p10 ${m('p10').toFixed(2)}, p50 ${m('p50').toFixed(2)}, p90 ${m('p90').toFixed(2)}, p99 ${m('p99').toFixed(2)}`);
    }
  }
  for (const d of only ? [] : builds.filter((b) => b.name !== 'floor')) {
    const a = median(rows.get(`${d.name}\0socket`).map((x) => x.perSec));
    const b = median(rows.get(`${d.name}\0${NET}`).map((x) => x.perSec));
    console.log(`${d.name}: ${NET} / socket ${(b / a).toFixed(2)}`);
  }
} finally {
  for (const c of leanClients) await c.close();
  for (const d of daemons) if (d.exitCode === null) { d.kill('SIGTERM'); await new Promise((r) => d.once('exit', r)); }
  if (process.env.KEEP_BENCH_DIR) console.log(`kept ${dir}`); else rmSync(dir, { recursive: true, force: true });
}
