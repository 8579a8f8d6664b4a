/**
 * AssumeRole privilege-escalation probes with real components (HSM inline, identities, trust
 * store, STS, the policy evaluator judging identity policies as the daemon wires it): each an
 * attempt to get a session the trust policy does not give (docs/architecture.md §5.9).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHsm, type Hsm } from '../../src/kms/hsm/hsm-client.js';
import { Identities } from '../../src/kms/authz/identities.js';
import { AccessKeyStore } from '../../src/kms/sts/access-keys.js';
import { TrustPolicies } from '../../src/kms/sts/trust-policies.js';
import { StsService } from '../../src/kms/sts/sts-service.js';
import type { AssumeRoleParams } from '../../src/kms/sts/assume-role-context.js';
import type { Caller } from '../../src/kms/types.js';
import { PolicyEvaluator } from '../../src/kms/authz/evaluate.js';
import { tempDir, TEST_SCRYPT } from '../kms/helpers.js';

describe('AssumeRole escalation probes', () => {
  const t = tempDir('ebsd-sts-probe-');
  const t0 = Date.UTC(2026, 10, 30, 12, 0, 0);
  let hsm: Hsm;
  let ids: Identities;
  let trust: TrustPolicies;
  let sts: StsService;
  let alice: Caller;
  let bob: Caller;

  const put = (role: string, ...Statement: Record<string, unknown>[]) => trust.put(role, JSON.stringify({ Version: '2012-10-17', Statement }));
  const outcome = (caller: Caller, role: string, p: Partial<AssumeRoleParams> = {}) =>
    sts.assumeRole(caller, { RoleArn: ids.roleArn(role), RoleSessionName: 'probe', ...p }, t0).then(() => 'ok', (e: { awsName?: string }) => e.awsName ?? String(e));
  const sessionOf = async (role: string, by: Caller, p: Partial<AssumeRoleParams> = {}): Promise<Caller> => {
    const r = await sts.assumeRole(by, { RoleArn: ids.roleArn(role), RoleSessionName: `${role}-s`, ...p }, t0) as any;
    return { ...(sts.credentials(r.Credentials.AccessKeyId, r.Credentials.SessionToken, t0 + 1000)).principal, sourceIp: '127.0.0.1' };
  };

  beforeAll(async () => {
    hsm = await startHsm({ stateDir: t.dir, passphrase: 'test', scryptCost: TEST_SCRYPT }, 'inline');
    ids = await Identities.open(t.dir, { region: 'us-east-1' });
    alice = { ...(await ids.createUser('alice')), sourceIp: '127.0.0.1' };
    bob = { ...(await ids.createUser('bob')), sourceIp: '127.0.0.1' };
    trust = await TrustPolicies.open(t.dir, ids);
    const keys = await AccessKeyStore.open(t.dir, hsm, ids);
    const evaluator = new PolicyEvaluator({ identityPolicies: (c) => ids.identityPolicies(c) });
    sts = new StsService(ids, keys, trust, hsm, (caller, action, resource, context) => evaluator.evaluate({ action, caller, resource, ...(context ? { context } : {}) }));
  });
  afterAll(async () => {
    await hsm?.close();
    t.cleanup();
  });

  it('sts:ExternalId: a trust condition on it refuses a request without it or with another', async () => {
    await ids.createRole('vendor');
    await put('vendor', { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole', Condition: { StringEquals: { 'sts:ExternalId': 'ext-123' } } });
    expect(await outcome(alice, 'vendor')).toBe('AccessDenied');
    expect(await outcome(alice, 'vendor', { ExternalId: 'ext-124' })).toBe('AccessDenied');
    expect(await outcome(alice, 'vendor', { ExternalId: 'EXT-123' })).toBe('AccessDenied');
    expect(await outcome(alice, 'vendor', { ExternalId: 'ext-123' })).toBe('ok');
  });

  it('aws:PrincipalArn: an account-wide trust narrowed by it admits only the named principal (with its identity policy)', async () => {
    await ids.createRole('narrow');
    await put('narrow', { Effect: 'Allow', Principal: { AWS: ids.rootArn }, Action: 'sts:AssumeRole', Condition: { ArnEquals: { 'aws:PrincipalArn': alice.arn } } });
    for (const u of ['user/alice', 'user/bob']) await ids.attachPolicy(u, 'assume', JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'sts:AssumeRole', Resource: '*' }] }));
    expect(await outcome(bob, 'narrow')).toBe('AccessDenied');
    expect(await outcome(alice, 'narrow')).toBe('ok');
  });

  it('session policies are refused, never ignored: a session has exactly its role\'s permissions', async () => {
    await ids.createRole('wide');
    await put('wide', { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole' });
    const p = { Policy: JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'kms:*', Resource: '*' }] }) } as unknown as Partial<AssumeRoleParams>;
    expect(await outcome(alice, 'wide', p)).toBe('ValidationError');
    expect(await outcome(alice, 'wide', { 'PolicyArns.member.1.arn': 'arn:aws:iam::aws:policy/AdministratorAccess' } as unknown as Partial<AssumeRoleParams>)).toBe('ValidationError');
  });

  it('role chaining: a chained session lasts at most 1 h', async () => {
    await ids.createRole('hop1');
    await ids.createRole('hop2', { maxSessionDuration: 43_200 });
    await put('hop1', { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole' });
    await put('hop2', { Effect: 'Allow', Principal: { AWS: ids.roleArn('hop1') }, Action: 'sts:AssumeRole' });
    const s1 = await sessionOf('hop1', alice);
    expect(await outcome(s1, 'hop2', { DurationSeconds: 3601 } as never)).toBe('ValidationError');
    expect(await outcome(s1, 'hop2', { DurationSeconds: 3600 } as never)).toBe('ok');
  });

  it('a role assumes itself only if its trust policy names the role or its account: no implicit self-trust', async () => {
    // IAM User Guide, "Update a role trust policy": to assume the current role again within a role
    // session, the trust policy names the role ARN or the account ARN as a principal.
    await ids.createRole('selfish');
    await ids.attachPolicy(ids.roleArn('selfish'), 'assume-any', JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'sts:AssumeRole', Resource: '*' }] }));
    await put('selfish', { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole' });
    const s = await sessionOf('selfish', alice);
    // The role's own policy allowing sts:AssumeRole is not trust.
    expect(await outcome(s, 'selfish')).toBe('AccessDenied');
    // The account named: the session's identity policy decides, and allows.
    await put('selfish', { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole' }, { Effect: 'Allow', Principal: { AWS: ids.rootArn }, Action: 'sts:AssumeRole' });
    expect(await outcome(s, 'selfish')).toBe('ok');
    await ids.detachPolicy(ids.roleArn('selfish'), 'assume-any');
    expect(await outcome(s, 'selfish')).toBe('AccessDenied');
    // The role named: no identity policy needed.
    await put('selfish', { Effect: 'Allow', Principal: { AWS: [alice.arn, ids.roleArn('selfish')] }, Action: 'sts:AssumeRole' });
    expect(await outcome(s, 'selfish')).toBe('ok');
  });
});
