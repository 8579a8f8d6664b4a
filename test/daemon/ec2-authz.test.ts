import { describe, expect, it } from 'vitest';
import { Ec2Authorizer, UnauthorizedOperation, type VolumeView } from '../../src/daemon/ec2-authz.js';
import { PolicyEvaluator } from '../../src/kms/authz/evaluate.js';
import { parsePolicy, type CompiledPolicy } from '../../src/kms/authz/policy-document.js';
import { RequestContext } from '../../src/kms/authz/request-context.js';
import type { Caller } from '../../src/kms/types.js';
import { ACCT, REGION, doc, root, user } from '../kms-authz/helpers.js';

/**
 * The EC2 request the daemon builds (src/daemon/ec2-authz.ts), judged by the
 * real policy evaluator: which action, resource and condition keys each
 * control-API body yields. The daemon-level behaviour is test/e2e/ec2-authz.test.ts.
 */

const VOL = 'vol-0123456789abcdef0';
const MISSING = 'vol-0fedcba9876543210';
const GiB = 1024 ** 3;

function setup(...statements: unknown[]): { authz: Ec2Authorizer; alice: Caller } {
  const alice = user('alice');
  const policies: CompiledPolicy[] = statements.length ? [parsePolicy(doc(...statements), { kind: 'identity' })] : [];
  const evaluator = new PolicyEvaluator({ identityPolicies: (c) => (c.arn === alice.arn ? policies : []) });
  const volumes = new Map<string, VolumeView>([
    [VOL, { VolumeId: VOL, SizeBytes: 8 * GiB + 4096, Encrypted: true, KmsKeyId: `arn:aws:kms:${REGION}:${ACCT}:key/k1`, Tags: [{ Key: 'team', Value: 'a' }, { Key: '__proto__', Value: 'p' }] }],
  ]);
  const authz = new Ec2Authorizer({ evaluator, accountId: ACCT, region: REGION, instanceId: 'i-0ebsd00000000000', volume: (id) => volumes.get(id) });
  return { authz, alice };
}

const VOLUMES = `arn:aws:ec2:${REGION}:${ACCT}:volume/*`;

