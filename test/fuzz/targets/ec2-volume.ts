import { isEc2Operation, parseEc2Request } from '../../../src/daemon/ec2-requests.js';
import fc from 'fast-check';
import { join } from 'node:path';
import { nodeXtsEngine } from '../../../src/crypto/xts-engine.js';
import { Ec2Authorizer } from '../../../src/daemon/ec2-authz.js';
import { KmsCoreKeyService } from '../../../src/volume/key-service.js';
import { VolumeManager } from '../../../src/volume/volume-manager.js';
import { EbsdError } from '../../../src/util/errors.js';
import type { Caller } from '../../../src/kms/types.js';
import { hostileKey, hostileValue, mutatedJson } from '../harness/json-mutate.js';
import type { FuzzTarget, Verdict } from '../harness/target.js';
import { ACCOUNT, closeKmsFixture, fill, openKmsFixture, REGION, type KmsFixture } from './kms-common.js';

/**
 * EC2 volume requests as the daemon's control handler takes them: EC2
 * authorization (src/daemon/ec2-authz.ts Ec2Authorizer.check, as the account
 * root or as a user whose identity policy has tag conditions), then the
 * volume manager (src/daemon/daemon.ts volumeOp: CreateVolume,
 * DescribeVolumes, DescribeVolumeStatus, ModifyVolume, DeleteVolume; attach
 * and detach need a FUSE mount and are left to the e2e tests), on a real
 * VolumeManager over the real KMS core. Oracles: typed refusals with an EC2
 * error name; after every request, accepted or not, DescribeVolumes and the
 * status rendering still work for everyone (a request must not poison the
 * catalog); an accepted CreateVolume respects EC2's tag limits (≤ 50 tags,
 * key 1-128 characters, value ≤ 256, both strings; Unicode characters, as EC2 counts).
 */
interface Input { op: string; text: string; asUser: boolean }
interface Ctx { f: KmsFixture; mgr: VolumeManager; ec2: Ec2Authorizer; user: Caller; vars: Record<string, string> }

/** The user's identity policy: what a tag-scoped operator is given (README, "Security model"). */
const USER_POLICY = JSON.stringify({
  Version: '2012-10-17',
  Statement: [
    { Effect: 'Allow', Action: ['ec2:DescribeVolumes', 'ec2:DescribeVolumeStatus'], Resource: '*' },
    { Effect: 'Allow', Action: 'ec2:CreateVolume', Resource: '*', Condition: { StringEquals: { 'aws:RequestTag/team': 'a' }, 'ForAllValues:StringEquals': { 'aws:TagKeys': ['team', 'Name'] } } },
    { Effect: 'Allow', Action: ['ec2:ModifyVolume', 'ec2:DeleteVolume'], Resource: '*', Condition: { StringEquals: { 'ec2:ResourceTag/team': 'a' }, NumericLessThanEquals: { 'ec2:VolumeSize': '8' } } },
    { Effect: 'Allow', Action: 'kms:*', Resource: '*' },
  ],
});

const TEMPLATES: Record<string, unknown> = {
  CreateVolume: { Size: 1048576, KmsKeyId: 'alias/fuzz', Name: 'data', TagSpecifications: [{ ResourceType: 'volume', Tags: [{ Key: 'team', Value: 'a' }] }] },
  DescribeVolumes: { VolumeIds: ['$VOL'], Filters: [{ Name: 'tag:team', Values: ['a'] }] },
  DescribeVolumeStatus: { VolumeIds: ['$VOL'] },
  ModifyVolume: { VolumeId: '$VOL', Size: '2MiB' },
  DeleteVolume: { VolumeId: '$VOL2' },
};
const PATHS = [['Size'], ['Name'], ['TagSpecifications'], ['TagSpecifications', '0', 'Tags'], ['TagSpecifications', '0', 'Tags', '0'], ['TagSpecifications', '0', 'Tags', '0', 'Key'],
  ['TagSpecifications', '0', 'Tags', '0', 'Value'], ['Filters'], ['Filters', '0'], ['Filters', '0', 'Name'], ['Filters', '0', 'Values'], ['VolumeIds'], ['VolumeId'], ['__proto__'], ['KmsKeyId']];

/**
 * The daemon's dispatch of volume operations (src/daemon/daemon.ts handle() and
 * volumeOp), minus attach/detach: every member checked by parseEc2Request, then
 * EC2 authorization on the parsed request, then the volume manager.
 */
async function volumeOp(mgr: VolumeManager, ec2: Ec2Authorizer, op: string, b: Record<string, unknown>, caller: Caller): Promise<unknown> {
  if (!isEc2Operation(op)) throw new Error(`no such op ${op}`);
  const req = parseEc2Request(op, b);
  const refusal = ec2.check(op, req.input as unknown as Record<string, unknown>, caller);
  if (refusal) throw refusal;
  switch (req.op) {
    case 'CreateVolume': return mgr.createVolume(req.input, caller);
    case 'DescribeVolumes': {
      const { MaxResults: _m, NextToken: _n, ...query } = req.input;
      return { Volumes: mgr.describeVolumes(query).Volumes.filter((v) => ec2.mayDescribe('DescribeVolumes', caller, v)) };
    }
    case 'DescribeVolumeStatus': {
      const ids = req.input.VolumeIds
        ?? mgr.describeVolumes().Volumes.filter((v) => ec2.mayDescribe('DescribeVolumeStatus', caller, v)).map((v) => v.VolumeId);
      return { VolumeStatuses: ids.map((id) => mgr.describeVolumeStatus(id)) };
    }
    case 'DeleteVolume': await mgr.deleteVolume(req.input, caller); return {};
    case 'ModifyVolume': return mgr.modifyVolume(req.input, caller);
  }
  throw new Error(`no such op ${op}`);
}

