/**
 * `ebsd audit verify` against each way of damaging a real daemon's log that CloudTrail log file
 * integrity validation is meant to catch: a deleted event, two events swapped, a file cut short
 * (at a line and inside one), a digest edited, a digest deleted, a digest replaced by another
 * valid one. Each damage is undone before the next (docs/kms-format.md, "Audit log"). Also: the
 * grant token and the plaintext of the calls logged are nowhere in the log.
 */
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from './helpers.js';

describe('audit verify on a damaged daemon log', () => {
  const env = new Env('audit-tamper');
  const dir = (): string => join(env.state, 'kms', 'audit');
  const live = (): string => join(dir(), 'events.ndjson');
  const digestDir = (): string => join(dir(), 'digests');
  const secret = `plaintext-${process.pid}-known`;
  let grantToken = '';
  let saved: { live: string; digests: Map<string, string> };

  const save = (): typeof saved => ({
    live: readFileSync(live(), 'utf8'),
    digests: new Map(readdirSync(digestDir()).map((f) => [f, readFileSync(join(digestDir(), f), 'utf8')])),
  });
  const restore = (): void => {
    writeFileSync(live(), saved.live);
    for (const f of readdirSync(digestDir())) if (!saved.digests.has(f)) rmSync(join(digestDir(), f));
    for (const [f, text] of saved.digests) writeFileSync(join(digestDir(), f), text);
  };
  /** Verify without sealing first: a seal now would sign nothing new, but must not be what is tested. */
  const verify = (): Promise<any> => env.api('ebsd.AuditVerify', { Seal: false });

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    const key = await env.api('TrentService.CreateKey', {});
    const id = key.KeyMetadata.KeyId as string;
    for (let round = 0; round < 3; round++) {
      const enc = await env.api('TrentService.Encrypt', { KeyId: id, Plaintext: Buffer.from(secret).toString('base64'), EncryptionContext: { round: String(round) } });
      const g = await env.api('TrentService.CreateGrant', { KeyId: id, GranteePrincipal: `arn:aws:iam::${key.KeyMetadata.AWSAccountId}:root`, Operations: ['Decrypt'] });
      grantToken = g.GrantToken;
      await env.api('TrentService.Decrypt', { CiphertextBlob: enc.CiphertextBlob, EncryptionContext: { round: String(round) }, GrantTokens: [grantToken] });
      expect((await env.api('ebsd.AuditVerify')).ok).toBe(true); // seals: one digest a round
    }
    saved = save();
    expect(saved.digests.size).toBeGreaterThanOrEqual(3);
    expect(await verify()).toMatchObject({ ok: true, problemCount: 0 });
  }, 60_000);
  afterAll(() => env.cleanup(), 60_000);

  const lines = (): string[] => saved.live.trimEnd().split('\n');
  const seqOf = (l: string): number => (JSON.parse(l) as { sequenceNumber: number }).sequenceNumber;
  const damage = async (write: () => void): Promise<any> => {
    write();
    try {
      return await verify();
    } finally {
      restore();
      expect((await verify()).ok).toBe(true);
    }
  };

  it('a deleted event is "removed", at its line', async () => {
    const l = lines();
    const res = await damage(() => writeFileSync(live(), [...l.slice(0, 4), ...l.slice(5)].join('\n') + '\n'));
    expect(res.ok).toBe(false);
    expect(res.problems).toEqual([expect.objectContaining({ kind: 'removed', sequence: seqOf(l[4]!), file: 'events.ndjson', line: 5 })]);
  });

  it('two events swapped are "reordered"', async () => {
    const l = lines();
    const res = await damage(() => writeFileSync(live(), [...l.slice(0, 3), l[4]!, l[3]!, ...l.slice(5)].join('\n') + '\n'));
    expect(res.ok).toBe(false);
    expect(res.problems.map((p: { kind: string }) => p.kind)).toContain('reordered');
    expect(res.problems.every((p: { kind: string }) => p.kind === 'reordered')).toBe(true);
  });

  it('a file cut short at a line is "missing" the events its digest sealed; cut inside a line, that line is "modified"', async () => {
    const l = lines();
    const atLine = await damage(() => writeFileSync(live(), l.slice(0, l.length - 3).join('\n') + '\n'));
    expect(atLine.ok).toBe(false);
    expect(atLine.problems).toEqual([expect.objectContaining({ kind: 'missing', sequence: seqOf(l[l.length - 3]!) })]);
    const inLine = await damage(() => writeFileSync(live(), saved.live.slice(0, saved.live.length - 40)));
    expect(inLine.ok).toBe(false);
    expect(inLine.problems[0]).toMatchObject({ kind: 'modified', file: 'events.ndjson', line: l.length });
  });

  it('a digest edited is "bad-digest" (signature); one deleted is "missing-digest" (the mark); one replaced by another valid digest is "bad-digest"', async () => {
    const names = [...saved.digests.keys()].sort();
    const mid = names[1]!;
    const edited = await damage(() => {
      const d = JSON.parse(saved.digests.get(mid)!) as { lastEventHash: string };
      d.lastEventHash = '0'.repeat(64);
      writeFileSync(join(digestDir(), mid), JSON.stringify(d));
    });
    expect(edited.ok).toBe(false);
    expect(edited.problems[0]).toMatchObject({ kind: 'bad-digest', file: `digests/${mid}` });

    const last = names[names.length - 1]!;
    const deleted = await damage(() => rmSync(join(digestDir(), last)));
    expect(deleted.ok).toBe(false);
    expect(deleted.problems.map((p: { kind: string }) => p.kind)).toContain('missing-digest');

    const replaced = await damage(() => writeFileSync(join(digestDir(), last), saved.digests.get(names[0]!)!));
    expect(replaced.ok).toBe(false);
    expect(replaced.problems.map((p: { kind: string }) => p.kind)).toContain('bad-digest');
  });

  it('the grant token and the plaintext of the calls are nowhere in the log; the encryption context is', () => {
    expect(grantToken.length).toBeGreaterThan(20);
    expect(saved.live).not.toContain(grantToken);
    for (const form of [secret, Buffer.from(secret).toString('base64'), Buffer.from(secret).toString('hex')]) expect(saved.live).not.toContain(form);
    expect(saved.live).toContain('"encryptionContext":{"round":"2"}');
  });

  // Last: refused calls add events to the log the tests above restore.
  it('ebsd audit prune: nothing sealed to remove on a young log; a bad --before exits 7 naming it; another uid is refused (exit 4)', async () => {
    const none = await env.cli(['audit', 'prune', '--before', '30d', '--output', 'table']);
    expect(none).toMatchObject({ code: 0 });
    expect(none.stdout).toMatch(/^nothing to remove: no sealed file holds only events older than 30d/);
    expect(await env.ok(['audit', 'prune', '--before', '2026-01-01'])).toEqual({ PrunedThroughSequence: -1, FilesRemoved: [], DigestsRemoved: 0, BytesFreed: 0 });
    const future = await env.cli(['audit', 'prune', '--before', '2999-01-01T00:00:00Z']);
    expect(future.code).toBe(7);
    expect(future.stderr).toMatch(/^ebsd: InvalidParameterValue: Before 2999-01-01T00:00:00Z is in the future/);
    const bad = await env.cli(['audit', 'prune', '--before', 'last week']);
    expect(bad.code).toBe(7);
    expect(bad.stderr).toMatch(/^ebsd: InvalidParameterValue: Before "last week" is not an ISO 8601 date or time/);
    const other = await env.cli(['audit', 'prune', '--before', '30d'], { uid: 65534 });
    expect(other.code).toBe(4);
    expect(other.stderr).toMatch(/AccessDeniedException: .*ebsd:AuditPrune/);
    // Every call is in the log, as CloudTrail records calls that change nothing or fail: the two that removed
    // nothing, the two refused for their Before (errorCode, no response elements), the other uid's denial.
    const prunes = ((await env.ok(['audit', 'tail', '-n', '50'])).Events as Record<string, any>[]).filter((e) => e.eventName === 'AuditPrune');
    expect(prunes.map((e) => [e.requestParameters?.before, e.errorCode ?? 'ok'])).toEqual([
      [expect.stringMatching(/^\d{4}-\d{2}-\d{2}T/), 'ok'], ['2026-01-01', 'ok'],
      ['2999-01-01T00:00:00Z', 'InvalidParameterValue'], ['last week', 'InvalidParameterValue'],
      [undefined, 'AccessDeniedException'],
    ]);
    expect(prunes[0]).toMatchObject({ eventSource: 'ebsd', responseElements: { prunedThroughSequence: -1, filesRemoved: [] }, userIdentity: { type: 'Root' } });
    expect(prunes[2]).toMatchObject({ responseElements: null, errorMessage: expect.stringContaining('is in the future') });
    expect(await verify()).toMatchObject({ ok: true });
  });
});
