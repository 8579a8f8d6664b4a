import { describe, it, expect, vi } from 'vitest';
import { existsSync, mkdirSync, promises as fsp, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { MAX_AUDIT_PROBLEMS, verifyAuditLog } from '../../src/kms/audit/verify.js';
import pino from 'pino';
import { openKms, admin, sealedAuditLog, tempDir, FakeClock } from './helpers.js';

const sha = (s: string): string => createHash('sha256').update(s).digest('hex');

/** Rewrite every `previousEventHash` so the edited file is a consistent chain again (what a forger does). */
function rechain(lines: string[]): string[] {
  let prev = '0'.repeat(64);
  return lines.map((l) => {
    const out = l.replace(/"previousEventHash":"[0-9a-f]{64}"\}$/, `"previousEventHash":"${prev}"}`);
    prev = sha(out);
    return out;
  });
}

/** The audit log against its seal high-water mark (docs/kms-format.md §Audit log). */
describe('audit log integrity', () => {
  it('deleting every digest and re-chaining an edited log is reported, and the daemon signs nothing over it', async () => {
    const t = tempDir();
    try {
      const keyId = await sealedAuditLog(t.dir, 4, { auditReserveBytes: 0 }); // seals 0..4
      const dir = join(t.dir, 'audit');
      expect(verifyAuditLog(dir)).toMatchObject({ ok: true, sealedThrough: 4, markThrough: 4 });
      expect(existsSync(join(t.dir, 'audit-mark.json'))).toBe(true);

      // The forgery: every digest gone, event 1's caller changed, the chain recomputed.
      rmSync(join(dir, 'digests'), { recursive: true });
      const path = join(dir, 'events.ndjson');
      const lines = readFileSync(path, 'utf8').trimEnd().split('\n');
      lines[1] = lines[1]!.replace(admin.arn, 'arn:aws:iam::111122223333:user/someone-else');
      expect(lines[1]).toContain('someone-else');
      writeFileSync(path, rechain(lines).join('\n') + '\n');

      const res = verifyAuditLog(dir);
      expect(res.ok).toBe(false);
      expect(res.problem).toMatchObject({ kind: 'missing-digest', sequence: 0 });
      expect(res.problem?.detail).toMatch(/events 0\.\.4 are missing/);

      // Restarted: the log is marked tampered, calls are still audited, and no digest is signed over the forged history.
      const kms = await openKms(t.dir, { auditReserveBytes: 0 });
      expect(kms.audit.health()).toMatchObject({ Integrity: 'tampered' });
      expect(kms.audit.health().IntegrityProblem).toMatch(/digests are missing: the last signed digest sealed events through 4/);
      await kms.call('DescribeKey', { KeyId: keyId }, admin);
      await kms.sealAudit();
      await kms.close();
      expect(readdirSync(join(dir, 'digests'))).toEqual([]);
      expect(readFileSync(path, 'utf8').trimEnd().split('\n')).toHaveLength(6);
      expect(verifyAuditLog(dir).problem).toMatchObject({ kind: 'missing-digest' });
    } finally {
      t.cleanup();
    }
  });

  it('a replaced or unsigned mark is reported; a digest chain that ends early is reported against the mark', async () => {
    const t = tempDir();
    try {
      await sealedAuditLog(t.dir, 5, { auditReserveBytes: 0, auditDigestEvery: 2, auditDigestMinIntervalMs: 0 });
      const dir = join(t.dir, 'audit');
      const digests = readdirSync(join(dir, 'digests')).sort();
      expect(digests.length).toBeGreaterThanOrEqual(3);
      expect(verifyAuditLog(dir)).toMatchObject({ ok: true });

      // Only the newest digest removed: the rest chain fine, the mark says one is missing.
      const newest = join(dir, 'digests', digests[digests.length - 1]!);
      const saved = readFileSync(newest, 'utf8');
      rmSync(newest);
      expect(verifyAuditLog(dir).problem).toMatchObject({ kind: 'missing-digest' });
      writeFileSync(newest, saved);

      // A mark lowered by hand fails its signature.
      const markPath = join(t.dir, 'audit-mark.json');
      const mark = JSON.parse(readFileSync(markPath, 'utf8'));
      writeFileSync(markPath, JSON.stringify({ ...mark, lastSequence: 1 }));
      expect(verifyAuditLog(dir).problem).toMatchObject({ kind: 'bad-mark' });
    } finally {
      t.cleanup();
    }
  });
});