/** What `ebsd status` and `volume ls` do with every volume. */
function render(mgr: VolumeManager): void {
  for (const v of mgr.describeVolumes().Volumes) {
    v.Tags.find((t) => t.Key === 'Name');
    JSON.stringify(v);
    for (const t of v.Tags) `${t.Key}=${t.Value}`.padEnd(10);
  }
}

const target: FuzzTarget<Input, Ctx> = {
  name: 'ec2-volume',
  about: 'JSON.parse -> Ec2Authorizer.check -> daemon volume dispatch -> VolumeManager (Create/Describe/Modify/Delete) on the real KMS core',
  arbitrary: () => fc.constantFrom(...Object.keys(TEMPLATES)).chain((op) =>
    mutatedJson(fc.constant(TEMPLATES[op]), { paths: PATHS, pathValue: fc.oneof(hostileValue, fc.constantFrom('1MiB', '64TiB', '65TiB', '4097', 1e20, '18446744073709551616').map((v) => ({ t: 'raw' as const, text: JSON.stringify(v) })), hostileKey.map((k) => ({ t: 'raw' as const, text: JSON.stringify(k) }))), text: false }).chain((text) => fc.boolean().map((asUser) => ({ op, text, asUser })))),
  async open() {
    const f = await openKmsFixture();
    try {
      const mgr = await VolumeManager.open({ stateDir: f.dir, keyService: new KmsCoreKeyService(f.kms), hostPrincipal: f.root, xtsEngine: nodeXtsEngine, region: 'us-east-1' });
      const tagged = { TagSpecifications: [{ ResourceType: 'volume', Tags: [{ Key: 'team', Value: 'a' }] }] };
      const a = await mgr.createVolume({ Size: 1048576, KmsKeyId: 'alias/fuzz', ...tagged }, f.root);
      const b = await mgr.createVolume({ Size: 1048576, KmsKeyId: 'alias/fuzz', ...tagged }, f.root);
      const user = await f.authz.identities.createUser('fuzz');
      await f.authz.identities.attachPolicy('user/fuzz', 'tagged-volumes', USER_POLICY);
      const ec2 = new Ec2Authorizer({
        evaluator: f.authz.authorizer.evaluator, accountId: ACCOUNT, region: REGION, instanceId: mgr.instanceId,
        volume: (id) => mgr.describeVolumes().Volumes.find((v) => v.VolumeId === id),
      });
      return { f, mgr, ec2, user, vars: { ...f.vars, $VOL: a.VolumeId, $VOL2: b.VolumeId } };
    } catch (e) {
      await closeKmsFixture(f);
      throw e;
    }
  },
  async close(c) {
    try {
      await c.mgr.close();
    } finally {
      await closeKmsFixture(c.f);
    }
  },
  resetEvery: 250,
  async run(x, c): Promise<Verdict> {
    // A poisoned catalog is reported once, by the input that poisoned it; then the state starts over.
    try {
      render(c.mgr);
    } catch {
      const fresh = await target.open();
      await target.close({ ...c });
      Object.assign(c, fresh);
    }
    let body: unknown;
    try {
      body = JSON.parse(fill(x.text, c.vars));
    } catch {
      return 'refused';
    }
    if (!body || typeof body !== 'object' || Array.isArray(body)) return 'refused';
    let failure: unknown;
    let out: unknown;
    try {
      out = await volumeOp(c.mgr, c.ec2, x.op, body as Record<string, unknown>, x.asUser ? c.user : c.f.root);
    } catch (e) {
      failure = e;
    }
    try {
      render(c.mgr);
    } catch (e) {
      return { invalid: 'no request poisons DescribeVolumes / status', why: `after ${x.op}${failure ? ' (refused)' : ''}: ${(e as Error).name}: ${(e as Error).message}` };
    }
    if (failure !== undefined) throw failure;
    if (x.op === 'CreateVolume') {
      const tags = (out as { Tags: unknown[] }).Tags;
      const bad = tags.find((t) => !t || typeof t !== 'object' || typeof (t as any).Key !== 'string' || typeof (t as any).Value !== 'string' || (t as any).Key === '' || [...(t as any).Key].length > 128 || [...(t as any).Value].length > 256);
      if (tags.length > 50 || bad !== undefined) return { invalid: 'CreateVolume respects EC2 tag limits', why: `${tags.length} tags; ${JSON.stringify(bad)?.slice(0, 100)}` };
      await c.mgr.deleteVolume({ VolumeId: (out as { VolumeId: string }).VolumeId }, c.f.root); // keep the state small
    }
    return 'accepted';
  },
  isTyped: (e) => e instanceof EbsdError && typeof e.code === 'string' && typeof e.awsName === 'string',
};
export default target;
