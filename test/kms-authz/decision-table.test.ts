import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { PolicyEvaluator, type Decision } from '../../src/kms/authz/evaluate.js';
import { GrantStore } from '../../src/kms/authz/grants.js';
import { parsePolicy, type CompiledPolicy } from '../../src/kms/authz/policy-document.js';
import type { AuthzRequest, KeyInfo } from '../../src/kms/authz/request-context.js';
import { defaultKeyPolicy, ebsManagedKeyPolicy } from '../../src/kms/authz/managed-keys.js';
import { AccessDeniedException } from '../../src/kms/errors.js';
import type { Caller } from '../../src/kms/types.js';
import { ACCT, EC2_VIA, KEY_ARN, OTHER, REGION, doc, root, session, tempDir, unknown, user } from './helpers.js';

/**
 * Decision table from the examples in the AWS KMS Developer Guide ("Default
 * key policy", "Allows key users to use the KMS key", "Using IAM policies",
 * "kms:ViaService", "kms:CallerAccount", "kms:EncryptionContext:context-key",
 * "kms:EncryptionContextKeys", "kms:GrantIsForAWSResource", "Grant
 * constraints", "Retiring and revoking grants") and the EBS `auto-ebs-2` policy.
 */

const identity: Record<string, CompiledPolicy[]> = {};
const attach = (c: Caller | string, ...statements: unknown[]): void => {
  const arn = typeof c === 'string' ? c : c.arn;
  (identity[arn] ??= []).push(parsePolicy(doc(...statements), { kind: 'identity' }));
};
const t = tempDir();
let grants: GrantStore;
let ev: PolicyEvaluator;

const alice = user('alice');
const bob = user('bob');
const admin = session('KMSAdminRole', 'admin-1');
const keyUser = session('ExampleUserRole', 'app-1');
const outsider = user('eve', OTHER);
const host = session('EbsdHost', 'host-1');

beforeAll(async () => {
  grants = await GrantStore.open(join(t.dir, 'grants.json'));
  ev = new PolicyEvaluator({ identityPolicies: (c) => identity[c.arn] ?? identity[c.arn.replace(/^arn:aws:sts::(\d+):assumed-role\/([^/]+)\/.*$/, 'arn:aws:iam::$1:role/$2')] ?? [], grants });
  attach(alice, { Effect: 'Allow', Action: ['kms:Decrypt', 'kms:Encrypt', 'kms:DescribeKey'], Resource: `arn:aws:kms:${REGION}:${ACCT}:key/*` });
  attach(bob, { Effect: 'Allow', NotAction: ['kms:ScheduleKeyDeletion', 'kms:Delete*', 'kms:PutKeyPolicy'], Resource: '*' });
});
afterAll(() => t.cleanup());

const key = (policy: string, extra: Partial<KeyInfo> = {}): KeyInfo => ({ arn: KEY_ARN, accountId: ACCT, region: REGION, policy, keySpec: 'SYMMETRIC_DEFAULT', keyUsage: 'ENCRYPT_DECRYPT', ...extra });
const decide = (policy: string, caller: Caller, action: string, more: Partial<AuthzRequest> = {}): Decision =>
  ev.evaluate({ action, caller, key: key(policy), ...more });
const allowed = (d: Decision) => d.allowed;

