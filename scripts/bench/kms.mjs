#!/usr/bin/env node
// KMS core throughput, in-process, audit on (per-call events, hash chain, digests).
// Build first:  npx tsc -p .   then:  node scripts/bench/kms.mjs [--seconds 3] [--concurrency 256] [--hsm worker|inline] [--fsync none|event]
// It checks a round trip is correct before timing anything (STYLE §14).
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KmsService } from '../../dist/kms/kms-core.js';

const arg = (n, d) => { const i = process.argv.indexOf(`--${n}`); return i > 0 ? process.argv[i + 1] : d; };
const seconds = Number(arg('seconds', '3'));
const concurrency = Number(arg('concurrency', '256'));
const hsmMode = arg('hsm', 'worker');
const auditFsync = arg('fsync', 'none');

const dir = mkdtempSync(join(tmpdir(), 'ebsd-kms-bench-'));
const ACCOUNT = '111122223333';
const caller = { arn: `arn:aws:iam::${ACCOUNT}:root`, accountId: ACCOUNT, type: 'Root' };
const kms = await KmsService.open({ stateDir: dir, accountId: ACCOUNT, region: 'us-east-1', hsmMode, auditFsync });
try {
  const { KeyMetadata } = await kms.call('CreateKey', { Description: 'bench' }, caller);
  const EncryptionContext = { 'aws:ebs:id': 'vol-0123456789abcdef0' };
  const g = await kms.call('GenerateDataKey', { KeyId: KeyMetadata.KeyId, NumberOfBytes: 64, EncryptionContext }, caller);
  const d = await kms.call('Decrypt', { CiphertextBlob: g.CiphertextBlob, EncryptionContext }, caller);
  if (!Buffer.from(d.Plaintext).equals(Buffer.from(g.Plaintext))) throw new Error('round trip failed: refusing to time');

  async function run(name, mk) {
    let n = 0;
    const end = performance.now() + seconds * 1000;
    const worker = async () => { while (performance.now() < end) { await kms.call(name, mk(), caller); n++; } };
    const t0 = performance.now();
    await Promise.all(Array.from({ length: concurrency }, worker));
    const dt = (performance.now() - t0) / 1000;
    return n / dt;
  }
  const blob = g.CiphertextBlob;
  const dec = await run('Decrypt', () => ({ CiphertextBlob: blob, EncryptionContext }));
  const gen = await run('GenerateDataKeyWithoutPlaintext', () => ({ KeyId: KeyMetadata.KeyId, NumberOfBytes: 64, EncryptionContext }));
  await kms.sealAudit();
  const auditBytes = statSync(join(dir, 'audit', 'events.ndjson')).size;
  console.log(JSON.stringify({ node: process.version, hsm: hsmMode, auditFsync, concurrency, seconds,
    decryptPerSec: Math.round(dec), generateDataKeyWithoutPlaintextPerSec: Math.round(gen), goalDecryptPerSec: 20000, auditBytes }));
} finally {
  await kms.close();
  rmSync(dir, { recursive: true, force: true });
}
