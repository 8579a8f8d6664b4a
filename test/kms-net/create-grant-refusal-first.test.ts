/**
 * CreateGrant answers a caller the key's policies do not allow with AccessDeniedException before it
 * judges the grant's principals: else its ValidationException for a grantee or retiring principal
 * that does not exist told anyone with an access key (no KMS permission at all) which IAM users and
 * roles the account has. A caller allowed CreateGrant still gets the ValidationException naming the
 * member. Real daemon (`--kms-only --kms-listen 127.0.0.1:0`), real @aws-sdk/client-kms.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateGrantCommand, CreateKeyCommand, KMSClient } from '@aws-sdk/client-kms';
import { KMS_ADMIN_POLICY, REGION, makeAccessKey, startKmsDaemon } from './helpers.js';
import { Env, ensureBuilt } from '../e2e/helpers.js';

describe('CreateGrant by a caller without permission: AccessDeniedException whether the grantee exists or not', () => {
  const env = new Env('grantoracle');
  const clients: KMSClient[] = [];
  let admin: KMSClient;
  let stranger: KMSClient;
  let key = '';
  let acct = '';

  beforeAll(async () => {
    ensureBuilt();
    const { url } = await startKmsDaemon(env);
    const client = (k: { AccessKeyId: string; SecretAccessKey: string }): KMSClient => {
      const c = new KMSClient({ endpoint: url, region: REGION, credentials: { accessKeyId: k.AccessKeyId, secretAccessKey: k.SecretAccessKey } });
      clients.push(c);
      return c;
    };
    const a = await makeAccessKey(env, 'admin', KMS_ADMIN_POLICY, 'admin');
    acct = a.accountId;
    admin = client(a.key);
    stranger = client((await makeAccessKey(env, 'stranger')).key); // no policy at all
    await makeAccessKey(env, 'bob');
    key = (await admin.send(new CreateKeyCommand({}))).KeyMetadata!.Arn!;
  });
  afterAll(async () => {
    for (const c of clients) c.destroy();
    await env.cleanup();
  });

  const outcome = (c: KMSClient, grantee: string, retiring?: string): Promise<string> =>
    c.send(new CreateGrantCommand({ KeyId: key, GranteePrincipal: grantee, Operations: ['Decrypt'], ...(retiring ? { RetiringPrincipal: retiring } : {}) }))
      .then(() => 'ok', (e: Error) => e.name);

  it('the same refusal for an existing and a missing grantee or retiring principal; an allowed caller learns which is missing', async () => {
    const bob = `arn:aws:iam::${acct}:user/bob`;
    const nobody = `arn:aws:iam::${acct}:user/nobody`;
    const role = `arn:aws:iam::${acct}:role/no-such-role`;
    expect(await outcome(stranger, bob)).toBe('AccessDeniedException');
    expect(await outcome(stranger, nobody)).toBe('AccessDeniedException');
    expect(await outcome(stranger, role)).toBe('AccessDeniedException');
    expect(await outcome(stranger, bob, nobody)).toBe('AccessDeniedException');
    expect(await outcome(admin, nobody)).toBe('ValidationException');
    expect(await outcome(admin, bob, nobody)).toBe('ValidationException');
    expect(await outcome(admin, bob)).toBe('ok');
  });
});