const DEFAULT = defaultKeyPolicy(ACCT);
/** The console's default policy for a key with administrators and users, without IAM delegation. */
const NO_DELEGATION = doc(
  {
    Sid: 'Allow access for Key Administrators', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:role/KMSAdminRole` },
    Action: ['kms:Create*', 'kms:Describe*', 'kms:Enable*', 'kms:List*', 'kms:Put*', 'kms:Update*', 'kms:Revoke*', 'kms:Disable*', 'kms:Get*', 'kms:Delete*', 'kms:TagResource', 'kms:UntagResource', 'kms:ScheduleKeyDeletion', 'kms:CancelKeyDeletion'],
    Resource: '*',
  },
  {
    Sid: 'Allow use of the key', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:role/ExampleUserRole` },
    Action: ['kms:Encrypt', 'kms:Decrypt', 'kms:ReEncrypt*', 'kms:GenerateDataKey*', 'kms:DescribeKey'], Resource: '*',
  },
  {
    Sid: 'Allow attachment of persistent resources', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:role/ExampleUserRole` },
    Action: ['kms:CreateGrant', 'kms:ListGrants', 'kms:RevokeGrant'], Resource: '*',
    Condition: { Bool: { 'kms:GrantIsForAWSResource': 'true' } },
  },
);
const EBS = ebsManagedKeyPolicy(ACCT, REGION);

describe('decision table (AWS KMS documentation examples)', () => {
  it('default key policy: the root is allowed; IAM users need an identity policy (delegation on)', () => {
    expect(decide(DEFAULT, root, 'kms:ScheduleKeyDeletion')).toMatchObject({ allowed: true, by: 'key-policy' });
    expect(decide(DEFAULT, alice, 'kms:Decrypt')).toMatchObject({ allowed: true, by: 'iam-policy' });
    const d = decide(DEFAULT, alice, 'kms:GenerateDataKey');
    expect(d).toMatchObject({ allowed: false, reason: 'no-identity-policy-allow' });
    expect(!d.allowed && d.message).toBe(`User: ${alice.arn} is not authorized to perform: kms:GenerateDataKey on resource: ${KEY_ARN} because no identity-based policy allows the kms:GenerateDataKey action`);
    expect(allowed(decide(DEFAULT, user('nopolicy'), 'kms:Decrypt'))).toBe(false);
  });

  it('identity policy Resource is matched against the key ARN', () => {
    const other = 'arn:aws:kms:eu-west-1:111122223333:key/zzz';
    expect(allowed(ev.evaluate({ action: 'kms:Decrypt', caller: alice, key: key(DEFAULT, { arn: other }) }))).toBe(false);
  });

  it('IAM delegation off: identity policies do not help; named principals are allowed', () => {
    const d = decide(NO_DELEGATION, alice, 'kms:Decrypt');
    expect(d).toMatchObject({ allowed: false, reason: 'no-key-policy-allow' });
    expect(!d.allowed && d.message).toBe(`User: ${alice.arn} is not authorized to perform: kms:Decrypt on resource: ${KEY_ARN} because no resource-based policy allows the kms:Decrypt action`);
    expect(allowed(decide(NO_DELEGATION, root, 'kms:Decrypt'))).toBe(false); // even the root needs the key policy
    expect(allowed(decide(NO_DELEGATION, keyUser, 'kms:Decrypt'))).toBe(true); // role ARN names its sessions
    expect(allowed(decide(NO_DELEGATION, keyUser, 'kms:ReEncryptFrom'))).toBe(true);
    expect(allowed(decide(NO_DELEGATION, keyUser, 'kms:PutKeyPolicy'))).toBe(false);
    expect(allowed(decide(NO_DELEGATION, admin, 'kms:PutKeyPolicy'))).toBe(true);
    expect(allowed(decide(NO_DELEGATION, admin, 'kms:Decrypt'))).toBe(false);
  });

  it('kms:GrantIsForAWSResource: key users may create grants only through an integrated service', () => {
    const g = { grant: { operations: ['Decrypt'], granteePrincipal: host.arn } };
    expect(allowed(decide(NO_DELEGATION, keyUser, 'kms:CreateGrant', g))).toBe(false);
    expect(allowed(decide(NO_DELEGATION, { ...keyUser, viaService: EC2_VIA }, 'kms:CreateGrant', g))).toBe(true);
  });

  it('explicit Deny overrides any Allow (key policy or identity policy)', () => {
    const p = doc(
      { Sid: 'root', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:root` }, Action: 'kms:*', Resource: '*' },
      { Sid: 'DenyDecryptOutsideIT', Effect: 'Deny', Principal: '*', Action: 'kms:Decrypt', Resource: '*', Condition: { StringNotEquals: { 'kms:EncryptionContext:Department': 'IT' } } },
    );
    const d = decide(p, root, 'kms:Decrypt', { encryptionContext: { Department: 'HR' } });
    expect(d).toMatchObject({ allowed: false, reason: 'explicit-deny-key-policy', sid: 'DenyDecryptOutsideIT' });
    expect(!d.allowed && d.message).toMatch(/with an explicit deny in a resource-based policy$/);
    expect(allowed(decide(p, root, 'kms:Decrypt', { encryptionContext: { Department: 'IT' } }))).toBe(true);
    expect(allowed(decide(p, root, 'kms:Decrypt'))).toBe(false); // missing key: StringNotEquals is true -> Deny applies
    const carol = user('carol');
    attach(carol, { Effect: 'Allow', Action: 'kms:*', Resource: '*' }, { Effect: 'Deny', Action: 'kms:Decrypt', Resource: '*' });
    expect(decide(DEFAULT, carol, 'kms:Decrypt')).toMatchObject({ allowed: false, reason: 'explicit-deny-identity-policy' });
    expect(allowed(decide(DEFAULT, carol, 'kms:Encrypt'))).toBe(true);
  });

  it('NotAction: everything except the listed actions', () => {
    expect(allowed(decide(DEFAULT, bob, 'kms:Decrypt'))).toBe(true);
    expect(allowed(decide(DEFAULT, bob, 'kms:DeleteAlias'))).toBe(false);
    expect(allowed(decide(DEFAULT, bob, 'kms:ScheduleKeyDeletion'))).toBe(false);
    const p = doc({ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:root` }, NotAction: 'kms:ScheduleKeyDeletion', Resource: '*' });
    expect(allowed(decide(p, root, 'kms:ScheduleKeyDeletion'))).toBe(false);
    expect(allowed(decide(p, root, 'kms:DisableKey'))).toBe(true);
  });

  it('NotPrincipal with Deny: everyone but the named principal is denied', () => {
    const p = doc(
      { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:root` }, Action: 'kms:*', Resource: '*' },
      { Effect: 'Deny', NotPrincipal: { AWS: [alice.arn, root.arn] }, Action: 'kms:Decrypt', Resource: '*' },
    );
    expect(allowed(decide(p, alice, 'kms:Decrypt'))).toBe(true);
    expect(allowed(decide(p, root, 'kms:Decrypt'))).toBe(true);
    expect(decide(p, bob, 'kms:Decrypt')).toMatchObject({ reason: 'explicit-deny-key-policy' });
  });

  it('the EBS AWS-managed key policy: any principal of the account, only via EC2', () => {
    const via = (c: Caller): Caller => ({ ...c, viaService: EC2_VIA });
    for (const a of ['kms:Encrypt', 'kms:Decrypt', 'kms:ReEncryptFrom', 'kms:ReEncryptTo', 'kms:GenerateDataKeyWithoutPlaintext', 'kms:CreateGrant', 'kms:DescribeKey']) {
      expect(allowed(decide(EBS, via(user('nopolicy')), a))).toBe(true);
    }
    expect(allowed(decide(EBS, user('nopolicy'), 'kms:Decrypt'))).toBe(false); // not via EC2
    expect(allowed(decide(EBS, { ...user('x'), viaService: `rds.${REGION}.amazonaws.com` }, 'kms:Decrypt'))).toBe(false);
    expect(allowed(decide(EBS, { ...user('x'), viaService: 'ec2.eu-west-1.amazonaws.com' }, 'kms:Decrypt'))).toBe(false);
    expect(allowed(decide(EBS, via(outsider), 'kms:Decrypt'))).toBe(false); // kms:CallerAccount
    expect(allowed(decide(EBS, root, 'kms:DescribeKey'))).toBe(true);
    expect(allowed(decide(EBS, root, 'kms:GetKeyPolicy'))).toBe(true);
    expect(allowed(decide(EBS, root, 'kms:RevokeGrant'))).toBe(true);
    expect(allowed(decide(EBS, root, 'kms:Decrypt'))).toBe(false);
    expect(allowed(decide(EBS, root, 'kms:PutKeyPolicy'))).toBe(false);
    expect(allowed(decide(EBS, via(root), 'kms:DisableKey'))).toBe(false);
    // The metadata statement names the account root, so it delegates to IAM: alice's policy allows DescribeKey, not Decrypt.
    expect(allowed(decide(EBS, alice, 'kms:DescribeKey'))).toBe(true);
    expect(allowed(decide(EBS, alice, 'kms:Decrypt'))).toBe(false);
  });

  it('kms:ViaService with several services, and kms:CallerAccount for another account', () => {
    const p = doc(
      { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:root` }, Action: 'kms:*', Resource: '*' },
      {
        Effect: 'Allow', Principal: { AWS: '*' }, Action: ['kms:Decrypt', 'kms:GenerateDataKey*'], Resource: '*',
        Condition: { StringEquals: { 'kms:ViaService': [`ec2.${REGION}.amazonaws.com`, `rds.${REGION}.amazonaws.com`], 'kms:CallerAccount': [ACCT, OTHER] } },
      },
    );
    expect(allowed(decide(p, { ...outsider, viaService: `rds.${REGION}.amazonaws.com` }, 'kms:Decrypt'))).toBe(true);
    expect(allowed(decide(p, { ...user('zed', '999988887777'), viaService: EC2_VIA }, 'kms:Decrypt'))).toBe(false);
    expect(allowed(decide(p, outsider, 'kms:Decrypt'))).toBe(false);
  });

  it('encryption-context conditions: exact pair, key name case-insensitive, value case-sensitive, key sets', () => {
    const p = doc(
      {
        Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'kms:Decrypt', Resource: '*',
        Condition: { StringEquals: { 'kms:EncryptionContext:AppName': 'ExampleApp' } },
      },
      {
        Effect: 'Allow', Principal: { AWS: bob.arn }, Action: 'kms:GenerateDataKey', Resource: '*',
        Condition: { 'ForAllValues:StringEquals': { 'kms:EncryptionContextKeys': ['Purpose', 'Department'] }, Null: { 'kms:EncryptionContextKeys': 'false' } },
      },
      {
        Effect: 'Allow', Principal: { AWS: bob.arn }, Action: 'kms:Encrypt', Resource: '*',
        Condition: { 'ForAnyValue:StringEquals': { 'kms:EncryptionContextKeys': 'Purpose' } },
      },
    );
    expect(allowed(decide(p, alice, 'kms:Decrypt', { encryptionContext: { AppName: 'ExampleApp' } }))).toBe(true);
    expect(allowed(decide(p, alice, 'kms:Decrypt', { encryptionContext: { appname: 'ExampleApp', x: 'y' } }))).toBe(true);
    expect(allowed(decide(p, alice, 'kms:Decrypt', { encryptionContext: { AppName: 'exampleapp' } }))).toBe(false);
    expect(allowed(decide(p, alice, 'kms:Decrypt'))).toBe(false);
    expect(allowed(decide(p, bob, 'kms:GenerateDataKey', { encryptionContext: { Purpose: 'a' } }))).toBe(true);
    expect(allowed(decide(p, bob, 'kms:GenerateDataKey', { encryptionContext: { Purpose: 'a', Other: 'b' } }))).toBe(false);
    expect(allowed(decide(p, bob, 'kms:GenerateDataKey'))).toBe(false);
    expect(allowed(decide(p, bob, 'kms:Encrypt', { encryptionContext: { Purpose: 'a', Other: 'b' } }))).toBe(true);
    expect(allowed(decide(p, bob, 'kms:Encrypt', { encryptionContext: { Other: 'b' } }))).toBe(false);
  });

  it('kms:GrantOperations, kms:GrantConstraintType, kms:RequestAlias, kms:ResourceAliases, aws:PrincipalArn', () => {
    const p = doc(
      {
        Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'kms:CreateGrant', Resource: '*',
        Condition: { 'ForAllValues:StringEquals': { 'kms:GrantOperations': ['Decrypt', 'RetireGrant'] }, StringEquals: { 'kms:GrantConstraintType': 'EncryptionContextSubset' } },
      },
      { Effect: 'Allow', Principal: { AWS: '*' }, Action: 'kms:Encrypt', Resource: '*', Condition: { StringEquals: { 'kms:RequestAlias': 'alias/app', 'kms:CallerAccount': ACCT } } },
      { Effect: 'Allow', Principal: { AWS: '*' }, Action: 'kms:DescribeKey', Resource: '*', Condition: { 'ForAnyValue:StringLike': { 'kms:ResourceAliases': 'alias/team-*' } } },
      { Effect: 'Allow', Principal: { AWS: '*' }, Action: 'kms:Decrypt', Resource: '*', Condition: { ArnLike: { 'aws:PrincipalArn': `arn:aws:iam::${ACCT}:role/Ebsd*` } } },
    );
    const sub = { EncryptionContextSubset: { 'aws:ebs:id': 'vol-1' } };
    expect(allowed(decide(p, alice, 'kms:CreateGrant', { grant: { operations: ['Decrypt'], granteePrincipal: host.arn, constraints: sub } }))).toBe(true);
    expect(allowed(decide(p, alice, 'kms:CreateGrant', { grant: { operations: ['Decrypt', 'Encrypt'], granteePrincipal: host.arn, constraints: sub } }))).toBe(false);
    expect(allowed(decide(p, alice, 'kms:CreateGrant', { grant: { operations: ['Decrypt'], granteePrincipal: host.arn } }))).toBe(false);
    expect(allowed(decide(p, bob, 'kms:Encrypt', { requestAlias: 'alias/app' }))).toBe(true);
    expect(allowed(decide(p, bob, 'kms:Encrypt'))).toBe(false);
    expect(allowed(ev.evaluate({ action: 'kms:DescribeKey', caller: bob, key: key(p, { aliases: ['alias/x', 'alias/team-a'] }) }))).toBe(true);
    expect(allowed(ev.evaluate({ action: 'kms:DescribeKey', caller: bob, key: key(p, { aliases: ['alias/x'] }) }))).toBe(false);
    expect(allowed(decide(p, host, 'kms:Decrypt'))).toBe(true); // session -> role ARN for aws:PrincipalArn
    expect(allowed(decide(p, keyUser, 'kms:Decrypt'))).toBe(false);
  });

  it('an unmapped uid is denied everything, even under Principal "*"', () => {
    const p = doc({ Effect: 'Allow', Principal: '*', Action: 'kms:*', Resource: '*' });
    const d = decide(p, unknown, 'kms:DescribeKey');
    expect(d).toMatchObject({ allowed: false, reason: 'unknown-caller' });
    expect(allowed(ev.evaluate({ action: 'kms:ListKeys', caller: unknown }))).toBe(false);
  });

  it('account-level actions: root allowed, others by identity policy', () => {
    expect(ev.evaluate({ action: 'kms:CreateKey', caller: root })).toMatchObject({ allowed: true, by: 'account-root' });
    expect(allowed(ev.evaluate({ action: 'kms:CreateKey', caller: alice }))).toBe(false);
    expect(allowed(ev.evaluate({ action: 'kms:CreateKey', caller: bob }))).toBe(true);
  });

  it('authorize() throws AccessDeniedException with the AWS message', () => {
    let err: unknown;
    try { ev.authorize({ action: 'kms:Decrypt', caller: alice, key: key(NO_DELEGATION) }); } catch (e) { err = e; }
    expect(err).toBeInstanceOf(AccessDeniedException);
    expect((err as AccessDeniedException).awsName).toBe('AccessDeniedException');
    expect((err as Error).message).toContain('is not authorized to perform: kms:Decrypt on resource: ' + KEY_ARN);
  });
});

describe('decision table: grants', () => {
  const facts = { arn: KEY_ARN, accountId: ACCT, keySpec: 'SYMMETRIC_DEFAULT', keyUsage: 'ENCRYPT_DECRYPT' };
  const LOCKED = doc({ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:root` }, Action: ['kms:Describe*', 'kms:RevokeGrant'], Resource: '*' });

  it('a grant allows its operations to its grantee, and only those', async () => {
    const g = await grants.create(facts, { GranteePrincipal: `arn:aws:iam::${ACCT}:role/EbsdHost`, Operations: ['Decrypt', 'DescribeKey'] });
    expect(decide(LOCKED, host, 'kms:Decrypt')).toMatchObject({ allowed: true, by: 'grant', grantId: g.GrantId });
    expect(allowed(decide(LOCKED, host, 'kms:Encrypt'))).toBe(false);
    expect(allowed(decide(LOCKED, alice, 'kms:Decrypt', { grantTokens: [g.GrantToken] }))).toBe(false); // a token is not a bearer credential
    await grants.remove(KEY_ARN, g.GrantId);
    expect(allowed(decide(LOCKED, host, 'kms:Decrypt'))).toBe(false);
  });

  it('EncryptionContextSubset: the request context must include the pairs', async () => {
    const g = await grants.create(facts, { GranteePrincipal: bob.arn, Operations: ['Decrypt', 'DescribeKey'], Constraints: { EncryptionContextSubset: { 'aws:ebs:id': 'vol-1' } } });
    expect(allowed(decide(LOCKED, bob, 'kms:Decrypt', { encryptionContext: { 'aws:ebs:id': 'vol-1' } }))).toBe(true);
    expect(allowed(decide(LOCKED, bob, 'kms:Decrypt', { encryptionContext: { 'aws:ebs:id': 'vol-1', extra: 'x' } }))).toBe(true);
    expect(allowed(decide(LOCKED, bob, 'kms:Decrypt', { encryptionContext: { 'aws:ebs:id': 'vol-2' } }))).toBe(false);
    // Constraint keys are matched case-insensitively, values exactly (docs/architecture.md §5.4).
    expect(allowed(decide(LOCKED, bob, 'kms:Decrypt', { encryptionContext: { 'AWS:EBS:ID': 'vol-1' } }))).toBe(true);
    expect(allowed(decide(LOCKED, bob, 'kms:Decrypt', { encryptionContext: { 'aws:ebs:id': 'VOL-1' } }))).toBe(false);
    expect(allowed(decide(LOCKED, bob, 'kms:Decrypt'))).toBe(false);
    expect(allowed(decide(LOCKED, bob, 'kms:DescribeKey'))).toBe(true); // constraints do not apply to DescribeKey
    await grants.remove(KEY_ARN, g.GrantId);
  });

  it('EncryptionContextEquals: the request context must be exactly the pairs', async () => {
    const g = await grants.create(facts, { GranteePrincipal: bob.arn, Operations: ['Encrypt'], Constraints: { EncryptionContextEquals: { Department: 'IT' } } });
    expect(allowed(decide(LOCKED, bob, 'kms:Encrypt', { encryptionContext: { Department: 'IT' } }))).toBe(true);
    expect(allowed(decide(LOCKED, bob, 'kms:Encrypt', { encryptionContext: { Department: 'IT', x: 'y' } }))).toBe(false);
    expect(allowed(decide(LOCKED, bob, 'kms:Encrypt', { encryptionContext: { Department: 'it' } }))).toBe(false);
    expect(allowed(decide(LOCKED, bob, 'kms:Encrypt', { encryptionContext: { department: 'IT' } }))).toBe(true);
    expect(allowed(decide(LOCKED, bob, 'kms:Encrypt', { encryptionContext: { department: 'IT', DEPARTMENT: 'IT' } }))).toBe(false);
    await grants.remove(KEY_ARN, g.GrantId);
  });

  it('grants never override an explicit Deny', async () => {
    const g = await grants.create(facts, { GranteePrincipal: bob.arn, Operations: ['Decrypt'] });
    const p = doc({ Effect: 'Deny', Principal: { AWS: bob.arn }, Action: 'kms:*', Resource: '*' });
    expect(decide(p, bob, 'kms:Decrypt')).toMatchObject({ allowed: false, reason: 'explicit-deny-key-policy' });
    await grants.remove(KEY_ARN, g.GrantId);
  });

  it('CreateGrant from a grant: only if it allows CreateGrant and the new grant is no broader', async () => {
    const g = await grants.create(facts, { GranteePrincipal: bob.arn, Operations: ['Decrypt', 'CreateGrant'], Constraints: { EncryptionContextSubset: { a: '1' } } });
    const ask = (operations: string[], constraints?: Record<string, Record<string, string>>) =>
      allowed(decide(LOCKED, bob, 'kms:CreateGrant', { grant: { operations, granteePrincipal: alice.arn, ...(constraints ? { constraints } : {}) } }));
    expect(ask(['Decrypt'], { EncryptionContextSubset: { a: '1' } })).toBe(true);
    expect(ask(['Decrypt'], { EncryptionContextSubset: { a: '1', b: '2' } })).toBe(true);
    expect(ask(['Decrypt'], { EncryptionContextEquals: { a: '1', b: '2' } })).toBe(true);
    expect(ask(['Decrypt'])).toBe(false);
    expect(ask(['Decrypt'], { EncryptionContextSubset: { b: '2' } })).toBe(false);
    expect(ask(['Decrypt'], { EncryptionContextSubset: { A: '1' } })).toBe(true); // keys case-insensitive
    expect(ask(['Decrypt'], { EncryptionContextSubset: { a: 'X' } })).toBe(false);
    expect(ask(['Decrypt', 'Encrypt'], { EncryptionContextSubset: { a: '1' } })).toBe(false);
    await grants.remove(KEY_ARN, g.GrantId);
    const plain = await grants.create(facts, { GranteePrincipal: bob.arn, Operations: ['Decrypt'] });
    expect(ask(['Decrypt'])).toBe(false); // no CreateGrant in the grant
    await grants.remove(KEY_ARN, plain.GrantId);
  });
});

