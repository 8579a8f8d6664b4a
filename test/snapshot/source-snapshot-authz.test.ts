import { describe, expect, it } from 'vitest';
import { Ec2Authorizer, UnauthorizedOperation, type SnapshotView } from '../../src/daemon/ec2-authz.js';
import { PolicyEvaluator } from '../../src/kms/authz/evaluate.js';
import { parsePolicy, type CompiledPolicy } from '../../src/kms/authz/policy-document.js';
import { ACCT, REGION, doc, root, user } from '../kms-authz/helpers.js';

/**
 * Issue 17, finding 1, at the authorizer: CreateVolume with SnapshotId and
 * CopySnapshot are judged on the source snapshot's ARN with its condition
 * keys (real policy evaluator); CreateVolume's volume context carries
 * ec2:ParentSnapshot.
 */
const SNAP = 'snap-0123456789abcdef0';
const SNAP_ARN = `arn:aws:ec2:${REGION}::snapshot/${SNAP}`;
const view: SnapshotView = {
  SnapshotId: SNAP, VolumeId: 'vol-0123456789abcdef0', VolumeSize: 8, Encrypted: true, StartTime: '2026-11-30T09:00:00.000Z', OwnerId: ACCT,
  Tags: [{ Key: 'team', Value: 'a' }],
};

function setup(...statements: unknown[]): { authz: Ec2Authorizer; alice: ReturnType<typeof user> } {
  const alice = user('alice');
  const policies: CompiledPolicy[] = [parsePolicy(doc(...statements), { kind: 'identity' })];
  const evaluator = new PolicyEvaluator({ identityPolicies: (c) => (c.arn === alice.arn ? policies : []) });
  return { authz: new Ec2Authorizer({ evaluator, accountId: ACCT, region: REGION, instanceId: 'i-0ebsd00000000000', volume: () => undefined }), alice };
}

describe('Ec2Authorizer.checkSourceSnapshot', () => {
  for (const action of ['ec2:CreateVolume', 'ec2:CopySnapshot'] as const) {
    it(`${action} on the source snapshot: its tags, id, size, encryption and owner decide; a missing snapshot is judged on its id`, () => {
      const { authz, alice } = setup({
        Effect: 'Allow', Action: action, Resource: 'arn:aws:ec2:*::snapshot/*',
        Condition: { StringEquals: { 'ec2:ResourceTag/team': 'a', 'ec2:SnapshotID': SNAP, 'ec2:Encrypted': 'true', 'ec2:Owner': ACCT }, NumericEquals: { 'ec2:VolumeSize': '8' } },
      });
      expect(authz.checkSourceSnapshot(action, view, alice)).toBeUndefined();
      expect(authz.checkSourceSnapshot(action, { ...view, Tags: [{ Key: 'team', Value: 'b' }] }, alice)).toBeInstanceOf(UnauthorizedOperation);
      const missing = authz.checkSourceSnapshot(action, SNAP, alice);
      expect(missing).toBeInstanceOf(UnauthorizedOperation);
      expect(missing!.message).toContain(`${action} on resource: ${SNAP_ARN}`);
      expect(authz.checkSourceSnapshot(action, SNAP, root)).toBeUndefined();
    });
  }

  it('an explicit Deny on snapshot/* refuses even with Allow *', () => {
    const { authz, alice } = setup(
      { Effect: 'Allow', Action: 'ec2:*', Resource: '*' },
      { Effect: 'Deny', Action: 'ec2:*', Resource: 'arn:aws:ec2:*::snapshot/*' },
    );
    expect(authz.checkSourceSnapshot('ec2:CreateVolume', view, alice)).toBeInstanceOf(UnauthorizedOperation);
    // The volume side alone is allowed: the snapshot check is what refuses.
    expect(authz.check('CreateVolume', { Size: '1GiB', SnapshotId: SNAP }, alice)).toBeUndefined();
  });

  it('CreateVolume on volume/* carries ec2:ParentSnapshot (the snapshot ARN) when made from a snapshot', () => {
    const { authz, alice } = setup({
      Effect: 'Allow', Action: 'ec2:CreateVolume', Resource: `arn:aws:ec2:*:${ACCT}:volume/*`, Condition: { StringEquals: { 'ec2:ParentSnapshot': SNAP_ARN } },
    });
    expect(authz.check('CreateVolume', { SnapshotId: SNAP }, alice)).toBeUndefined();
    expect(authz.check('CreateVolume', { Size: '1GiB' }, alice)).toBeInstanceOf(UnauthorizedOperation);
  });
});
