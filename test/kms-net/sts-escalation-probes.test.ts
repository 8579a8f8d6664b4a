/**
 * AssumeRole privilege-escalation probes with real components (HSM inline, identities, trust
 * store, STS, the policy evaluator judging identity policies as the daemon wires it): each an
 * attempt to get a session the trust policy does not give (docs/architecture.md §5.9).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AssumeRoleParams } from '../../src/kms/sts/assume-role-context.js';
import type { Caller } from '../../src/kms/types.js';
import { tempDir } from '../kms/helpers.js';
import { openStsHarness, type StsHarness } from './sts-harness.js';

describe('AssumeRole escalation probes', () => {
  const t = tempDir('ebsd-sts-probe-');
  const t0 = Date.UTC(2026, 10, 30, 12, 0, 0);
  let b: StsHarness;
  let alice: Caller;
  let bob: Caller;

  // Every probe through the STS the daemon wires: identity policies judged.
  const put = (role: string, ...Statement: Record<string, unknown>[]) => b.put(role, ...Statement);
  const outcome = (caller: Caller, role: string, p: Partial<AssumeRoleParams> = {}) => b.outcome(caller, role, p, b.judged);
  const sessionOf = (role: string, by: Caller, p?: Partial<AssumeRoleParams>) => b.sessionOf(role, by, b.judged, p);

  beforeAll(async () => {
    b = await openStsHarness(t.dir, t0);
    alice = { ...(await b.ids.createUser('alice')), sourceIp: '127.0.0.1' };
    bob = { ...(await b.ids.createUser('bob')), sourceIp: '127.0.0.1' };
  });
  afterAll(async () => {
    await b?.close();
    t.cleanup();
  });

  it('sts:ExternalId: a trust condition on it refuses a request without it or with another', async () => {
    await b.ids.createRole('vendor');
    await put('vendor', { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole', Condition: { StringEquals: { 'sts:ExternalId': 'ext-123' } } });
    expect(await outcome(alice, 'vendor')).toBe('AccessDenied');
    expect(await outcome(alice, 'vendor', { ExternalId: 'ext-124' })).toBe('AccessDenied');
    expect(await outcome(alice, 'vendor', { ExternalId: 'EXT-123' })).toBe('AccessDenied');
    expect(await outcome(alice, 'vendor', { ExternalId: 'ext-123' })).toBe('ok');
  });

  it('aws:PrincipalArn: an account-wide trust narrowed by it admits only the named principal (with its identity policy)', async () => {
    await b.ids.createRole('narrow');
    await put('narrow', { Effect: 'Allow', Principal: { AWS: b.ids.rootArn }, Action: 'sts:AssumeRole', Condition: { ArnEquals: { 'aws:PrincipalArn': alice.arn } } });
    for (const u of ['user/alice', 'user/bob']) await b.ids.attachPolicy(u, 'assume', JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'sts:AssumeRole', Resource: '*' }] }));
    expect(await outcome(bob, 'narrow')).toBe('AccessDenied');
    expect(await outcome(alice, 'narrow')).toBe('ok');
  });

  it('a session policy only narrows: allowing what the role is not allowed gives the session nothing; managed policy ARNs are refused, never ignored', async () => {
    await b.ids.createRole('wide');
    await b.ids.createRole('beyond');
    await put('wide', { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole' });
    // 'beyond' trusts the account: the caller's identity policies decide, and the role 'wide' has none.
    await put('beyond', { Effect: 'Allow', Principal: { AWS: b.ids.rootArn }, Action: 'sts:AssumeRole' });
    const p = { Policy: JSON.stringify({ Statement: [{ Effect: 'Allow', Action: '*', Resource: '*' }] }) };
    expect(await outcome(alice, 'wide', p)).toBe('ok');
    const s = await sessionOf('wide', alice, p);
    expect(s.sessionPolicy).toBe(p.Policy);
    expect(await outcome(s, 'beyond')).toBe('AccessDenied');
    expect(await outcome(alice, 'wide', { 'PolicyArns.member.1.arn': 'arn:aws:iam::aws:policy/AdministratorAccess' } as unknown as Partial<AssumeRoleParams>)).toBe('ValidationError');
  });

  it('role chaining: a chained session lasts at most 1 h', async () => {
    await b.ids.createRole('hop1');
    await b.ids.createRole('hop2', { maxSessionDuration: 43_200 });
    await put('hop1', { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole' });
    await put('hop2', { Effect: 'Allow', Principal: { AWS: b.ids.roleArn('hop1') }, Action: 'sts:AssumeRole' });
    const s1 = await sessionOf('hop1', alice);
    expect(await outcome(s1, 'hop2', { DurationSeconds: 3601 } as never)).toBe('ValidationError');
    expect(await outcome(s1, 'hop2', { DurationSeconds: 3600 } as never)).toBe('ok');
  });

  it('a role assumes itself only if its trust policy names the role or its account: no implicit self-trust', async () => {
    // IAM User Guide, "Update a role trust policy": to assume the current role again within a role
    // session, the trust policy names the role ARN or the account ARN as a principal.
    await b.ids.createRole('selfish');
    await b.ids.attachPolicy(b.ids.roleArn('selfish'), 'assume-any', JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'sts:AssumeRole', Resource: '*' }] }));
    await put('selfish', { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole' });
    const s = await sessionOf('selfish', alice);
    // The role's own policy allowing sts:AssumeRole is not trust.
    expect(await outcome(s, 'selfish')).toBe('AccessDenied');
    // The account named: the session's identity policy decides, and allows.
    await put('selfish', { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole' }, { Effect: 'Allow', Principal: { AWS: b.ids.rootArn }, Action: 'sts:AssumeRole' });
    expect(await outcome(s, 'selfish')).toBe('ok');
    await b.ids.detachPolicy(b.ids.roleArn('selfish'), 'assume-any');
    expect(await outcome(s, 'selfish')).toBe('AccessDenied');
    // The role named: no identity policy needed.
    await put('selfish', { Effect: 'Allow', Principal: { AWS: [alice.arn, b.ids.roleArn('selfish')] }, Action: 'sts:AssumeRole' });
    expect(await outcome(s, 'selfish')).toBe('ok');
  });
});
