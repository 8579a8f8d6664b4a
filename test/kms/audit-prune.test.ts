/**
 * `AuditLog.prune` (ebsd audit prune): the oldest sealed files and the digests covering only them
 * go, a signed prune record says where the log begins, and verification takes the chain up there,
 * still catching every change to what is kept; a removal nobody signed is still reported.
 */
import { describe, it, expect } from 'vitest';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { verifyAuditLog } from '../../src/kms/audit/verify.js';
import { auditPruneEvent } from '../../src/daemon/audit-events.js';
import { openKms, admin, tempDir, FakeClock, ACCOUNT, REGION } from './helpers.js';

const DAY = 86_400_000;

/** A KMS whose audit log rotates every 8 KiB: 60 calls on day 0, 40 on day 10 (many sealed files each). */
async function twoAges(dir: string, clock: FakeClock) {
  const kms = await openKms(dir, { auditReserveBytes: 0, auditRotateBytes: 8 * 1024, auditDigestEvery: 1_000_000, clock: clock.now });
  const k = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
  for (let i = 0; i < 60; i++) await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
  clock.t += 10 * DAY;
  for (let i = 0; i < 40; i++) await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
  return { kms, keyId: k.KeyId };
}

const eventFor = (plan: { prunedThrough: number; files: string[] }) =>
  auditPruneEvent(admin, { accountId: ACCOUNT, region: REGION, requestId: 'req-prune', before: 'test', ...plan });

const sealed = (audit: string): string[] => readdirSync(audit).filter((f) => /^events\.\d{12}\.ndjson$/.test(f)).sort();