describe('audit log in the tampered state', () => {
  it('says so once at start and at most hourly after, not once per write past digestEvery', async () => {
    const t = tempDir();
    const clock = new FakeClock();
    let kms: Awaited<ReturnType<typeof openKms>> | undefined;
    try {
      kms = await openKms(t.dir, { auditReserveBytes: 0, clock: clock.now });
      const k = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
      await kms.close();
      rmSync(join(t.dir, 'audit', 'digests'), { recursive: true });

      const lines: string[] = [];
      const logger = pino({ level: 'info' }, { write: (s: string) => void lines.push(s) });
      kms = await openKms(t.dir, { auditReserveBytes: 0, auditDigestEvery: 2, auditDigestMinIntervalMs: 0, clock: clock.now, logger });
      expect(kms.audit.health()).toMatchObject({ Integrity: 'tampered' });
      const count = (re: RegExp): number => lines.filter((l) => re.test(l)).length;
      expect(count(/does not match its seal high-water mark/)).toBe(1);
      // Well past digestEvery: every batch would have tried to seal.
      for (let i = 0; i < 20; i++) await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      await kms.tick();
      await kms.sealAudit();
      expect(count(/tampered state; not signing/)).toBe(0);
      clock.t += 3_600_000;
      await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      await kms.sealAudit();
      await kms.sealAudit();
      expect(count(/tampered state; not signing/)).toBe(1);
      await kms.close();
      kms = undefined;
      expect(readdirSync(join(t.dir, 'audit', 'digests'))).toEqual([]);
    } finally {
      await kms?.close().catch(() => {});
      t.cleanup();
    }
  });
});

describe('audit sealing from tick', () => {
  it('tick seals unsealed events once the last digest is an hour old, and only then', async () => {
    const t = tempDir();
    const clock = new FakeClock();
    const hour = 3_600_000;
    let kms: Awaited<ReturnType<typeof openKms>> | undefined;
    try {
      kms = await openKms(t.dir, { auditReserveBytes: 0, auditDigestEvery: 1_000_000, clock: clock.now });
      const dir = join(t.dir, 'audit');
      const digests = (): string[] => readdirSync(join(dir, 'digests')).sort();
      const k = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
      for (let i = 0; i < 3; i++) await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      // Ticks each minute for most of an hour: nothing is sealed.
      for (let m = 0; m < 59; m++) { clock.t += 60_000; await kms.tick(); }
      expect(digests()).toEqual([]);
      clock.t += 60_000;
      await kms.tick();
      expect(digests()).toEqual(['000000000003.json']);
      expect(verifyAuditLog(dir)).toMatchObject({ ok: true, sealedThrough: 3 });
      clock.t += 2 * hour;
      await kms.tick(); // nothing new: no new digest
      expect(digests()).toEqual(['000000000003.json']);
      await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      await kms.tick(); // the last digest is over an hour old: sealed at once
      expect(digests()).toEqual(['000000000003.json', '000000000004.json']);
      await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      clock.t += hour - 1;
      await kms.tick();
      expect(digests()).toHaveLength(2);
      await kms.close(); // close seals regardless of age
      expect(digests()).toEqual(['000000000003.json', '000000000004.json', '000000000005.json']);

      // After a restart the hour counts from the newest digest on disk, not from the start.
      kms = await openKms(t.dir, { auditReserveBytes: 0, auditDigestEvery: 1_000_000, clock: clock.now });
      await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      clock.t += hour - 60_000;
      await kms.tick();
      expect(digests()).toHaveLength(3);
      clock.t += 60_000;
      await kms.tick();
      expect(digests()).toHaveLength(4);
      await kms.close();
      kms = undefined;
      expect(verifyAuditLog(dir)).toMatchObject({ ok: true, sealedThrough: 6 });
    } finally {
      await kms?.close().catch(() => {});
      t.cleanup();
    }
  });
});

