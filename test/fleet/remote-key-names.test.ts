/**
 * With --kms-endpoint the local identity policy judges a local caller's use
 * of a key (docs/architecture.md §5.5), and it judges the key's ARN however
 * the request names it (src/daemon/remote-key-names.ts): an alias name, an
 * alias ARN or a bare key id is resolved by DescribeKey as the host, and
 * kms:RequestAlias is set when an alias was used; a restore tells the
 * snapshot's key from another by ARN, as the restore itself does. The check's
 * request context is a KMS call's (aws:RequestedRegion, kms:EncryptionAlgorithm,
 * aws:ViaAWSService, kms:ReEncryptOnSameKey), so conditions on them judge alike. Host A
 * serves the KMS (--kms-only on loopback); host B uses it for uid 1000
 * (user/alice).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { settled } from '../snapshot/helpers.js';
import { startKmsDaemon } from '../kms-net/helpers.js';
import { cleanupHostAndKms, createRemoteHostUser, hostBEnv, hostKeyPolicy, savedAwsEnv } from './remote-host.js';

const ALICE = 1000;
const VIA_EC2 = { StringEquals: { 'kms:ViaService': 'ec2.us-east-1.amazonaws.com' } };

describe('remote KMS: the local key check judges the key ARN, whatever the request names it by', () => {
  const a = new Env('rkn-kms');
  const b = new Env('rkn-host');
  const saved = savedAwsEnv();
  let arn = '';
  let arn2 = '';
  let names: Record<string, string> = {};

  const alicePolicy = async (...statements: unknown[]): Promise<void> => {
    await b.api('ebsd.IamPutPolicy', { Principal: 'user/alice', PolicyName: 'p', PolicyDocument: JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'ec2:*', Resource: '*' }, ...statements] }) });
  };
  /** Root's volume under `key` and a completed snapshot of it (set-up: no CLI process). */
  const snapshotUnder = async (key: string): Promise<string> => {
    const vol = (await b.api('ebsd.CreateVolume', { Size: '16MiB', KmsKeyId: key })).VolumeId as string;
    const s = await settled(b, (await b.api('ebsd.CreateSnapshot', { VolumeId: vol })).SnapshotId);
    expect(s.State).toBe('completed');
    return s.SnapshotId as string;
  };
  const volumeCount = async (): Promise<number> => (await b.api('ebsd.DescribeVolumes')).Volumes.length;
  const create = (key: string) => b.cli(['volume', 'create', '--size', '16MiB', '--kms-key', key, '--output', 'json'], { uid: ALICE });

  beforeAll(async () => {
    ensureBuilt();
    const { url } = await startKmsDaemon(a);
    const host = await createRemoteHostUser(a);
    const meta = (await a.api('TrentService.CreateKey', { Description: 'K' })).KeyMetadata;
    arn = meta.Arn;
    // K2: usable by the host too; the alias-move test denies it to alice.
    arn2 = (await a.api('TrentService.CreateKey', { Description: 'K2' })).KeyMetadata.Arn;
    for (const id of [arn, arn2]) await a.api('TrentService.PutKeyPolicy', { KeyId: id, PolicyName: 'default', Policy: hostKeyPolicy(host) });
    await a.api('TrentService.CreateAlias', { AliasName: 'alias/x', TargetKeyId: arn });
    names = { 'alias name': 'alias/x', 'alias ARN': arn.replace(/key\/.*$/, 'alias/x'), 'key id': meta.KeyId };
    hostBEnv(host, url);
    await b.start(['--kms-endpoint', url]);
    await b.api('ebsd.IamCreateUser', { UserName: 'alice' });
    await b.api('ebsd.IamMapUid', { Uid: ALICE, Principal: 'user/alice' });
  }, 180_000);

  afterAll(async () => {
    await cleanupHostAndKms(b, a, saved);
  }, 60_000);

  it('a Deny of kms:* on the key\'s ARN holds for the alias name, the alias ARN and the bare key id', async () => {
    await alicePolicy({ Effect: 'Allow', Action: 'kms:*', Resource: '*' }, { Effect: 'Deny', Action: 'kms:*', Resource: arn });
    const before = await volumeCount();
    for (const [what, name] of Object.entries({ ARN: arn, ...names })) {
      const r = await create(name);
      expect(r.code, `${what}: ${r.stderr}`).toBe(4);
      expect(r.stderr).toContain(`kms:GenerateDataKeyWithoutPlaintext on resource: ${arn} with an explicit deny`);
    }
    expect(await volumeCount()).toBe(before);
  });

  it('an Allow scoped to the key\'s ARN lets the alias be used; kms:RequestAlias is the alias the request named', async () => {
    await alicePolicy({ Effect: 'Allow', Action: 'kms:GenerateDataKeyWithoutPlaintext', Resource: arn, Condition: VIA_EC2 });
    for (const [what, name] of Object.entries(names)) {
      const r = await create(name);
      expect(r.code, `${what}: ${r.stderr}`).toBe(0);
      expect(JSON.parse(r.stdout).KmsKeyId).toBe(arn);
    }
    await alicePolicy({ Effect: 'Allow', Action: 'kms:GenerateDataKeyWithoutPlaintext', Resource: arn, Condition: { ...VIA_EC2, StringEquals: { ...VIA_EC2.StringEquals, 'kms:RequestAlias': 'alias/x' } } });
    expect((await create('alias/x')).code).toBe(0);
    expect((await create(names['alias ARN']!)).code).toBe(0);
    const byArn = await create(arn);
    expect(byArn.code).toBe(4); // no alias in the request: kms:RequestAlias is absent
    expect(byArn.stderr).toContain(`on resource: ${arn}`);
  });

  it('a restore under the snapshot\'s own key named by its alias is the same key: ReEncrypt on the ARN decides, not Decrypt', async () => {
    const snap = await snapshotUnder(arn);
    await alicePolicy({ Effect: 'Allow', Action: ['kms:ReEncryptFrom', 'kms:ReEncryptTo'], Resource: arn, Condition: VIA_EC2 });
    const r = await b.cli(['volume', 'create', '--snapshot-id', snap, '--kms-key', 'alias/x', '--wait', '--output', 'json'], { uid: ALICE });
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ State: 'available', KmsKeyId: arn });
  });

  it('an alias moved after the check cannot carry a create, a restore or a copy to the key the check did not judge', async () => {
    // An alias of its own, first resolved below: the host remembers a name for 30 s from its first
    // resolution, and alias/x was resolved by the cases before, so its entry could expire midway here.
    await a.ok(['kms', 'create-alias', '--alias-name', 'alias/moved', '--target-key-id', arn]);
    // A snapshot under K1 first.
    const snap = await snapshotUnder(arn);
    await alicePolicy({ Effect: 'Allow', Action: 'kms:*', Resource: '*' }, { Effect: 'Deny', Action: 'kms:*', Resource: arn2 });
    try {
      // Judged: alias/moved is K1, allowed (the host remembers the answer, remote-key-names.ts).
      const first = await create('alias/moved');
      expect(first.code, first.stderr).toBe(0);
      expect(JSON.parse(first.stdout).KmsKeyId).toBe(arn);
      await a.ok(['kms', 'update-alias', '--alias-name', 'alias/moved', '--target-key-id', arn2]);
      // Judged on K1 again (the remembered answer): the create must use K1, not whatever the KMS resolves alias/moved to now.
      const moved = await create('alias/moved');
      expect(moved.code, moved.stderr).toBe(0);
      expect(JSON.parse(moved.stdout).KmsKeyId).toBe(arn);
      const restored = await b.cli(['volume', 'create', '--snapshot-id', snap, '--kms-key', 'alias/moved', '--wait', '--output', 'json'], { uid: ALICE });
      expect(restored.code, restored.stderr).toBe(0);
      expect(JSON.parse(restored.stdout)).toMatchObject({ State: 'available', KmsKeyId: arn });
      const copied = await b.cli(['snapshot', 'copy', snap, '--kms-key-id', 'alias/moved', '--wait', '--output', 'json'], { uid: ALICE });
      expect(copied.code, copied.stderr).toBe(0);
      expect(JSON.parse(copied.stdout)).toMatchObject({ State: 'completed', KmsKeyId: arn });
      // Nothing on this host is under the denied key.
      expect((await b.api('ebsd.DescribeVolumes')).Volumes.map((v: { KmsKeyId?: string }) => v.KmsKeyId)).not.toContain(arn2);
    } finally {
      await a.ok(['kms', 'delete-alias', '--alias-name', 'alias/moved']);
    }
  });

  it('the check judges the context a KMS call gets: region, algorithm, via EC2, the same key of a restore', async () => {
    const lockedTo = (region: string): Record<string, unknown> =>
      ({ Effect: 'Deny', Action: 'kms:*', Resource: '*', Condition: { StringNotEquals: { 'aws:RequestedRegion': region } } });
    const viaEc2Symmetric = { StringEquals: { 'kms:EncryptionAlgorithm': 'SYMMETRIC_DEFAULT' }, Bool: { 'aws:ViaAWSService': 'true' } };
    const statements = [
      { Effect: 'Allow', Action: 'kms:GenerateDataKeyWithoutPlaintext', Resource: arn, Condition: viaEc2Symmetric },
      { Effect: 'Allow', Action: ['kms:ReEncryptFrom', 'kms:ReEncryptTo'], Resource: arn, Condition: { ...viaEc2Symmetric, Bool: { 'aws:ViaAWSService': 'true', 'kms:ReEncryptOnSameKey': 'true' } } },
    ];
    const snap = await snapshotUnder(arn);
    await alicePolicy(...statements, lockedTo('us-east-1'));
    const made = await create(arn);
    expect(made.code, made.stderr).toBe(0);
    const restored = await b.cli(['volume', 'create', '--snapshot-id', snap, '--wait', '--output', 'json'], { uid: ALICE });
    expect(restored.code, restored.stderr).toBe(0);
    expect(JSON.parse(restored.stdout)).toMatchObject({ State: 'available', KmsKeyId: arn });
    // Locked to another region, the same statements refuse both, before anything is created.
    await alicePolicy(...statements, lockedTo('eu-west-1'));
    const before = await volumeCount();
    const refused = await create(arn);
    expect(refused.code).toBe(4);
    expect(refused.stderr).toContain(`kms:GenerateDataKeyWithoutPlaintext on resource: ${arn} with an explicit deny`);
    const refusedRestore = await b.cli(['volume', 'create', '--snapshot-id', snap, '--output', 'json'], { uid: ALICE });
    expect(refusedRestore.code).toBe(4);
    expect(refusedRestore.stderr).toContain(`kms:ReEncryptFrom on resource: ${arn} with an explicit deny`);
    expect(await volumeCount()).toBe(before);
  });

  it('a name the KMS does not know is refused as the KMS refuses it, with nothing created', async () => {
    await alicePolicy({ Effect: 'Allow', Action: 'kms:*', Resource: '*' });
    const before = await volumeCount();
    const r = await create('alias/nope');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/NotFoundException/);
    expect(await volumeCount()).toBe(before);

  });
});
