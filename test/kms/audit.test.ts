import { describe, it, expect } from 'vitest';
import { readFileSync, writeFileSync, appendFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createLogger } from '../../src/util/logger.js';
import { verifyAuditLog, verifyAuditLogOffThread } from '../../src/kms/audit/verify.js';
import { openKms, admin, sealedAuditLog, stranger, tempDir, awsError } from './helpers.js';

describe('audit log', () => {
  it('one CloudTrail event per call (allowed, denied, failed); verify detects modify/remove/reorder/truncate', async () => {
    const t = tempDir();
    const kms = await openKms(t.dir, { auditDigestEvery: 5, auditDigestMinIntervalMs: 0, auditFsync: 'event' });
    const k = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string; Arn: string };
    await kms.call('Encrypt', { KeyId: k.KeyId, Plaintext: Buffer.from('x'), EncryptionContext: { purpose: 'test' } }, admin);
    await awsError(kms.call('DescribeKey', { KeyId: k.KeyId }, stranger));
    await awsError(kms.call('DescribeKey', { KeyId: 'alias/none' }, admin));
    for (let i = 0; i < 8; i++) await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
    await kms.close();
    const dir = join(t.dir, 'audit');
    const path = join(dir, 'events.ndjson');
    const orig = readFileSync(path, 'utf8');
    const lines = orig.trim().split('\n');
    const evs = lines.map((l) => JSON.parse(l));
    expect(evs.length).toBe(12);
    expect(evs[1]).toMatchObject({
      eventVersion: '1.08', eventSource: 'kms.amazonaws.com', eventName: 'Encrypt', awsRegion: 'us-east-1', eventType: 'AwsApiCall',
      readOnly: true, requestParameters: { keyId: k.KeyId, encryptionContext: { purpose: 'test' } },
      userIdentity: { type: 'Root', arn: admin.arn, accountId: admin.accountId }, resources: [{ ARN: k.Arn, type: 'AWS::KMS::Key' }],
    });
    expect(evs[1].requestParameters.plaintext).toBeUndefined();
    expect(evs[1].responseElements?.ciphertextBlob).toBeUndefined();
    expect(evs[2]).toMatchObject({ eventName: 'DescribeKey', errorCode: 'AccessDeniedException' });
    expect(evs[3]).toMatchObject({ errorCode: 'NotFoundException' });
    for (const e of evs) expect(typeof e.requestID === 'string' && typeof e.eventID === 'string').toBe(true);

    expect(verifyAuditLog(dir)).toMatchObject({ ok: true, events: 12, sealedThrough: 11 });

    const tamper = (ls: string[]) => writeFileSync(path, ls.join('\n') + '\n');
    // modified
    const m = [...lines]; m[4] = m[4]!.replace('"DescribeKey"', '"Decrypt"'); tamper(m);
    expect(verifyAuditLog(dir).problem).toMatchObject({ kind: 'modified', sequence: 4, eventID: evs[4].eventID });
    // removed
    tamper(lines.filter((_, i) => i !== 6));
    expect(verifyAuditLog(dir).problem).toMatchObject({ kind: 'removed', sequence: 6 });
    // reordered
    const r = [...lines]; [r[7], r[8]] = [r[8]!, r[7]!]; tamper(r);
    expect(verifyAuditLog(dir).problem).toMatchObject({ kind: 'reordered', sequence: 7 });
    // truncated (missing)
    tamper(lines.slice(0, 9));
    expect(verifyAuditLog(dir).problem).toMatchObject({ kind: 'missing', sequence: 9 });
    // last sealed event modified
    const l = [...lines]; l[11] = l[11]!.replace('"DescribeKey"', '"Decrypt"'); tamper(l);
    expect(verifyAuditLog(dir).problem).toMatchObject({ kind: 'modified', sequence: 11 });
    writeFileSync(path, orig);
    expect(verifyAuditLog(dir).ok).toBe(true);

    // the chain continues across restarts
    const kms2 = await openKms(t.dir);
    await kms2.call('ListKeys', {}, admin);
    await kms2.close();
    expect(verifyAuditLog(dir)).toMatchObject({ ok: true, events: 13 });
    appendFileSync(path, '{"forged":true}\n');
    expect(verifyAuditLog(dir).problem?.kind).toBe('modified');
    t.cleanup();
  }, 30_000);

  it('readOnly is CloudTrail\'s per operation: true for crypto, Describe, Get and List; false for what changes state', async () => {
    const t = tempDir();
    try {
      const kms = await openKms(t.dir);
      const k = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
      const sig = (await kms.call('CreateKey', { KeySpec: 'ECC_NIST_P256', KeyUsage: 'SIGN_VERIFY' }, admin)).KeyMetadata as { KeyId: string };
      const mac = (await kms.call('CreateKey', { KeySpec: 'HMAC_256', KeyUsage: 'GENERATE_VERIFY_MAC' }, admin)).KeyMetadata as { KeyId: string };
      const ct = (await kms.call('Encrypt', { KeyId: k.KeyId, Plaintext: Buffer.from('x') }, admin)).CiphertextBlob;
      await kms.call('Decrypt', { CiphertextBlob: ct }, admin);
      await kms.call('ReEncrypt', { CiphertextBlob: ct, DestinationKeyId: k.KeyId }, admin);
      await kms.call('GenerateDataKey', { KeyId: k.KeyId, KeySpec: 'AES_256' }, admin);
      await kms.call('GenerateDataKeyWithoutPlaintext', { KeyId: k.KeyId, KeySpec: 'AES_256' }, admin);
      await kms.call('GenerateRandom', { NumberOfBytes: 16 }, admin);
      const s = await kms.call('Sign', { KeyId: sig.KeyId, Message: Buffer.from('m'), SigningAlgorithm: 'ECDSA_SHA_256' }, admin);
      await kms.call('Verify', { KeyId: sig.KeyId, Message: Buffer.from('m'), Signature: s.Signature, SigningAlgorithm: 'ECDSA_SHA_256' }, admin);
      const m = await kms.call('GenerateMac', { KeyId: mac.KeyId, Message: Buffer.from('m'), MacAlgorithm: 'HMAC_SHA_256' }, admin);
      await kms.call('VerifyMac', { KeyId: mac.KeyId, Message: Buffer.from('m'), Mac: m.Mac, MacAlgorithm: 'HMAC_SHA_256' }, admin);
      await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      await kms.call('ListAliases', {}, admin);
      await kms.call('ListKeys', {}, admin);
      await kms.call('TagResource', { KeyId: k.KeyId, Tags: [{ TagKey: 'a', TagValue: 'b' }] }, admin);
      await kms.call('DisableKey', { KeyId: k.KeyId }, admin);
      await kms.close();
      const evs = readFileSync(join(t.dir, 'audit', 'events.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { eventName: string; readOnly: boolean; errorCode?: string });
      for (const e of evs) expect(e.errorCode, e.eventName).toBeUndefined();
      const flags = Object.fromEntries(evs.map((e) => [e.eventName, e.readOnly]));
      expect(flags).toEqual({
        CreateKey: false, Encrypt: true, Decrypt: true, ReEncrypt: true, GenerateDataKey: true, GenerateDataKeyWithoutPlaintext: true,
        GenerateRandom: true, Sign: true, Verify: true, GenerateMac: true, VerifyMac: true, DescribeKey: true, ListAliases: true,
        ListKeys: true, TagResource: false, DisableKey: false,
      });
    } finally {
      t.cleanup();
    }
  }, 30_000);

  it('a known plaintext and data key never appear (hex or base64) in the audit log or logs', async () => {
    const t = tempDir();
    let logs = '';
    const sink = new Writable({ write(c, _e, cb) { logs += c.toString(); cb(); } });
    const logger = createLogger({ level: 'trace', destination: sink });
    const kms = await openKms(t.dir, { logger });
    const plaintext = Buffer.from('7h15-15-4-kn0wn-p141n73x7-v4lu3-0123456789abcdef');
    const k = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
    const secrets: Buffer[] = [plaintext];
    for (let i = 0; i < 50; i++) {
      const e = await kms.call('Encrypt', { KeyId: k.KeyId, Plaintext: plaintext, EncryptionContext: { n: String(i) } }, admin);
      secrets.push(Buffer.from(e.CiphertextBlob as Uint8Array));
      await kms.call('Decrypt', { CiphertextBlob: e.CiphertextBlob, EncryptionContext: { n: String(i) } }, admin);
      await awsError(kms.call('Decrypt', { CiphertextBlob: e.CiphertextBlob, EncryptionContext: { n: 'wrong' } }, admin));
      const g = await kms.call('GenerateDataKey', { KeyId: k.KeyId, NumberOfBytes: 64 }, admin);
      secrets.push(Buffer.from(g.Plaintext as Uint8Array), Buffer.from(g.CiphertextBlob as Uint8Array));
      const r = await kms.call('ReEncrypt', { CiphertextBlob: g.CiphertextBlob, DestinationKeyId: k.KeyId }, admin);
      secrets.push(Buffer.from(r.CiphertextBlob as Uint8Array));
    }
    await kms.close();
    const audit = readFileSync(join(t.dir, 'audit', 'events.ndjson'), 'utf8');
    const ks = readFileSync(join(t.dir, 'keys', `${k.KeyId}.json`), 'utf8');
    expect(audit.length).toBeGreaterThan(10_000);
    for (const s of secrets) {
      for (const enc of [s.toString('hex'), s.toString('base64'), s.toString('base64url')]) {
        const probe = enc.slice(0, 24);
        expect(audit.includes(probe)).toBe(false);
        expect(logs.includes(probe)).toBe(false);
      }
    }
    expect(audit.includes(plaintext.toString())).toBe(false);
    expect(ks.includes(plaintext.toString('hex').slice(0, 24))).toBe(false);
    t.cleanup();
  }, 60_000);
});

describe('audit verification on a worker thread (verifyAuditLogOffThread, as the daemon runs it)', () => {
  it('answers what verifyAuditLog answers, intact and tampered; an unreadable log is an error naming the directory', async () => {
    const t = tempDir();
    await sealedAuditLog(t.dir, 9, { auditDigestEvery: 4, auditDigestMinIntervalMs: 0 }); // the close seals the last 2 events
    const dir = join(t.dir, 'audit');
    const intact = await verifyAuditLogOffThread(dir);
    expect(intact).toEqual(verifyAuditLog(dir));
    expect(intact).toMatchObject({ ok: true, events: 10, sealedThrough: 9 });
    const path = join(dir, 'events.ndjson');
    const lines = readFileSync(path, 'utf8').trim().split('\n');
    lines[2] = lines[2]!.replace('"DescribeKey"', '"Decrypt"');
    writeFileSync(path, `${lines.join('\n')}\n`);
    const tampered = await verifyAuditLogOffThread(dir);
    expect(tampered).toEqual(verifyAuditLog(dir));
    expect(tampered.problem).toMatchObject({ kind: 'modified', sequence: 2 });
    const gone = join(t.dir, 'no-such-audit');
    await expect(verifyAuditLogOffThread(gone)).rejects.toThrow(new RegExp(`audit verification of ${gone} failed: ENOENT`));
    t.cleanup();
  });
});