describe('audit digests due by count', () => {
  it('a busy log signs at most one a minute: 2,000 calls in the same minute make no digest, the next minute one', async () => {
    const t = tempDir();
    const clock = new FakeClock();
    let kms: Awaited<ReturnType<typeof openKms>> | undefined;
    try {
      // digestEvery 10: before the minimum interval, these 20 waves of 100 calls signed a digest per wave.
      kms = await openKms(t.dir, { auditReserveBytes: 0, auditDigestEvery: 10, clock: clock.now });
      const dir = join(t.dir, 'audit');
      const digests = (): string[] => readdirSync(join(dir, 'digests')).sort();
      const k = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
      for (let wave = 0; wave < 20; wave++) {
        await Promise.all(Array.from({ length: 100 }, () => kms!.call('DescribeKey', { KeyId: k.KeyId }, admin)));
        await kms.audit.sealsSettled();
      }
      expect(digests()).toEqual([]);
      clock.t += 59_999;
      await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      await kms.audit.sealsSettled();
      expect(digests()).toEqual([]);
      clock.t += 1;
      await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      await kms.audit.sealsSettled();
      expect(digests()).toEqual(['000000002002.json']); // events 0 (CreateKey) to 2002: all written so far
      for (let i = 0; i < 30; i++) await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      await kms.audit.sealsSettled();
      expect(digests()).toHaveLength(1);
      clock.t += 60_000;
      await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      await kms.audit.sealsSettled();
      expect(digests()).toEqual(['000000002002.json', '000000002033.json']);
      await kms.close();
      kms = undefined;
      expect(verifyAuditLog(dir)).toMatchObject({ ok: true, events: 2034, sealedThrough: 2033 });
    } finally {
      await kms?.close().catch(() => {});
      t.cleanup();
    }
  });

  it('a digest due by count that fails is tried again a minute later, not with every batch', async () => {
    const t = tempDir();
    const clock = new FakeClock();
    let kms: Awaited<ReturnType<typeof openKms>> | undefined;
    try {
      const lines: string[] = [];
      const logger = pino({ level: 'info' }, { write: (s: string) => void lines.push(s) });
      kms = await openKms(t.dir, { auditReserveBytes: 0, auditDigestEvery: 2, clock: clock.now, logger });
      const failed = (): number => lines.filter((l) => l.includes('audit seal failed')).length;
      const ddir = join(t.dir, 'audit', 'digests');
      const k = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
      rmSync(ddir, { recursive: true });
      writeFileSync(ddir, 'not a directory'); // every digest's write now fails (ENOTDIR)
      clock.t += 60_000;
      for (let i = 0; i < 20; i++) {
        await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
        await kms.audit.sealsSettled();
      }
      expect(failed()).toBe(1);
      clock.t += 60_000;
      await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      await kms.audit.sealsSettled();
      expect(failed()).toBe(2);
      rmSync(ddir);
      mkdirSync(ddir);
      clock.t += 60_000;
      await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      await kms.audit.sealsSettled();
      expect(failed()).toBe(2);
      expect(readdirSync(ddir)).toEqual(['000000000022.json']);
      await kms.close();
      kms = undefined;
      expect(verifyAuditLog(join(t.dir, 'audit'))).toMatchObject({ ok: true, sealedThrough: 22 });
    } finally {
      await kms?.close().catch(() => {});
      t.cleanup();
    }
  });

  it('events written while a digest is signed, across rotations, are each covered once: the log verifies', async () => {
    const t = tempDir();
    let kms: Awaited<ReturnType<typeof openKms>> | undefined;
    try {
      // Every batch may start a digest (no interval, 3 events), signed while the next batches are written,
      // and the live file rotates every ~16 KiB (a rotation waits for the digest being signed).
      kms = await openKms(t.dir, { auditReserveBytes: 0, auditDigestEvery: 3, auditDigestMinIntervalMs: 0, auditRotateBytes: 16 * 1024 });
      const k = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
      for (let wave = 0; wave < 24; wave++) {
        await Promise.all(Array.from({ length: 20 }, () => kms!.call('DescribeKey', { KeyId: k.KeyId }, admin)));
      }
      await kms.close();
      kms = undefined;
      const dir = join(t.dir, 'audit');
      const files = readdirSync(dir).filter((f) => f.startsWith('events.'));
      expect(files.length).toBeGreaterThan(2);
      const digests = readdirSync(join(dir, 'digests'));
      expect(digests.length).toBeGreaterThanOrEqual(files.length - 1); // one per rotated file at least, and those due by count
      expect(verifyAuditLog(dir)).toMatchObject({ ok: true, events: 481, sealedThrough: 480, problemCount: 0 });
    } finally {
      await kms?.close().catch(() => {});
      t.cleanup();
    }
  });
});