describe('aws:PrincipalArn of a role session', () => {
  const policy = doc(
    { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:root` }, Action: 'kms:*', Resource: '*' },
    { Sid: 'NoUntrusted', Effect: 'Deny', Principal: { AWS: '*' }, Action: 'kms:*', Resource: '*', Condition: { ArnLike: { 'aws:PrincipalArn': `arn:aws:iam::${ACCT}:role/untrusted/*` } } },
  );
  const paths: Record<string, string> = { Ops: '/untrusted/', Plain: '/' };
  const withPaths = new PolicyEvaluator({
    identityPolicies: () => [parsePolicy(doc({ Effect: 'Allow', Action: 'kms:*', Resource: '*' }), { kind: 'identity' })],
    roleArn: (acct, name) => (acct === ACCT && paths[name] ? `arn:aws:iam::${ACCT}:role${paths[name]}${name}` : undefined),
  });
  const ask = (c: Caller) => withPaths.evaluate({ action: 'kms:Decrypt', caller: c, key: key(policy) });

  it('is the role ARN with its path, as a Role caller has it', () => {
    expect(ask(session('Ops', 's1'))).toMatchObject({ allowed: false, reason: 'explicit-deny-key-policy', sid: 'NoUntrusted' });
    expect(ask({ arn: `arn:aws:iam::${ACCT}:role/untrusted/Ops`, accountId: ACCT, type: 'Role' })).toMatchObject({ allowed: false, sid: 'NoUntrusted' });
    expect(ask(session('Plain', 's1')).allowed).toBe(true);
  });

  it('an STS session names its issuer (sessionContext.sessionIssuer.arn, with the path)', () => {
    const s: Caller = {
      ...session('Net', 's2'),
      sessionContext: { sessionIssuer: { type: 'Role', principalId: 'AROAX', arn: `arn:aws:iam::${ACCT}:role/untrusted/Net`, accountId: ACCT, userName: 'Net' }, attributes: { mfaAuthenticated: 'false' } },
    };
    expect(ask(s)).toMatchObject({ allowed: false, sid: 'NoUntrusted' });
  });
});

describe('IAM policy variables (Version 2012-10-17 only)', () => {
  const ownerPolicy = (Version: string | undefined, value: string, op = 'StringEquals') => JSON.stringify({
    ...(Version ? { Version } : {}),
    Statement: [{ Effect: 'Allow', Principal: { AWS: '*' }, Action: 'kms:Decrypt', Resource: '*', Condition: { [op]: { 'aws:ResourceTag/Owner': value } } }],
  });
  const on = (policy: string, owner: string, c: Caller) =>
    ev.evaluate({ action: 'kms:Decrypt', caller: c, key: key(policy, { tags: { Owner: owner } }) }).allowed;

  it('${aws:username} in a Condition value is the caller\'s user name', () => {
    const p = ownerPolicy('2012-10-17', '${aws:username}');
    expect(on(p, 'alice', alice)).toBe(true);
    expect(on(p, 'alice', bob)).toBe(false);
    expect(on(p, '${aws:username}', alice)).toBe(false);
    expect(on(p, '${aws:username}', bob)).toBe(false);
    expect(on(p, 'app-1', keyUser)).toBe(false); // a session has no aws:username: the value matches nothing
    expect(on(ownerPolicy('2012-10-17', "${aws:username, 'nobody'}"), 'nobody', keyUser)).toBe(true);
  });

  it('${*} ${?} ${$} are literal; a substituted value is literal too', () => {
    const star = ownerPolicy('2012-10-17', 'a${*}', 'StringLike');
    expect(on(star, 'a*', alice)).toBe(true);
    expect(on(star, 'ab', alice)).toBe(false);
    expect(on(ownerPolicy('2012-10-17', '${$}{x}${?}'), '${x}?', alice)).toBe(true);
    const like = ownerPolicy('2012-10-17', '${aws:userid}', 'StringLike');
    const wild: Caller = { ...alice, principalId: 'AIDA*' };
    expect(on(like, 'AIDA*', wild)).toBe(true);
    expect(on(like, 'AIDAX', wild)).toBe(false);
  });

  it('Version 2008-10-17 or none: written text, compared as is', () => {
    for (const v of ['2008-10-17', undefined]) {
      const p = ownerPolicy(v, '${aws:username}');
      expect(on(p, 'alice', alice)).toBe(false);
      expect(on(p, '${aws:username}', bob)).toBe(true);
    }
  });

  it('in Resource and NotResource', () => {
    const pol = parsePolicy(doc({ Effect: 'Allow', Action: 'kms:CreateAlias', Resource: `arn:aws:kms:${REGION}:${ACCT}:alias/\${aws:username}-*` }), { kind: 'identity' });
    const e = new PolicyEvaluator({ identityPolicies: () => [pol] });
    const ask = (c: Caller, name: string) => e.evaluate({ action: 'kms:CreateAlias', caller: c, resource: `arn:aws:kms:${REGION}:${ACCT}:alias/${name}` }).allowed;
    expect(ask(alice, 'alice-db')).toBe(true);
    expect(ask(bob, 'alice-db')).toBe(false);
    expect(ask(alice, '${aws:username}-db')).toBe(false);
    expect(ask(keyUser, '${aws:username}-db')).toBe(false);
    const deny = parsePolicy(doc({ Effect: 'Allow', Action: 'kms:CreateAlias', Resource: '*' }, { Effect: 'Deny', Action: 'kms:CreateAlias', NotResource: `arn:aws:kms:${REGION}:${ACCT}:alias/\${aws:username}-*` }), { kind: 'identity' });
    const e2 = new PolicyEvaluator({ identityPolicies: () => [deny] });
    expect(e2.evaluate({ action: 'kms:CreateAlias', caller: alice, resource: `arn:aws:kms:${REGION}:${ACCT}:alias/alice-x` }).allowed).toBe(true);
    expect(e2.evaluate({ action: 'kms:CreateAlias', caller: alice, resource: `arn:aws:kms:${REGION}:${ACCT}:alias/bob-x` }).allowed).toBe(false);
    // A caller for whom the variable has no value (a role session: no aws:username): the pattern matches no
    // resource, so this Deny's NotResource covers every one: it fails closed.
    expect(keyUser.userName).toBeUndefined();
    expect(e2.evaluate({ action: 'kms:CreateAlias', caller: keyUser, resource: `arn:aws:kms:${REGION}:${ACCT}:alias/any-x` }).allowed).toBe(false);
    // And a Deny with a negated condition on the variable denies it too (null is not equal to anything).
    const deny2 = parsePolicy(doc({ Effect: 'Allow', Action: 'kms:Decrypt', Resource: '*' }, { Effect: 'Deny', Action: 'kms:Decrypt', Resource: '*', Condition: { StringNotEquals: { 'kms:EncryptionContext:owner': '${aws:username}' } } }), { kind: 'identity' });
    const e3 = new PolicyEvaluator({ identityPolicies: () => [deny2] });
    const decrypt = (c: Caller, owner: string) => e3.evaluate({ action: 'kms:Decrypt', caller: c, resource: '*', encryptionContext: { owner } }).allowed;
    expect(decrypt(alice, 'alice')).toBe(true);
    expect(decrypt(alice, 'bob')).toBe(false);
    expect(decrypt(keyUser, 'bob')).toBe(false);
  });
});

describe('NotPrincipal', () => {
  const roleArn = `arn:aws:iam::${ACCT}:role/ExampleUserRole`;
  const pol = (...except: string[]) => doc(
    { Effect: 'Allow', Principal: { AWS: '*' }, Action: 'kms:Decrypt', Resource: '*' },
    { Sid: 'OnlyThese', Effect: 'Deny', NotPrincipal: { AWS: except }, Action: 'kms:Decrypt', Resource: '*' },
  );
  it('naming a role exempts the role, not its sessions; a session is exempt only by its own ARN', () => {
    expect(decide(pol(roleArn), keyUser, 'kms:Decrypt')).toMatchObject({ allowed: false, reason: 'explicit-deny-key-policy', sid: 'OnlyThese' });
    expect(decide(pol(roleArn), { arn: roleArn, accountId: ACCT, type: 'Role' }, 'kms:Decrypt').allowed).toBe(true);
    expect(decide(pol(roleArn, keyUser.arn), keyUser, 'kms:Decrypt').allowed).toBe(true);
    expect(decide(pol(roleArn, keyUser.arn), session('ExampleUserRole', 'app-2'), 'kms:Decrypt').allowed).toBe(false);
    expect(decide(pol(alice.arn), alice, 'kms:Decrypt').allowed).toBe(true);
    expect(decide(pol(alice.arn), bob, 'kms:Decrypt').allowed).toBe(false);
  });
});

describe('kms:EncryptionContext:<k> with keys differing only in case', () => {
  const pol = doc(
    { Effect: 'Allow', Principal: { AWS: '*' }, Action: 'kms:Encrypt', Resource: '*' },
    { Sid: 'NoSecret', Effect: 'Deny', Principal: { AWS: '*' }, Action: 'kms:Encrypt', Resource: '*', Condition: { StringEquals: { 'kms:EncryptionContext:Dept': 'secret' } } },
  );
  it('every value counts: a Deny on any of them fires, whatever the order', () => {
    for (const encryptionContext of [{ Dept: 'secret', dept: 'x' }, { dept: 'x', Dept: 'secret' }, { DEPT: 'x', dept: 'y', Dept: 'secret' }]) {
      expect(decide(pol, alice, 'kms:Encrypt', { encryptionContext })).toMatchObject({ allowed: false, sid: 'NoSecret' });
    }
    expect(decide(pol, alice, 'kms:Encrypt', { encryptionContext: { Dept: 'x', dept: 'y' } }).allowed).toBe(true);
  });
});
