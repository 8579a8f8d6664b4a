/**
 * `ebsd iam` access-key commands answer as IAM does (IAM API Reference: CreateAccessKey,
 * ListAccessKeys, UpdateAccessKey, DeleteAccessKey): two keys per user, then LimitExceeded
 * with IAM's quota message; a UserName that names no user is NoSuchEntity "The user with name
 * … cannot be found." (not an empty list, not the key's message); another user's key is
 * NoSuchEntity "The Access Key with id … cannot be found."; an Active key can be deleted as
 * it is. Real daemon, real CLI; exit codes from src/cli/exit-codes.ts (5 not found, 6 conflict).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from './helpers.js';

describe('ebsd iam access keys, as IAM answers', () => {
  const env = new Env('iam-keys');

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    await env.api('ebsd.IamCreateUser', { UserName: 'alice' });
    await env.api('ebsd.IamCreateUser', { UserName: 'bob' });
  });
  afterAll(async () => {
    await env.cleanup();
  });

  it('two keys per user, listed in ListAccessKeys\' shape; a third is LimitExceeded; another user\'s key or no such user is NoSuchEntity; an Active key deletes', async () => {
    const a1 = (await env.ok(['iam', 'create-access-key', '--user-name', 'alice'])).AccessKey;
    const a2 = (await env.ok(['iam', 'create-access-key', '--user-name', 'alice'])).AccessKey;
    const third = await env.cli(['iam', 'create-access-key', '--user-name', 'alice']);
    expect([third.code, third.stderr]).toEqual([6, expect.stringContaining('Cannot exceed quota for AccessKeysPerUser: 2')]);
    const listed = await env.ok(['iam', 'list-access-keys', '--user-name', 'alice']);
    expect(listed).toEqual({
      AccessKeyMetadata: expect.arrayContaining([a1, a2].map((k) => ({ UserName: 'alice', AccessKeyId: k.AccessKeyId, Status: 'Active', CreateDate: k.CreateDate }))),
      IsTruncated: false,
    });
    expect(listed.AccessKeyMetadata).toHaveLength(2);
    expect(JSON.stringify(listed)).not.toContain('SecretAccessKey');
    expect(a1.CreateDate).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);

    // alice's key named under bob: the key's message, nothing changed.
    for (const args of [['update-access-key', '--status', 'Inactive'], ['delete-access-key']]) {
      const r = await env.cli(['iam', ...args, '--user-name', 'bob', '--access-key-id', a1.AccessKeyId]);
      expect([args[0], r.code, r.stderr]).toEqual([args[0], 5, expect.stringContaining(`The Access Key with id ${a1.AccessKeyId} cannot be found.`)]);
    }
    // A user that does not exist: the user's message, for the list too (it was an empty list).
    for (const args of [['list-access-keys'], ['update-access-key', '--status', 'Inactive', '--access-key-id', a1.AccessKeyId], ['delete-access-key', '--access-key-id', a1.AccessKeyId]]) {
      const r = await env.cli(['iam', ...args, '--user-name', 'nobody']);
      expect([args[0], r.code, r.stderr]).toEqual([args[0], 5, expect.stringContaining('The user with name nobody cannot be found.')]);
    }
    expect((await env.ok(['iam', 'list-access-keys', '--user-name', 'alice'])).AccessKeyMetadata.map((k: { Status: string }) => k.Status)).toEqual(['Active', 'Active']);

    // IAM deletes an Active key as it is (no need to deactivate it first); the slot is free again.
    await env.ok(['iam', 'delete-access-key', '--user-name', 'alice', '--access-key-id', a1.AccessKeyId]);
    expect((await env.ok(['iam', 'list-access-keys', '--user-name', 'alice'])).AccessKeyMetadata.map((k: { AccessKeyId: string }) => k.AccessKeyId)).toEqual([a2.AccessKeyId]);
    await env.ok(['iam', 'create-access-key', '--user-name', 'alice']);
    expect((await env.ok(['iam', 'list-access-keys', '--user-name', 'bob'])).AccessKeyMetadata).toEqual([]);
  });
});
