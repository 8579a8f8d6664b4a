import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Kms } from '../../src/kms/open-kms.js';
import type { Caller } from '../../src/kms/types.js';
import { ACCT, auditEventsIn, awsName, doc, openTestKms, tempDir } from './helpers.js';

/**
 * Privilege-escalation probes through the real KMS core (docs/architecture.md §5.4): each one an
 * attempt to get more than a key policy, an identity policy or a grant gives.
 */
let t: ReturnType<typeof tempDir>;
let kms: Kms;
let root: Caller;
let alice: Caller;
let bob: Caller;
let carol: Caller;
let dave: Caller;
let hostSession: Caller;

const call = (op: string, req: Record<string, unknown>, c: Caller) => kms.core.call(op, req, c);
const newKey = async (policy?: string): Promise<string> =>
  ((await call('CreateKey', policy ? { Policy: policy, BypassPolicyLockoutSafetyCheck: true } : {}, root)) as { KeyMetadata: { Arn: string } }).KeyMetadata.Arn;
const grant = async (key: string, by: Caller, g: Record<string, unknown>) => (await call('CreateGrant', { KeyId: key, ...g }, by)) as { GrantId: string; GrantToken: string };
const pt = Buffer.from('x');

beforeAll(async () => {
  t = tempDir('ebsd-escalation-');
  kms = await openTestKms(t.dir);
  const ids = kms.identities;
  root = ids.callerForUid(0);
  for (const [uid, n] of [[1001, 'alice'], [1002, 'bob'], [1003, 'carol'], [1004, 'dave']] as const) {
    await ids.createUser(n);
    await ids.mapUid(uid, `user/${n}`);
  }
  await ids.createRole('Host');
  await ids.mapUid(999, 'role/Host', { session: 'h1' });
  alice = ids.callerForUid(1001);
  bob = ids.callerForUid(1002);
  carol = ids.callerForUid(1003);
  dave = ids.callerForUid(1004);
  hostSession = ids.callerForUid(999);
}, 60_000);

afterAll(async () => {
  await kms?.core.close();
  t?.cleanup();
});

