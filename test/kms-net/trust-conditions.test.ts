/**
 * AssumeRole trust-policy Conditions, evaluated by the key/identity policy
 * condition engine against the AssumeRole request context
 * (src/kms/sts/assume-role-context.ts). Real HSM (inline engine, sealed domain
 * in a temp dir), real identities and trust store; the clock is an input.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHsm, type Hsm } from '../../src/kms/hsm/hsm-client.js';
import { Identities } from '../../src/kms/authz/identities.js';
import { PolicyEvaluator } from '../../src/kms/authz/evaluate.js';
import { AccessKeyStore } from '../../src/kms/sts/access-keys.js';
import { TrustPolicies } from '../../src/kms/sts/trust-policies.js';
import { StsService, EXTERNAL_ID_MAX } from '../../src/kms/sts/sts-service.js';
import type { AssumeRoleParams } from '../../src/kms/sts/assume-role-context.js';
import type { Caller } from '../../src/kms/types.js';
import { tempDir, TEST_SCRYPT } from '../kms/helpers.js';

describe('AssumeRole: trust-policy Conditions', () => {
  const t = tempDir('ebsd-trustcond-');
  const t0 = Date.UTC(2026, 10, 30, 12, 0, 0);
  let hsm: Hsm;
  let ids: Identities;
  let trust: TrustPolicies;
  let tls: StsService; // behind a TLS listener
  let plain: StsService; // behind a plain-HTTP (loopback) listener
  let alice: Caller;
  let roleArn = '';

  /** alice (from 127.0.0.1 unless `ip` says otherwise), as the listener hands her to STS. */
  const from = (ip?: string): Caller => ({ ...alice, ...(ip ? { sourceIp: ip } : {}), accessKeyId: 'AKIAEXAMPLEEXAMPLE00' });
  const trustWith = (Condition: Record<string, unknown>, Effect = 'Allow') =>
    trust.put('app', JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect, Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole', Condition }] }));
  const assume = (p: Partial<AssumeRoleParams> = {}, o: { caller?: Caller; sts?: StsService; now?: number } = {}) =>
    (o.sts ?? tls).assumeRole(o.caller ?? from('127.0.0.1'), { RoleArn: roleArn, RoleSessionName: 'job-1', ...p }, o.now ?? t0);
  /** 'ok' or the STS error name, so a table reads as what AWS would answer. */
  const outcome = (p: Partial<AssumeRoleParams> = {}, o: Parameters<typeof assume>[1] = {}) =>
    assume(p, o).then(() => 'ok', (e: { awsName?: string }) => e.awsName ?? String(e));

  beforeAll(async () => {
    hsm = await startHsm({ stateDir: t.dir, passphrase: 'test', scryptCost: TEST_SCRYPT }, 'inline');
    ids = await Identities.open(t.dir, { region: 'us-east-1' });
    alice = await ids.createUser('alice');
    await ids.createRole('app', { maxSessionDuration: 43_200 }); // DurationSeconds 7200 below
    roleArn = ids.roleArn('app');
    const keys = await AccessKeyStore.open(t.dir, hsm, ids);
    trust = await TrustPolicies.open(t.dir, ids);
    tls = new StsService(ids, keys, trust, hsm, undefined, { secureTransport: true });
    plain = new StsService(ids, keys, trust, hsm, undefined, { secureTransport: false });
  });
  afterAll(async () => {
    await hsm?.close();
    t.cleanup();
  });

  it('sts:ExternalId: the right one yields credentials; a wrong or missing one is AccessDenied with AWS\'s message', async () => {
    await trustWith({ StringEquals: { 'sts:ExternalId': 'Partner-42:prod/a=b,c.d@e_f+g' } });
    const r = await assume({ ExternalId: 'Partner-42:prod/a=b,c.d@e_f+g' }) as any;
    expect(r.Credentials.AccessKeyId).toMatch(/^ASIA[A-Z2-7]{16}$/);
    expect(r.AssumedRoleUser.Arn).toBe(`arn:aws:sts::${ids.accountId}:assumed-role/app/job-1`);
    for (const p of [{ ExternalId: 'Partner-43' }, {}]) {
      await expect(assume(p)).rejects.toMatchObject({
        awsName: 'AccessDenied', status: 403, message: `User: ${alice.arn} is not authorized to perform: sts:AssumeRole on resource: ${roleArn}`,
      });
    }
  });

  it('ExternalId is checked as STS documents it (2..1224 characters of [\\w+=,.@:/-]); the message names the member, not the value', async () => {
    await trustWith({ StringEquals: { 'sts:ExternalId': 'never-matches' } });
    for (const [v, why] of [['Q', 'greater than or equal to 2'], ['a'.repeat(EXTERNAL_ID_MAX + 1), 'less than or equal to 1224'], ['two words', 'regular expression pattern'], ['ünïcode', 'regular expression pattern']] as const) {
      const e = await assume({ ExternalId: v }).catch((x: Error & { awsName: string; status: number }) => x);
      expect(e).toMatchObject({ awsName: 'ValidationError', status: 400, message: expect.stringContaining(`Value at 'externalId' failed to satisfy constraint: Member must`) });
      expect((e as Error).message).toContain(why);
      expect((e as Error).message).not.toContain(v);
    }
    // At the bounds the value is valid: it gets as far as the trust policy, which refuses it.
    expect(await outcome({ ExternalId: 'a'.repeat(EXTERNAL_ID_MAX) })).toBe('AccessDenied');
    expect(await outcome({ ExternalId: 'ab' })).toBe('AccessDenied');
  });

  it('absent keys as IAM evaluates them: Null, …IfExists, negated operators, ForAllValues/ForAnyValue, sts:DurationSeconds absent', async () => {
    const rows: [Record<string, unknown>, Partial<AssumeRoleParams>, string][] = [
      [{ Null: { 'sts:ExternalId': 'false' } }, { ExternalId: 'any-value' }, 'ok'],
      [{ Null: { 'sts:ExternalId': 'false' } }, {}, 'AccessDenied'],
      [{ StringEqualsIfExists: { 'sts:ExternalId': 'a1' } }, {}, 'ok'],
      [{ StringEqualsIfExists: { 'sts:ExternalId': 'a1' } }, { ExternalId: 'b2' }, 'AccessDenied'],
      [{ StringNotEquals: { 'sts:ExternalId': 'banned' } }, {}, 'ok'],
      [{ StringNotEquals: { 'sts:ExternalId': 'banned' } }, { ExternalId: 'banned' }, 'AccessDenied'],
      // A key ebsd never sets (principal tags) is absent, never an error.
      [{ StringEquals: { 'aws:PrincipalTag/team': 'storage' } }, {}, 'AccessDenied'],
      [{ 'ForAllValues:StringEquals': { 'aws:PrincipalTag/team': 'storage' } }, {}, 'ok'],
      [{ 'ForAnyValue:StringEquals': { 'aws:PrincipalTag/team': 'storage' } }, {}, 'AccessDenied'],
      // STS documents sts:DurationSeconds for GetServiceBearerToken only: absent in AssumeRole.
      [{ NumericLessThanEquals: { 'sts:DurationSeconds': '3600' } }, { DurationSeconds: '900' }, 'AccessDenied'],
      [{ NumericLessThanEqualsIfExists: { 'sts:DurationSeconds': '3600' } }, { DurationSeconds: '7200' }, 'ok'],
      // Several operators: all must hold.
      [{ StringEquals: { 'sts:ExternalId': 'e1' }, StringLike: { 'sts:RoleSessionName': 'job-*' } }, { ExternalId: 'e1' }, 'ok'],
      [{ StringEquals: { 'sts:ExternalId': 'e1' }, StringLike: { 'sts:RoleSessionName': 'cron-*' } }, { ExternalId: 'e1' }, 'AccessDenied'],
    ];
    for (const [cond, p, want] of rows) {
      await trustWith(cond);
      expect([cond, p, await outcome(p)]).toEqual([cond, p, want]);
    }
  });

  it('the request\'s global keys: aws:SourceIp, aws:SecureTransport, aws:PrincipalArn/Account, aws:RequestedRegion, aws:CurrentTime/EpochTime', async () => {
    const rows: [Record<string, unknown>, Parameters<typeof assume>[1], string][] = [
      [{ IpAddress: { 'aws:SourceIp': '127.0.0.0/8' } }, {}, 'ok'],
      [{ IpAddress: { 'aws:SourceIp': '127.0.0.0/8' } }, { caller: from('10.1.2.3') }, 'AccessDenied'],
      [{ NotIpAddress: { 'aws:SourceIp': '10.0.0.0/8' } }, { caller: from('10.1.2.3') }, 'AccessDenied'],
      [{ IpAddress: { 'aws:SourceIp': '::1/128' } }, { caller: from('::1') }, 'ok'],
      [{ IpAddress: { 'aws:SourceIp': '127.0.0.0/8' } }, { caller: from() }, 'AccessDenied'], // no address: the key is absent
      [{ Bool: { 'aws:SecureTransport': 'true' } }, {}, 'ok'],
      [{ Bool: { 'aws:SecureTransport': 'true' } }, { sts: plain }, 'AccessDenied'],
      [{ Bool: { 'aws:SecureTransport': 'false' } }, { sts: plain }, 'ok'],
      [{ ArnLike: { 'aws:PrincipalArn': `arn:aws:iam::${'*'}:user/ali*` } }, {}, 'ok'],
      [{ ArnEquals: { 'aws:PrincipalArn': 'arn:aws:iam::111122223333:user/alice' } }, {}, 'AccessDenied'],
      [{ StringEquals: { 'aws:PrincipalAccount': '111122223333' } }, {}, 'AccessDenied'],
      [{ StringEquals: { 'aws:PrincipalType': 'User', 'aws:username': 'alice' } }, {}, 'ok'],
      [{ StringEquals: { 'aws:RequestedRegion': 'us-east-1' } }, {}, 'ok'],
      [{ StringEquals: { 'aws:RequestedRegion': 'eu-west-1' } }, {}, 'AccessDenied'],
      [{ DateLessThan: { 'aws:CurrentTime': '2026-12-01T00:00:00Z' } }, {}, 'ok'],
      [{ DateLessThan: { 'aws:CurrentTime': '2026-12-01T00:00:00Z' } }, { now: Date.UTC(2026, 11, 1, 0, 0, 1) }, 'AccessDenied'],
      [{ NumericGreaterThanEquals: { 'aws:EpochTime': String(t0 / 1000) } }, {}, 'ok'],
      [{ NumericGreaterThanEquals: { 'aws:EpochTime': String(t0 / 1000 + 1) } }, {}, 'AccessDenied'],
      // kms:* keys do not describe an STS request.
      [{ StringEquals: { 'kms:CallerAccount': '000000000000' } }, {}, 'AccessDenied'],
      [{ Null: { 'kms:CallerAccount': 'true' } }, {}, 'ok'],
    ];
    for (const [cond, o, want] of rows) {
      await trustWith(cond);
      expect([cond, o?.caller?.sourceIp, await outcome({}, o)]).toEqual([cond, o?.caller?.sourceIp, want]);
    }
    await trustWith({ StringEquals: { 'aws:PrincipalAccount': ids.accountId } });
    expect(await outcome()).toBe('ok');
  });

  it('a Deny applies only when its conditions hold; a statement whose conditions fail does not trust', async () => {
    await trust.put('app', JSON.stringify({ Statement: [
      { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole' },
      { Effect: 'Deny', Principal: { AWS: '*' }, Action: 'sts:AssumeRole', Condition: { StringNotEquals: { 'sts:ExternalId': 'only-this' } } },
    ] }));
    expect(await outcome({})).toBe('AccessDenied');
    expect(await outcome({ ExternalId: 'other-one' })).toBe('AccessDenied');
    expect(await outcome({ ExternalId: 'only-this' })).toBe('ok');
  });

  it('session callers (role chaining): aws:MultiFactorAuthPresent "false" and aws:TokenIssueTime; both absent for a long-term key', async () => {
    await ids.createRole('chained');
    await trust.put('app', JSON.stringify({ Statement: [{ Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole' }] }));
    const first = await assume({ RoleSessionName: 'hop-1' }, { now: t0 }) as any;
    const session = (await tls.credentials(first.Credentials.AccessKeyId, first.Credentials.SessionToken, t0 + 60_000)).principal;
    const hop = { ...session, sourceIp: '127.0.0.1' };
    const chained = (caller: Caller) => tls.assumeRole(caller, { RoleArn: ids.roleArn('chained'), RoleSessionName: 'hop-2' }, t0 + 60_000).then(() => 'ok', (e: { awsName: string }) => e.awsName);
    // The role named in Principal trusts its sessions (aws:PrincipalArn of a session is the role).
    await trust.put('chained', JSON.stringify({ Statement: [{ Effect: 'Allow', Principal: { AWS: session.arn }, Action: 'sts:AssumeRole', Condition: { ArnEquals: { 'aws:PrincipalArn': `arn:aws:iam::${ids.accountId}:role/app` } } }] }));
    expect(await chained(hop)).toBe('ok');
    const issued = new Date(t0).toISOString().replace(/\.\d{3}Z$/, 'Z');
    const rows: [Record<string, unknown>, Caller, string][] = [
      [{ Bool: { 'aws:MultiFactorAuthPresent': 'false' } }, hop, 'ok'],
      [{ Bool: { 'aws:MultiFactorAuthPresent': 'true' } }, hop, 'AccessDenied'],
      [{ DateEquals: { 'aws:TokenIssueTime': issued } }, hop, 'ok'],
      [{ DateGreaterThan: { 'aws:TokenIssueTime': issued } }, hop, 'AccessDenied'],
    ];
    for (const [cond, caller, want] of rows) {
      await trust.put('chained', JSON.stringify({ Statement: [{ Effect: 'Allow', Principal: { AWS: session.arn }, Action: 'sts:AssumeRole', Condition: cond }] }));
      expect([cond, await chained(caller)]).toEqual([cond, want]);
    }
    // A long-term key: neither key is in the context.
    for (const [cond, want] of [[{ Null: { 'aws:MultiFactorAuthPresent': 'true', 'aws:TokenIssueTime': 'true' } }, 'ok'], [{ Bool: { 'aws:MultiFactorAuthPresent': 'false' } }, 'AccessDenied']] as const) {
      await trustWith(cond);
      expect([cond, await outcome()]).toEqual([cond, want]);
    }
  });

  it('trust through the account: the caller\'s identity policy sees the same request keys (sts:ExternalId)', async () => {
    await ids.createUser('carol');
    const carol = { ...(ids.callerFor(ids.userArn('carol'))!), sourceIp: '127.0.0.1' };
    const evaluator = new PolicyEvaluator({ identityPolicies: (c) => ids.identityPolicies(c) });
    const keys = await AccessKeyStore.open(t.dir, hsm, ids);
    const judged = new StsService(ids, keys, trust, hsm, (caller, action, resource, context) => evaluator.evaluate({ action, caller, resource, ...(context ? { context } : {}) }), { secureTransport: true });
    await trust.put('app', JSON.stringify({ Statement: [{ Effect: 'Allow', Principal: { AWS: ids.rootArn }, Action: 'sts:AssumeRole', Condition: { 'Null': { 'sts:ExternalId': 'false' } } }] }));
    await ids.attachPolicy(ids.userArn('carol'), 'switch', JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'sts:AssumeRole', Resource: roleArn, Condition: { StringEquals: { 'sts:ExternalId': 'carol-only' } } }] }));
    expect(await outcome({ ExternalId: 'carol-only' }, { caller: carol, sts: judged })).toBe('ok');
    expect(await outcome({ ExternalId: 'someone-else' }, { caller: carol, sts: judged })).toBe('AccessDenied');
    expect(await outcome({}, { caller: carol, sts: judged })).toBe('AccessDenied');
  });

  it('a malformed Condition is refused when the policy is put, naming what is wrong; the stored policy is unchanged', async () => {
    await trustWith({ StringEquals: { 'sts:ExternalId': 'kept' } });
    const before = trust.get('app');
    for (const [cond, what] of [
      [{ StringEqualz: { 'sts:ExternalId': 'x' } }, 'StringEqualz'],
      [{ IpAddress: { 'aws:SourceIp': '10.0.0.1/33' } }, '10.0.0.1/33'],
      [{ Bool: { 'aws:SecureTransport': 'yes' } }, 'yes'],
      [{ StringEquals: { 'sts:ExternalId': [] } }, 'no values'],
      [[], 'Condition must be an object'],
    ] as const) {
      await expect(trustWith(cond as Record<string, unknown>)).rejects.toMatchObject({ awsName: 'MalformedPolicyDocumentException', message: expect.stringContaining(what) });
    }
    expect(trust.get('app')).toBe(before);
    expect(await outcome({ ExternalId: 'kept' })).toBe('ok');
  });
});
