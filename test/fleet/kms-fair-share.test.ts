/**
 * The KMS listener's overall connection limit shared between hosts (README "KMS over the network",
 * "Listener limits"): a misbehaving host that takes a few more addresses (128 connections each, the
 * per-source cap) and holds every one of the 1024 open must not keep another host out. Network
 * namespaces joined by a bridge, addresses only inside them: `kms` runs `ebsd daemon --kms-only
 * --kms-listen` over HTTPS; host `a` holds connections that never start their TLS handshake, from
 * ten addresses, opening a new one whenever one closes; host `b` then connects afresh.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt, sh } from '../e2e/helpers.js';
import { NetnsFleet, NsDaemon, until } from './netns.js';

const PORT = 4599;
const EXTRA = 10; // host a's addresses besides its own: 10 x 128 > 1024

/** Connections from each address given, a new one 50 ms after each closes; prints what it holds every 100 ms. */
const HOG = `
const net = require('node:net');
const [host, port, per, ...addrs] = process.argv.slice(2);
let open = 0, refused = 0;
function one(local) {
  const s = net.connect({ host, port: Number(port), localAddress: local });
  let at = 0;
  s.on('error', () => {});
  s.on('connect', () => { open++; at = Date.now(); });
  s.on('close', () => { if (at) { open--; if (Date.now() - at < 1000) refused++; } setTimeout(() => one(local), 50); });
}
for (const a of addrs) for (let i = 0; i < Number(per); i++) one(a);
setInterval(() => console.log(JSON.stringify({ open, refused })), 100);
`;

/** Fresh HTTPS connections, one at a time, each with an unsigned STS request: what each got, a status or an error. */
const CLIENT = `
const https = require('node:https');
const fs = require('node:fs');
const [url, ca, n] = process.argv.slice(2);
(async () => {
  const out = [];
  for (let i = 0; i < Number(n); i++) {
    out.push(await new Promise((resolve) => {
      const body = 'Action=GetCallerIdentity&Version=2011-06-15';
      const req = https.request(url, { method: 'POST', agent: false, ca: fs.readFileSync(ca), timeout: 8000,
        headers: { 'content-type': 'application/x-www-form-urlencoded', 'content-length': Buffer.byteLength(body) } }, (res) => {
        let t = ''; res.on('data', (c) => { t += c; }); res.on('end', () => resolve({ status: res.statusCode, code: (/<Code>(\\w+)</.exec(t) || [])[1] }));
      });
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', (e) => resolve({ error: e.code || e.message }));
      req.end(body);
    }));
  }
  console.log(JSON.stringify(out));
})();
`;

describe('KMS listener: one host holding every connection from many addresses', () => {
  const dir = mkdtempSync('/tmp/ebsd-fairshare-');
  chmodSync(dir, 0o755);
  const net = new NetnsFleet(['kms', 'a', 'b']);
  const kms = new NsDaemon(() => net.ns.kms!, join(dir, 'kms'), join(dir, 'kms.log'),
    ['--kms-only', '--kms-listen', `10.77.0.1:${PORT}`, '--tls-cert', join(dir, 'cert.pem'), '--tls-key', join(dir, 'key.pem'), '--refusal-window', '1s'], cleanEnv());
  let hog: ChildProcess | undefined;
  let held = { open: 0, refused: 0 };
  const kmsAudit = (): any[] => {
    const f = join(dir, 'kms', 'kms', 'audit', 'events.ndjson');
    return existsSync(f) ? readFileSync(f, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l)) : [];
  };

  beforeAll(async () => {
    ensureBuilt();
    await sh('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-subj', '/CN=kms', '-addext', 'subjectAltName=IP:10.77.0.1']);
    writeFileSync(join(dir, 'hog.cjs'), HOG);
    writeFileSync(join(dir, 'client.cjs'), CLIENT);
    net.create();
    const dev = /^\d+:\s+(\S+)\s+inet /m.exec(spawnSync('ip', ['-n', net.ns.a!, '-o', '-4', 'addr', 'show'], { encoding: 'utf8' }).stdout.split('\n').filter((l) => l.includes(`${net.ip.a}/`)).join('\n'))![1]!;
    for (let i = 0; i < EXTRA; i++) await sh('ip', ['-n', net.ns.a!, 'addr', 'add', `10.77.0.${100 + i}/24`, 'dev', dev]);
    await kms.start();
  }, 120_000);

  afterAll(async () => {
    hog?.kill('SIGKILL');
    await kms.stop().catch(() => {});
    net.destroy();
    expect(net.leftovers()).toEqual([]);
    rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it('another host connecting afresh is answered: a connection of the host holding the most gives its slot', async () => {
    const addrs = Array.from({ length: EXTRA }, (_, i) => `10.77.0.${100 + i}`);
    hog = spawn('nsenter', [`--net=/run/netns/${net.ns.a}`, process.execPath, join(dir, 'hog.cjs'), '10.77.0.1', String(PORT), '128', ...addrs], { stdio: ['ignore', 'pipe', 'inherit'] });
    hog.stdout!.setEncoding('utf8').on('data', (t: string) => { const last = t.trim().split('\n').pop(); if (last) held = JSON.parse(last); });
    // Full: host a holds the 1024 connections the listener admits in all, and its further ones are refused.
    await until('host a holding every connection', () => (held.open >= 1000 && held.refused >= 200 ? true : undefined), 30_000);
    const r = spawnSync('nsenter', [`--net=/run/netns/${net.ns.b}`, process.execPath, join(dir, 'client.cjs'), `https://10.77.0.1:${PORT}/`, join(dir, 'cert.pem'), '5'], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stderr).toBe(0);
    // Each one reached STS, which refused it for what it is (unsigned), not the listener for who sent it.
    expect(JSON.parse(r.stdout)).toEqual(Array(5).fill({ status: 403, code: 'MissingAuthenticationToken' }));
    // Whose connections made room is audited, in aggregate, as the refusals are: host a's addresses, never b's.
    const gave = await until('a gave-slot record', () => {
      const rows = kmsAudit().filter((e) => e.eventName === 'KmsConnection' && String(e.errorMessage).includes('gave-slot'));
      return rows.length > 0 ? rows : undefined;
    }, 30_000);
    expect(gave.every((e) => addrs.includes(e.sourceIPAddress))).toBe(true);
    expect(gave[0]).toMatchObject({ errorCode: 'ThrottlingException', additionalEventData: { aggregated: { count: expect.any(Number) } } });
  });
});

function cleanEnv(): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('AWS_')));
  return { ...env, AWS_EC2_METADATA_DISABLED: 'true' };
}
