import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { KmsService } from '../../src/kms/kms-core.js';
import { openKms } from '../../src/kms/open-kms.js';
import { LOCKOUT_MESSAGE, type AuthzHandles } from '../../src/kms/authz/index.js';
import type { Caller } from '../../src/kms/types.js';
import { doc, tempDir } from './helpers.js';

/**
 * Through the real core (HSM, keystore, dispatcher, audit): the authorizer
 * replaces the placeholder, the grant and key-policy operations are
 * registered from outside, and every denial is an audit event with
 * errorCode AccessDeniedException.
 */
const ACCOUNT = '111122223333';
const REGION = 'us-east-1';
const VIA = `ec2.${REGION}.amazonaws.com`;

let t: ReturnType<typeof tempDir>;
let kms: KmsService;
let authz: AuthzHandles;
let root: Caller;
let alice: Caller;
let host: Caller;
const denials: { eventName: string; arn: string }[] = [];

async function denied(op: string, req: Record<string, unknown>, caller: Caller): Promise<string> {
  try {
    await kms.call(op, req, caller);
  } catch (e) {
    const err = e as { awsName?: string; message: string };
    if (err.awsName === 'AccessDeniedException') denials.push({ eventName: op, arn: caller.arn });
    return `${err.awsName}: ${err.message}`;
  }
  return 'allowed';
}

beforeAll(async () => {
  t = tempDir('ebsd-authz-core-');
  // Wired as the daemon wires it (src/kms/open-kms.ts).
  const opened = await openKms({ stateDir: t.dir, accountId: ACCOUNT, region: REGION, hsmMode: 'inline', passphrase: 'test-passphrase', scryptCost: { N: 2 ** 10, r: 8, p: 1 } });
  authz = opened;
  kms = opened.core;
  const ids = authz.identities;
  root = ids.callerForUid(0);
  await ids.createUser('alice');
  await ids.mapUid(1000, 'user/alice');
  await ids.createRole('EbsdHost');
  await ids.mapUid(999, 'role/EbsdHost', { session: 'host-1' });
  alice = ids.callerForUid(1000);
  host = ids.callerForUid(999);
}, 60_000);

afterAll(async () => {
  await kms?.close();
  t?.cleanup();
});

