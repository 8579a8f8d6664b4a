#!/usr/bin/env node
// CPU per SigV4 verification of an SDK-signed Decrypt (SigV4Verifier.verify, signing key cached,
// as in the daemon after a key's first request of the day) and per HSM one-time-key derivation
// (deriveOneTimeKey, on every Encrypt and Decrypt), for this build and optionally a second one,
// A/B interleaved so both see the same machine load.
// Build first:  npx tsc -p .   then:
//   node scripts/bench/sigv4-verify.mjs [--n 20000] [--rounds 5] [--baseline DIR]
// --baseline DIR: a second build (a directory holding its dist/, e.g. a copy of dist/ from the commit
//                 before a change); each round times baseline then this build, per measure.
// Also timed: the verification's MAC step alone (the string to sign under the cached signing key),
// from cached pads where the build has src/kms/sigv4/hmac-sha256.ts, else with createHmac.
// Time is this process's CPU (process.cpuUsage, user + system) over --n calls in a loop, per call;
// the table gives each round and the median. Rounds alternate the order (A B, B A, ...). Every build's verifier is first checked to accept the
// request and to refuse it with one byte of the body changed, and every build's KDF to give the same
// key as node's createHmac, before anything is timed.
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { SignatureV4 } from '@smithy/signature-v4';

const arg = (n, d) => { const i = process.argv.indexOf(`--${n}`); return i > 0 ? process.argv[i + 1] : d; };
const n = Number(arg('n', '20000'));
const rounds = Number(arg('rounds', '5'));
const baselineDir = arg('baseline', undefined);
const ROOT = resolve(import.meta.dirname, '..', '..');

class Sha256 {
  constructor(secret) { this.h = secret === undefined ? createHash('sha256') : createHmac('sha256', secret); }
  update(d) { this.h.update(d); }
  async digest() { return this.h.digest(); }
  reset() {}
}

async function load(dir, name) {
  const imp = (p) => import(pathToFileURL(resolve(dir, 'dist', p)).href);
  const [{ SigV4Verifier, parseAuthorization }, { deriveSigningKey }, { deriveOneTimeKey, kdfInput }, canonical] = await Promise.all([
    imp('kms/sigv4/verifier.js'), imp('kms/sigv4/signing-key.js'), imp('kms/hsm/kdf.js'), imp('kms/sigv4/canonical.js')]);
  // The verifier's last step on its cached signing key: the hand-written HMAC from cached pads where the
  // build has it (src/kms/sigv4/hmac-sha256.ts, until 2026-11-30), else node's createHmac.
  const usesPads = readFileSync(resolve(dir, 'dist/kms/sigv4/verifier.js'), 'utf8').includes('hmac-sha256.js');
  const pads = usesPads ? await imp('kms/sigv4/hmac-sha256.js') : null;
  const macWith = pads
    ? (key) => { const k = new pads.HmacSha256Key(key); return { how: 'HMAC from cached pads', mac: (s) => k.mac(s) }; }
    : (key) => ({ how: 'createHmac', mac: (s) => createHmac('sha256', key).update(s, 'utf8').digest() });
  return { name, SigV4Verifier, parseAuthorization, deriveSigningKey, deriveOneTimeKey, kdfInput, canonical, macWith };
}

const builds = [];
if (baselineDir) builds.push(await load(resolve(baselineDir), 'baseline'));
builds.push(await load(ROOT, 'this build'));

// One Decrypt as @smithy/signature-v4 signs it for the AWS SDK (the headers node hands the listener as rawHeaders).
const secret = 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY';
const now = Date.now();
const signer = new SignatureV4({ credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: secret }, region: 'us-east-1', service: 'kms', sha256: Sha256 });
const body = Buffer.from(JSON.stringify({ CiphertextBlob: randomBytes(180).toString('base64'), EncryptionContext: { 'aws:ebs:id': 'vol-0123456789abcdef0' } }));
const signed = await signer.sign({ method: 'POST', protocol: 'https:', hostname: '127.0.0.1', port: 4443, path: '/', query: {},
  headers: { host: '127.0.0.1:4443', 'x-amz-target': 'TrentService.Decrypt', 'content-type': 'application/x-amz-json-1.1', 'content-length': String(body.length),
    'user-agent': 'aws-sdk-js/3.0.0 ua/2.1 os/linux lang/js md/nodejs#20 api/kms#3.0.0' }, body }, { signingDate: new Date(now) });
const raw = Object.entries(signed.headers).flat();
const request = { method: 'POST', target: '/', headers: { raw }, body };
const tampered = { ...request, body: Buffer.from(body.toString().replace('aws:ebs:id', 'aws:ebs:iD')) };

