import { describe, it, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { verifyAuditLog } from '../../src/kms/audit/verify.js';
import { SEALED_FILE } from '../../src/kms/audit/audit-log.js';
import { buildEventJson, MAX_USER_AGENT } from '../../src/kms/audit/event.js';
import { openKms, admin, sealedAuditLog, tempDir } from './helpers.js';

/** Audit log rotation into sealed files, verified and tailed as one chain; the sequence after a truncation. */
describe('audit log rotation', () => {
  it('rotates past rotateBytes into sealed files; verify and tail read across them; tampering names the file', async () => {
    const t = tempDir();
    try {
      const kms = await openKms(t.dir, { auditRotateBytes: 8 * 1024, auditDigestEvery: 1_000_000, auditReserveBytes: 0 });
      const k = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
      for (let i = 0; i < 60; i++) await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      const tail = await kms.audit.tail(30);
      await kms.close();

      const dir = join(t.dir, 'audit');
      const sealed = readdirSync(dir).filter((f) => SEALED_FILE.test(f)).sort();
      expect(sealed.length).toBeGreaterThanOrEqual(3);
      // Every sealed file is named by its first sequence number and covered by a digest that names it.
      const digests = readdirSync(join(dir, 'digests')).map((f) => JSON.parse(readFileSync(join(dir, 'digests', f), 'utf8')));
      for (const f of sealed) {
        const first = JSON.parse(readFileSync(join(dir, f), 'utf8').split('\n')[0]!).sequenceNumber;
        expect(f).toBe(`events.${String(first).padStart(12, '0')}.ndjson`);
        expect(digests.some((d) => d.logFile === f)).toBe(true);
      }
      const res = verifyAuditLog(dir);
      expect(res).toMatchObject({ ok: true, events: 61, sealedThrough: 60 });
      expect(res.files).toEqual([...sealed, 'events.ndjson']);

      // tail spans the rotation: 30 events in sequence order ending with the last one.
      expect(tail.map((e) => e.sequenceNumber)).toEqual(Array.from({ length: 30 }, (_, i) => 31 + i));

      // A modified event inside a sealed file is found, and the file named.
      const victim = join(dir, sealed[1]!);
      const lines = readFileSync(victim, 'utf8').split('\n');
      lines[1] = lines[1]!.replace('"DescribeKey"', '"Decrypt"');
      writeFileSync(victim, lines.join('\n'));
      const bad = verifyAuditLog(dir);
      expect(bad.ok).toBe(false);
      expect(bad.problem).toMatchObject({ kind: 'modified', file: sealed[1] });
    } finally {
      t.cleanup();
    }
  });

  it('a whole sealed file deleted: in the middle, its range is "removed"; the newest with the live file after it, "missing"', async () => {
    const t = tempDir();
    try {
      const kms = await openKms(t.dir, { auditRotateBytes: 8 * 1024, auditDigestEvery: 1_000_000, auditReserveBytes: 0 });
      const k = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
      for (let i = 0; i < 60; i++) await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      await kms.close(); // seals the live file too
      const dir = join(t.dir, 'audit');
      const sealed = readdirSync(dir).filter((f) => SEALED_FILE.test(f)).sort();
      expect(sealed.length).toBeGreaterThanOrEqual(3);
      const firsts = new Map(sealed.map((f) => [f, JSON.parse(readFileSync(join(dir, f), 'utf8').split('\n')[0]!).sequenceNumber as number]));
      const first = (f: string): number => firsts.get(f)!;
      const keep = new Map(readdirSync(dir).filter((f) => f.endsWith('.ndjson')).map((f) => [f, readFileSync(join(dir, f))]));
      const put = (): void => { for (const [f, b] of keep) writeFileSync(join(dir, f), b); };

      rmSync(join(dir, sealed[1]!));
      const mid = verifyAuditLog(dir);
      expect(mid.ok).toBe(false);
      expect(mid.problems).toEqual([expect.objectContaining({ kind: 'removed', sequence: first(sealed[1]!), file: sealed[2]!, line: 1 })]);
      expect(mid.problem!.detail).toContain(`events ${first(sealed[1]!)}..${first(sealed[2]!) - 1} are absent`);
      put();

      const newest = sealed[sealed.length - 1]!;
      rmSync(join(dir, newest));
      rmSync(join(dir, 'events.ndjson'));
      const tail = verifyAuditLog(dir);
      expect(tail.ok).toBe(false);
      expect(tail.problems).toEqual([expect.objectContaining({ kind: 'missing', sequence: first(newest) })]);
      put();
      expect(verifyAuditLog(dir).ok).toBe(true);
    } finally {
      t.cleanup();
    }
  });

  it('after the log is truncated, the sequence continues after the last digest and sealing goes on (no reused numbers)', async () => {
    const t = tempDir();
    try {
      const keyId = await sealedAuditLog(t.dir, 5, { auditReserveBytes: 0 }); // seals 0..5
      const dir = join(t.dir, 'audit');
      expect(verifyAuditLog(dir)).toMatchObject({ ok: true, sealedThrough: 5 });
      writeFileSync(join(dir, 'events.ndjson'), ''); // truncated by someone

      const kms = await openKms(t.dir, { auditReserveBytes: 0 });
      await kms.call('DescribeKey', { KeyId: keyId }, admin);
      await kms.close();
      const live = readFileSync(join(dir, 'events.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
      expect(live.map((e) => e.sequenceNumber)).toEqual([6]); // not 0 again
      const res = verifyAuditLog(dir);
      // The new event is signed (old code: sealedThrough stayed at 5 forever) ...
      expect(res.sealedThrough).toBe(6);
      // ... and the gap stays visible.
      expect(res.ok).toBe(false);
      expect(res.problem?.kind).toBe('removed');
      expect(res.problem?.sequence).toBe(0);
    } finally {
      t.cleanup();
    }
  });

  it('bounds a caller-supplied userAgent and over-large requestParameters as CloudTrail does', () => {
    const caller = { ...admin, userAgent: 'u'.repeat(8192) };
    const ev = JSON.parse(buildEventJson({
      eventName: 'Encrypt', caller, accountId: admin.accountId, region: 'us-east-1', requestId: 'r', eventId: 'e',
      resources: [], readOnly: false, time: 0, request: { KeyId: 'k', EncryptionContext: { big: 'x'.repeat(200 * 1024) } },
    }) + '}');
    expect(ev.userAgent).toBe('u'.repeat(MAX_USER_AGENT) + '...(truncated)');
    expect(ev.requestParameters).toEqual({ omitted: true });
  });
});

describe('audit log on a full disk', () => {
  it('gives up its reserve, drops refused events first, fails audited calls only when the reserve is gone, and recovers', async () => {
    const t = tempDir();
    const small = join(t.dir, 'small');
    mkdirSync(small);
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', small]);
    expect(m.status, String(m.stderr)).toBe(0);
    let kms: Awaited<ReturnType<typeof openKms>> | undefined;
    try {
      const clock = { t: Date.now() };
      kms = await openKms(small, { auditReserveBytes: 256 * 1024, auditDigestEvery: 1_000_000, clock: () => clock.t });
      const k = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
      expect(kms.audit.health()).toMatchObject({ State: 'ok', ReserveBytes: 256 * 1024 });
      // Fill the disk to the last byte.
      const filler = openSync(join(small, 'filler'), 'w');
      try { for (;;) writeSync(filler, Buffer.alloc(64 * 1024)); } catch (e) { expect((e as NodeJS.ErrnoException).code).toBe('ENOSPC'); }
      closeSync(filler);

      // Allowed calls go on (the last page of the file first, then the reserve's space); the condition is reported.
      for (let i = 0; i < 1000 && kms.audit.health().State === 'ok'; i++) await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      expect(kms.audit.health()).toMatchObject({ State: 'reserve-in-use', ReserveBytes: 0 });
      // A refused caller's event is dropped and counted, not written.
      await kms.audit.appendRefusal('65534/x', () => ({ eventName: 'Refused', userAgent: 'u'.repeat(1000) }));
      expect(kms.audit.health().DroppedRefusalEvents).toBe(1);

      // Use the reserve up: audited calls then fail (typed ENOSPC from the log), never half-written.
      let failed: unknown;
      for (let i = 0; i < 5000 && !failed; i++) {
        try { await kms.call('DescribeKey', { KeyId: k.KeyId }, admin); } catch (e) { failed = e; }
      }
      expect((failed as { awsName?: string } | undefined)?.awsName).toBe('KMSInternalException');
      expect((failed as Error).message).toMatch(/no space left on device \(ENOSPC\)/);
      expect(kms.audit.health().State).toBe('failing');

      // Space comes back: the reserve is re-created (tried at most every 5 s of the injected clock).
      rmSync(join(small, 'filler'));
      clock.t += 6_000;
      await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      expect(kms.audit.health()).toMatchObject({ State: 'ok', ReserveBytes: 256 * 1024 });
      await kms.close();
      kms = undefined;
      const res = verifyAuditLog(join(small, 'audit'));
      expect(res.ok, JSON.stringify(res.problem)).toBe(true); // nothing torn, chain whole
    } finally {
      await kms?.close().catch(() => {});
      spawnSync('umount', ['-l', small]);
      t.cleanup();
    }
  });

  it('a quiet daemon restores the reserve on its tick once space is back, with no audited call to prompt it', async () => {
    const t = tempDir();
    const small = join(t.dir, 'small');
    mkdirSync(small);
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', small]);
    expect(m.status, String(m.stderr)).toBe(0);
    let kms: Awaited<ReturnType<typeof openKms>> | undefined;
    try {
      const clock = { t: Date.now() };
      kms = await openKms(small, { auditReserveBytes: 256 * 1024, auditDigestEvery: 1_000_000, clock: () => clock.t });
      const k = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
      const filler = openSync(join(small, 'filler'), 'w');
      try { for (;;) writeSync(filler, Buffer.alloc(64 * 1024)); } catch (e) { expect((e as NodeJS.ErrnoException).code).toBe('ENOSPC'); }
      closeSync(filler);
      for (let i = 0; i < 1000 && kms.audit.health().State === 'ok'; i++) await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      expect(kms.audit.health()).toMatchObject({ State: 'reserve-in-use', ReserveBytes: 0 });

      // Space comes back while nobody calls the KMS: `ebsd status` must not say "disk full" until someone does.
      rmSync(join(small, 'filler'));
      clock.t += 6_000;
      await kms.tick();
      expect(kms.audit.health()).toMatchObject({ State: 'ok', ReserveBytes: 256 * 1024 });
      await kms.close();
      kms = undefined;
      const res = verifyAuditLog(join(small, 'audit'));
      expect(res.ok, JSON.stringify(res.problem)).toBe(true);
    } finally {
      await kms?.close().catch(() => {});
      spawnSync('umount', ['-l', small]);
      t.cleanup();
    }
  });
});