describe('authorization through the KMS core', () => {
  it('default key policy + IAM delegation; unknown uid denied', async () => {
    const { KeyMetadata } = await kms.call('CreateKey', { Description: 'app' }, root) as { KeyMetadata: { KeyId: string; Arn: string } };
    const keyId = KeyMetadata.KeyId;
    expect(await denied('Encrypt', { KeyId: keyId, Plaintext: Buffer.from('x') }, alice)).toMatch(
      new RegExp(`^AccessDeniedException: User: ${alice.arn} is not authorized to perform: kms:Encrypt on resource: ${KeyMetadata.Arn} because no identity-based policy allows the kms:Encrypt action$`),
    );
    await authz.identities.attachPolicy('user/alice', 'use', doc({ Effect: 'Allow', Action: ['kms:Encrypt', 'kms:DescribeKey'], Resource: '*' }));
    await expect(kms.call('Encrypt', { KeyId: keyId, Plaintext: Buffer.from('x') }, alice)).resolves.toHaveProperty('CiphertextBlob');
    expect(await denied('DescribeKey', { KeyId: keyId }, authz.identities.callerForUid(4242))).toMatch(/uid 4242\) is not mapped/);
    expect(await denied('CreateKey', {}, alice)).toMatch(/^AccessDeniedException/);
  });

  it('PutKeyPolicy / GetKeyPolicy / ListKeyPolicies, with the lockout safety check', async () => {
    const { KeyMetadata } = await kms.call('CreateKey', {}, root) as { KeyMetadata: { KeyId: string } };
    const keyId = KeyMetadata.KeyId;
    const got = await kms.call('GetKeyPolicy', { KeyId: keyId, PolicyName: 'default' }, root);
    expect(JSON.parse(got.Policy as string).Statement[0].Principal.AWS).toBe(`arn:aws:iam::${ACCOUNT}:root`);
    expect(await kms.call('ListKeyPolicies', { KeyId: keyId }, root)).toEqual({ PolicyNames: ['default'], Truncated: false });
    const aliceOnly = doc({ Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'kms:*', Resource: '*' });
    await expect(kms.call('PutKeyPolicy', { KeyId: keyId, Policy: aliceOnly }, root)).rejects.toMatchObject({ awsName: 'MalformedPolicyDocumentException', message: LOCKOUT_MESSAGE });
    await expect(kms.call('PutKeyPolicy', { KeyId: keyId, Policy: doc({ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCOUNT}:user/nobody` }, Action: 'kms:*', Resource: '*' }) }, root))
      .rejects.toMatchObject({ awsName: 'MalformedPolicyDocumentException', message: expect.stringMatching(/invalid principals/) });
    await expect(kms.call('PutKeyPolicy', { KeyId: keyId, Policy: '{bad' }, root)).rejects.toMatchObject({ awsName: 'MalformedPolicyDocumentException' });
    await expect(kms.call('GetKeyPolicy', { KeyId: keyId, PolicyName: 'other' }, root)).rejects.toMatchObject({ awsName: 'NotFoundException' });
    await kms.call('PutKeyPolicy', { KeyId: keyId, Policy: aliceOnly, BypassPolicyLockoutSafetyCheck: true }, root);
    expect(await denied('GetKeyPolicy', { KeyId: keyId }, root)).toMatch(/^AccessDeniedException.*kms:GetKeyPolicy.*no resource-based policy allows/);
    expect((await kms.call('GetKeyPolicy', { KeyId: keyId }, alice)).Policy).toBe(aliceOnly);
  });

  it('RetireGrant is authorized by the grant itself: a grantee allowed RetireGrant by its own grant, or a key policy allowing kms:RetireGrant, cannot retire another principal\'s grant', async () => {
    const ids = authz.identities;
    await ids.createUser('carol');
    await ids.mapUid(1001, 'user/carol');
    await ids.createUser('bob');
    await ids.mapUid(1002, 'user/bob');
    const carol = ids.callerForUid(1001);
    const bob = ids.callerForUid(1002);
    const acct = `arn:aws:iam::${ACCOUNT}`;
    // alice may RetireGrant by the key policy; carol has only a grant with DescribeKey and RetireGrant.
    const { KeyMetadata } = await kms.call('CreateKey', {
      Policy: doc(
        { Sid: 'root', Effect: 'Allow', Principal: { AWS: `${acct}:root` }, Action: 'kms:*', Resource: '*' },
        { Sid: 'alice', Effect: 'Allow', Principal: { AWS: `${acct}:user/alice` }, Action: 'kms:RetireGrant', Resource: '*' },
      ),
    }, root) as { KeyMetadata: { KeyId: string; Arn: string } };
    const k = KeyMetadata.Arn;
    const carols = await kms.call('CreateGrant', { KeyId: k, GranteePrincipal: `${acct}:user/carol`, Operations: ['DescribeKey', 'RetireGrant'] }, root) as { GrantId: string };
    const bobs = await kms.call('CreateGrant', { KeyId: k, GranteePrincipal: `${acct}:user/bob`, Operations: ['DescribeKey'] }, root) as { GrantId: string };
    expect(await denied('RetireGrant', { KeyId: k, GrantId: bobs.GrantId }, carol)).toMatch(/^AccessDeniedException: .*kms:RetireGrant.*because the grant does not allow it/);
    expect(await denied('RetireGrant', { KeyId: k, GrantId: bobs.GrantId }, alice)).toMatch(/^AccessDeniedException: .*because the grant does not allow it/);
    expect(await denied('RetireGrant', { KeyId: k, GrantId: bobs.GrantId }, bob)).toMatch(/^AccessDeniedException/); // its grant does not include RetireGrant
    await kms.call('DescribeKey', { KeyId: k }, bob); // bob's grant still works
    // Carol retires her own (it includes RetireGrant); the account that created bob's retires his.
    await kms.call('RetireGrant', { KeyId: k, GrantId: carols.GrantId }, carol);
    await kms.call('RetireGrant', { KeyId: k, GrantId: bobs.GrantId }, root);
    expect(await denied('DescribeKey', { KeyId: k }, bob)).toMatch(/^AccessDeniedException/);
  });

  it('EBS flow: managed key via EC2, grant to the host, constrained Decrypt, retire', async () => {
    const aliceVia: Caller = { ...alice, viaService: VIA };
    const ec = { 'aws:ebs:id': 'vol-0123456789abcdef0' };
    const dk = await kms.call('GenerateDataKeyWithoutPlaintext', { KeyId: 'alias/aws/ebs', NumberOfBytes: 64, EncryptionContext: ec }, aliceVia);
    const blob = dk.CiphertextBlob as Uint8Array;
    const keyArn = dk.KeyId as string;
    expect(await denied('GenerateDataKeyWithoutPlaintext', { KeyId: 'alias/aws/ebs', NumberOfBytes: 64, EncryptionContext: ec }, alice)).toMatch(/no resource-based policy allows/);
    const hostRole = `arn:aws:iam::${ACCOUNT}:role/EbsdHost`;
    const g = await kms.call('CreateGrant', {
      KeyId: keyArn, GranteePrincipal: hostRole, RetiringPrincipal: hostRole, Operations: ['Decrypt'], Constraints: { EncryptionContextSubset: ec },
    }, aliceVia) as { GrantId: string; GrantToken: string };
    expect(g.GrantId).toMatch(/^[0-9a-f]{64}$/);
    const pt = await kms.call('Decrypt', { CiphertextBlob: blob, EncryptionContext: ec, GrantTokens: [g.GrantToken] }, host);
    expect((pt.Plaintext as Uint8Array).length).toBe(64);
    expect(await denied('Decrypt', { CiphertextBlob: blob, EncryptionContext: { 'aws:ebs:id': 'vol-other' } }, host)).toMatch(/^AccessDeniedException/);
    const listed = await kms.call('ListGrants', { KeyId: keyArn }, root);
    expect(listed.Grants).toEqual([expect.objectContaining({ GrantId: g.GrantId, GranteePrincipal: hostRole, Operations: ['Decrypt'] })]);
    expect((await kms.call('ListRetirableGrants', { RetiringPrincipal: hostRole }, root)).Grants).toHaveLength(1);
    expect(await denied('RetireGrant', { GrantToken: g.GrantToken }, alice)).toMatch(/^AccessDeniedException/);
    await kms.call('RetireGrant', { GrantToken: g.GrantToken }, host);
    expect(await denied('Decrypt', { CiphertextBlob: blob, EncryptionContext: ec }, host)).toMatch(/^AccessDeniedException/);
    // Customers cannot change the AWS managed key.
    expect(await denied('PutKeyPolicy', { KeyId: keyArn, Policy: doc({ Effect: 'Allow', Principal: '*', Action: 'kms:*', Resource: '*' }) }, root)).toMatch(/^AccessDeniedException/);
    expect(await denied('DisableKey', { KeyId: keyArn }, root)).toMatch(/^AccessDeniedException/);
    expect(await denied('ScheduleKeyDeletion', { KeyId: keyArn }, root)).toMatch(/^AccessDeniedException/);
  });

  it('RevokeGrant by the account; a revoked grant stops working', async () => {
    const { KeyMetadata } = await kms.call('CreateKey', {}, root) as { KeyMetadata: { KeyId: string; Arn: string } };
    const g = await kms.call('CreateGrant', { KeyId: KeyMetadata.KeyId, GranteePrincipal: alice.arn, Operations: ['GenerateDataKey', 'Decrypt'] }, root) as { GrantId: string };
    await expect(kms.call('GenerateDataKey', { KeyId: KeyMetadata.KeyId, KeySpec: 'AES_256' }, alice)).resolves.toHaveProperty('Plaintext');
    await expect(kms.call('RevokeGrant', { KeyId: KeyMetadata.KeyId, GrantId: 'f'.repeat(64) }, root)).rejects.toMatchObject({ awsName: 'NotFoundException' });
    await kms.call('RevokeGrant', { KeyId: KeyMetadata.KeyId, GrantId: g.GrantId }, root);
    expect(await denied('GenerateDataKey', { KeyId: KeyMetadata.KeyId, KeySpec: 'AES_256' }, alice)).toMatch(/^AccessDeniedException/);
  });

  it('explicit Deny: the message is AWS\'s "with an explicit deny in a resource-based policy", in the exception and the audit event', async () => {
    const policy = doc(
      { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCOUNT}:root` }, Action: 'kms:*', Resource: '*' },
      { Sid: 'NoEncryptForAlice', Effect: 'Deny', Principal: { AWS: alice.arn }, Action: 'kms:Encrypt', Resource: '*' },
    );
    const { KeyMetadata } = await kms.call('CreateKey', { Policy: policy }, root) as { KeyMetadata: { KeyId: string; Arn: string } };
    // alice's identity policy allows kms:Encrypt (first test); the key policy's Deny wins.
    const expected = `User: ${alice.arn} is not authorized to perform: kms:Encrypt on resource: ${KeyMetadata.Arn} with an explicit deny in a resource-based policy`;
    expect(await denied('Encrypt', { KeyId: KeyMetadata.KeyId, Plaintext: Buffer.from('x') }, alice)).toBe(`AccessDeniedException: ${expected}`);
    const lines = readFileSync(join(t.dir, 'kms', 'audit', 'events.ndjson'), 'utf8').trim().split('\n');
    const last = JSON.parse(lines[lines.length - 1]!);
    expect(last).toMatchObject({ eventName: 'Encrypt', errorCode: 'AccessDeniedException', errorMessage: expected });
  });

  it('CreateKey with a Policy: validated like PutKeyPolicy, lockout safety check unless BypassPolicyLockoutSafetyCheck', async () => {
    const count = async () => ((await kms.call('ListKeys', {}, root)).Keys as unknown[]).length;
    const before = await count();
    await expect(kms.call('CreateKey', { Policy: '{bad' }, root)).rejects.toMatchObject({ awsName: 'MalformedPolicyDocumentException' });
    await expect(kms.call('CreateKey', { Policy: doc({ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCOUNT}:user/nobody` }, Action: 'kms:*', Resource: '*' }) }, root))
      .rejects.toMatchObject({ awsName: 'MalformedPolicyDocumentException', message: expect.stringMatching(/invalid principals/) });
    await expect(kms.call('CreateKey', { Policy: doc({ Effect: 'Allow', Principal: '*', Action: 'kms:*', Resource: '*', Condition: { StringFancy: { 'kms:ViaService': 'x' } } }) }, root))
      .rejects.toMatchObject({ awsName: 'MalformedPolicyDocumentException' });
    const aliceOnly = doc({ Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'kms:*', Resource: '*' });
    await expect(kms.call('CreateKey', { Policy: aliceOnly }, root)).rejects.toMatchObject({ awsName: 'MalformedPolicyDocumentException', message: LOCKOUT_MESSAGE });
    // A policy that keeps PutKeyPolicy for the caller passes; one denying it explicitly does not.
    const denyPut = doc(
      { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCOUNT}:root` }, Action: 'kms:*', Resource: '*' },
      { Effect: 'Deny', Principal: '*', Action: 'kms:PutKeyPolicy', Resource: '*' },
    );
    await expect(kms.call('CreateKey', { Policy: denyPut }, root)).rejects.toMatchObject({ message: LOCKOUT_MESSAGE });
    expect(await count()).toBe(before); // nothing was created by a refused CreateKey
    const k = await kms.call('CreateKey', { Policy: aliceOnly, BypassPolicyLockoutSafetyCheck: true }, root) as { KeyMetadata: { KeyId: string } };
    expect(await count()).toBe(before + 1);
    expect((await kms.call('GetKeyPolicy', { KeyId: k.KeyMetadata.KeyId }, alice)).Policy).toBe(aliceOnly);
    expect(await denied('GetKeyPolicy', { KeyId: k.KeyMetadata.KeyId }, root)).toMatch(/^AccessDeniedException/);
  });

  it('ReEncrypt authorizes kms:ReEncryptFrom on the source key and kms:ReEncryptTo on the destination key', async () => {
    const rootAll = { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCOUNT}:root` }, Action: 'kms:*', Resource: '*' };
    // Key A: alice may re-encrypt *from* it only; key B: *to* it only.
    const a = await kms.call('CreateKey', { Policy: doc(rootAll, { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'kms:ReEncryptFrom', Resource: '*' }) }, root) as { KeyMetadata: { KeyId: string; Arn: string } };
    const b = await kms.call('CreateKey', { Policy: doc(rootAll, { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'kms:ReEncryptTo', Resource: '*' }) }, root) as { KeyMetadata: { KeyId: string; Arn: string } };
    const ec = { purpose: 're-encrypt' };
    const underA = (await kms.call('Encrypt', { KeyId: a.KeyMetadata.KeyId, Plaintext: Buffer.from('secret'), EncryptionContext: ec }, root)).CiphertextBlob as Uint8Array;
    const underB = (await kms.call('Encrypt', { KeyId: b.KeyMetadata.KeyId, Plaintext: Buffer.from('secret'), EncryptionContext: ec }, root)).CiphertextBlob as Uint8Array;

    const ok = await kms.call('ReEncrypt', { CiphertextBlob: underA, SourceEncryptionContext: ec, DestinationKeyId: b.KeyMetadata.KeyId, DestinationEncryptionContext: ec }, alice);
    expect(ok).toMatchObject({ SourceKeyId: a.KeyMetadata.Arn, KeyId: b.KeyMetadata.Arn });
    const back = await kms.call('Decrypt', { CiphertextBlob: ok.CiphertextBlob, EncryptionContext: ec }, root);
    expect(Buffer.from(back.Plaintext as Uint8Array).toString()).toBe('secret');

    // A -> A: ReEncryptFrom allowed, ReEncryptTo not (the root statement delegates to IAM, and alice has no identity policy for it).
    expect(await denied('ReEncrypt', { CiphertextBlob: underA, SourceEncryptionContext: ec, DestinationKeyId: a.KeyMetadata.KeyId, DestinationEncryptionContext: ec }, alice))
      .toBe(`AccessDeniedException: User: ${alice.arn} is not authorized to perform: kms:ReEncryptTo on resource: ${a.KeyMetadata.Arn} because no identity-based policy allows the kms:ReEncryptTo action`);
    // B -> B: ReEncryptFrom is refused first.
    expect(await denied('ReEncrypt', { CiphertextBlob: underB, SourceEncryptionContext: ec, DestinationKeyId: b.KeyMetadata.KeyId, DestinationEncryptionContext: ec }, alice))
      .toBe(`AccessDeniedException: User: ${alice.arn} is not authorized to perform: kms:ReEncryptFrom on resource: ${b.KeyMetadata.Arn} because no identity-based policy allows the kms:ReEncryptFrom action`);
    // B -> A: neither.
    expect(await denied('ReEncrypt', { CiphertextBlob: underB, SourceEncryptionContext: ec, DestinationKeyId: a.KeyMetadata.KeyId }, alice)).toMatch(/kms:ReEncryptFrom/);

    const lines = readFileSync(join(t.dir, 'kms', 'audit', 'events.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const re = lines.filter((e) => e.eventName === 'ReEncrypt');
    expect(re[0].errorCode).toBeUndefined();
    expect(re[0].resources.map((r: { ARN: string }) => r.ARN)).toEqual([a.KeyMetadata.Arn, b.KeyMetadata.Arn]);
    expect(re.slice(1).map((e) => e.errorCode)).toEqual(['AccessDeniedException', 'AccessDeniedException', 'AccessDeniedException']);
  });

  it('aws:TagKeys and aws:RequestTag/<k> reach the policies of CreateKey, TagResource and UntagResource', async () => {
    const ids = authz.identities;
    await ids.createUser('tagger');
    await ids.mapUid(1001, 'user/tagger');
    const tagger = ids.callerForUid(1001);
    await ids.attachPolicy('user/tagger', 'tag', doc(
      { Effect: 'Allow', Action: ['kms:TagResource', 'kms:UntagResource'], Resource: '*' },
      { Effect: 'Allow', Action: 'kms:CreateKey', Resource: '*', Condition: { StringEquals: { 'aws:RequestTag/team': 'blue' } } },
    ));
    const policy = doc(
      { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCOUNT}:root` }, Action: 'kms:*', Resource: '*' },
      { Sid: 'NoProjectRetag', Effect: 'Deny', Principal: { AWS: '*' }, Action: ['kms:TagResource', 'kms:UntagResource'], Resource: '*', Condition: { 'ForAnyValue:StringEquals': { 'aws:TagKeys': ['Project'] } } },
    );
    const { KeyMetadata } = await kms.call('CreateKey', { Policy: policy, Tags: [{ TagKey: 'Project', TagValue: 'a' }] }, root) as { KeyMetadata: { KeyId: string } };
    const KeyId = KeyMetadata.KeyId;
    expect(await denied('TagResource', { KeyId, Tags: [{ TagKey: 'Project', TagValue: 'b' }] }, tagger)).toMatch(/with an explicit deny in a resource-based policy$/);
    expect(await denied('TagResource', { KeyId, Tags: [{ TagKey: 'Env', TagValue: 'x' }, { TagKey: 'Project', TagValue: 'b' }] }, tagger)).toMatch(/explicit deny/);
    expect(await denied('UntagResource', { KeyId, TagKeys: ['Project'] }, tagger)).toMatch(/explicit deny/);
    expect(await denied('TagResource', { KeyId, Tags: [{ TagKey: 'Env', TagValue: 'x' }] }, tagger)).toBe('allowed');
    expect(await denied('UntagResource', { KeyId, TagKeys: ['Env'] }, tagger)).toBe('allowed');
    expect(await denied('CreateKey', { Tags: [{ TagKey: 'team', TagValue: 'red' }] }, tagger)).toMatch(/^AccessDeniedException/);
    expect(await denied('CreateKey', {}, tagger)).toMatch(/^AccessDeniedException/);
    expect(await denied('CreateKey', { Tags: [{ TagKey: 'team', TagValue: 'blue' }] }, tagger)).toBe('allowed');
  });

  it('aws:PrincipalArn of a session of a role with a path is the role ARN with its path', async () => {
    const ids = authz.identities;
    await ids.createRole('Ops', { path: '/untrusted/' });
    await ids.mapUid(1002, 'role/Ops', { session: 'ops-1' });
    const ops = ids.callerForUid(1002);
    const policy = doc(
      { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCOUNT}:root` }, Action: 'kms:*', Resource: '*' },
      { Effect: 'Allow', Principal: { AWS: '*' }, Action: 'kms:Encrypt', Resource: '*' },
      { Effect: 'Deny', Principal: { AWS: '*' }, Action: 'kms:*', Resource: '*', Condition: { ArnLike: { 'aws:PrincipalArn': `arn:aws:iam::${ACCOUNT}:role/untrusted/*` } } },
    );
    const { KeyMetadata } = await kms.call('CreateKey', { Policy: policy }, root) as { KeyMetadata: { KeyId: string } };
    expect(await denied('Encrypt', { KeyId: KeyMetadata.KeyId, Plaintext: Buffer.from('x') }, ops)).toMatch(/explicit deny in a resource-based policy$/);
    expect(await denied('Encrypt', { KeyId: KeyMetadata.KeyId, Plaintext: Buffer.from('x') }, host)).toBe('allowed');
  });

  it('grant ids: malformed is InvalidGrantIdException, unknown is NotFoundException', async () => {
    const { KeyMetadata } = await kms.call('CreateKey', {}, root) as { KeyMetadata: { KeyId: string } };
    await expect(kms.call('RevokeGrant', { KeyId: KeyMetadata.KeyId, GrantId: 'not-a-grant-id' }, root)).rejects.toMatchObject({ awsName: 'InvalidGrantIdException' });
    await expect(kms.call('RetireGrant', { KeyId: KeyMetadata.KeyId, GrantId: 'XYZ' }, root)).rejects.toMatchObject({ awsName: 'InvalidGrantIdException' });
    await expect(kms.call('ListGrants', { KeyId: KeyMetadata.KeyId, GrantId: 'g'.repeat(64) }, root)).rejects.toMatchObject({ awsName: 'InvalidGrantIdException' });
    await expect(kms.call('RevokeGrant', { KeyId: KeyMetadata.KeyId, GrantId: 'x'.repeat(200) }, root)).rejects.toMatchObject({ awsName: 'ValidationException' });
    await expect(kms.call('RevokeGrant', { KeyId: KeyMetadata.KeyId, GrantId: '0'.repeat(64) }, root)).rejects.toMatchObject({ awsName: 'NotFoundException' });
  });

  it('every denial is in the audit log with errorCode AccessDeniedException', async () => {
    expect(denials.length).toBeGreaterThanOrEqual(10);
    await kms.close();
    const lines = readFileSync(join(t.dir, 'kms', 'audit', 'events.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const deniedEvents = lines.filter((e) => e.errorCode === 'AccessDeniedException');
    expect(deniedEvents).toHaveLength(denials.length);
    for (const [i, d] of denials.entries()) {
      expect(deniedEvents[i].eventName).toBe(d.eventName);
      expect(JSON.stringify(deniedEvents[i].userIdentity)).toContain(d.arn.includes(':uid/') ? '4242' : d.arn.split(':').pop()!.split('/')[0]!);
      expect(deniedEvents[i].errorMessage).toMatch(/is not authorized to perform: kms:/);
    }
  });
});
