#!/usr/bin/env node
// KMS core throughput, in-process, audit on (per-call events, hash chain, digests).
// Build first:  npx tsc -p .   then:
//   node scripts/bench/kms.mjs [--seconds 3] [--runs 1] [--concurrency 256] [--hsm worker|inline] [--fsync none|event]
//                              [--policy default|ebs] [--op all|decrypt|gdk]
// --policy default: the account root calls Decrypt on a customer key with the default key policy
//                   (placeholder authorizer: same-account principals allowed).
// --policy ebs:     the real policy engine; alias/aws/ebs (EBS's managed-key policy) and Decrypt as the host
//                   role session through a grant token (Operations [Decrypt], EncryptionContextSubset), as the
//                   daemon does on attach.
// It checks a round trip is correct before timing anything, and prints beside our figures the ceiling:
// raw node:crypto AES-256-GCM decrypts/s of the same size, measured in the same run (docs/architecture.md §11.14).
import { mkdtempSync, rmSync, statSync, readFileSync } from 'node:fs';
import { tmpdir, loadavg, cpus } from 'node:os';
import { join } from 'node:path';
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { KmsService } from '../../dist/kms/kms-core.js';
import { openKms } from '../../dist/kms/open-kms.js';

const arg = (n, d) => { const i = process.argv.indexOf(`--${n}`); return i > 0 ? process.argv[i + 1] : d; };
const seconds = Number(arg('seconds', '3'));
const runs = Number(arg('runs', '1'));
const concurrency = Number(arg('concurrency', '256'));
const hsmMode = arg('hsm', 'worker');
const auditFsync = arg('fsync', 'none');
const policy = arg('policy', 'default');
const which = arg('op', 'all');