describe('grants: a grantee gets no more than its grant', () => {
  it('a CreateGrant grant creates only sub-grants with a subset of its operations', async () => {
    const k = await newKey();
    await grant(k, root, { GranteePrincipal: alice.arn, Operations: ['Decrypt', 'CreateGrant'] });
    expect(await awsName(grant(k, alice, { GranteePrincipal: bob.arn, Operations: ['Encrypt'] }))).toBe('AccessDeniedException');
    expect(await awsName(grant(k, alice, { GranteePrincipal: bob.arn, Operations: ['Decrypt', 'Encrypt'] }))).toBe('AccessDeniedException');
    expect(await awsName(grant(k, alice, { GranteePrincipal: bob.arn, Operations: ['Decrypt'] }))).toBe('no error');
  });

  it('a constrained CreateGrant grant: sub-grants keep the constraint, equally strict or stricter', async () => {
    const k = await newKey();
    await grant(k, root, { GranteePrincipal: alice.arn, Operations: ['Decrypt', 'Encrypt', 'CreateGrant'], Constraints: { EncryptionContextSubset: { vol: 'v1' } } });
    expect(await awsName(grant(k, alice, { GranteePrincipal: bob.arn, Operations: ['Encrypt'] }))).toBe('AccessDeniedException');
    expect(await awsName(grant(k, alice, { GranteePrincipal: bob.arn, Operations: ['Encrypt'], Constraints: { EncryptionContextSubset: { vol: 'v2' } } }))).toBe('AccessDeniedException');
    expect(await awsName(grant(k, alice, { GranteePrincipal: bob.arn, Operations: ['Encrypt'], Constraints: { EncryptionContextSubset: {} } }))).toBe('AccessDeniedException');
    expect(await awsName(grant(k, alice, { GranteePrincipal: bob.arn, Operations: ['Encrypt'], Constraints: { EncryptionContextSubset: { vol: 'v1', x: 'y' } } }))).toBe('no error');
    expect(await awsName(grant(k, alice, { GranteePrincipal: bob.arn, Operations: ['Encrypt'], Constraints: { EncryptionContextEquals: { vol: 'v1' } } }))).toBe('no error');
    // The parent's constraint holds on its own use too.
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt, EncryptionContext: { vol: 'v2' } }, alice))).toBe('AccessDeniedException');
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt }, alice))).toBe('AccessDeniedException');
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt, EncryptionContext: { vol: 'v1' } }, alice))).toBe('no error');
  });

  it('an EncryptionContextEquals parent: a Subset child, or an Equals with more pairs, is broader or other, refused', async () => {
    const k = await newKey();
    await grant(k, root, { GranteePrincipal: alice.arn, Operations: ['Encrypt', 'CreateGrant'], Constraints: { EncryptionContextEquals: { vol: 'v1' } } });
    expect(await awsName(grant(k, alice, { GranteePrincipal: bob.arn, Operations: ['Encrypt'], Constraints: { EncryptionContextSubset: { vol: 'v1' } } }))).toBe('AccessDeniedException');
    expect(await awsName(grant(k, alice, { GranteePrincipal: bob.arn, Operations: ['Encrypt'] }))).toBe('AccessDeniedException');
    expect(await awsName(grant(k, alice, { GranteePrincipal: bob.arn, Operations: ['Encrypt'], Constraints: { EncryptionContextEquals: { vol: 'v1' } } }))).toBe('no error');
  });

  it('a grant does not make its grantee a retiring principal of others, nor give RevokeGrant', async () => {
    const k = await newKey();
    const carols = await grant(k, root, { GranteePrincipal: carol.arn, Operations: ['Decrypt'], RetiringPrincipal: carol.arn });
    await grant(k, root, { GranteePrincipal: alice.arn, Operations: ['Decrypt', 'RetireGrant', 'CreateGrant'] });
    expect(await awsName(call('RetireGrant', { KeyId: k, GrantId: carols.GrantId }, alice))).toBe('AccessDeniedException');
    expect(await awsName(call('RetireGrant', { GrantToken: carols.GrantToken }, alice))).toBe('AccessDeniedException');
    expect(await awsName(call('RevokeGrant', { KeyId: k, GrantId: carols.GrantId }, alice))).toBe('AccessDeniedException');
    // bob, with nothing, retires nothing
    expect(await awsName(call('RetireGrant', { GrantToken: carols.GrantToken }, bob))).toBe('AccessDeniedException');
    // the retiring principal may
    expect(await awsName(call('RetireGrant', { GrantToken: carols.GrantToken }, carol))).toBe('no error');
  });

  it('a grant token of another principal\'s grant gives its bearer nothing', async () => {
    const k = await newKey();
    const g = await grant(k, root, { GranteePrincipal: alice.arn, Operations: ['Encrypt'] });
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt, GrantTokens: [g.GrantToken] }, bob))).toBe('AccessDeniedException');
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt, GrantTokens: [g.GrantToken] }, alice))).toBe('no error');
  });

  it('a grant on a disabled or pending-deletion key allows nothing', async () => {
    const k = await newKey();
    await grant(k, root, { GranteePrincipal: alice.arn, Operations: ['Encrypt', 'CreateGrant'] });
    await call('DisableKey', { KeyId: k }, root);
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt }, alice))).toBe('DisabledException');
    expect(await awsName(grant(k, alice, { GranteePrincipal: bob.arn, Operations: ['Encrypt'] }))).toBe('DisabledException');
    await call('ScheduleKeyDeletion', { KeyId: k, PendingWindowInDays: 7 }, root);
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt }, alice))).toBe('KMSInvalidStateException');
    expect(await awsName(grant(k, root, { GranteePrincipal: bob.arn, Operations: ['Encrypt'] }))).toBe('KMSInvalidStateException');
  });

  it('an explicit Deny in the key policy, or in the grantee\'s identity policy, beats a grant', async () => {
    const k = await newKey(doc(
      { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:root` }, Action: 'kms:*', Resource: '*' },
      { Effect: 'Deny', Principal: { AWS: bob.arn }, Action: 'kms:Encrypt', Resource: '*' },
    ));
    await grant(k, root, { GranteePrincipal: bob.arn, Operations: ['Encrypt'] });
    await grant(k, root, { GranteePrincipal: carol.arn, Operations: ['Encrypt'] });
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt }, bob))).toBe('AccessDeniedException');
    await kms.identities.attachPolicy('user/carol', 'no-encrypt', doc({ Effect: 'Deny', Action: 'kms:Encrypt', Resource: '*' }));
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt }, carol))).toBe('AccessDeniedException');
  });
});

describe('key policies: conditions and Not* elements', () => {
  it('without the account-root statement, identity policies give nothing', async () => {
    const k = await newKey(doc({ Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'kms:*', Resource: '*' }));
    await kms.identities.attachPolicy('user/bob', 'all', doc({ Effect: 'Allow', Action: 'kms:*', Resource: '*' }));
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt }, bob))).toBe('AccessDeniedException');
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt }, alice))).toBe('no error');
  });

  it('NotAction / NotResource Allows give only what they leave; a NotPrincipal Deny exempts only the one named', async () => {
    const k = await newKey(doc(
      { Effect: 'Allow', Principal: { AWS: alice.arn }, NotAction: ['kms:Decrypt', 'kms:PutKeyPolicy'], Resource: '*' },
      { Effect: 'Allow', Principal: { AWS: carol.arn }, Action: 'kms:Encrypt', NotResource: '*' },
      { Effect: 'Allow', Principal: { AWS: '*' }, Action: 'kms:DescribeKey', Resource: '*' },
      { Effect: 'Deny', NotPrincipal: { AWS: alice.arn }, Action: 'kms:DescribeKey', Resource: '*' },
    ));
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt }, alice))).toBe('no error');
    const blob = ((await call('Encrypt', { KeyId: k, Plaintext: pt }, alice)) as { CiphertextBlob: Buffer }).CiphertextBlob;
    expect(await awsName(call('Decrypt', { CiphertextBlob: blob }, alice))).toBe('AccessDeniedException');
    expect(await awsName(call('PutKeyPolicy', { KeyId: k, Policy: doc({ Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'kms:*', Resource: '*' }) }, alice))).toBe('AccessDeniedException');
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt }, carol))).toBe('AccessDeniedException');
    expect(await awsName(call('DescribeKey', { KeyId: k }, bob))).toBe('AccessDeniedException');
    expect(await awsName(call('DescribeKey', { KeyId: k }, alice))).toBe('no error');
  });

  it('ForAllValues on kms:EncryptionContextKeys is true with no context (AWS\'s trap), ForAnyValue false; Null closes it', async () => {
    const k = await newKey(doc(
      { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'kms:Encrypt', Resource: '*', Condition: { 'ForAllValues:StringEquals': { 'kms:EncryptionContextKeys': ['vol'] } } },
      { Effect: 'Allow', Principal: { AWS: bob.arn }, Action: 'kms:Encrypt', Resource: '*', Condition: { 'ForAnyValue:StringEquals': { 'kms:EncryptionContextKeys': ['vol'] } } },
      { Effect: 'Allow', Principal: { AWS: dave.arn }, Action: 'kms:Encrypt', Resource: '*', Condition: { 'ForAllValues:StringEquals': { 'kms:EncryptionContextKeys': ['vol'] }, Null: { 'kms:EncryptionContextKeys': 'false' } } },
    ));
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt }, alice))).toBe('no error');
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt, EncryptionContext: { vol: 'a', x: 'b' } }, alice))).toBe('AccessDeniedException');
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt }, bob))).toBe('AccessDeniedException');
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt, EncryptionContext: { vol: 'a', x: 'b' } }, bob))).toBe('no error');
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt }, dave))).toBe('AccessDeniedException');
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt, EncryptionContext: {} }, dave))).toBe('AccessDeniedException');
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt, EncryptionContext: { vol: 'a' } }, dave))).toBe('no error');
  });

  it('kms:EncryptionContext:<key>: the key case-insensitive, the value exact; IfExists lets a missing key through, a Deny on it fires on any case', async () => {
    const k = await newKey(doc(
      { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'kms:Encrypt', Resource: '*', Condition: { StringEquals: { 'kms:EncryptionContext:Dept': 'IT' } } },
      { Effect: 'Allow', Principal: { AWS: bob.arn }, Action: 'kms:Encrypt', Resource: '*', Condition: { StringEqualsIfExists: { 'kms:EncryptionContext:Dept': 'IT' } } },
      { Effect: 'Deny', Principal: { AWS: '*' }, Action: 'kms:Encrypt', Resource: '*', Condition: { StringEquals: { 'kms:EncryptionContext:dept': 'secret' } } },
    ));
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt, EncryptionContext: { dept: 'IT' } }, alice))).toBe('no error');
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt, EncryptionContext: { Dept: 'it' } }, alice))).toBe('AccessDeniedException');
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt }, alice))).toBe('AccessDeniedException');
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt }, bob))).toBe('no error');
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt, EncryptionContext: { Dept: 'HR' } }, bob))).toBe('AccessDeniedException');
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt, EncryptionContext: { Dept: 'IT', DEPT: 'secret' } }, alice))).toBe('AccessDeniedException');
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt, EncryptionContext: { 'a:b': 'x', dept: 'IT', DePt: 'secret' } }, alice))).toBe('AccessDeniedException');
  });

  it('kms:ViaService and kms:CallerAccount: a direct call gets nothing from a via-EC2 Allow', async () => {
    const k = await newKey(doc(
      { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:root` }, Action: 'kms:*', Resource: '*' },
      { Effect: 'Allow', Principal: { AWS: '*' }, Action: ['kms:Encrypt', 'kms:CreateGrant'], Resource: '*', Condition: { StringEquals: { 'kms:ViaService': 'ec2.us-west-2.amazonaws.com', 'kms:CallerAccount': ACCT } } },
      { Effect: 'Deny', Principal: { AWS: '*' }, Action: 'kms:CreateGrant', Resource: '*', Condition: { Bool: { 'kms:GrantIsForAWSResource': 'false' } } },
    ));
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt }, alice))).toBe('AccessDeniedException');
    const via = { ...alice, viaService: 'ec2.us-west-2.amazonaws.com' };
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt }, via))).toBe('no error');
    expect(await awsName(call('CreateGrant', { KeyId: k, GranteePrincipal: bob.arn, Operations: ['Decrypt'] }, root))).toBe('AccessDeniedException');
    expect(await awsName(call('CreateGrant', { KeyId: k, GranteePrincipal: bob.arn, Operations: ['Decrypt'] }, via))).toBe('no error');
  });

  it('a key policy naming a role covers its sessions; naming a session covers only that session', async () => {
    const roleArn = kms.identities.roleArn('Host');
    const k = await newKey(doc(
      { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:root` }, Action: 'kms:*', Resource: '*' },
      { Effect: 'Allow', Principal: { AWS: roleArn }, Action: 'kms:Encrypt', Resource: '*' },
      { Effect: 'Allow', Principal: { AWS: hostSession.arn }, Action: 'kms:DescribeKey', Resource: '*' },
    ));
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt }, hostSession))).toBe('no error');
    const other = kms.identities.assumeRole('Host', 'h2');
    expect(await awsName(call('Encrypt', { KeyId: k, Plaintext: pt }, other))).toBe('no error');
    expect(await awsName(call('DescribeKey', { KeyId: k }, hostSession))).toBe('no error');
    expect(await awsName(call('DescribeKey', { KeyId: k }, other))).toBe('AccessDeniedException');
  });
});

describe('more probes', () => {
  it('a Deny matches its actions in any case and by wildcard; an account id as Principal is the account', async () => {
    await kms.identities.createUser('erin');
    await kms.identities.mapUid(1005, 'user/erin');
    const erin = kms.identities.callerForUid(1005);
    await kms.identities.attachPolicy('user/erin', 'all', doc({ Effect: 'Allow', Action: 'kms:*', Resource: '*' }));
    for (const Action of ['KMS:ENCRYPT', 'kms:En*', 'kms:?ncrypt', ['kms:Decrypt', 'kms:encrypt']]) {
      const k = await newKey(doc(
        { Effect: 'Allow', Principal: { AWS: ACCT }, Action: 'kms:*', Resource: '*' },
        { Effect: 'Deny', Principal: { AWS: '*' }, Action, Resource: '*', Condition: { StringEquals: { 'kms:CallerAccount': ACCT } } },
      ));
      expect([Action, await awsName(call('Encrypt', { KeyId: k, Plaintext: pt }, erin))]).toEqual([Action, 'AccessDeniedException']);
      expect([Action, await awsName(call('DescribeKey', { KeyId: k }, erin))]).toEqual([Action, 'no error']);
    }
  });

  it('a grant\'s operations are exact: GenerateDataKey is not GenerateDataKeyWithoutPlaintext, ReEncryptFrom is not ReEncryptTo', async () => {
    const k = await newKey(doc({ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:root` }, Action: 'kms:*', Resource: '*' }));
    await kms.identities.createUser('frank');
    await kms.identities.mapUid(1006, 'user/frank');
    const frank = kms.identities.callerForUid(1006);
    await grant(k, root, { GranteePrincipal: frank.arn, Operations: ['GenerateDataKey', 'ReEncryptFrom'] });
    expect(await awsName(call('GenerateDataKey', { KeyId: k, KeySpec: 'AES_256' }, frank))).toBe('no error');
    expect(await awsName(call('GenerateDataKeyWithoutPlaintext', { KeyId: k, KeySpec: 'AES_256' }, frank))).toBe('AccessDeniedException');
    const blob = ((await call('Encrypt', { KeyId: k, Plaintext: pt }, root)) as { CiphertextBlob: Buffer }).CiphertextBlob;
    expect(await awsName(call('ReEncrypt', { CiphertextBlob: blob, DestinationKeyId: k }, frank))).toBe('AccessDeniedException');
    expect(await awsName(grant(k, root, { GranteePrincipal: frank.arn, Operations: ['Sign'] }))).toBe('ValidationException');
  });
});