describe('Ec2Authorizer', () => {
  it('the account root may do everything, a user without policies nothing; the refusal is EC2-worded and 403', () => {
    const { authz, alice } = setup();
    for (const [op, body] of [['DeleteVolume', { VolumeId: VOL }], ['CreateVolume', { Size: '1GiB' }], ['AttachVolume', { VolumeId: VOL }]] as const) {
      expect(authz.check(op, body, root)).toBeUndefined();
      const r = authz.check(op, body, alice);
      expect(r).toBeInstanceOf(UnauthorizedOperation);
      expect(r!.awsName).toBe('UnauthorizedOperation');
      expect(r!.httpStatus).toBe(403);
    }
    expect(authz.check('DeleteVolume', { VolumeId: VOL }, alice)!.message).toBe(
      `You are not authorized to perform this operation. User: ${alice.arn} is not authorized to perform: ec2:DeleteVolume on resource: arn:aws:ec2:${REGION}:${ACCT}:volume/${VOL} because no identity-based policy allows the ec2:DeleteVolume action`,
    );
    expect(authz.mayDescribe('DescribeVolumes', root, { VolumeId: VOL, SizeBytes: GiB, Encrypted: true, Tags: [] })).toBe(true);
    expect(authz.mayDescribe('DescribeVolumes', alice, { VolumeId: VOL, SizeBytes: GiB, Encrypted: true, Tags: [] })).toBe(false);
  });

  it('condition keys of an existing volume: tags (case-insensitive key names, __proto__ kept as data), size in GiB rounded up, key, id', () => {
    const { authz, alice } = setup({
      Effect: 'Allow', Action: 'ec2:DeleteVolume', Resource: 'arn:aws:ec2:*:*:volume/*',
      Condition: {
        StringEquals: { 'EC2:ResourceTag/TEAM': 'a', 'aws:ResourceTag/__proto__': 'p', 'ec2:VolumeID': VOL, 'ec2:Encrypted': 'true', 'ec2:KmsKeyId': `arn:aws:kms:${REGION}:${ACCT}:key/k1` },
        NumericEquals: { 'ec2:VolumeSize': '9' },
      },
    });
    expect(authz.check('DeleteVolume', { VolumeId: VOL }, alice)).toBeUndefined();
    // A volume that does not exist is judged on its id alone: no tags, so the tag condition fails.
    expect(authz.check('DeleteVolume', { VolumeId: MISSING }, alice)).toBeInstanceOf(UnauthorizedOperation);
    // No well-formed id: nothing to authorize, the operation refuses it (InvalidVolumeID.Malformed) without effect.
    expect(authz.check('DeleteVolume', { VolumeId: 'vol-nope' }, alice)).toBeUndefined();
    expect(authz.check('DeleteVolume', {}, alice)).toBeUndefined();
  });

  it('attach and detach are also authorized on the instance', () => {
    const volOnly = setup({ Effect: 'Allow', Action: ['ec2:AttachVolume', 'ec2:DetachVolume'], Resource: 'arn:aws:ec2:*:*:volume/*' });
    const r = volOnly.authz.check('DetachVolume', { VolumeId: VOL, Force: true }, volOnly.alice);
    expect(r?.message).toContain(`on resource: arn:aws:ec2:${REGION}:${ACCT}:instance/i-0ebsd00000000000 because`);
    const both = setup({ Effect: 'Allow', Action: ['ec2:AttachVolume', 'ec2:DetachVolume'], Resource: ['arn:aws:ec2:*:*:volume/*', 'arn:aws:ec2:*:*:instance/*'], Condition: { StringEquals: { 'ec2:InstanceID': 'i-0ebsd00000000000' } } });
    expect(both.authz.check('AttachVolume', { VolumeId: VOL }, both.alice)).toBeUndefined();
  });

  it('CreateVolume: aws:RequestTag, aws:TagKeys (Name shortcut included), ec2:VolumeSize, ec2:Encrypted; tags need ec2:CreateTags with ec2:CreateAction', () => {
    const { authz, alice } = setup(
      {
        Effect: 'Allow', Action: 'ec2:CreateVolume', Resource: VOLUMES,
        Condition: { StringEquals: { 'aws:RequestTag/team': 'a', 'ec2:Encrypted': 'true' }, 'ForAllValues:StringEquals': { 'aws:TagKeys': ['team', 'Name'] }, NumericLessThanEquals: { 'ec2:VolumeSize': '2' } },
      },
      { Effect: 'Allow', Action: 'ec2:CreateTags', Resource: VOLUMES, Condition: { StringEquals: { 'ec2:CreateAction': 'CreateVolume' } } },
    );
    const tags = (...kv: [string, string][]) => [{ ResourceType: 'volume', Tags: kv.map(([Key, Value]) => ({ Key, Value })) }];
    expect(authz.check('CreateVolume', { Size: '2GiB', TagSpecifications: tags(['team', 'a']), Name: 'n' }, alice)).toBeUndefined();
    expect(authz.check('CreateVolume', { Size: 2 * GiB + 1, TagSpecifications: tags(['team', 'a']) }, alice)).toBeInstanceOf(UnauthorizedOperation); // not a valid size: no key, condition fails
    expect(authz.check('CreateVolume', { Size: '3GiB', TagSpecifications: tags(['team', 'a']) }, alice)).toBeInstanceOf(UnauthorizedOperation);
    expect(authz.check('CreateVolume', { Size: '1GiB', TagSpecifications: tags(['team', 'a'], ['x', 'y']) }, alice)).toBeInstanceOf(UnauthorizedOperation);
    expect(authz.check('CreateVolume', { Size: '1GiB', TagSpecifications: tags(['team', 'b']) }, alice)).toBeInstanceOf(UnauthorizedOperation);
    expect(authz.check('CreateVolume', { Size: '1GiB', Cipher: 'none', TagSpecifications: tags(['team', 'a']) }, alice)).toBeInstanceOf(UnauthorizedOperation);
    // Tags for another resource type are not the volume's.
    expect(authz.check('CreateVolume', { Size: '1GiB', TagSpecifications: [{ ResourceType: 'snapshot', Tags: [{ Key: 'team', Value: 'a' }] }] }, alice)).toBeInstanceOf(UnauthorizedOperation);

    const noTags = setup({ Effect: 'Allow', Action: 'ec2:CreateVolume', Resource: VOLUMES });
    expect(noTags.authz.check('CreateVolume', { Size: '1GiB' }, noTags.alice)).toBeUndefined();
    expect(noTags.authz.check('CreateVolume', { Size: '1GiB', Name: 'n' }, noTags.alice)?.message).toContain('ec2:CreateTags');
  });

  it('ModifyVolume: ec2:VolumeSize is judged on the volume as it is and on the requested size; both must allow', () => {
    // The volume is 8 GiB + 4 KiB: 9 GiB rounded up.
    const cap = setup({ Effect: 'Allow', Action: 'ec2:ModifyVolume', Resource: VOLUMES, Condition: { NumericLessThanEquals: { 'ec2:VolumeSize': '9' } } });
    expect(cap.authz.check('ModifyVolume', { VolumeId: VOL, Size: '9GiB' }, cap.alice)).toBeUndefined();
    const grown = cap.authz.check('ModifyVolume', { VolumeId: VOL, Size: '200GiB' }, cap.alice);
    expect(grown).toBeInstanceOf(UnauthorizedOperation);
    expect(grown!.message).toContain(`ec2:ModifyVolume on resource: arn:aws:ec2:${REGION}:${ACCT}:volume/${VOL}`);
    expect(cap.authz.check('ModifyVolume', { VolumeId: VOL, Size: 10 * GiB }, cap.alice)).toBeInstanceOf(UnauthorizedOperation);
    // A Deny on sizes past a cap refuses the growth, whatever the Allow.
    const deny = setup(
      { Effect: 'Allow', Action: 'ec2:*', Resource: VOLUMES },
      { Effect: 'Deny', Action: 'ec2:ModifyVolume', Resource: VOLUMES, Condition: { NumericGreaterThan: { 'ec2:VolumeSize': '100' } } },
    );
    expect(deny.authz.check('ModifyVolume', { VolumeId: VOL, Size: '100GiB' }, deny.alice)).toBeUndefined();
    expect(deny.authz.check('ModifyVolume', { VolumeId: VOL, Size: '101GiB' }, deny.alice)).toBeInstanceOf(UnauthorizedOperation);
    // The current size is judged as AWS judges it: a policy on it alone still decides.
    const onlyBig = setup({ Effect: 'Allow', Action: 'ec2:ModifyVolume', Resource: VOLUMES, Condition: { NumericGreaterThanEquals: { 'ec2:VolumeSize': '9' } } });
    expect(onlyBig.authz.check('ModifyVolume', { VolumeId: VOL, Size: '20GiB' }, onlyBig.alice)).toBeUndefined();
    const small = setup({ Effect: 'Allow', Action: 'ec2:ModifyVolume', Resource: VOLUMES, Condition: { NumericGreaterThanEquals: { 'ec2:VolumeSize': '10' } } });
    expect(small.authz.check('ModifyVolume', { VolumeId: VOL, Size: '20GiB' }, small.alice)).toBeInstanceOf(UnauthorizedOperation);
    expect(cap.authz.check('ModifyVolume', { VolumeId: VOL, Size: '200GiB' }, root)).toBeUndefined();
  });

  it('extra context keys never override the built-in ones (who the caller is)', () => {
    const alice = user('alice');
    const ctx = new RequestContext({ action: 'ec2:DeleteVolume', caller: alice, context: new Map([['aws:PrincipalArn', 'arn:aws:iam::999999999999:root'], ['__proto__', 'x'], ['ec2:VolumeSize', '3']]) });
    expect(ctx.get('aws:principalarn')).toBe(alice.arn);
    expect(ctx.get('__proto__')).toBe('x');
    expect(ctx.get('ec2:volumesize')).toBe('3');
    expect(ctx.get('aws:resourcetag/team')).toBeUndefined();
  });
});
