/**
 * AssumeRole's decision with real components: a real HSM (inline engine,
 * sealed domain in a temp dir), real identities, trust store and STS; session
 * callers come from real session credentials (StsService.credentials), as the
 * listener hands them over. Time is an input. What is pinned here: who a
 * trust policy's Principal and Action match (docs/architecture.md §5.9).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Identities, IDENTITIES_FILE } from '../../src/kms/authz/identities.js';
import type { StsService } from '../../src/kms/sts/sts-service.js';
import type { AssumeRoleParams } from '../../src/kms/sts/assume-role-context.js';
import type { Caller } from '../../src/kms/types.js';
import { tempDir } from '../kms/helpers.js';
import { openStsHarness, type StsHarness } from './sts-harness.js';

describe('AssumeRole: trust-policy principals and actions', () => {
  const t = tempDir('ebsd-assume-');
  const t0 = Date.UTC(2026, 10, 30, 12, 0, 0);
  let b: StsHarness;
  let ids: Identities;
  let sts: StsService;
  /** As the daemon wires it: the caller's identity policies judged by the policy evaluator. */
  let judged: StsService;
  let alice: Caller;

  const put = (role: string, ...Statement: Record<string, unknown>[]) => b.put(role, ...Statement);
  /** 'ok' or the STS error name. */
  const outcome = (caller: Caller, role: string, p: Partial<AssumeRoleParams> = {}, s = sts) => b.outcome(caller, role, p, s);
  /** A session of `role` as the verifier hands it over: assumed by `by`, then read back from its credentials. */
  const sessionOf = (role: string, by: Caller, s = sts): Promise<Caller> => b.sessionOf(role, by, s);

  beforeAll(async () => {
    b = await openStsHarness(t.dir, t0);
    ({ ids, sts, judged } = b);
    alice = { ...(await ids.createUser('alice')), sourceIp: '127.0.0.1' };
    for (const r of ['app', 'chained', 'other']) await ids.createRole(r);
    await put('app', { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole' });
    await put('other', { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole' });
  });
  afterAll(async () => {
    await b?.close();
    t.cleanup();
  });

  it('a role ARN as Principal covers that role\'s sessions: role chaining works, a Deny naming the role binds them', async () => {
    const app = await sessionOf('app', alice);
    expect(app.arn).toBe(`arn:aws:sts::${ids.accountId}:assumed-role/app/app-session`);
    // Trusting the role (not one session ARN) lets every session of it in, and no other role's.
    await put('chained', { Effect: 'Allow', Principal: { AWS: ids.roleArn('app') }, Action: 'sts:AssumeRole' });
    expect(await outcome(app, 'chained')).toBe('ok');
    expect(await outcome(await sessionOf('other', alice), 'chained')).toBe('AccessDenied');
    expect(await outcome(alice, 'chained')).toBe('AccessDenied');
    // An Allow for anyone and a Deny naming the role: the role's sessions are refused, others pass.
    await put('chained',
      { Effect: 'Allow', Principal: { AWS: '*' }, Action: 'sts:AssumeRole' },
      { Effect: 'Deny', Principal: { AWS: [ids.roleArn('app')] }, Action: 'sts:AssumeRole' });
    expect(await outcome(app, 'chained')).toBe('AccessDenied');
    expect(await outcome(alice, 'chained')).toBe('ok');
  });

  it('actions match as IAM matches them: wildcards and any case, in a Deny as in an Allow', async () => {
    const allowAll = { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole' };
    const rows: [unknown, string, string][] = [
      // [Action, Effect, outcome for alice]
      ['sts:Assume*', 'Deny', 'AccessDenied'],
      ['STS:AssumeRole', 'Deny', 'AccessDenied'],
      [['sts:TagSession', 'sts:assumerole'], 'Deny', 'AccessDenied'],
      ['sts:Assume?ole', 'Deny', 'AccessDenied'],
      ['sts:AssumeRoleWithSAML', 'Deny', 'ok'],
      ['sts:TagSession', 'Deny', 'ok'],
    ];
    for (const [Action, Effect, want] of rows) {
      await put('chained', allowAll, { Effect, Principal: { AWS: '*' }, Action });
      expect([Action, await outcome(alice, 'chained')]).toEqual([Action, want]);
    }
    for (const [Action, want] of [['sts:assume*', 'ok'], ['STS:ASSUMEROLE', 'ok'], ['*', 'ok'], ['sts:GetCallerIdentity', 'AccessDenied']] as const) {
      await put('chained', { Effect: 'Allow', Principal: { AWS: alice.arn }, Action });
      expect([Action, await outcome(alice, 'chained')]).toEqual([Action, want]);
    }
  });

  it('RoleArn must be the role\'s own ARN: a made-up path or partition is a role that does not exist, and policies judge the real ARN', async () => {
    const acct = ids.accountId;
    await ids.createRole('prod-admin');
    await ids.createRole('pathed', { path: '/team/' });
    await put('prod-admin', { Effect: 'Allow', Principal: { AWS: ids.rootArn }, Action: 'sts:AssumeRole' });
    await put('pathed', { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole' });
    const dev = { ...(await ids.createUser('dev')), sourceIp: '127.0.0.1' };
    // dev may assume the roles under /dev/ only; prod-admin sits at /.
    await ids.attachPolicy(dev.arn, 'dev-roles', JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'sts:AssumeRole', Resource: `arn:aws:iam::${acct}:role/dev/*` }] }));
    const attempt = (caller: Caller, RoleArn: string) => judged.assumeRole(caller, { RoleArn, RoleSessionName: 'esc' }, t0);
    const denied = (caller: Caller, arn: string) => ({ awsName: 'AccessDenied', status: 403, message: `User: ${caller.arn} is not authorized to perform: sts:AssumeRole on resource: ${arn}` });
    for (const arn of [`arn:aws:iam::${acct}:role/dev/prod-admin`, `arn:aws:iam::${acct}:role/prod-admin`]) {
      await expect(attempt(dev, arn)).rejects.toMatchObject(denied(dev, arn));
    }
    // A partition or path that is not the role's, for a caller the trust policy names: still no such role.
    for (const arn of [`arn:bogus:iam::${acct}:role/app`, `arn:aws-cn:iam::${acct}:role/app`, `arn:aws:iam::${acct}:role/x/app`, `arn:aws:iam::${acct}:role/pathed`]) {
      await expect(attempt(alice, arn)).rejects.toMatchObject(denied(alice, arn));
    }
    // Unknown roles are answered the same way, as before.
    await expect(attempt(alice, `arn:aws:iam::${acct}:role/nobody`)).rejects.toMatchObject(denied(alice, `arn:aws:iam::${acct}:role/nobody`));
    // The role's own ARN, path included, works.
    expect(ids.roleArn('pathed')).toBe(`arn:aws:iam::${acct}:role/team/pathed`);
    await expect(attempt(alice, ids.roleArn('pathed'))).resolves.toMatchObject({ AssumedRoleUser: { Arn: `arn:aws:sts::${acct}:assumed-role/pathed/esc` } });
    await expect(attempt(alice, ids.roleArn('app'))).resolves.toBeDefined();
  });

  it('an explicit Deny in the caller\'s own policies wins even when the trust policy names the caller', async () => {
    const erin = { ...(await ids.createUser('erin')), sourceIp: '127.0.0.1' };
    await ids.createRole('named');
    await put('named', { Effect: 'Allow', Principal: { AWS: erin.arn }, Action: 'sts:AssumeRole' });
    // Named by the trust policy: no identity policy is needed.
    expect(await outcome(erin, 'named', {}, judged)).toBe('ok');
    // A Deny on another role changes nothing; one on this role (or on every role, or by wildcard action) refuses.
    await ids.attachPolicy(erin.arn, 'fence', JSON.stringify({ Statement: [{ Effect: 'Deny', Action: 'sts:AssumeRole', Resource: ids.roleArn('app') }] }));
    expect(await outcome(erin, 'named', {}, judged)).toBe('ok');
    for (const st of [
      { Effect: 'Deny', Action: 'sts:AssumeRole', Resource: ids.roleArn('named') },
      { Effect: 'Deny', Action: 'sts:Assume*', Resource: '*' },
      { Effect: 'Deny', Action: '*', Resource: '*', Condition: { StringEquals: { 'sts:RoleSessionName': 'job-1' } } },
    ]) {
      await ids.attachPolicy(erin.arn, 'fence', JSON.stringify({ Statement: [st] }));
      expect([st, await outcome(erin, 'named', {}, judged)]).toEqual([st, 'AccessDenied']);
    }
    // The conditional Deny applies only to its session name.
    expect(await outcome(erin, 'named', { RoleSessionName: 'job-2' }, judged)).toBe('ok');
    // A role session is judged by its role's policies the same way.
    await ids.attachPolicy(ids.roleArn('app'), 'no-chaining', JSON.stringify({ Statement: [{ Effect: 'Deny', Action: 'sts:AssumeRole', Resource: '*' }] }));
    await put('chained', { Effect: 'Allow', Principal: { AWS: ids.roleArn('app') }, Action: 'sts:AssumeRole' });
    expect(await outcome(await sessionOf('app', alice, judged), 'chained', {}, judged)).toBe('AccessDenied');
    await ids.detachPolicy(ids.roleArn('app'), 'no-chaining');
  });

  it('DurationSeconds: digits only; at most the role\'s MaxSessionDuration (default 3600, 3600..43200); 1 h when chained', async () => {
    await ids.createRole('short');
    await ids.createRole('long', { maxSessionDuration: 43_200 });
    await put('short', { Effect: 'Allow', Principal: { AWS: [alice.arn, ids.roleArn('long')] }, Action: 'sts:AssumeRole' });
    await put('long', { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole' });
    expect(ids.listRoles().filter((r) => r.RoleName === 'short' || r.RoleName === 'long').map((r) => r.MaxSessionDuration)).toEqual([3600, 43_200]);
    const fail = (caller: Caller, role: string, DurationSeconds?: string) => sts.assumeRole(caller, { RoleArn: ids.roleArn(role), RoleSessionName: 'dur', ...(DurationSeconds !== undefined ? { DurationSeconds } : {}) }, t0)
      .then((r: any) => `ok ${(Date.parse(r.Credentials.Expiration) - t0) / 1000}`, (e: { awsName: string; message: string }) => `${e.awsName}: ${e.message}`);
    const overRole = 'ValidationError: The requested DurationSeconds exceeds the MaxSessionDuration set for this role.';
    const overChain = 'ValidationError: The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.';

    // Number() would read each of these as 900.
    for (const v of ['9e2', '0x384', ' 900 ', '900.0', '+900', '', '900\n']) {
      expect([v, await fail(alice, 'short', v)]).toEqual([v, expect.stringMatching(/^ValidationError: 1 validation error detected: .* at 'durationSeconds' .*decimal digits$/s)]);
    }
    expect(await fail(alice, 'short', '0900')).toBe('ok 900');
    expect(await fail(alice, 'short')).toBe('ok 3600');
    expect(await fail(alice, 'short', '3601')).toBe(overRole);
    expect(await fail(alice, 'long', '43200')).toBe('ok 43200');
    expect(await fail(alice, 'long', '43201')).toBe("ValidationError: 1 validation error detected: Value '43201' at 'durationSeconds' failed to satisfy constraint: Member must have value less than or equal to 43200");
    // Someone the role does not trust learns nothing about its MaxSessionDuration.
    const mallory = { ...(await ids.createUser('mallory')), sourceIp: '127.0.0.1' };
    expect(await fail(mallory, 'short', '7200')).toMatch(/^AccessDenied: /);

    // MaxSessionDuration is changed with UpdateRole, within IAM's bounds.
    await ids.updateRole('short', { maxSessionDuration: 7200 });
    expect(await fail(alice, 'short', '7200')).toBe('ok 7200');
    expect(await fail(alice, 'short', '7201')).toBe(overRole);
    for (const [v, why] of [[3599, 'greater than or equal to 3600'], [43_201, 'less than or equal to 43200']] as const) {
      await expect(ids.updateRole('short', { maxSessionDuration: v })).rejects.toMatchObject({ awsName: 'ValidationError', message: expect.stringContaining(why) });
      await expect(ids.createRole('bad', { maxSessionDuration: v })).rejects.toMatchObject({ awsName: 'ValidationError', message: expect.stringContaining(`Value '${v}' at 'maxSessionDuration'`) });
    }
    await expect(ids.createRole('bad', { maxSessionDuration: 3600.5 })).rejects.toThrow(/maxSessionDuration/);
    expect(ids.listRoles().some((r) => r.RoleName === 'bad')).toBe(false);

    // Role chaining: a session of `long` may assume `short` (7200) for 1 h at most.
    const session = await sessionOf('long', alice);
    expect(await fail(session, 'short', '3601')).toBe(overChain);
    expect(await fail(session, 'short', '3600')).toBe('ok 3600');
    expect(await fail(session, 'short')).toBe('ok 3600');
  });

  it('a role stored before MaxSessionDuration existed reads as 3600', async () => {
    const dir = tempDir('ebsd-assume-old-');
    try {
      const old = await Identities.open(dir.dir, { region: 'us-east-1' });
      await old.createRole('legacy');
      await old.flush();
      const file = join(dir.dir, IDENTITIES_FILE);
      const data = JSON.parse(readFileSync(file, 'utf8'));
      delete data.roles.legacy.maxSessionDuration;
      writeFileSync(file, JSON.stringify(data));
      const reopened = await Identities.open(dir.dir);
      expect(reopened.listRoles()[0]).toMatchObject({ RoleName: 'legacy', MaxSessionDuration: 3600 });
      await reopened.updateRole('legacy', { maxSessionDuration: 5400 });
      expect((await Identities.open(dir.dir)).listRoles()[0]!.MaxSessionDuration).toBe(5400);
    } finally {
      dir.cleanup();
    }
  });
});