describe('RetireGrant delegated by the key\'s account through IAM', () => {
  // KMS Developer Guide, "Retiring and revoking grants": the account that owns the KMS key can delegate
  // kms:RetireGrant to an IAM principal in the account; the permission is not effective in a key policy.
  it('an identity policy allowing kms:RetireGrant lets a principal of the account retire any grant of the key; a key policy Allow does not', async () => {
    const ids = kms.identities;
    await ids.createUser('janitor');
    await ids.mapUid(1010, 'user/janitor');
    await ids.createUser('keyadmin');
    await ids.mapUid(1011, 'user/keyadmin');
    const janitor = ids.callerForUid(1010);
    const keyadmin = ids.callerForUid(1011);
    const k = await newKey(doc(
      { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:root` }, Action: 'kms:*', Resource: '*' },
      { Effect: 'Allow', Principal: { AWS: keyadmin.arn }, Action: 'kms:RetireGrant', Resource: '*' },
    ));
    const g1 = await grant(k, root, { GranteePrincipal: bob.arn, Operations: ['DescribeKey'] });
    const g2 = await grant(k, root, { GranteePrincipal: bob.arn, Operations: ['Encrypt'] });
    // The key policy's Allow is not effective for RetireGrant.
    expect(await awsName(call('RetireGrant', { KeyId: k, GrantId: g1.GrantId }, keyadmin))).toBe('AccessDeniedException');
    expect(await awsName(call('RetireGrant', { KeyId: k, GrantId: g1.GrantId }, janitor))).toBe('AccessDeniedException');
    // Delegated through IAM, scoped to this key: by grant id and by token.
    await ids.attachPolicy('user/janitor', 'retire', doc({ Effect: 'Allow', Action: 'kms:RetireGrant', Resource: k }));
    expect(await awsName(call('RetireGrant', { KeyId: k, GrantId: g1.GrantId }, janitor))).toBe('no error');
    expect(await awsName(call('RetireGrant', { GrantToken: g2.GrantToken }, janitor))).toBe('no error');
    // Not on another key the IAM policy does not name.
    const other = await newKey();
    const g3 = await grant(other, root, { GranteePrincipal: bob.arn, Operations: ['DescribeKey'] });
    expect(await awsName(call('RetireGrant', { KeyId: other, GrantId: g3.GrantId }, janitor))).toBe('AccessDeniedException');
    // An explicit Deny, in the key policy or an identity policy, still wins.
    const g4 = await grant(k, root, { GranteePrincipal: bob.arn, Operations: ['DescribeKey'] });
    await ids.attachPolicy('user/janitor', 'fence', doc({ Effect: 'Deny', Action: 'kms:RetireGrant', Resource: '*' }));
    expect(await awsName(call('RetireGrant', { KeyId: k, GrantId: g4.GrantId }, janitor))).toBe('AccessDeniedException');
    await ids.detachPolicy('user/janitor', 'fence');
    await call('PutKeyPolicy', { KeyId: k, Policy: doc(
      { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:root` }, Action: 'kms:*', Resource: '*' },
      { Effect: 'Deny', Principal: { AWS: janitor.arn }, Action: 'kms:RetireGrant', Resource: '*' },
    ) }, root);
    expect(await awsName(call('RetireGrant', { KeyId: k, GrantId: g4.GrantId }, janitor))).toBe('AccessDeniedException');
    // A dry run answers as the real call would.
    await call('PutKeyPolicy', { KeyId: k, Policy: doc({ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:root` }, Action: 'kms:*', Resource: '*' }) }, root);
    expect(await awsName(call('RetireGrant', { KeyId: k, GrantId: g4.GrantId, DryRun: true }, janitor))).toBe('DryRunOperationException');
    expect(await awsName(call('RetireGrant', { KeyId: k, GrantId: g4.GrantId }, janitor))).toBe('no error');
    // A key whose policy leaves the account's IAM policies out (no statement naming the account): the janitor's
    // IAM Allow counts for nothing there, as for every other action on such a key.
    const closed = await newKey(doc({ Effect: 'Allow', Principal: { AWS: keyadmin.arn }, Action: 'kms:*', Resource: '*' }));
    const g5 = await grant(closed, keyadmin, { GranteePrincipal: bob.arn, Operations: ['DescribeKey'] });
    await ids.attachPolicy('user/janitor', 'retire-all', doc({ Effect: 'Allow', Action: 'kms:*', Resource: '*' }));
    expect(await awsName(call('RetireGrant', { KeyId: closed, GrantId: g5.GrantId }, janitor))).toBe('AccessDeniedException');
    expect(await awsName(call('RetireGrant', { GrantToken: g5.GrantToken }, janitor))).toBe('AccessDeniedException');
  });
});

describe('audit', () => {
  it('every AccessDeniedException above is an audit event naming the principal', async () => {
    const denied = auditEventsIn(t.dir).filter((e) => e.errorCode === 'AccessDeniedException');
    expect(denied.length).toBeGreaterThan(20);
    for (const e of denied) expect(e.userIdentity?.arn ?? e.userIdentity?.principalId).toBeTruthy();
  });
});