describe('audit log pruning', () => {
  it('removes the sealed files older than the cutoff and their digests; verify starts after them and still catches edits', async () => {
    const t = tempDir();
    const clock = new FakeClock();
    const day0 = clock.t;
    let kms: Awaited<ReturnType<typeof openKms>> | undefined;
    try {
      ({ kms } = await twoAges(t.dir, clock));
      const audit = join(t.dir, 'audit');
      const before = sealed(audit);
      expect(before.length).toBeGreaterThan(4);
      const full = verifyAuditLog(audit);
      expect(full).toMatchObject({ ok: true });

      // Every file whose events are all of day 0 is to go (the one the day-10 calls began in holds both days).
      const lastTime = (f: string): number => {
        const lines = readFileSync(join(audit, f), 'utf8').trimEnd().split('\n');
        return Date.parse((JSON.parse(lines[lines.length - 1]!) as { eventTime: string }).eventTime);
      };
      const day0Files = before.filter((f) => lastTime(f) < day0 + 5 * DAY);
      expect(day0Files.length).toBeGreaterThan(2);

      const res = await kms.audit.prune(day0 + 5 * DAY, eventFor);
      expect(res.FilesRemoved).toEqual(day0Files);
      for (const f of res.FilesRemoved) expect(existsSync(join(audit, f))).toBe(false);
      expect(res.BytesFreed).toBeGreaterThan(res.FilesRemoved.length * 4096);
      const kept = sealed(audit);
      expect(kept[0]).toBe(`events.${String(res.PrunedThroughSequence + 1).padStart(12, '0')}.ndjson`);
      const digests = readdirSync(join(audit, 'digests'));
      expect(digests.every((d) => Number(d.slice(0, 12)) > res.PrunedThroughSequence)).toBe(true);
      expect(res.DigestsRemoved).toBe(res.FilesRemoved.length); // one digest sealed each rotated file

      // The call's own event, after the pruned part, names what went.
      const ev = (await kms.audit.tail(5)).find((e) => e.eventName === 'AuditPrune');
      expect(ev).toMatchObject({ eventSource: 'ebsd', requestParameters: { before: 'test' }, responseElements: { prunedThroughSequence: res.PrunedThroughSequence, filesRemoved: res.FilesRemoved } });
      expect(kms.audit.health()).toMatchObject({ PrunedThroughSequence: res.PrunedThroughSequence });

      await kms.close();
      kms = undefined;
      const after = verifyAuditLog(audit);
      expect(after).toMatchObject({ ok: true, problemCount: 0, prunedThrough: res.PrunedThroughSequence, sealedThrough: full.events }); // the close sealed all, the AuditPrune event too
      expect(after.events).toBe(full.events + 1 - (res.PrunedThroughSequence + 1)); // + the AuditPrune event
      expect(after.files[0]).toBe(kept[0]);

      // What is kept is still checked: its first event's link to the pruned part, and any later edit.
      const first = join(audit, kept[0]!);
      const text = readFileSync(first, 'utf8');
      writeFileSync(first, text.replace('"DescribeKey"', '"Decrypt"'));
      expect(verifyAuditLog(audit).problem).toMatchObject({ kind: 'modified', file: kept[0] });
      writeFileSync(first, text);

      // Restarted, the daemon carries on after the pruned part, and a second prune removes more.
      kms = await openKms(t.dir, { auditReserveBytes: 0, auditRotateBytes: 8 * 1024, auditDigestEvery: 1_000_000, clock: clock.now });
      expect(kms.audit.health()).toMatchObject({ PrunedThroughSequence: res.PrunedThroughSequence, Integrity: 'ok' });
      clock.t += 20 * DAY;
      const again = await kms.audit.prune(clock.t - 15 * DAY, eventFor);
      expect(again.PrunedThroughSequence).toBeGreaterThan(res.PrunedThroughSequence);
      // The newest digest, and the file it covers, always stay.
      const newest = readdirSync(join(audit, 'digests')).sort().at(-1)!;
      expect(Number(newest.slice(0, 12))).toBeGreaterThan(again.PrunedThroughSequence);
      await kms.close();
      kms = undefined;
      expect(verifyAuditLog(audit)).toMatchObject({ ok: true, prunedThrough: again.PrunedThroughSequence });
    } finally {
      await kms?.close().catch(() => {});
      t.cleanup();
    }
  });

  it('files a crash left after the record are skipped by verify and removed by the next prune; a removal nobody signed is reported', async () => {
    const t = tempDir();
    const clock = new FakeClock();
    const day0 = clock.t;
    const spare = mkdtempSync(join(tmpdir(), 'ebsd-prune-spare-'));
    let kms: Awaited<ReturnType<typeof openKms>> | undefined;
    try {
      ({ kms } = await twoAges(t.dir, clock));
      const audit = join(t.dir, 'audit');
      const files = sealed(audit);
      for (const f of files) cpSync(join(audit, f), join(spare, f));
      cpSync(join(audit, 'digests'), join(spare, 'digests'), { recursive: true });

      const res = await kms.audit.prune(day0 + 5 * DAY, eventFor);
      expect(res.FilesRemoved.length).toBeGreaterThan(1);
      // As if the daemon died after writing the record, before its deletions.
      for (const f of res.FilesRemoved) cpSync(join(spare, f), join(audit, f));
      for (const d of readdirSync(join(spare, 'digests'))) if (!existsSync(join(audit, 'digests', d))) cpSync(join(spare, 'digests', d), join(audit, 'digests', d));
      expect(verifyAuditLog(audit)).toMatchObject({ ok: true, prunedThrough: res.PrunedThroughSequence });
      const next = await kms.audit.prune(day0 + 5 * DAY, eventFor);
      expect(next).toMatchObject({ PrunedThroughSequence: res.PrunedThroughSequence, FilesRemoved: [] }); // nothing new to remove
      clock.t += 30 * DAY;
      await kms.call('DescribeKey', { KeyId: (await kms.call('ListKeys', {}, admin) as { Keys: { KeyId: string }[] }).Keys[0]!.KeyId }, admin);
      const more = await kms.audit.prune(clock.t - 20 * DAY, eventFor);
      expect(more.FilesRemoved.slice(0, res.FilesRemoved.length)).toEqual(res.FilesRemoved); // the leftovers went too
      await kms.close();
      kms = undefined;
      expect(verifyAuditLog(audit)).toMatchObject({ ok: true });

      // A prune record edited to claim more was pruned fails its signature: reported, and the events it
      // would have excused are reported removed.
      const rec = join(audit, 'pruned.json');
      const r = JSON.parse(readFileSync(rec, 'utf8'));
      writeFileSync(rec, JSON.stringify({ ...r, prunedThrough: r.prunedThrough + 5 }));
      const forged = verifyAuditLog(audit);
      expect(forged.ok).toBe(false);
      expect(forged.problems.map((p) => p.kind)).toEqual(expect.arrayContaining(['bad-prune-record', 'removed']));
      expect(forged.prunedThrough).toBeUndefined();
      writeFileSync(rec, JSON.stringify(r));

      // Files deleted by hand (no record covers them) are events removed.
      const kept = sealed(audit);
      rmSync(join(audit, kept[0]!));
      expect(verifyAuditLog(audit).problem).toMatchObject({ kind: 'removed', sequence: r.prunedThrough + 1 });
    } finally {
      await kms?.close().catch(() => {});
      t.cleanup();
      rmSync(spare, { recursive: true, force: true });
    }
  });
});
