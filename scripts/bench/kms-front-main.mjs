#!/usr/bin/env node
// The KMS listener's main-thread half alone: what one HTTPS + SigV4 Decrypt costs the thread that
// runs SigV4, credentials and the KMS core when the transport (TLS, HTTP parsing, sockets) is free.
// Sets up the KMS in process as scripts/bench/kms.mjs does (openKms, audit on, HSM worker), plus an IAM
// user with an access key and StsService, wired into a KmsListener as src/daemon/daemon.ts wires it,
// and feeds pre-signed Decrypt requests (@smithy/signature-v4, the bytes an SDK sends, within the
// 15-minute window) straight to `KmsListener.handleWire`, `--batch` at a time (one event-loop turn's
// worth, as the front-end worker hands them over). Reports CPU µs per call of the main thread
// (/proc/self/task/<pid>/stat) and of every other thread (HSM worker, libuv pool, GC helpers).
// Build first:  npx tsc -p .   then:
//   node scripts/bench/kms-front-main.mjs [--n 20000] [--batch 16,64] [--rounds 3] [--dates 1]
// --dates K: sign with K distinct X-Amz-Date seconds, used in turn (1: as the lean client within one
//            second; more defeats the verifier's last-date memo).
import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join } from 'node:path';
import { createHash, createHmac } from 'node:crypto';
import { SignatureV4 } from '@smithy/signature-v4';
import { openKms } from '../../dist/kms/open-kms.js';
import { AccessKeyStore } from '../../dist/kms/sts/access-keys.js';
import { TrustPolicies } from '../../dist/kms/sts/trust-policies.js';
import { StsService } from '../../dist/kms/sts/sts-service.js';
import { KmsListener } from '../../dist/daemon/kms-listener.js';
import { createLogger } from '../../dist/util/logger.js';

const arg = (n, d) => { const i = process.argv.indexOf(`--${n}`); return i > 0 ? process.argv[i + 1] : d; };
const N = Number(arg('n', '20000'));
const batches = arg('batch', '16,64').split(',').map(Number);
const rounds = Number(arg('rounds', '3'));
const dates = Number(arg('dates', '1'));
const REGION = 'us-east-1';
const HOST = '127.0.0.1:4599';

class Sha256 {
  constructor(secret) { this.h = secret === undefined ? createHash('sha256') : createHmac('sha256', secret); }
  update(d) { this.h.update(d); }
  async digest() { return this.h.digest(); }
  reset() {}
}

/** CPU seconds (user + system) of the main thread and of the whole process. */
function cpu() {
  const tick = 100; // USER_HZ
  const f = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8');
  const s = f.slice(f.lastIndexOf(')') + 2).split(' ');
  const main = (Number(s[11]) + Number(s[12])) / tick;
  const u = process.cpuUsage();
  return { main, all: (u.user + u.system) / 1e6 };
}

