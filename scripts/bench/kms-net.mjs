#!/usr/bin/env node
// Decrypt of a 64-byte data key: over HTTPS + SigV4 (keep-alive) against the Unix-socket path,
// same daemon, same run. The daemon runs as a child process (`--kms-only --kms-listen 127.0.0.1:0`
// with a certificate this script makes with openssl); this process is the client: it signs every
// network request with @smithy/signature-v4, and its own CPU is reported apart from the daemon's.
// Build first:  npx tsc -p .   then:
//   node scripts/bench/kms-net.mjs [--seconds 5] [--concurrency 64]
// It checks one Decrypt on each path returns the data key before timing anything (docs/architecture.md §11.14).
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, readFileSync, writeFileSync, createWriteStream } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { request as httpRequest, Agent as HttpAgent } from 'node:http';
import { request as httpsRequest, Agent as HttpsAgent } from 'node:https';
import { createHash, createHmac } from 'node:crypto';
import { SignatureV4 } from '@smithy/signature-v4';

const arg = (n, d) => { const i = process.argv.indexOf(`--${n}`); return i > 0 ? process.argv[i + 1] : d; };
const seconds = Number(arg('seconds', '5'));
const concurrency = Number(arg('concurrency', '64'));
const ROOT = resolve(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'dist', 'cli', 'main.js');
const dir = mkdtempSync(join(tmpdir(), 'ebsd-kmsnet-bench-'));
const state = join(dir, 'state');
const cli = (...a) => JSON.parse(execFileSync(process.execPath, [CLI, ...a, '--output', 'json'], { env: { ...process.env, EBSD_STATE_DIR: state } }).toString() || '{}');

class Sha256 {
  constructor(secret) { this.h = secret === undefined ? createHash('sha256') : createHmac('sha256', secret); }
  update(d) { this.h.update(d); }
  async digest() { return this.h.digest(); }
  reset() {}
}

const cpuOf = (pid) => { const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' '); return (Number(f[11]) + Number(f[12])) * 10; }; // ms, CLK_TCK 100

let daemon;
try {
  const ossl = (...a) => execFileSync('openssl', a, { stdio: 'ignore' });
  ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(dir, 'k.pem'), '-out', join(dir, 'c.pem'), '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1');
  const log = createWriteStream(join(dir, 'daemon.log'));
  daemon = spawn(process.execPath, [CLI, 'daemon', '--state-dir', state, '--kms-only', '--kms-listen', '127.0.0.1:0', '--tls-cert', join(dir, 'c.pem'), '--tls-key', join(dir, 'k.pem')], { stdio: ['ignore', 'pipe', 'pipe'] });
  const url = await new Promise((ok, fail) => {
    let buf = '';
    daemon.stdout.on('data', (c) => { log.write(c); buf += c; const m = /"kmsUrl":"([^"]+)"/.exec(buf); if (m) ok(m[1]); });
    daemon.stderr.on('data', (c) => { log.write(c); buf += c; });
    daemon.on('exit', (c) => fail(new Error(`daemon exited ${c}: ${buf}`)));
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
  const netAgent = new HttpsAgent({ keepAlive: true, maxSockets: concurrency, ca: readFileSync(join(dir, 'c.pem')) });
  const net = async (op, body) => {
    const text = JSON.stringify(body);
    const s = await signer.sign({ method: 'POST', protocol: 'https:', hostname: u.hostname, port: Number(u.port), path: '/', query: {},
      headers: { host: u.host, 'x-amz-target': `TrentService.${op}`, 'content-type': 'application/x-amz-json-1.1', 'content-length': String(Buffer.byteLength(text)) }, body: text });
    return new Promise((ok, fail) => {
      const req = httpsRequest({ host: u.hostname, port: u.port, agent: netAgent, method: 'POST', path: '/', headers: s.headers }, (res) => {
        let t = ''; res.on('data', (c) => (t += c)); res.on('end', () => res.statusCode === 200 ? ok(JSON.parse(t)) : fail(new Error(t)));
      });
      req.on('error', fail); req.end(text);
    });
  };

  const keyId = (await sock('CreateKey', {})).KeyMetadata.KeyId;
  const EncryptionContext = { purpose: 'bench' };
  const dk = await sock('GenerateDataKey', { KeyId: keyId, NumberOfBytes: 64, EncryptionContext });
  const req = { CiphertextBlob: dk.CiphertextBlob, EncryptionContext };
  for (const [name, f] of [['socket', sock], ['https+sigv4', net]]) {
    const r = await f('Decrypt', req);
    if (r.Plaintext !== dk.Plaintext) throw new Error(`${name}: Decrypt returned the wrong plaintext`);
  }
  const phase = async (name, f) => {
    for (let i = 0; i < 200; i++) await f('Decrypt', req); // warm-up: connections, JIT, signing-key cache
    const until = Date.now() + seconds * 1000;
    let n = 0;
    const c0 = process.cpuUsage(); const d0 = cpuOf(daemon.pid); const t0 = process.hrtime.bigint();
    await Promise.all(Array.from({ length: concurrency }, async () => { while (Date.now() < until) { await f('Decrypt', req); n++; } }));
    const s = Number(process.hrtime.bigint() - t0) / 1e9; const c = process.cpuUsage(c0); const d = cpuOf(daemon.pid) - d0;
    return { name, perSec: Math.round(n / s), clientCpu: ((c.user + c.system) / 1e6 / s).toFixed(2), daemonCpu: (d / 1000 / s).toFixed(2) };
  };
  const a = await phase('socket', sock);
  const b = await phase('https+sigv4', net);
  console.log(`Decrypt (64-byte data key), ${seconds} s each, concurrency ${concurrency}, load ${loadavg()[0].toFixed(2)}`);
  console.log('path           calls/s  daemon CPU (cores)  client CPU (cores)');
  for (const r of [a, b]) console.log(`${r.name.padEnd(14)} ${String(r.perSec).padStart(7)}  ${r.daemonCpu.padStart(18)}  ${r.clientCpu.padStart(18)}`);
  console.log(`https+sigv4 / socket: ${(b.perSec / a.perSec).toFixed(2)}`);
} finally {
  if (daemon && daemon.exitCode === null) { daemon.kill('SIGTERM'); await new Promise((r) => daemon.once('exit', r)); }
  rmSync(dir, { recursive: true, force: true });
}