for (const b of builds) {
  b.verifier = new b.SigV4Verifier({ region: 'us-east-1', services: ['kms'], now: () => now,
    credentials: () => ({ principal: 'alice', cacheId: 'AKIDEXAMPLE', signingKey: async (d, r, s) => b.deriveSigningKey(Buffer.from(secret), d, r, s) }) });
  if ((await b.verifier.verify(request)).principal !== 'alice') throw new Error(`${b.name}: the SDK-signed request was not accepted`);
  const refused = await b.verifier.verify(tampered).then(() => false, (e) => e.awsName === 'InvalidSignatureException');
  if (!refused) throw new Error(`${b.name}: a changed body was not refused with InvalidSignatureException`);
}
// The string to sign of that request, and its signature, for the MAC step alone.
for (const b of builds) {
  const c = b.canonical;
  const headers = c.headerMap(request.headers);
  const p = b.parseAuthorization(headers.get('authorization'));
  const amzDate = headers.get('x-amz-date');
  b.sts = c.stringToSign(amzDate, `${p.date}/${p.region}/${p.service}/aws4_request`, c.canonicalRequest(request, p.signedHeaders, c.sha256Hex(body), headers));
  b.mac = b.macWith(b.deriveSigningKey(Buffer.from(secret), p.date, p.region, p.service));
  if (b.mac.mac(b.sts).toString('hex') !== p.signature) throw new Error(`${b.name}: the MAC step (${b.mac.how}) does not give the request's signature`);
}
const hbk = randomBytes(32), hbkId = randomBytes(32), nonce = randomBytes(32);
for (const b of builds) {
  const want = createHmac('sha256', hbk).update(b.kdfInput(hbkId, nonce)).digest();
  if (!b.deriveOneTimeKey(hbk, hbkId, nonce).equals(want)) throw new Error(`${b.name}: deriveOneTimeKey differs from HMAC-SHA256 over kdfInput`);
}

const cpuUs = () => { const u = process.cpuUsage(); return u.user + u.system; };
async function timeVerify(b) {
  const t0 = cpuUs();
  for (let i = 0; i < n; i++) await b.verifier.verify(request);
  return (cpuUs() - t0) / n;
}
function timeMac(b) {
  const t0 = cpuUs();
  for (let i = 0; i < n; i++) b.mac.mac(b.sts);
  return (cpuUs() - t0) / n;
}
function timeKdf(b) {
  const t0 = cpuUs();
  for (let i = 0; i < n; i++) b.deriveOneTimeKey(hbk, hbkId, nonce);
  return (cpuUs() - t0) / n;
}

const load0 = loadavg().map((x) => x.toFixed(2)).join(' ');
console.log(`sigv4-verify: ${n} calls per measure, ${rounds} rounds, A/B interleaved; load average at start ${load0}`);
for (const b of builds) { await timeVerify(b); timeMac(b); timeKdf(b); } // warm-up (JIT), not recorded
const res = builds.map(() => ({ verify: [], mac: [], kdf: [] }));
for (let r = 0; r < rounds; r++) {
  // A B, then B A: neither build always runs first in a round (right after the other's garbage).
  const order = r % 2 === 0 ? builds.map((_, i) => i) : builds.map((_, i) => builds.length - 1 - i);
  for (const i of order) res[i].verify[r] = await timeVerify(builds[i]);
  for (const i of order) res[i].mac[r] = timeMac(builds[i]);
  for (const i of order) res[i].kdf[r] = timeKdf(builds[i]);
}
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };
console.log('| build | measure | CPU µs per call, each round | median |');
console.log('|---|---|---|--:|');
for (let i = 0; i < builds.length; i++) {
  const label = { verify: 'verify (SDK-signed Decrypt)', mac: `its MAC step alone (${builds[i].mac.how})`, kdf: 'HSM KDF (deriveOneTimeKey)' };
  for (const m of ['verify', 'mac', 'kdf']) console.log(`| ${builds[i].name} | ${label[m]} | ${res[i][m].map((x) => x.toFixed(2)).join(', ')} | ${median(res[i][m]).toFixed(2)} |`);
}
if (builds.length === 2) {
  for (const m of ['verify', 'mac', 'kdf']) {
    const d = res[1][m].map((x, j) => x - res[0][m][j]);
    console.log(`${m}: this build − baseline, per round ${d.map((x) => x.toFixed(2)).join(', ')} µs; median ${median(d).toFixed(2)} µs (${(median(res[1][m]) / median(res[0][m])).toFixed(3)}×)`);
  }
}
console.log(`load average at end ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
