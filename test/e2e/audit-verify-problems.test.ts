/**
 * `ebsd audit verify` on a log damaged in two separate places names both
 * (src/kms/audit/verify.ts: verification goes on past a problem): the JSON
 * answer keeps `problem` (the first) and lists `problems`, the text lists one
 * line per problem with its file and line, and the exit code is still 8
 * (audit verification failed). Real daemon, real CLI.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT } from '../../src/cli/exit-codes.js';
import { Env, ensureBuilt } from './helpers.js';

describe('audit verify names every problem', () => {
  const env = new Env('audit-verify-problems');
  const live = (): string => join(env.state, 'kms', 'audit', 'events.ndjson');

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    for (let i = 0; i < 8; i++) await env.api('TrentService.CreateKey', {});
    expect((await env.api('ebsd.AuditVerify')).ok).toBe(true); // sealed through the last event
  }, 60_000);
  afterAll(() => env.cleanup(), 60_000);

  it('an event edited and another removed: both reported, with file and line; exit code 8', async () => {
    const lines = readFileSync(live(), 'utf8').trimEnd().split('\n');
    expect(lines.length).toBeGreaterThanOrEqual(8);
    const seq = (l: string): number => (JSON.parse(l) as { sequenceNumber: number }).sequenceNumber;
    const edited = JSON.parse(lines[1]!) as { eventName: string };
    edited.eventName = 'Forged';
    const damaged = [lines[0]!, JSON.stringify(edited), ...lines.slice(2, 5), ...lines.slice(6)]; // line 6 gone
    writeFileSync(live(), damaged.join('\n') + '\n'); // the daemon appends (O_APPEND) after it

    const json = await env.cli(['audit', 'verify', '--output', 'json']);
    expect(json.code, json.stderr).toBe(EXIT.AUDIT_FAILED);
    const res = json.json();
    expect(res.ok).toBe(false);
    expect(res.problems.slice(0, 2)).toEqual([
      expect.objectContaining({ kind: 'modified', sequence: seq(lines[1]!), file: 'events.ndjson', line: 2 }),
      expect.objectContaining({ kind: 'removed', sequence: seq(lines[5]!), file: 'events.ndjson', line: 6 }),
    ]);
    expect(res.problemCount).toBe(2);
    expect(res.problem).toEqual(res.problems[0]);

    const text = await env.cli(['audit', 'verify', '--output', 'table']);
    expect(text.code).toBe(EXIT.AUDIT_FAILED);
    expect(text.stdout).toContain('AUDIT LOG FAILED VERIFICATION: 2 problems');
    expect(text.stdout).toMatch(new RegExp(`events\\.ndjson:2 +modified +#${seq(lines[1]!)}: `));
    expect(text.stdout).toMatch(new RegExp(`events\\.ndjson:6 +removed +#${seq(lines[5]!)}: event ${seq(lines[5]!)} is absent`));
  });
});