const dir = mkdtempSync(join(tmpdir(), 'ebsd-front-main-'));
const log = createLogger({ level: 'silent', name: 'bench' });
let opened;
try {
  opened = await openKms({ stateDir: dir, region: REGION });
  const core = opened.core;
  const ids = opened.identities;
  const caller = await ids.createUser('bench');
  await ids.attachPolicy(ids.userArn('bench'), 'kms', JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'kms:*', Resource: '*' }] }));
  const keys = await AccessKeyStore.open(dir, core.hsm, ids);
  const key = await keys.create('bench');
  const trust = await TrustPolicies.open(dir, ids, log);
  const sts = new StsService(ids, keys, trust, core.hsm,
    (caller, action, resource, context) => opened.authorizer.evaluator.evaluate({ action, caller, resource, ...(context ? { context } : {}) }),
    { secureTransport: true });
  const listener = new KmsListener({
    host: '127.0.0.1', port: 0, region: REGION, accountId: ids.accountId, sts, log,
    kms: (op, req, caller, requestId) => core.call(op, req, caller, requestId),
    audit: (ev) => core.audit.append(ev),
    auditRefusal: (k, ev, party) => core.audit.appendRefusal(k, ev, party),
  });
  const EncryptionContext = { purpose: 'bench' };
  const created = await core.call('CreateKey', { Description: 'front-main bench' }, caller);
  const g = await core.call('GenerateDataKey', { KeyId: created.KeyMetadata.KeyId, NumberOfBytes: 64, EncryptionContext }, caller);
  const text = JSON.stringify({ CiphertextBlob: Buffer.from(g.CiphertextBlob).toString('base64'), EncryptionContext });
  const body = Buffer.from(text);
  const signer = new SignatureV4({ credentials: { accessKeyId: key.AccessKeyId, secretAccessKey: key.SecretAccessKey }, region: REGION, service: 'kms', sha256: Sha256 });
  const now = Math.floor(Date.now() / 1000);
  const signed = [];
  for (let i = 0; i < dates; i++) {
    const r = await signer.sign({ method: 'POST', protocol: 'https:', hostname: '127.0.0.1', port: 4599, path: '/', query: {},
      headers: { host: HOST, 'x-amz-target': 'TrentService.Decrypt', 'content-type': 'application/x-amz-json-1.1', 'content-length': String(body.length), 'user-agent': 'kms-front-main' }, body: text },
    { signingDate: new Date((now - i) * 1000) });
    signed.push(Object.entries(r.headers).flat());
  }
  const conn = { sourceIp: '127.0.0.1', tls: { tlsVersion: 'TLSv1.3', cipherSuite: 'TLS_AES_256_GCM_SHA384' } };
  const wire = (i) => ({ method: 'POST', url: '/', rawHeaders: signed[i % dates], body, conn });

  // Correctness first: the answer is the data key; a tampered body is refused.
  const first = await listener.handleWire(wire(0));
  const pt = first.status === 200 ? Buffer.from(JSON.parse(first.body).Plaintext, 'base64') : undefined;
  if (!pt || !pt.equals(Buffer.from(g.Plaintext))) throw new Error(`Decrypt through handleWire did not return the data key (status ${first.status}: ${String(first.body).slice(0, 200)}): refusing to time`);
  const bad = await listener.handleWire({ ...wire(0), body: Buffer.from(text.replace('bench', 'bencH')) });
  if (bad.status !== 400 || !String(bad.body).includes('InvalidSignatureException')) throw new Error(`a tampered body got ${bad.status}: refusing to time`);

  async function run(batch) {
    let failed = 0;
    const c0 = cpu();
    const t0 = process.hrtime.bigint();
    for (let done = 0; done < N; done += batch) {
      const ps = [];
      for (let j = 0; j < batch; j++) ps.push(listener.handleWire(wire(done + j)));
      for (const w of await Promise.all(ps)) if (w.status !== 200) failed++;
      await new Promise((r) => setImmediate(r)); // one batch per event-loop turn, as the worker hands them over
    }
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    const c1 = cpu();
    if (failed) throw new Error(`${failed} of ${N} calls failed`);
    return { batch, perSec: N / wall, mainUs: (c1.main - c0.main) * 1e6 / N, otherUs: ((c1.all - c0.all) - (c1.main - c0.main)) * 1e6 / N };
  }
  console.log(`# handleWire, Decrypt of a 64-byte data key, N=${N} per phase, ${rounds} rounds, dates ${dates}; load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  await run(batches[0]); // warm-up
  const res = new Map(batches.map((b) => [b, []]));
  for (let r = 0; r < rounds; r++) for (const b of batches) res.get(b).push(await run(b));
  const med = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[s.length >> 1]; };
  console.log('| batch | calls/s (one thread) | main-thread µs/call | other threads µs/call |');
  console.log('| --: | --: | --: | --: |');
  for (const [b, rs] of res) {
    console.log(`| ${b} | ${med(rs.map((x) => x.perSec)).toFixed(0)} | **${med(rs.map((x) => x.mainUs)).toFixed(1)}** (${rs.map((x) => x.mainUs.toFixed(0)).join(', ')}) | ${med(rs.map((x) => x.otherUs)).toFixed(1)} |`);
  }
  console.log(`# load average at end ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
} finally {
  await opened?.close();
  rmSync(dir, { recursive: true, force: true });
}
