/**
 * The audit of a KMS call made with STS session credentials reads as
 * CloudTrail's does for an assumed role: userIdentity.type "AssumedRole", the
 * session ARN, principalId AROA…:SESSION, the ASIA access key, and a
 * sessionContext naming the role that issued the session and when (the
 * CloudTrail userIdentity element, "temporary security credentials" example).
 * The daemon runs as a child (`--kms-only --kms-listen 127.0.0.1:0`), the
 * clients are the real AWS SDK configured through environment variables.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KMSClient, CreateKeyCommand, EncryptCommand } from '@aws-sdk/client-kms';
import { STSClient, AssumeRoleCommand } from '@aws-sdk/client-sts';
import { kmsUrl } from './helpers.js';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { buildEvent, buildEventJson } from '../../src/kms/audit/event.js';
import type { Caller } from '../../src/kms/types.js';

const CRED_VARS = ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_REGION', 'AWS_ENDPOINT_URL', 'AWS_PROFILE', 'AWS_CONFIG_FILE', 'AWS_SHARED_CREDENTIALS_FILE', 'AWS_EC2_METADATA_DISABLED'];

describe('CloudTrail sessionContext for calls made with assumed-role session credentials', () => {
  const env = new Env('sessaudit');
  const saved = Object.fromEntries(CRED_VARS.map((k) => [k, process.env[k]]));
  let url = '';
  let accountId = '';
  let roleArn = '';
  let alice = { AccessKeyId: '', SecretAccessKey: '' };

  const useEnv = (vars: Record<string, string>): void => {
    for (const k of CRED_VARS) delete process.env[k];
    Object.assign(process.env, { AWS_EC2_METADATA_DISABLED: 'true', AWS_REGION: 'us-east-1', AWS_ENDPOINT_URL: url }, vars);
  };
  const events = (): Record<string, any>[] => env.auditText().split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));

  beforeAll(async () => {
    ensureBuilt();
    await env.start(['--kms-only', '--kms-listen', '127.0.0.1:0']);
    url = await kmsUrl(env);
    accountId = (await env.ok(['iam', 'create-user', 'alice'])).User.Arn.split(':')[4];
    const admin = JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'kms:*', Resource: '*' }] });
    await env.ok(['iam', 'put-policy', 'user/alice', '--policy-name', 'admin', '--policy-document', admin]);
    alice = (await env.ok(['iam', 'create-access-key', '--user-name', 'alice'])).AccessKey;
    await env.ok(['iam', 'create-role', 'app']);
    roleArn = `arn:aws:iam::${accountId}:role/app`;
    await env.ok(['iam', 'put-policy', 'role/app', '--policy-name', 'admin', '--policy-document', admin]);
    await env.ok(['iam', 'update-assume-role-policy', '--role-name', 'app', '--policy-document',
      JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${accountId}:user/alice` }, Action: 'sts:AssumeRole' }] })]);
  });
  afterAll(async () => {
    for (const [k, v] of Object.entries(saved)) if (v === undefined) delete process.env[k]; else process.env[k] = v;
    await env.cleanup();
  });

  it('a session from AssumeRole calls KMS; its audit events carry type AssumedRole, the ASIA key and sessionContext', async () => {
    useEnv({ AWS_ACCESS_KEY_ID: alice.AccessKeyId, AWS_SECRET_ACCESS_KEY: alice.SecretAccessKey });
    const sts = new STSClient({});
    const r = await sts.send(new AssumeRoleCommand({ RoleArn: roleArn, RoleSessionName: 'nightly-backup', DurationSeconds: 1800 }));
    sts.destroy();
    const creds = r.Credentials!;
    const roleId = r.AssumedRoleUser!.AssumedRoleId!.split(':')[0]!;
    expect(roleId).toMatch(/^AROA[A-Z2-7]{17}$/);

    useEnv({ AWS_ACCESS_KEY_ID: creds.AccessKeyId!, AWS_SECRET_ACCESS_KEY: creds.SecretAccessKey!, AWS_SESSION_TOKEN: creds.SessionToken! });
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
