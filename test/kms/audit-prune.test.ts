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

/** The verification prune runs first, as the daemon gives it (verifyAuditLogOffThread) but in this thread. */
const verifyOf = (kmsDir: string) => async () => verifyAuditLog(join(kmsDir, 'audit'));

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

      const res = await kms.audit.prune(day0 + 5 * DAY, verifyOf(t.dir), eventFor);
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
      const again = await kms.audit.prune(clock.t - 15 * DAY, verifyOf(t.dir), eventFor);
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

  it('refuses a log that does not verify (a file deleted by hand, a time backdated), removing nothing; forged low-numbered lines are reported', async () => {
    const t = tempDir();
    const clock = new FakeClock();
    const day0 = clock.t;
    let kms: Awaited<ReturnType<typeof openKms>> | undefined;
    try {
      ({ kms } = await twoAges(t.dir, clock));
      const audit = join(t.dir, 'audit');
      const files = sealed(audit);
      const digests = readdirSync(join(audit, 'digests')).sort();
      const refusal = async (): Promise<string> => {
        try { await kms!.audit.prune(day0 + 5 * DAY, verifyOf(t.dir), eventFor); } catch (e) { return `${(e as { awsName?: string }).awsName}: ${(e as Error).message}`; }
        return 'pruned';
      };
      // A sealed file deleted by hand: a prune would take the evidence of it with it.
      const second = readFileSync(join(audit, files[1]!));
      rmSync(join(audit, files[1]!));
      expect(await refusal()).toMatch(/^IncorrectState: ebsd audit verify reports \d+ problems? in the log \(the first: removed at event \d+.*: nothing was pruned$/);
      writeFileSync(join(audit, files[1]!), second);
      // A day-10 event backdated to day 0 (so that its file would look old enough): the chain breaks.
      const late = files.find((f) => readFileSync(join(audit, f), 'utf8').includes(new Date(day0 + 10 * DAY).toISOString().slice(0, 10)))!;
      const text = readFileSync(join(audit, late), 'utf8');
      writeFileSync(join(audit, late), text.replaceAll(new Date(day0 + 10 * DAY).toISOString().slice(0, 10), new Date(day0).toISOString().slice(0, 10)));
      expect(await refusal()).toMatch(/^IncorrectState: .*the first: modified/);
      writeFileSync(join(audit, late), text);
      expect(sealed(audit)).toEqual(files);
      expect(readdirSync(join(audit, 'digests')).sort().slice(0, digests.length)).toEqual(digests);
      expect(existsSync(join(audit, 'pruned.json'))).toBe(false);

      // Lines numbered before the log's start are reported, not skipped: on a log never pruned (negative)...
      const first = join(audit, files[0]!);
      const orig = readFileSync(first, 'utf8');
      writeFileSync(first, orig + '{"eventName":"ScheduleKeyDeletion","sequenceNumber":-1}\n');
      expect(verifyAuditLog(audit).problems.map((p) => p.kind)).toContain('reordered');
      writeFileSync(first, orig);
      // ...and after a prune (at or before prunedThrough).
      const res = await kms.audit.prune(day0 + 5 * DAY, verifyOf(t.dir), eventFor);
      const kept = join(audit, sealed(audit)[0]!);
      const keptText = readFileSync(kept, 'utf8');
      writeFileSync(kept, keptText + `{"eventName":"ScheduleKeyDeletion","sequenceNumber":${res.PrunedThroughSequence - 2}}\n`);
      expect(verifyAuditLog(audit).problem).toMatchObject({ kind: 'reordered', sequence: res.PrunedThroughSequence - 2 });
      writeFileSync(kept, keptText);
      expect(verifyAuditLog(audit)).toMatchObject({ ok: true });
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

      const res = await kms.audit.prune(day0 + 5 * DAY, verifyOf(t.dir), eventFor);
      expect(res.FilesRemoved.length).toBeGreaterThan(1);
      // As if the daemon died after writing the record, before its deletions.
      for (const f of res.FilesRemoved) cpSync(join(spare, f), join(audit, f));
      for (const d of readdirSync(join(spare, 'digests'))) if (!existsSync(join(audit, 'digests', d))) cpSync(join(spare, 'digests', d), join(audit, 'digests', d));
      expect(verifyAuditLog(audit)).toMatchObject({ ok: true, prunedThrough: res.PrunedThroughSequence });
      // Nothing new is old enough: the leftovers go all the same, under the record already written.
      const next = await kms.audit.prune(day0 + 5 * DAY, verifyOf(t.dir), eventFor);
      expect(next).toMatchObject({ PrunedThroughSequence: res.PrunedThroughSequence, FilesRemoved: res.FilesRemoved });
      for (const f of res.FilesRemoved) expect(existsSync(join(audit, f))).toBe(false);
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
      expect(forged.problems.find((p) => p.kind === 'bad-prune-record')!.detail).toMatch(/^prune record .*pruned\.json has an invalid signature: /);
      // A record of the wrong shape is named by the member at fault, not as a bad signature.
      writeFileSync(rec, JSON.stringify({ ...r, prunedThrough: -3 }));
      expect(verifyAuditLog(audit).problems.find((p) => p.kind === 'bad-prune-record')!.detail).toMatch(/^prune record .*pruned\.json has no valid prunedThrough: /);
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
