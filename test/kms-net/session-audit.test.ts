/**
 * The audit of a KMS call made with STS session credentials reads as
 * CloudTrail's does for an assumed role: userIdentity.type "AssumedRole", the
 * session ARN, principalId AROA…:SESSION, the ASIA access key, and a
 * sessionContext naming the role that issued the session and when (the
 * CloudTrail userIdentity element, "temporary security credentials" example).
 * The daemon runs as a child (`--kms-only --kms-listen 127.0.0.1:0`), the
 * clients are the real AWS SDK configured through environment variables.
 * Also here, as the same daemon and role serve it: a role's MaxSessionDuration
 * set with `ebsd iam create-role` / `update-role` and enforced over the wire.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KMSClient, CreateKeyCommand, EncryptCommand } from '@aws-sdk/client-kms';
import { STSClient, AssumeRoleCommand, type STSServiceException } from '@aws-sdk/client-sts';
import { StandardChain, auditEvents, keyVars, startWithAliceAndApp, type AccessKey } from './helpers.js';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { buildEvent, buildEventJson } from '../../src/kms/audit/event.js';
import type { Caller } from '../../src/kms/types.js';

describe('CloudTrail sessionContext for calls made with assumed-role session credentials', () => {
  const env = new Env('sessaudit');
  const chain = new StandardChain();
  let url = '';
  let accountId = '';
  let roleArn = '';
  let alice: AccessKey;

  const events = (): Record<string, any>[] => auditEvents(env);

  beforeAll(async () => {
    ensureBuilt();
    ({ url, alice, accountId, roleArn } = await startWithAliceAndApp(env));
  });
  afterAll(async () => {
    chain.restore();
    await env.cleanup();
  });

  it('a session from AssumeRole calls KMS; its audit events carry type AssumedRole, the ASIA key and sessionContext', async () => {
    chain.use(keyVars(alice, url));
    const sts = new STSClient({});
    const r = await sts.send(new AssumeRoleCommand({ RoleArn: roleArn, RoleSessionName: 'nightly-backup', DurationSeconds: 1800 }));
    sts.destroy();
    const creds = r.Credentials!;
    const roleId = r.AssumedRoleUser!.AssumedRoleId!.split(':')[0]!;
    expect(roleId).toMatch(/^AROA[A-Z2-7]{17}$/);

    chain.use(keyVars({ AccessKeyId: creds.AccessKeyId!, SecretAccessKey: creds.SecretAccessKey!, SessionToken: creds.SessionToken! }, url));
    const kms = new KMSClient({});
    try {
      const k = await kms.send(new CreateKeyCommand({ Description: 'by a session' }));
      await kms.send(new EncryptCommand({ KeyId: k.KeyMetadata!.KeyId, Plaintext: Buffer.from('x') }));
    } finally {
      kms.destroy();
    }

    // creationDate is when AssumeRole issued the credentials: Expiration minus DurationSeconds.
    const created = new Date(creds.Expiration!.getTime() - 1800_000).toISOString().replace(/\.\d{3}Z$/, 'Z');
    const bySession = events().filter((e) => e.userIdentity?.accessKeyId === creds.AccessKeyId);
    expect(bySession.map((e) => e.eventName)).toEqual(['CreateKey', 'Encrypt']);
    for (const e of bySession) {
      expect(e.userIdentity).toEqual({
        type: 'AssumedRole',
        principalId: `${roleId}:nightly-backup`,
        arn: `arn:aws:sts::${accountId}:assumed-role/app/nightly-backup`,
        accountId,
        accessKeyId: creds.AccessKeyId,
        sessionContext: {
          sessionIssuer: { type: 'Role', principalId: roleId, arn: roleArn, accountId, userName: 'app' },
          attributes: { creationDate: created, mfaAuthenticated: 'false' },
        },
      });
    }
    // A long-term key's caller has no session, so no sessionContext; and no session secret reaches the audit.
    const byAlice = events().filter((e) => e.userIdentity?.accessKeyId === alice.AccessKeyId);
    expect(byAlice.length).toBeGreaterThan(0);
    for (const e of byAlice) expect(e.userIdentity.sessionContext).toBeUndefined();
    expect(env.auditText()).not.toContain(creds.SessionToken!);
    expect(env.auditText()).not.toContain(creds.SecretAccessKey!);
  });

  it('the AssumeRole event records durationSeconds and, as CloudTrail, the minted access key id, expiration and assumed-role user: a session\'s calls lead back to who minted it', async () => {
    chain.use(keyVars(alice, url));
    const sts = new STSClient({});
    const r = await sts.send(new AssumeRoleCommand({ RoleArn: roleArn, RoleSessionName: 'traced', DurationSeconds: 900 }));
    sts.destroy();
    const creds = r.Credentials!;
    chain.use(keyVars({ AccessKeyId: creds.AccessKeyId!, SecretAccessKey: creds.SecretAccessKey!, SessionToken: creds.SessionToken! }, url));
    const kms = new KMSClient({});
    try {
      await kms.send(new CreateKeyCommand({ Description: 'traced' }));
    } finally {
      kms.destroy();
    }
    // From the session's KMS event, by its ASIA key id, to the AssumeRole event and the user behind it.
    const used = events().find((e) => e.eventName === 'CreateKey' && e.userIdentity?.accessKeyId === creds.AccessKeyId)!;
    const minted = events().filter((e) => e.eventName === 'AssumeRole' && e.responseElements?.credentials?.accessKeyId === used.userIdentity.accessKeyId);
    expect(minted).toHaveLength(1);
    expect(minted[0]).toMatchObject({
      eventSource: 'sts.amazonaws.com',
      userIdentity: { type: 'IAMUser', arn: `arn:aws:iam::${accountId}:user/alice`, accessKeyId: alice.AccessKeyId },
      requestParameters: { roleArn, roleSessionName: 'traced', durationSeconds: 900 },
    });
    expect(minted[0]!.responseElements).toEqual({
      credentials: { accessKeyId: creds.AccessKeyId, expiration: creds.Expiration!.toISOString().replace(/\.\d{3}Z$/, 'Z') },
      assumedRoleUser: { assumedRoleId: r.AssumedRoleUser!.AssumedRoleId, arn: r.AssumedRoleUser!.Arn },
    });
    // The session token and secret stay out of it.
    expect(env.auditText()).not.toContain(creds.SessionToken!);
    expect(env.auditText()).not.toContain(creds.SecretAccessKey!);
  });

  it('MaxSessionDuration: 3600 unless the role says more (update-role, list-roles); a longer DurationSeconds is the SDK\'s ValidationError', async () => {
    chain.use(keyVars(alice, url));
    const sts = new STSClient({});
    try {
      const long = () => sts.send(new AssumeRoleCommand({ RoleArn: roleArn, RoleSessionName: 'long-job', DurationSeconds: 7200 }));
      await expect(long()).rejects.toMatchObject({ name: 'ValidationError', message: 'The requested DurationSeconds exceeds the MaxSessionDuration set for this role.', $metadata: { httpStatusCode: 400 } });
      await env.ok(['iam', 'update-role', '--role-name', 'app', '--max-session-duration', '7200']);
      expect((await env.ok(['iam', 'list-roles'])).Roles.find((r: { RoleName: string }) => r.RoleName === 'app').MaxSessionDuration).toBe(7200);
      const r = await long();
      expect(r.Credentials!.AccessKeyId).toMatch(/^ASIA/);
    } finally {
      sts.destroy();
    }
    expect((await env.ok(['iam', 'create-role', 'batch', '--max-session-duration', '43200'])).Role).toMatchObject({ RoleName: 'batch', MaxSessionDuration: 43_200 });
    expect((await env.ok(['iam', 'create-role', 'plain'])).Role).toMatchObject({ RoleName: 'plain', MaxSessionDuration: 3600, Arn: `arn:aws:iam::${accountId}:role/plain` });
    const bad = await env.cli(['iam', 'create-role', 'toolong', '--max-session-duration', '43201']);
    expect(bad.code).toBe(7); // invalid request
    expect(bad.stderr).toContain("Value '43201' at 'maxSessionDuration' failed to satisfy constraint");
  });

  it('an AssumeRole with a 500 KB RoleArn or RoleSessionName is ValidationError; its audit event stays small', async () => {
    chain.use(keyVars(alice, url));
    const sts = new STSClient({});
    const huge = 'x'.repeat(500_000);
    try {
      for (const [input, member] of [
        [{ RoleArn: `${roleArn}${huge}`, RoleSessionName: 'big-arn' }, 'roleArn'],
        [{ RoleArn: roleArn, RoleSessionName: `s${huge}` }, 'roleSessionName'],
      ] as const) {
        const e = await sts.send(new AssumeRoleCommand(input)).then(() => undefined, (x: Error) => x);
        expect(e).toMatchObject({ name: 'ValidationError', message: expect.stringContaining(`at '${member}' failed to satisfy constraint: Member must have length`) });
        expect(e!.message.length).toBeLessThan(400); // the value is quoted cut, not whole
      }
      await expect(sts.send(new AssumeRoleCommand({ RoleArn: 'arn:aws:iam::1:role', RoleSessionName: 'short-arn' }))).rejects.toMatchObject({ name: 'ValidationError', message: expect.stringContaining('greater than or equal to 20') });
    } finally {
      sts.destroy();
    }
    const refused = events().filter((e) => e.eventName === 'AssumeRole' && e.errorCode === 'ValidationError');
    expect(refused.length).toBeGreaterThanOrEqual(3);
    for (const e of refused) {
      expect(JSON.stringify(e).length).toBeLessThan(8 * 1024);
      for (const v of Object.values(e.requestParameters as Record<string, string | number>)) expect(String(v).length).toBeLessThanOrEqual(2048 + '...(truncated)'.length);
    }
    expect(refused.some((e) => (e.requestParameters.roleArn as string).endsWith('...(truncated)'))).toBe(true);
  });

  it('AssumeRole member constraints are worded as STS words them: each bound on its own, every broken one in one ValidationError (@aws-sdk/client-sts)', async () => {
    chain.use(keyVars(alice, url));
    const sts = new STSClient({ maxAttempts: 1 });
    const v = "at 'roleSessionName' failed to satisfy constraint:";
    try {
      for (const [input, message] of [
        [{ RoleSessionName: 'a' }, `1 validation error detected: Value 'a' ${v} Member must have length greater than or equal to 2`],
        [{ RoleSessionName: 'n'.repeat(65) }, `1 validation error detected: Value '${'n'.repeat(64)}...' ${v} Member must have length less than or equal to 64`],
        [{ RoleSessionName: 'two words' }, `1 validation error detected: Value 'two words' ${v} Member must satisfy regular expression pattern: [\\w+=,.@-]*`],
        [{ DurationSeconds: 899 }, "1 validation error detected: Value '899' at 'durationSeconds' failed to satisfy constraint: Member must have value greater than or equal to 900"],
        [{ DurationSeconds: 43_201 }, "1 validation error detected: Value '43201' at 'durationSeconds' failed to satisfy constraint: Member must have value less than or equal to 43200"],
        [{ ExternalId: 'x' }, "1 validation error detected: Value at 'externalId' failed to satisfy constraint: Member must have length greater than or equal to 2"],
        [{ RoleSessionName: 'a', DurationSeconds: 600 },
          `2 validation errors detected: Value 'a' ${v} Member must have length greater than or equal to 2; Value '600' at 'durationSeconds' failed to satisfy constraint: Member must have value greater than or equal to 900`],
      ] as const) {
        const e = await sts.send(new AssumeRoleCommand({ RoleArn: roleArn, RoleSessionName: 'ok', ...input })).then(() => undefined, (x: STSServiceException) => x);
        expect({ input, name: e?.name, status: e?.$metadata.httpStatusCode, message: e?.message }).toEqual({ input, name: 'ValidationError', status: 400, message });
      }
    } finally {
      sts.destroy();
    }
  });

  it('the object path and the serialized path of the audit event agree on a sessionContext', () => {
    const sessionContext = Object.freeze({
      sessionIssuer: Object.freeze({ type: 'Role' as const, principalId: 'AROAAAAAAAAAAAAAAAAAA', arn: 'arn:aws:iam::111122223333:role/app', accountId: '111122223333', userName: 'app' }),
      attributes: Object.freeze({ creationDate: '2026-11-30T07:00:00Z', mfaAuthenticated: 'false' as const }),
    });
    const caller: Caller = {
      type: 'AssumedRole', arn: 'arn:aws:sts::111122223333:assumed-role/app/s', accountId: '111122223333',
      principalId: 'AROAAAAAAAAAAAAAAAAAA:s', accessKeyId: 'ASIAAAAAAAAAAAAAAAAA', sessionContext,
    };
    const input = { eventName: 'ListKeys', caller, accountId: '111122223333', region: 'us-east-1', requestId: 'r', eventId: 'e', resources: [], readOnly: true, time: Date.UTC(2026, 10, 30) };
    expect(buildEventJson(input) + '}').toBe(JSON.stringify(buildEvent(input)));
    expect(JSON.parse(buildEventJson(input) + '}').userIdentity.sessionContext).toEqual(sessionContext);
    // The serialized identity is cached per caller object; a caller whose session context changes is not served the old one.
    const other = { ...sessionContext, attributes: Object.freeze({ creationDate: '2026-11-30T08:00:00Z', mfaAuthenticated: 'false' as const }) };
    caller.sessionContext = other;
    expect(JSON.parse(buildEventJson(input) + '}').userIdentity.sessionContext.attributes.creationDate).toBe('2026-11-30T08:00:00Z');
  });
});