describe('audit write failures', () => {
  it("a failed fdatasync fails that call and cuts its event back out: the chain stays whole, no number is reused", async () => {
    const t = tempDir();
    let kms: Awaited<ReturnType<typeof openKms>> | undefined;
    // The FileHandle class is not exported; its prototype is that of any open handle.
    const probe = await fsp.open(t.dir, 'r');
    const proto = Object.getPrototypeOf(probe) as { datasync: () => Promise<void> };
    await probe.close();
    try {
      kms = await openKms(t.dir, { auditReserveBytes: 0, auditFsync: 'event' });
      const k = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
      const eio = Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO', errno: -5, syscall: 'fdatasync' });
      const spy = vi.spyOn(proto, 'datasync').mockRejectedValueOnce(eio);
      const failed = await kms.call('DescribeKey', { KeyId: k.KeyId }, admin).then(() => undefined, (e: unknown) => e);
      expect(spy).toHaveBeenCalled();
      spy.mockRestore();
      expect((failed as { awsName?: string } | undefined)?.awsName).toBe('KMSInternalException');
      for (let i = 0; i < 2; i++) await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      await kms.close();
      kms = undefined;
      const dir = join(t.dir, 'audit');
      const seqs = readFileSync(join(dir, 'events.ndjson'), 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l).sequenceNumber);
      expect(seqs).toEqual([0, 1, 2]);
      const res = verifyAuditLog(dir);
      expect(res.ok, JSON.stringify(res.problem)).toBe(true);
    } finally {
      vi.restoreAllMocks();
      await kms?.close().catch(() => {});
      t.cleanup();
    }
  });
});

describe('audit log truncation', () => {
  it('after a truncation the intact prefix stays in the live file and verify names the gap where it is', async () => {
    const t = tempDir();
    try {
      let kms = await openKms(t.dir, { auditReserveBytes: 0 });
      const k = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
      for (let i = 0; i < 5; i++) await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      await kms.close(); // seals 0..5
      const dir = join(t.dir, 'audit');
      const path = join(dir, 'events.ndjson');
      writeFileSync(path, readFileSync(path, 'utf8').split('\n').slice(0, 3).join('\n') + '\n'); // 0..2 kept

      kms = await openKms(t.dir, { auditReserveBytes: 0 });
      await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      await kms.close();
      const seqs = readFileSync(path, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l).sequenceNumber);
      expect(seqs).toEqual([0, 1, 2, 6]);
      expect(readdirSync(dir).filter((f) => f.includes('truncated'))).toEqual([]);
      const res = verifyAuditLog(dir);
      expect(res).toMatchObject({ ok: false, sealedThrough: 6 });
      expect(res.problem).toMatchObject({ kind: 'removed', sequence: 3 });
    } finally {
      t.cleanup();
    }
  });
});

