/**
 * AssumeRole's decision with real components: a real HSM (inline engine,
 * sealed domain in a temp dir), real identities, trust store and STS; session
 * callers come from real session credentials (StsService.credentials), as the
 * listener hands them over. Time is an input. What is pinned here: who a
 * trust policy's Principal and Action match (docs/architecture.md §5.9).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHsm, type Hsm } from '../../src/kms/hsm/hsm-client.js';
import { Identities } from '../../src/kms/authz/identities.js';
import { AccessKeyStore } from '../../src/kms/sts/access-keys.js';
import { TrustPolicies } from '../../src/kms/sts/trust-policies.js';
import { StsService } from '../../src/kms/sts/sts-service.js';
import type { AssumeRoleParams } from '../../src/kms/sts/assume-role-context.js';
import type { Caller } from '../../src/kms/types.js';
import { tempDir, TEST_SCRYPT } from '../kms/helpers.js';

describe('AssumeRole: trust-policy principals and actions', () => {
  const t = tempDir('ebsd-assume-');
  const t0 = Date.UTC(2026, 10, 30, 12, 0, 0);
  let hsm: Hsm;
  let ids: Identities;
  let trust: TrustPolicies;
  let sts: StsService;
  let alice: Caller;

  const put = (role: string, ...Statement: Record<string, unknown>[]) => trust.put(role, JSON.stringify({ Version: '2012-10-17', Statement }));
  /** 'ok' or the STS error name. */
  const outcome = (caller: Caller, role: string, p: Partial<AssumeRoleParams> = {}, s = sts) =>
    s.assumeRole(caller, { RoleArn: ids.roleArn(role), RoleSessionName: 'job-1', ...p }, t0).then(() => 'ok', (e: { awsName?: string }) => e.awsName ?? String(e));
  /** A session of `role` as the verifier hands it over: assumed by `by`, then read back from its credentials. */
  const sessionOf = async (role: string, by: Caller, s = sts): Promise<Caller> => {
    const r = await s.assumeRole(by, { RoleArn: ids.roleArn(role), RoleSessionName: `${role}-session` }, t0) as any;
    return { ...(s.credentials(r.Credentials.AccessKeyId, r.Credentials.SessionToken, t0 + 1000)).principal, sourceIp: '127.0.0.1' };
  };

  beforeAll(async () => {
    hsm = await startHsm({ stateDir: t.dir, passphrase: 'test', scryptCost: TEST_SCRYPT }, 'inline');
    ids = await Identities.open(t.dir, { region: 'us-east-1' });
    alice = { ...(await ids.createUser('alice')), sourceIp: '127.0.0.1' };
    for (const r of ['app', 'chained', 'other']) await ids.createRole(r);
    trust = await TrustPolicies.open(t.dir);
    sts = new StsService(ids, await AccessKeyStore.open(t.dir, hsm), trust, hsm);
    await put('app', { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole' });
    await put('other', { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole' });
  });
  afterAll(async () => {
    await hsm?.close();
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
});
