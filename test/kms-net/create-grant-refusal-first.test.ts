/**
 * CreateGrant answers a caller the key's policies do not allow with AccessDeniedException before it
 * judges the grant's principals: else its ValidationException for a grantee or retiring principal
 * that does not exist told anyone with an access key (no KMS permission at all) which IAM users and
 * roles the account has. A caller allowed CreateGrant still gets the ValidationException naming the
 * member. The grant's encryption-context condition keys (kms:EncryptionContext:<k>,
 * kms:EncryptionContextKeys) are read from the request's Constraints whether or not its principals
 * exist, so a policy conditioned on them judges an existing and a missing grantee alike. Real daemon
 * (`--kms-only --kms-listen 127.0.0.1:0`), real @aws-sdk/client-kms.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateGrantCommand, CreateKeyCommand, KMSClient } from '@aws-sdk/client-kms';
import { KMS_ADMIN_POLICY, makeAccessKey, startKmsDaemon, kmsClientFor } from './helpers.js';
import { Env, ensureBuilt } from '../e2e/helpers.js';

describe('CreateGrant by a caller without permission: AccessDeniedException whether the grantee exists or not', () => {
  const env = new Env('grantoracle');
  const clients: KMSClient[] = [];
  let admin: KMSClient;
  let stranger: KMSClient;
  let alphaOnly: KMSClient;
  let notBeta: KMSClient;
  let key = '';
  let acct = '';

  beforeAll(async () => {
    ensureBuilt();
    const { url } = await startKmsDaemon(env);
    const client = (k: { AccessKeyId: string; SecretAccessKey: string }): KMSClient => kmsClientFor(url, k, clients);
    const a = await makeAccessKey(env, 'admin', KMS_ADMIN_POLICY, 'admin');
    acct = a.accountId;
    admin = client(a.key);
    stranger = client((await makeAccessKey(env, 'stranger')).key); // no policy at all
    await makeAccessKey(env, 'bob');
    // Two delegates on the key's policy: one may create only grants constrained to tenant alpha, the other any
    // grant but one constrained to tenant beta.
    const al = await makeAccessKey(env, 'alpha-only');
    alphaOnly = client(al.key);
    const nb = await makeAccessKey(env, 'not-beta');
    notBeta = client(nb.key);
    key = (await admin.send(new CreateKeyCommand({
      Policy: JSON.stringify({
        Version: '2012-10-17',
        Statement: [
          { Sid: 'Enable IAM User Permissions', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${acct}:root` }, Action: 'kms:*', Resource: '*' },
          { Sid: 'AlphaOnly', Effect: 'Allow', Principal: { AWS: al.arn }, Action: 'kms:CreateGrant', Resource: '*', Condition: { StringEquals: { 'kms:EncryptionContext:tenant': 'alpha' } } },
          { Sid: 'NotBeta', Effect: 'Allow', Principal: { AWS: nb.arn }, Action: 'kms:CreateGrant', Resource: '*' },
          { Sid: 'NeverBeta', Effect: 'Deny', Principal: { AWS: nb.arn }, Action: 'kms:CreateGrant', Resource: '*', Condition: { StringEquals: { 'kms:EncryptionContext:tenant': 'beta' } } },
        ],
      }),
    }))).KeyMetadata!.Arn!;
  });
  afterAll(async () => {
    for (const c of clients) c.destroy();
    await env.cleanup();
  });

  const outcome = (c: KMSClient, grantee: string, retiring?: string, Constraints?: Record<string, Record<string, string>>): Promise<string> =>
    c.send(new CreateGrantCommand({
      KeyId: key, GranteePrincipal: grantee, Operations: ['Decrypt'], ...(retiring ? { RetiringPrincipal: retiring } : {}), ...(Constraints ? { Constraints } : {}),
    })).then(() => 'ok', (e: Error) => e.name);

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

  it('a caller allowed only grants constrained to a context learns a missing grantee as any allowed caller does (ValidationException)', async () => {
    const bob = `arn:aws:iam::${acct}:user/bob`;
    const nobody = `arn:aws:iam::${acct}:user/nobody`;
    const alpha = { EncryptionContextSubset: { tenant: 'alpha' } };
    // The same error for a missing grantee as for the known grantee's own validation error (a missing retiring principal).
    expect(await outcome(alphaOnly, nobody, undefined, alpha)).toBe('ValidationException');
    expect(await outcome(alphaOnly, bob, nobody, alpha)).toBe('ValidationException');
    expect(await outcome(alphaOnly, bob, undefined, { EncryptionContextEquals: { tenant: 'alpha' } })).toBe('ok');
    // Outside the allowed context it is refused, whoever the grantee.
    expect(await outcome(alphaOnly, nobody, undefined, { EncryptionContextSubset: { tenant: 'beta' } })).toBe('AccessDeniedException');
    expect(await outcome(alphaOnly, nobody)).toBe('AccessDeniedException');
  });

  it('a caller refused a context by a Deny gets AccessDeniedException for it whether the grantee exists or not', async () => {
    const bob = `arn:aws:iam::${acct}:user/bob`;
    const nobody = `arn:aws:iam::${acct}:user/nobody`;
    const beta = { EncryptionContextSubset: { tenant: 'beta' } };
    expect(await outcome(notBeta, bob, undefined, beta)).toBe('AccessDeniedException');
    expect(await outcome(notBeta, nobody, undefined, beta)).toBe('AccessDeniedException');
    expect(await outcome(notBeta, bob, nobody, { EncryptionContextEquals: { tenant: 'beta' } })).toBe('AccessDeniedException');
    // Any other grant it is allowed, so it learns a missing grantee there (as any allowed caller).
    expect(await outcome(notBeta, nobody, undefined, { EncryptionContextSubset: { tenant: 'gamma' } })).toBe('ValidationException');
  });
});
