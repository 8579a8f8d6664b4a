/**
 * Revoking a role's active sessions as IAM's "Revoke active sessions" does it: an inline policy on
 * the role denying everything to a session whose `aws:TokenIssueTime` is before a time (IAM User
 * Guide, "Revoking IAM role temporary security credentials"). Session tokens are stateless here
 * (valid across restarts), so this Deny is, short of deleting the role, the way to cut off a
 * leaked session. The key is present only in a request signed with temporary credentials, so a
 * long-term access key is not touched by it. Real daemon (`--kms-only --kms-listen 127.0.0.1:0`),
 * real @aws-sdk clients through environment variables.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KMSClient, ListKeysCommand } from '@aws-sdk/client-kms';
import { STSClient, AssumeRoleCommand } from '@aws-sdk/client-sts';
import { StandardChain, keyVars, startWithAliceAndApp, type AccessKey } from './helpers.js';
import { Env, ensureBuilt } from '../e2e/helpers.js';

describe('aws:TokenIssueTime in KMS requests: a Deny on it revokes older sessions', () => {
  const env = new Env('sessrevoke');
  const chain = new StandardChain();
  let url = '';
  let accountId = '';
  let alice: AccessKey;

  beforeAll(async () => {
    ensureBuilt();
    ({ url, alice, accountId } = await startWithAliceAndApp(env));
  });
  afterAll(async () => {
    chain.restore();
    await env.cleanup();
  });

  /** ListKeys as `who`: 'ok' or the exception's name. */
  const listKeys = async (who: Record<string, string>): Promise<string> => {
    chain.use(who);
    const kms = new KMSClient({});
    try {
      await kms.send(new ListKeysCommand({}));
      return 'ok';
    } catch (e) {
      return (e as Error).name;
    } finally {
      kms.destroy();
    }
  };
  /** The role's revocation policy as IAM's console writes it, for sessions issued before `before`. */
  const revokeBefore = (before: string) => env.ok(['iam', 'put-policy', 'role/app', '--policy-name', 'AWSRevokeOlderSessions', '--policy-document',
    JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Deny', Action: ['*'], Resource: ['*'], Condition: { DateLessThan: { 'aws:TokenIssueTime': before } } }] })]);

  it('a session issued before the Deny\'s time is AccessDeniedException; one issued at it is not; a long-term key never carries the key', async () => {
    chain.use(keyVars(alice, url));
    const sts = new STSClient({});
    const r = await sts.send(new AssumeRoleCommand({ RoleArn: `arn:aws:iam::${accountId}:role/app`, RoleSessionName: 'leaked', DurationSeconds: 3600 }));
    sts.destroy();
    const c = r.Credentials!;
    const session = keyVars({ AccessKeyId: c.AccessKeyId!, SecretAccessKey: c.SecretAccessKey!, SessionToken: c.SessionToken! }, url);
    // The session's issue time in whole seconds (its audit sessionContext.attributes.creationDate).
    const issued = c.Expiration!.getTime() - 3600_000;
    const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
    expect(await listKeys(session)).toBe('ok');

    await revokeBefore(iso(issued + 1000));
    expect(await listKeys(session)).toBe('AccessDeniedException');
    expect(await listKeys(keyVars(alice, url))).toBe('ok'); // alice's own key: no aws:TokenIssueTime, the Deny does not match

    // At the issue time itself DateLessThan is false: the session is let in again.
    await revokeBefore(iso(issued));
    expect(await listKeys(session)).toBe('ok');
  });
});