const dir = mkdtempSync(join(tmpdir(), 'ebsd-kms-bench-'));
const ACCOUNT = '111122223333';
const REGION = 'us-east-1';
const EncryptionContext = { 'aws:ebs:id': 'vol-0123456789abcdef0' };
let kms;
try {
  let decryptCaller, gdkCaller, keyId, grantTokens;
  if (policy === 'ebs') {
    // Wired as the daemon wires it (src/kms/open-kms.ts).
    const authz = await openKms({ stateDir: dir, accountId: ACCOUNT, region: REGION, hsmMode, auditFsync });
    kms = authz.core;
    const ids = authz.identities;
    await ids.createUser('alice');
    await ids.mapUid(1000, 'user/alice');
    await ids.createRole('EbsdHost');
    await ids.mapUid(999, 'role/EbsdHost', { session: 'host-1' });
    gdkCaller = ids.callerForUid(1000, { viaService: `ec2.${REGION}.amazonaws.com` });
    decryptCaller = ids.callerForUid(999);
    keyId = 'alias/aws/ebs';
    const { KeyMetadata } = await kms.call('DescribeKey', { KeyId: keyId }, gdkCaller);
    const hostRole = `arn:aws:iam::${ACCOUNT}:role/EbsdHost`;
    const g = await kms.call('CreateGrant', { KeyId: KeyMetadata.Arn, GranteePrincipal: hostRole, RetiringPrincipal: hostRole,
      Operations: ['Decrypt'], Constraints: { EncryptionContextSubset: EncryptionContext } }, gdkCaller);
    grantTokens = [g.GrantToken];
  } else {
    kms = await KmsService.open({ stateDir: join(dir, 'kms'), accountId: ACCOUNT, region: REGION, hsmMode, auditFsync });
    decryptCaller = gdkCaller = { arn: `arn:aws:iam::${ACCOUNT}:root`, accountId: ACCOUNT, type: 'Root' };
    keyId = (await kms.call('CreateKey', { Description: 'bench' }, gdkCaller)).KeyMetadata.KeyId;
  }
  // Correctness first: GenerateDataKey -> Decrypt round trip, and a wrong context must fail.
  const g = await kms.call('GenerateDataKey', { KeyId: keyId, NumberOfBytes: 64, EncryptionContext }, gdkCaller);
  const decReq = () => ({ CiphertextBlob: g.CiphertextBlob, EncryptionContext, ...(grantTokens ? { GrantTokens: grantTokens } : {}) });
  const d = await kms.call('Decrypt', decReq(), decryptCaller);
  if (!Buffer.from(d.Plaintext).equals(Buffer.from(g.Plaintext))) throw new Error('round trip failed: refusing to time');
  const bad = await kms.call('Decrypt', { ...decReq(), EncryptionContext: { 'aws:ebs:id': 'vol-other' } }, decryptCaller).then(() => 'allowed', (e) => e.awsName);
  if (bad !== (policy === 'ebs' ? 'AccessDeniedException' : 'InvalidCiphertextException')) throw new Error(`wrong context gave ${bad}: refusing to time`);

  async function run(name, mk, caller) {
    let n = 0;
    const end = performance.now() + seconds * 1000;
    const worker = async () => { while (performance.now() < end) { await kms.call(name, mk(), caller); n++; } };
    const c0 = process.cpuUsage();
    const e0 = performance.eventLoopUtilization();
    const t0 = performance.now();
    await Promise.all(Array.from({ length: concurrency }, worker));
    const dt = (performance.now() - t0) / 1000;
    const c = process.cpuUsage(c0);
    const e = performance.eventLoopUtilization(e0);
    // cpuUsPerOp: whole process (main thread + HSM worker + libuv pool); mainUsPerOp: main thread busy time
    // (event-loop utilization), i.e. what one core running the service thread spends per call.
    return { perSec: n / dt, cpuUsPerOp: (c.user + c.system) / n, mainUsPerOp: (e.active * 1000) / n };
  }
  /** The ceiling: OpenSSL AES-256-GCM decrypt of a 64-byte data key with AAD, one object per op, this thread. */
  function reference() {
    const key = randomBytes(32), iv = randomBytes(12), aad = randomBytes(160), pt = randomBytes(64);
    const c = createCipheriv('aes-256-gcm', key, iv); c.setAAD(aad);
    const ct = Buffer.concat([c.update(pt), c.final()]); const tag = c.getAuthTag();
    let n = 0; const t0 = performance.now(); const end = t0 + 1000;
    while (performance.now() < end) {
      for (let i = 0; i < 256; i++) {
        const x = createDecipheriv('aes-256-gcm', key, iv); x.setAAD(aad); x.setAuthTag(tag); x.update(ct); x.final();
      }
      n += 256;
    }
    return n / ((performance.now() - t0) / 1000);
  }
  // Warm-up (JIT, first audit seal), not counted.
  { const s0 = seconds; await run('Decrypt', decReq, decryptCaller).catch(() => {}); void s0; }
  const results = [];
  for (let r = 0; r < runs; r++) {
    const load = loadavg()[0];
    const ref = reference();
    const dec = which === 'gdk' ? undefined : await run('Decrypt', decReq, decryptCaller);
    const gen = which === 'decrypt' ? undefined
      : await run('GenerateDataKeyWithoutPlaintext', () => ({ KeyId: keyId, NumberOfBytes: 64, EncryptionContext }), gdkCaller);
    results.push({ load1: Number(load.toFixed(2)), refAesGcmDecryptPerSec: Math.round(ref),
      ...(dec ? { decryptPerSec: Math.round(dec.perSec), decryptCpuUsPerOp: Number(dec.cpuUsPerOp.toFixed(1)), decryptMainUsPerOp: Number(dec.mainUsPerOp.toFixed(1)) } : {}),
      ...(gen ? { gdkwpPerSec: Math.round(gen.perSec), gdkwpCpuUsPerOp: Number(gen.cpuUsPerOp.toFixed(1)), gdkwpMainUsPerOp: Number(gen.mainUsPerOp.toFixed(1)) } : {}) });
  }
  await kms.sealAudit();
  const auditBytes = statSync(join(dir, 'kms', 'audit', 'events.ndjson')).size;
  const med = (k) => { const v = results.map((x) => x[k]).filter((x) => x !== undefined).sort((a, b) => a - b); return v.length ? v[(v.length - 1) >> 1] : undefined; };
  console.log(JSON.stringify({ node: process.version, cpus: cpus().length, hsm: hsmMode, auditFsync, policy, concurrency, seconds, runs: results,
    median: { decryptPerSec: med('decryptPerSec'), decryptCpuUsPerOp: med('decryptCpuUsPerOp'), decryptMainUsPerOp: med('decryptMainUsPerOp'),
      gdkwpPerSec: med('gdkwpPerSec'), gdkwpCpuUsPerOp: med('gdkwpCpuUsPerOp'), gdkwpMainUsPerOp: med('gdkwpMainUsPerOp'),
      refAesGcmDecryptPerSec: med('refAesGcmDecryptPerSec'), load1: med('load1') },
    goalDecryptPerSec: 20000, auditBytes }));
} finally {
  await kms?.close();
  rmSync(dir, { recursive: true, force: true });
}
