/**
 * Every IAM call through the control socket is in the audit log, as CloudTrail
 * records IAM calls (src/daemon/audit-events.ts, iamEvent): eventSource
 * iam.amazonaws.com, IAM's API name, the caller's identity, the request's
 * names and policy documents, what a create returned, and never a secret:
 * an access key's SecretAccessKey appears in no audit line. A refused call
 * (not the account root) and a failed one are recorded too. Real daemon, real
 * CLI, `ebsd audit tail`.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from './helpers.js';

const ALICE = 1000;
const APP = 1001;
type Ev = {
  eventSource: string; eventName: string; readOnly: boolean; awsRegion: string;
  userIdentity: { arn: string; type: string }; requestParameters: Record<string, unknown> | null;
  responseElements: Record<string, any> | null; errorCode?: string; errorMessage?: string;
};

describe('IAM calls are audited', () => {
  const env = new Env('iam-audit');
  const userPolicy = JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'ec2:DescribeVolumes', Resource: '*' }] });
  const trust = JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: { AWS: 'arn:aws:iam::111122223333:root' }, Action: 'sts:AssumeRole' }] });
  let secret = '';
  let keyId = '';
  let events: Ev[] = [];

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    // The calls other tests make through the CLI go straight to the socket (what is audited is the daemon's);
    // the ones only this test makes through the CLI (get-policy, delete-user, delete-access-key, ...) stay CLI calls.
    await env.api('ebsd.IamCreateUser', { UserName: 'alice' });
    await env.api('ebsd.IamCreateRole', { RoleName: 'app' });
    await env.api('ebsd.IamMapUid', { Uid: ALICE, Principal: 'user/alice' });
    await env.api('ebsd.IamMapUid', { Uid: APP, Principal: 'role/app' });
    await env.api('ebsd.IamPutPolicy', { Principal: 'user/alice', PolicyName: 'read', PolicyDocument: userPolicy });
    await env.api('ebsd.IamPutPolicy', { Principal: 'role/app', PolicyName: 'read', PolicyDocument: userPolicy });
    await env.api('ebsd.IamUpdateAssumeRolePolicy', { RoleName: 'app', PolicyDocument: trust });
    const key = (await env.api('ebsd.IamCreateAccessKey', { UserName: 'alice' })).AccessKey;
    secret = key.SecretAccessKey;
    keyId = key.AccessKeyId;
    // IAM would make the caller's own key; ebsd has no root access keys, so the root must name the user (exit 7).
    const unnamed = await env.cli(['iam', 'create-access-key']);
    expect(unnamed.code, unnamed.stderr).toBe(7);
    expect(unnamed.stderr).toContain('InvalidInputException');
    expect(unnamed.stderr).toContain('--user-name');
    await env.ok(['iam', 'update-access-key', '--user-name', 'alice', '--access-key-id', keyId, '--status', 'Inactive']);
    // As IAM: a user with an access key (active or not) cannot be deleted; exit 6, a conflict.
    const conflict = await env.cli(['iam', 'delete-user', 'alice']);
    expect(conflict.code, conflict.stderr).toBe(6);
    expect(conflict.stderr).toContain('Cannot delete entity, must delete access keys first.');
    await env.ok(['iam', 'get-policy', 'user/alice', 'read']);
    await env.api('ebsd.IamListUsers');
    await env.ok(['iam', 'delete-access-key', '--user-name', 'alice', '--access-key-id', keyId]);
    // As IAM: nor while it has inline policies; the role neither. Refused before anything changes: the role, its
    // trust policy and its uid mapping are all still there.
    const trustFile = join(env.state, 'role-trust.json');
    const trustBefore = readFileSync(trustFile, 'utf8');
    for (const args of [['delete-user', 'alice'], ['delete-role', 'app']]) {
      const r = await env.cli(['iam', ...args]);
      expect(r.code, r.stderr).toBe(6);
      expect(r.stderr).toContain('DeleteConflictException');
      expect(r.stderr).toContain('Cannot delete entity, must delete policies first.');
    }
    expect((await env.ok(['iam', 'list-roles'])).Roles.map((r: { RoleName: string }) => r.RoleName)).toContain('app');
    expect((await env.ok(['iam', 'list-uids'])).Mappings).toContainEqual(expect.objectContaining({ uid: APP, principal: expect.stringMatching(/:role\/app$/) }));
    expect(readFileSync(trustFile, 'utf8')).toBe(trustBefore);
    await env.ok(['iam', 'delete-policy', 'role/app', 'read']);
    await env.ok(['iam', 'delete-role', 'app']); // its policy deleted: now it can be, its uid mapping and trust policy with it
    expect((await env.ok(['iam', 'list-uids'])).Mappings.map((m: { uid: number }) => m.uid)).not.toContain(APP);
    expect(JSON.parse(readFileSync(trustFile, 'utf8')).Roles).not.toHaveProperty('app');
    // Failed: the user exists. Refused: alice is not the account root.
    expect((await env.cli(['iam', 'create-user', 'alice'])).code).not.toBe(0);
    expect((await env.cli(['iam', 'create-user', 'mallory'], { uid: ALICE })).code).toBe(4);
    await env.ok(['iam', 'unmap-uid', String(ALICE)]);
    await env.ok(['iam', 'delete-policy', 'user/alice', 'read']);
    await env.ok(['iam', 'delete-user', 'alice']); // its keys and policies deleted: now it can be
    events = ((await env.ok(['audit', 'tail', '-n', '200'])).Events as Ev[]).filter((e) => e.eventSource === 'iam.amazonaws.com');
  }, 120_000);
  afterAll(() => env.cleanup(), 60_000);

  const one = (name: string, where: (e: Ev) => boolean = () => true): Ev => {
    const found = events.filter((e) => e.eventName === name && where(e));
    expect(found, `${name} in ${JSON.stringify(events.map((e) => e.eventName))}`).toHaveLength(1);
    return found[0]!;
  };

  it('each call is one event under IAM\'s name, by the account root, in us-east-1', () => {
    const names = events.map((e) => e.eventName);
    for (const n of ['CreateUser', 'CreateRole', 'MapUid', 'PutUserPolicy', 'PutRolePolicy', 'UpdateAssumeRolePolicy', 'CreateAccessKey',
      'UpdateAccessKey', 'GetUserPolicy', 'ListUsers', 'DeleteAccessKey', 'DeleteRolePolicy', 'UnmapUid']) expect(names).toContain(n);
    for (const e of events.filter((x) => !x.errorCode || x.errorCode !== 'AccessDeniedException')) {
      expect(e.userIdentity.type).toBe('Root');
      expect(e.awsRegion).toBe('us-east-1');
    }
    expect(one('GetUserPolicy').readOnly).toBe(true);
    expect(one('ListUsers').readOnly).toBe(true);
    expect(one('ListUsers').responseElements).toBeNull();
    expect(one('PutUserPolicy').readOnly).toBe(false);
  });

  it('request parameters name what changed, policy documents included; creates record what they made', () => {
    expect(one('PutUserPolicy').requestParameters).toEqual({ userName: 'alice', policyName: 'read', policyDocument: userPolicy });
    expect(one('PutRolePolicy').requestParameters).toEqual({ roleName: 'app', policyName: 'read', policyDocument: userPolicy });
    expect(one('UpdateAssumeRolePolicy').requestParameters).toEqual({ roleName: 'app', policyDocument: trust });
    expect(one('MapUid', (e) => e.requestParameters?.uid === ALICE).requestParameters).toEqual({ uid: ALICE, principal: 'user/alice' });
    expect(one('UpdateAccessKey').requestParameters).toEqual({ userName: 'alice', accessKeyId: keyId, status: 'Inactive' });
    expect(one('DeleteAccessKey').requestParameters).toEqual({ userName: 'alice', accessKeyId: keyId });
    expect(one('CreateUser', (e) => !e.errorCode && e.userIdentity.type === 'Root').responseElements!.user).toMatchObject({ userName: 'alice', arn: expect.stringMatching(/:user\/alice$/) });
    const created = one('CreateAccessKey', (e) => !e.errorCode);
    expect(created.requestParameters).toEqual({ userName: 'alice' });
    expect(created.responseElements!.accessKey).toMatchObject({ accessKeyId: keyId, status: 'Active', userName: 'alice' });
    expect(Object.keys(created.responseElements!.accessKey)).not.toContain('secretAccessKey');
  });

  it('DeleteUser of a user with an access key, then with an inline policy, fails with DeleteConflictException; once both are deleted it succeeds', () => {
    const keysLeft = 'Cannot delete entity, must delete access keys first.';
    const policiesLeft = 'Cannot delete entity, must delete policies first.';
    expect(one('DeleteUser', (e) => e.errorMessage === keysLeft)).toMatchObject({ requestParameters: { userName: 'alice' }, errorCode: 'DeleteConflictException' });
    expect(one('DeleteUser', (e) => e.errorMessage === policiesLeft)).toMatchObject({ requestParameters: { userName: 'alice' }, errorCode: 'DeleteConflictException' });
    expect(events.filter((e) => e.eventName === 'DeleteUser' && !e.errorCode)).toHaveLength(1);
  });

  it('DeleteRole of a role with an inline policy fails with DeleteConflictException; once it is deleted it succeeds', () => {
    expect(one('DeleteRole', (e) => e.errorCode === 'DeleteConflictException')).toMatchObject({ requestParameters: { roleName: 'app' }, errorMessage: 'Cannot delete entity, must delete policies first.' });
    expect(one('DeleteRole', (e) => !e.errorCode).requestParameters).toEqual({ roleName: 'app' });
  });

  it('CreateAccessKey without UserName, by the root, fails with InvalidInputException and makes no key', async () => {
    expect(one('CreateAccessKey', (e) => !!e.errorCode)).toMatchObject({ errorCode: 'InvalidInputException', responseElements: null });
    expect((await env.ok(['iam', 'list-access-keys'])).AccessKeyMetadata).toEqual([]);
  });

  it('a failed call carries IAM\'s error; a refused caller is recorded with AccessDeniedException', () => {
    const failed = one('CreateUser', (e) => e.errorCode === 'EntityAlreadyExistsException');
    expect(failed.requestParameters).toEqual({ userName: 'alice' });
    expect(failed.responseElements).toBeNull();
    const refused = one('CreateUser', (e) => e.errorCode === 'AccessDeniedException');
    expect(refused.userIdentity.arn).toMatch(/:user\/alice$/);
    expect(refused.errorMessage).toMatch(/not authorized to perform: iam:CreateUser/);
  });

  it('the secret access key is in no audit line, and the log verifies', async () => {
    expect(secret).toMatch(/^[A-Za-z0-9+/]{40}$/);
    expect(env.auditText()).not.toContain(secret);
    expect(env.daemonLog()).not.toContain(secret);
    expect((await env.api('ebsd.AuditVerify')).ok).toBe(true);

  });
});