describe('audit verify reports every problem, not only the first', () => {
  it('a log damaged in two separate places: both are named (file, line, kind), the first also as `problem`', async () => {
    const t = tempDir();
    try {
      await sealedAuditLog(t.dir, 14, { auditDigestEvery: 5, auditDigestMinIntervalMs: 0 }); // events 0..14, digests through 4, 9, 14
      const dir = join(t.dir, 'audit');
      const path = join(dir, 'events.ndjson');
      const lines = readFileSync(path, 'utf8').trimEnd().split('\n');
      const ids = lines.map((l) => (JSON.parse(l) as { eventID: string }).eventID);
      const damaged = [...lines];
      damaged[2] = damaged[2]!.replace('"DescribeKey"', '"Decrypt"'); // an event inside a digest's range
      damaged.splice(11, 1); // event 11 removed
      writeFileSync(path, damaged.join('\n') + '\n');

      const res = verifyAuditLog(dir);
      expect(res).toMatchObject({ ok: false, events: 14, sealedThrough: 14, problemCount: 2 });
      expect(res.problems).toEqual([
        expect.objectContaining({ kind: 'modified', sequence: 2, file: 'events.ndjson', line: 3, eventID: ids[2], detail: 'event 2 does not match the hash recorded in event 3' }),
        expect.objectContaining({ kind: 'removed', sequence: 11, file: 'events.ndjson', line: 12, detail: 'event 11 is absent (next present: 12)' }),
      ]);
      expect(res.problem).toEqual(res.problems[0]);

      // Swapped events, a forged line and a cut tail, on top: each once, in log order.
      const more = [...damaged];
      [more[6], more[7]] = [more[7]!, more[6]!];
      more.splice(9, 0, '{"forged":true}');
      writeFileSync(path, more.slice(0, -2).join('\n') + '\n'); // events 13 and 14 cut off
      const all = verifyAuditLog(dir);
      expect(all.problems.map((p) => [p.kind, p.sequence, p.line])).toEqual([
        ['modified', 2, 3], ['reordered', 6, 7], ['modified', 9, 10], ['removed', 11, 13], ['missing', 13, undefined],
      ]);
      expect(all.problemCount).toBe(5);

      writeFileSync(path, lines.join('\n') + '\n');
      expect(verifyAuditLog(dir)).toMatchObject({ ok: true, problems: [], problemCount: 0 });
    } finally {
      t.cleanup();
    }
  });

  it('an unreadable line inserted before a modified event: both are reported; one that replaces an event: once', async () => {
    const t = tempDir();
    try {
      await sealedAuditLog(t.dir, 9, { auditDigestEvery: 1000 }); // events 0..9, one digest through 9
      const dir = join(t.dir, 'audit');
      const path = join(dir, 'events.ndjson');
      const lines = readFileSync(path, 'utf8').trimEnd().split('\n');
      const modified = [...lines];
      modified[5] = modified[5]!.replace('"DescribeKey"', '"Decrypt"');
      expect(modified[5]).not.toBe(lines[5]);

      // Inserted junk does not stand for an event: event 5 still links to 4, and 6's link to 5 is checked.
      writeFileSync(path, [...modified.slice(0, 5), 'garbage{', ...modified.slice(5)].join('\n') + '\n');
      expect(verifyAuditLog(dir).problems.map((p) => [p.kind, p.sequence, p.line, p.detail])).toEqual([
        ['modified', 5, 6, 'events.ndjson line 6 is not valid JSON'],
        ['modified', 5, 7, 'event 5 does not match the hash recorded in event 6'],
      ]);

      // Junk in place of event 5 stands for it: reported once, 6's link to it not reported again.
      writeFileSync(path, [...lines.slice(0, 5), '{"forged":true}', ...lines.slice(6)].join('\n') + '\n');
      expect(verifyAuditLog(dir).problems.map((p) => [p.kind, p.sequence, p.line])).toEqual([['modified', 5, 6]]);
    } finally {
      t.cleanup();
    }
  });

  it('a digest duplicated under a later name is reported once and does not take the coverage back', async () => {
    const t = tempDir();
    try {
      await sealedAuditLog(t.dir, 14, { auditDigestEvery: 5, auditDigestMinIntervalMs: 0 }); // digests through 4, 9, 14; the mark at 14
      const dir = join(t.dir, 'audit');
      const ddir = join(dir, 'digests');
      const first = readdirSync(ddir).sort()[0]!;
      writeFileSync(join(ddir, '999999999999.json'), readFileSync(join(ddir, first)));
      const res = verifyAuditLog(dir);
      // Before, coverage fell back to the copy's end (4): the mark's digest (14) was reported missing too.
      expect(res.problems.map((p) => [p.kind, p.file])).toEqual([['bad-digest', join('digests', '999999999999.json')]]);
      expect(res).toMatchObject({ sealedThrough: 14, markThrough: 14, problemCount: 1 });
    } finally {
      t.cleanup();
    }
  });

  it('past MAX_AUDIT_PROBLEMS the problems are counted, not listed', async () => {
    const t = tempDir();
    try {
      await sealedAuditLog(t.dir, 2 * MAX_AUDIT_PROBLEMS + 40, { auditDigestEvery: 1000 });
      const dir = join(t.dir, 'audit');
      const path = join(dir, 'events.ndjson');
      const lines = readFileSync(path, 'utf8').trimEnd().split('\n');
      // Every other event from 1 on removed: one gap each.
      writeFileSync(path, lines.filter((_, i) => i % 2 === 0).join('\n') + '\n');
      const res = verifyAuditLog(dir);
      expect(res.problemCount).toBe(Math.floor(lines.length / 2));
      expect(res.problems).toHaveLength(MAX_AUDIT_PROBLEMS);
      expect(res.problems.every((p, i) => p.kind === 'removed' && p.sequence === 2 * i + 1)).toBe(true);
    } finally {
      t.cleanup();
    }
  });
});
