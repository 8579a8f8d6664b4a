/**
 * kms:EncryptionContext:<key> and kms:EncryptionContextKeys apply to CreateGrant too (KMS Developer
 * Guide, "AWS KMS condition keys": both list CreateGrant among their operations), where the
 * encryption context is the one the new grant's constraint names (EncryptionContextEquals or
 * EncryptionContextSubset; docs/architecture.md §5.4). A key policy that lets a delegate create
 * grants for some tenants only must hold: a Deny on one tenant's context refuses a grant
 * constrained to it, and an Allow of one tenant's context allows a grant constrained to it and
 * nothing unconstrained. Real daemon (`--kms-only --kms-listen 127.0.0.1:0`), real
 * @aws-sdk/client-kms.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateGrantCommand, CreateKeyCommand, KMSClient, ListGrantsCommand } from '@aws-sdk/client-kms';
import { makeAccessKey, startKmsDaemon, kmsClientFor } from './helpers.js';
import { Env, ensureBuilt } from '../e2e/helpers.js';

describe('CreateGrant: kms:EncryptionContext:<key> and kms:EncryptionContextKeys are the new grant\'s constraint', () => {
  const env = new Env('grantctx');
  const clients: KMSClient[] = [];
  let admin: KMSClient;
  let delegate: KMSClient;
  let scoped: KMSClient;
  let key = '';
  let appArn = '';

  beforeAll(async () => {
    ensureBuilt();
    const { url } = await startKmsDaemon(env);
    const client = (k: { AccessKeyId: string; SecretAccessKey: string }): KMSClient => kmsClientFor(url, k, clients);
    const a = await makeAccessKey(env, 'admin', JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'kms:*', Resource: '*' }] }));
    admin = client(a.key);
    const d = await makeAccessKey(env, 'delegate');
    delegate = client(d.key);
    const s = await makeAccessKey(env, 'scoped');
    scoped = client(s.key);
    appArn = (await makeAccessKey(env, 'app')).arn;
    const acct = a.accountId;
    key = (await admin.send(new CreateKeyCommand({
      Policy: JSON.stringify({
        Version: '2012-10-17',
        Statement: [
          { Sid: 'Enable IAM User Permissions', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${acct}:root` }, Action: 'kms:*', Resource: '*' },
          { Sid: 'Delegate', Effect: 'Allow', Principal: { AWS: d.arn }, Action: ['kms:CreateGrant', 'kms:ListGrants'], Resource: '*' },
          { Sid: 'NotForBeta', Effect: 'Deny', Principal: { AWS: d.arn }, Action: 'kms:CreateGrant', Resource: '*', Condition: { StringEquals: { 'kms:EncryptionContext:tenant': 'beta' } } },
          {
            Sid: 'AlphaOnly', Effect: 'Allow', Principal: { AWS: s.arn }, Action: 'kms:CreateGrant', Resource: '*',
            Condition: { StringEquals: { 'kms:EncryptionContext:tenant': 'alpha' }, 'ForAllValues:StringEquals': { 'kms:EncryptionContextKeys': ['tenant'] } },
          },
        ],
      }),
    }))).KeyMetadata!.Arn!;
  });
  afterAll(async () => {
    for (const c of clients) c.destroy();
    await env.cleanup();
  });

  const outcome = (p: Promise<unknown>): Promise<string> => p.then(() => 'ok', (e: Error) => e.name);
  const grant = (c: KMSClient, Constraints?: Record<string, Record<string, string>>) =>
    outcome(c.send(new CreateGrantCommand({ KeyId: key, GranteePrincipal: appArn, Operations: ['Decrypt'], ...(Constraints ? { Constraints } : {}) })));

  it('a Deny on a tenant\'s context refuses a grant constrained to that tenant, by Subset or by Equals; others pass', async () => {
    expect(await grant(delegate, { EncryptionContextSubset: { tenant: 'beta' } })).toBe('AccessDeniedException');
    expect(await grant(delegate, { EncryptionContextEquals: { tenant: 'beta', vol: 'v1' } })).toBe('AccessDeniedException');
    // The context key compared case-insensitively, as for every kms:EncryptionContext: key.
    expect(await grant(delegate, { EncryptionContextSubset: { Tenant: 'beta' } })).toBe('AccessDeniedException');
    expect(await grant(delegate, { EncryptionContextEquals: { tenant: 'alpha' } })).toBe('ok');
    const listed = (await delegate.send(new ListGrantsCommand({ KeyId: key }))).Grants ?? [];
    expect(listed.map((g) => g.Constraints)).toEqual([{ EncryptionContextEquals: { tenant: 'alpha' } }]);
  });

  it('an Allow of one tenant\'s context allows a grant constrained to it, not one without a constraint nor with another key', async () => {
    expect(await grant(scoped, { EncryptionContextSubset: { tenant: 'alpha' } })).toBe('ok');
    expect(await grant(scoped)).toBe('AccessDeniedException');
    expect(await grant(scoped, { EncryptionContextSubset: { tenant: 'beta' } })).toBe('AccessDeniedException');
    expect(await grant(scoped, { EncryptionContextSubset: { tenant: 'alpha', other: 'x' } })).toBe('AccessDeniedException');
  });
});
