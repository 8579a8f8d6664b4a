import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { VolumeManager, type VolumeManagerOptions } from '../../src/volume/volume-manager.js';
import type { ImpairedEvent } from '../../src/volume/key-cache.js';
import { tmpDir } from './helpers/image.js';
import { kmsHarness, VIA, type KmsHarness } from './helpers/kms.js';

/** What the audit records as invokedBy: CloudTrail's service name, without the region (docs/kms-format.md, "Audit log"). */
const INVOKED_BY = 'ec2.amazonaws.com';
import { openTestManager } from './helpers/manager.js';
import { opGrantName } from '../../src/volume/op-grants.js';
import { ManualClock } from './helpers/manual-clock.js';
import { KeyServiceError } from '../../src/volume/errors.js';
import { GRANT_CONSISTENCY_MS, type KeyService } from '../../src/volume/key-service.js';

/**
 * docs/architecture.md §6 end to end through the real KMS core (policy authorizer, grants,
 * audit): what the volume layer asks KMS, as whom, and what KMS recorded.
 */
const MiB = 1 << 20;
let t: ReturnType<typeof tmpDir>;
let kms: KmsHarness;
let mgr: VolumeManager;
let impaired: ImpairedEvent[];

function manager(extra: Partial<VolumeManagerOptions> = {}): Promise<VolumeManager> {
  return openTestManager(t.dir, kms, { onImpaired: (e) => impaired.push(e), ...extra });
}

beforeEach(async () => {
  t = tmpDir();
  kms = await kmsHarness(join(t.dir, 'kms'));
  impaired = [];
  mgr = await manager();
});
afterEach(async () => {
  await mgr.close();
  await kms.close();
  t.cleanup();
});

const catalogRecord = (id: string) =>
  (JSON.parse(readFileSync(join(t.dir, 'volumes', 'catalog.json'), 'utf8')).volumes as { volumeId: string; attachment?: { grantId: string }; pendingGrantRetirements?: { grantId: string; keyArn: string }[] }[]).find(
    (v) => v.volumeId === id,
  )!;
/**
 * The harness's KeyService with two network faults: `loseCreateAnswers` CreateGrants are made by
 * KMS and their answer lost (thrown as unreachable), and while `hideGrants` a ListRetirableGrants
 * answers without the grants it names (a list KMS has not caught up on yet: eventual consistency).
 */
function lossyKeyService(base: KeyService) {
  const f = { loseCreateAnswers: 0, hideGrants: undefined as RegExp | undefined };
  const ks: KeyService = {
    ...base,
    async createGrant(req, caller) {
      const r = await base.createGrant(req, caller);
      if (f.loseCreateAnswers > 0 && f.loseCreateAnswers--) throw new KeyServiceError('CreateGrant', 'RequestTimeout', false, 'answer lost (test fault injection)');
      return r;
    },
    async listRetirableGrants(req, caller) {
      const r = await base.listRetirableGrants!(req, caller);
      return f.hideGrants ? { ...r, Grants: r.Grants.filter((g) => !f.hideGrants!.test(g.Name ?? '')) } : r;
    },
  };
  return { ks, f };
}
/** The host may not list its grants (its identity policy without kms:ListRetirableGrants). */
async function denyHostListing(): Promise<void> {
  await kms.authz.identities.detachPolicy('role/EbsdHost', 'housekeeping');
  await kms.authz.identities.attachPolicy('role/EbsdHost', 'describe-only', JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: ['kms:DescribeKey'], Resource: '*' }] }));
}
const call = (op: string, req: Record<string, unknown>) => kms.core.call(op, req, kms.root) as Promise<Record<string, any>>;

/** Move the manual clock one TTL on: everything the key cache does in that time has happened when this returns. */
async function oneTtl(clock: ManualClock, ttlMs: number): Promise<void> {
  expect(impaired).toEqual([]);
  await clock.advance(ttlMs);
}

describe('CreateVolume through the real KMS core', () => {
  test('without KmsKeyId: alias/aws/ebs is created on first use as an AWS managed key with the EBS key policy', async () => {
    const before = (await call('ListAliases', {})).Aliases as { AliasName: string; TargetKeyId?: string }[];
    expect(before.find((a) => a.AliasName === 'alias/aws/ebs')?.TargetKeyId).toBeUndefined();

    const v = await mgr.createVolume({ Size: MiB }, kms.user);
    const { KeyMetadata: md } = await call('DescribeKey', { KeyId: 'alias/aws/ebs' });
    expect(v.KmsKeyId).toBe(md.Arn);
    expect(md).toMatchObject({ KeyManager: 'AWS', KeyState: 'Enabled', KeySpec: 'SYMMETRIC_DEFAULT' });
    const policy = JSON.parse((await call('GetKeyPolicy', { KeyId: md.KeyId, PolicyName: 'default' })).Policy);
    expect(JSON.stringify(policy)).toContain(`"kms:ViaService":"${VIA}"`);
    // A second volume reuses the same key.
    expect((await mgr.createVolume({ Size: MiB }, kms.user)).KmsKeyId).toBe(md.Arn);

    // The EBS key policy admits any principal of the account, but only through EC2.
    await kms.authz.identities.createUser('bob'); // no identity policy at all
    const bob = kms.authz.identities.callerFor(kms.authz.identities.userArn('bob'))!;
    expect((await mgr.createVolume({ Size: MiB }, bob)).KmsKeyId).toBe(md.Arn);
    await expect(kms.core.call('GenerateDataKeyWithoutPlaintext', { KeyId: 'alias/aws/ebs', NumberOfBytes: 64 }, bob)).rejects.toMatchObject({ awsName: 'AccessDeniedException' });
    // ... while a customer managed key needs an IAM allow bob does not have: the KMS denial is surfaced.
    const cmk = await kms.createKey();
    await expect(mgr.createVolume({ Size: MiB, KmsKeyId: cmk }, bob)).rejects.toMatchObject({ code: 'KMS_REFUSED', awsName: 'AccessDeniedException' });
  });

  test('GenerateDataKeyWithoutPlaintext runs as the caller via EC2, bound to {"aws:ebs:id": vol}', async () => {
    const v = await mgr.createVolume({ Size: MiB }, kms.user);
    const ev = (await kms.auditEvents()).filter((e) => e.eventName === 'GenerateDataKeyWithoutPlaintext');
    expect(ev).toHaveLength(1);
    expect(ev[0]!.userIdentity).toMatchObject({ arn: kms.user.arn, invokedBy: INVOKED_BY });
    expect(JSON.stringify(ev[0]!.requestParameters)).toContain(JSON.stringify({ 'aws:ebs:id': v.VolumeId }));
    expect(ev[0]!.errorCode).toBeUndefined();
    // The user cannot do the same without EC2 (identity policy conditioned on kms:ViaService).
    await expect(kms.core.call('GenerateDataKeyWithoutPlaintext', { KeyId: 'alias/aws/ebs', NumberOfBytes: 64 }, kms.user)).rejects.toMatchObject({ awsName: 'AccessDeniedException' });
  });

  test('the digest\'s Decrypt is the caller\'s own, via EC2, and the embedded KMS judges it: no op grant', async () => {
    const arn = await kms.createKey();
    await mgr.createVolume({ Size: MiB, KmsKeyId: arn }, kms.user);
    const ev = await kms.auditEvents();
    expect(ev.filter((e) => e.eventName === 'CreateGrant')).toEqual([]);
    expect(ev.filter((e) => e.eventName === 'Decrypt').map((e) => [e.userIdentity.arn, e.userIdentity.invokedBy, e.errorCode])).toEqual([[kms.user.arn, INVOKED_BY, undefined]]);
  });

  test('a caller allowed GenerateDataKeyWithoutPlaintext, DescribeKey and CreateGrant via EC2 but denied kms:Decrypt and kms:ReEncrypt* cannot create: the embedded KMS refuses its Decrypt', async () => {
    await kms.authz.identities.attachPolicy('user/alice', 'ebs-via-ec2', JSON.stringify({
      Version: '2012-10-17',
      Statement: [
        { Effect: 'Allow', Action: ['kms:GenerateDataKeyWithoutPlaintext', 'kms:DescribeKey', 'kms:CreateGrant'], Resource: '*', Condition: { StringEquals: { 'kms:ViaService': VIA } } },
        { Effect: 'Deny', Action: ['kms:Decrypt', 'kms:ReEncrypt*'], Resource: '*' },
      ],
    }));
    const arn = await kms.createKey();
    await expect(mgr.createVolume({ Size: MiB, KmsKeyId: arn }, kms.user)).rejects.toMatchObject({ code: 'KMS_REFUSED', awsName: 'AccessDeniedException' });
    const ev = await kms.auditEvents();
    expect(ev.filter((e) => e.eventName === 'CreateGrant')).toEqual([]);
    expect(ev.filter((e) => e.eventName === 'Decrypt').map((e) => [e.userIdentity.arn, e.errorCode])).toEqual([[kms.user.arn, 'AccessDeniedException']]);
    expect(mgr.describeVolumes().Volumes).toEqual([]);
    expect(await kms.grantIds(arn)).toEqual([]);
  });
});

describe('CreateVolume with op grants (a remote KMS: VolumeManagerOptions.opGrants)', () => {
  beforeEach(async () => {
    await mgr.close();
    mgr = await manager({ opGrants: true });
  });

  test('the digest\'s Decrypt is the host\'s through a short-lived [Decrypt] grant the caller made via EC2, retired at once', async () => {
    const arn = await kms.createKey();
    const v = await mgr.createVolume({ Size: MiB, KmsKeyId: arn }, kms.user);
    const ev = await kms.auditEvents();
    const cg = ev.filter((e) => e.eventName === 'CreateGrant');
    expect(cg).toHaveLength(1);
    expect(cg[0]!.userIdentity).toMatchObject({ arn: kms.user.arn, invokedBy: INVOKED_BY });
    expect(JSON.stringify(cg[0]!.requestParameters)).toContain(opGrantName(mgr.instanceId, `${v.VolumeId}-new-key`, 0));
    const dec = ev.filter((e) => e.eventName === 'Decrypt');
    expect(dec.map((e) => [e.userIdentity.arn, e.errorCode])).toEqual([[kms.host.arn, undefined]]);
    expect(ev.filter((e) => e.eventName === 'RetireGrant').map((e) => [e.userIdentity.arn, e.errorCode])).toEqual([[kms.host.arn, undefined]]);
    expect(await kms.grantIds(arn)).toEqual([]);
  });

  test('a caller refused kms:CreateGrant but allowed kms:Decrypt via EC2 (a policy from before op grants) still creates: the Decrypt is its own', async () => {
    await kms.authz.identities.attachPolicy('user/alice', 'ebs-via-ec2', JSON.stringify({
      Version: '2012-10-17',
      Statement: [{ Effect: 'Allow', Action: ['kms:GenerateDataKeyWithoutPlaintext', 'kms:Decrypt', 'kms:DescribeKey'], Resource: '*', Condition: { StringEquals: { 'kms:ViaService': VIA } } }],
    }));
    const arn = await kms.createKey();
    const v = await mgr.createVolume({ Size: MiB, KmsKeyId: arn }, kms.user);
    expect(v.State).toBe('available');
    const ev = await kms.auditEvents();
    expect(ev.filter((e) => e.eventName === 'CreateGrant').map((e) => e.errorCode)).toEqual(['AccessDeniedException']);
    expect(ev.filter((e) => e.eventName === 'Decrypt').map((e) => [e.userIdentity.arn, e.userIdentity.invokedBy, e.errorCode])).toEqual([[kms.user.arn, INVOKED_BY, undefined]]);
    expect(await kms.grantIds(arn)).toEqual([]);
  });

  test('a RetireGrant KMS does not answer is retried every TTL/4 until it does: the op grant is gone without a restart', async () => {
    const clock = new ManualClock();
    await mgr.close();
    mgr = await manager({ opGrants: true, clock, keyCacheTtlMs: 4_000 }); // retries every 1 s (opGrantRetryMs)
    const arn = await kms.createKey();
    kms.setRetireFails(true);
    const v = await mgr.createVolume({ Size: MiB, KmsKeyId: arn }, kms.user);
    expect(v.State).toBe('available');
    const left = await kms.grantIds(arn);
    expect(left).toHaveLength(1);
    expect(mgr.opGrants!.unretiredGrantIds).toEqual(left);
    await clock.advance(1_000); // KMS still not answering RetireGrant: kept for the next retry
    expect(await kms.grantIds(arn)).toEqual(left);
    kms.setRetireFails(false);
    const n0 = (await kms.auditEvents()).length;
    await clock.advance(1_000);
    expect(await kms.grantIds(arn)).toEqual([]);
    expect(mgr.opGrants!.unretiredGrantIds).toEqual([]);
    expect((await kms.auditEvents()).slice(n0).filter((e) => e.eventName === 'RetireGrant').map((e) => [e.userIdentity.arn, e.errorCode])).toEqual([[kms.host.arn, undefined]]);
    expect(clock.pending).toBe(0); // nothing left to retry: no timer armed
  });

  test('a CreateGrant whose answer was lost, on a host that may not list its grants: the search by name ends with a warning, not retried forever', async () => {
    const clock = new ManualClock();
    const { ks, f } = lossyKeyService(kms.keyService);
    await mgr.close();
    mgr = await manager({ opGrants: true, clock, keyCacheTtlMs: 4_000, keyService: ks });
    const arn = await kms.createKey();
    await denyHostListing();
    f.loseCreateAnswers = 1;
    await expect(mgr.createVolume({ Size: MiB, KmsKeyId: arn }, kms.user)).rejects.toMatchObject({ code: 'KMS_UNAVAILABLE' });
    expect(mgr.opGrants!.unretiredGrantIds).toHaveLength(1);
    await clock.advance(1_000); // AccessDeniedException on the list: authoritative, nothing to gain by asking again
    expect(mgr.opGrants!.unretiredGrantIds).toEqual([]);
    expect(clock.pending).toBe(0);
  });

  test('a CreateGrant whose answer was lost and whose grant the list does not show yet: searched for until it does (eventual consistency), then retired', async () => {
    const clock = new ManualClock();
    const { ks, f } = lossyKeyService(kms.keyService);
    await mgr.close();
    mgr = await manager({ opGrants: true, clock, keyCacheTtlMs: 4_000, keyService: ks });
    const arn = await kms.createKey();
    f.loseCreateAnswers = 1;
    f.hideGrants = /^ebsd-op-/;
    await expect(mgr.createVolume({ Size: MiB, KmsKeyId: arn }, kms.user)).rejects.toMatchObject({ code: 'KMS_UNAVAILABLE' });
    expect(await kms.grantIds(arn)).toHaveLength(1);
    await clock.advance(3_000); // complete lists without it: kept
    expect(mgr.opGrants!.unretiredGrantIds).toHaveLength(1);
    f.hideGrants = undefined;
    await clock.advance(1_000);
    expect(await kms.grantIds(arn)).toEqual([]);
    expect(mgr.opGrants!.unretiredGrantIds).toEqual([]);
    expect(clock.pending).toBe(0);
  });
});

describe('attach grant lifecycle', () => {
  test('attach: CreateGrant (host, [Decrypt], EncryptionContextSubset) then Decrypt as the host with the token; detach retires it', async () => {
    const arn = await kms.createKey('alias/app');
    const v = await mgr.createVolume({ Size: MiB, KmsKeyId: 'alias/app' }, kms.user);
    expect(v.KmsKeyId).toBe(arn);
    await mgr.attachVolume({ VolumeId: v.VolumeId }, kms.user);
    const grantId = catalogRecord(v.VolumeId).attachment!.grantId;

    const grants = (await call('ListGrants', { KeyId: arn })).Grants;
    expect(grants).toEqual([
      expect.objectContaining({
        GrantId: grantId,
        GranteePrincipal: kms.host.arn,
        RetiringPrincipal: kms.host.arn,
        Operations: ['Decrypt'],
        Constraints: { EncryptionContextSubset: { 'aws:ebs:id': v.VolumeId } },
      }),
    ]);
    const ev = await kms.auditEvents();
    // The attach grant's (with op grants, a create's short-lived grant would come first: src/volume/op-grants.ts).
    const cg = ev.findIndex((e) => e.eventName === 'CreateGrant' && JSON.stringify(e.requestParameters ?? {}).includes('ebsd-attach-'));
    expect(ev[cg]!.userIdentity).toMatchObject({ arn: kms.user.arn, invokedBy: INVOKED_BY });
    const dec = ev.slice(cg + 1).find((e) => e.eventName === 'Decrypt');
    expect(dec?.userIdentity.arn).toBe(kms.host.arn);
    expect(dec?.userIdentity.invokedBy).toBeUndefined();
    expect(dec?.errorCode).toBeUndefined();
    // The host's identity policy reads key states and lists its grants; only the grant lets it decrypt.
    expect(kms.authz.identities.listPolicies('role/EbsdHost')).toEqual(['housekeeping']);
    expect(kms.authz.identities.getPolicy('role/EbsdHost', 'housekeeping')).not.toMatch(/Decrypt|kms:\*/);

    const seen = ev.length;
    await mgr.detachVolume({ VolumeId: v.VolumeId }, kms.user);
    expect(await kms.grantIds(arn)).toEqual([]);
    const retire = (await kms.auditEvents()).slice(seen).filter((e) => e.eventName === 'RetireGrant');
    expect(retire.map((e) => [e.userIdentity.arn, e.errorCode])).toEqual([[kms.host.arn, undefined]]);
    expect(catalogRecord(v.VolumeId).pendingGrantRetirements).toBeUndefined();
  });

  test('DisableKey impairs an attached volume within one TTL (200 ms), DisabledException surfaced; the next attach fails the same way', async () => {
    await mgr.close();
    const clock = new ManualClock();
    mgr = await manager({ keyCacheTtlMs: 200, clock });
    const arn = await kms.createKey();
    const v = await mgr.createVolume({ Size: MiB, KmsKeyId: arn }, kms.user);
    await mgr.attachVolume({ VolumeId: v.VolumeId }, kms.user);
    await mgr.getBlockDevice(v.VolumeId)!.write(0, Buffer.alloc(4096, 1));
    await kms.disableKey(arn);
    await oneTtl(clock, 200);
    expect(impaired[0]).toMatchObject({ volumeId: v.VolumeId, reason: 'kms-refused', awsName: 'DisabledException' });
    await expect(mgr.getBlockDevice(v.VolumeId)!.read(0, 1, Buffer.alloc(1))).rejects.toMatchObject({ code: 'VOLUME_IMPAIRED' });
    await mgr.detachVolume({ VolumeId: v.VolumeId }, kms.user);
    expect(await kms.grantIds(arn)).toEqual([]); // RetireGrant works on a disabled key
    await expect(mgr.attachVolume({ VolumeId: v.VolumeId }, kms.user)).rejects.toMatchObject({ code: 'KMS_REFUSED', awsName: 'DisabledException' });
    expect(await kms.grantIds(arn)).toEqual([]);
    await kms.enableKey(arn);
    await mgr.attachVolume({ VolumeId: v.VolumeId }, kms.user);
    const o = Buffer.alloc(4096);
    await mgr.getBlockDevice(v.VolumeId)!.read(0, 4096, o);
    expect(o.equals(Buffer.alloc(4096, 1))).toBe(true);
    await mgr.detachVolume({ VolumeId: v.VolumeId }, kms.user);
  });

  test('RevokeGrant impairs an attached volume within one TTL (AccessDeniedException); detach then finds the grant gone', async () => {
    await mgr.close();
    const clock = new ManualClock();
    mgr = await manager({ keyCacheTtlMs: 200, clock });
    const arn = await kms.createKey();
    const v = await mgr.createVolume({ Size: MiB, KmsKeyId: arn }, kms.user);
    await mgr.attachVolume({ VolumeId: v.VolumeId }, kms.user);
    await kms.revokeGrant(arn, catalogRecord(v.VolumeId).attachment!.grantId);
    await oneTtl(clock, 200);
    expect(impaired[0]).toMatchObject({ volumeId: v.VolumeId, reason: 'kms-refused', awsName: 'AccessDeniedException' });
    await mgr.detachVolume({ VolumeId: v.VolumeId }, kms.user);
    expect(catalogRecord(v.VolumeId).pendingGrantRetirements).toBeUndefined(); // NotFound on retire = already gone
  });

  test('RetireGrant failing at detach keeps the grant id; the next attach retires it first', async () => {
    const arn = await kms.createKey();
    const v = await mgr.createVolume({ Size: MiB, KmsKeyId: arn }, kms.user);
    await mgr.attachVolume({ VolumeId: v.VolumeId }, kms.user);
    const first = catalogRecord(v.VolumeId).attachment!.grantId;
    kms.setRetireFails(true);
    const r = await mgr.detachVolume({ VolumeId: v.VolumeId }, kms.user);
    expect(r.State).toBe('detached');
    expect(catalogRecord(v.VolumeId).pendingGrantRetirements).toEqual([expect.objectContaining({ grantId: first, keyArn: arn })]);
    expect(await kms.grantIds(arn)).toEqual([first]);
    kms.setRetireFails(false);
    const n0 = (await kms.auditEvents()).length;
    await mgr.attachVolume({ VolumeId: v.VolumeId }, kms.user);
    const second = catalogRecord(v.VolumeId).attachment!.grantId;
    expect(second).not.toBe(first);
    expect(await kms.grantIds(arn)).toEqual([second]);
    expect(catalogRecord(v.VolumeId).pendingGrantRetirements).toBeUndefined();
    expect((await kms.auditEvents()).slice(n0).map((e) => e.eventName).slice(0, 2)).toEqual(['RetireGrant', 'CreateGrant']);

    // KMS still failing at the next attach: CreateGrant is idempotent by Name, so the
    // pending grant comes back as the new attachment's grant and leaves the pending list.
    kms.setRetireFails(true);
    await mgr.detachVolume({ VolumeId: v.VolumeId }, kms.user);
    expect(catalogRecord(v.VolumeId).pendingGrantRetirements?.map((g) => g.grantId)).toEqual([second]);
    await mgr.attachVolume({ VolumeId: v.VolumeId }, kms.user);
    expect(catalogRecord(v.VolumeId).attachment!.grantId).toBe(second);
    expect(catalogRecord(v.VolumeId).pendingGrantRetirements).toBeUndefined();
    kms.setRetireFails(false);
    await mgr.detachVolume({ VolumeId: v.VolumeId }, kms.user);
    expect(await kms.grantIds(arn)).toEqual([]);
  });

  test('an attach whose CreateGrant answer was lost, attached again before the retry: the sweep never takes the live attachment\'s grant', async () => {
    const clock = new ManualClock();
    const { ks, f } = lossyKeyService(kms.keyService);
    await mgr.close();
    mgr = await manager({ clock, keyCacheTtlMs: 4_000, keyService: ks }); // retries every 1 s
    const arn = await kms.createKey();
    const v = await mgr.createVolume({ Size: MiB, KmsKeyId: arn }, kms.user);
    f.loseCreateAnswers = 1;
    await expect(mgr.attachVolume({ VolumeId: v.VolumeId }, kms.user)).rejects.toMatchObject({ code: 'KMS_UNAVAILABLE' });
    const lost = await kms.grantIds(arn);
    expect(lost).toHaveLength(1);
    // CreateGrant is idempotent by Name: the attach gets the grant whose answer was lost.
    await mgr.attachVolume({ VolumeId: v.VolumeId }, kms.user);
    expect(catalogRecord(v.VolumeId).attachment!.grantId).toBe(lost[0]);
    // Sweeps all through the consistency window: the grant is held, never retired.
    for (let t = 0; t < GRANT_CONSISTENCY_MS + 2_000; t += 4_000) await oneTtl(clock, 4_000);
    expect(await kms.grantIds(arn)).toEqual(lost);
    await mgr.getBlockDevice(v.VolumeId)!.write(0, Buffer.alloc(4096, 7));
    await mgr.detachVolume({ VolumeId: v.VolumeId }, kms.user);
    expect(await kms.grantIds(arn)).toEqual([]);
    expect(clock.pending).toBe(0);
  });

  test('an attach whose CreateGrant answer was lost and whose grant the list does not show yet: swept for until it does, then retired', async () => {
    const clock = new ManualClock();
    const { ks, f } = lossyKeyService(kms.keyService);
    await mgr.close();
    mgr = await manager({ clock, keyCacheTtlMs: 4_000, keyService: ks });
    const arn = await kms.createKey();
    const v = await mgr.createVolume({ Size: MiB, KmsKeyId: arn }, kms.user);
    f.loseCreateAnswers = 1;
    f.hideGrants = /^ebsd-attach-/;
    await expect(mgr.attachVolume({ VolumeId: v.VolumeId }, kms.user)).rejects.toMatchObject({ code: 'KMS_UNAVAILABLE' });
    expect(await kms.grantIds(arn)).toHaveLength(1);
    await clock.advance(3_000); // complete lists without it: still swept for
    expect(await kms.grantIds(arn)).toHaveLength(1);
    f.hideGrants = undefined;
    await clock.advance(1_000);
    expect(await kms.grantIds(arn)).toEqual([]);
    expect(clock.pending).toBe(0);
  });

  test('DeleteVolume while the detach\'s grant is unretired, on a host that may not list its grants: the grant is retired by token once KMS answers, and the retries end', async () => {
    const clock = new ManualClock();
    await mgr.close();
    mgr = await manager({ clock, keyCacheTtlMs: 4_000 });
    const arn = await kms.createKey();
    const v = await mgr.createVolume({ Size: MiB, KmsKeyId: arn }, kms.user);
    await mgr.attachVolume({ VolumeId: v.VolumeId }, kms.user);
    await denyHostListing();
    kms.setRetireFails(true);
    await mgr.detachVolume({ VolumeId: v.VolumeId }, kms.user);
    await mgr.deleteVolume({ VolumeId: v.VolumeId }, kms.user);
    expect(await kms.grantIds(arn)).toHaveLength(1);
    await clock.advance(1_000); // KMS still not answering RetireGrant: kept
    expect(await kms.grantIds(arn)).toHaveLength(1);
    kms.setRetireFails(false);
    await clock.advance(1_000);
    expect(await kms.grantIds(arn)).toEqual([]);
    expect(clock.pending).toBe(0);
  });

  test('RetireGrant failing at detach: the next start retires it', async () => {
    const arn = await kms.createKey();
    const v = await mgr.createVolume({ Size: MiB, KmsKeyId: arn }, kms.user);
    await mgr.attachVolume({ VolumeId: v.VolumeId }, kms.user);
    kms.setRetireFails(true);
    await mgr.detachVolume({ VolumeId: v.VolumeId }, kms.user);
    expect(await kms.grantIds(arn)).toHaveLength(1);
    await mgr.close();
    mgr = await manager(); // KMS still failing: kept
    expect(catalogRecord(v.VolumeId).pendingGrantRetirements).toHaveLength(1);
    await mgr.close();
    kms.setRetireFails(false);
    mgr = await manager();
    expect(await kms.grantIds(arn)).toEqual([]);
    expect(catalogRecord(v.VolumeId).pendingGrantRetirements).toBeUndefined();
    expect(await mgr.retirePendingGrants()).toEqual([]);
  });
});

describe('ModifyVolume', () => {
  test('the attached device reports the new size at once; onResized tells the FUSE layer', async () => {
    const resized: unknown[] = [];
    await mgr.close();
    mgr = await manager({ onResized: (e) => resized.push(e) });
    const v = await mgr.createVolume({ Size: MiB }, kms.user);
    await mgr.attachVolume({ VolumeId: v.VolumeId }, kms.user);
    const dev = mgr.getBlockDevice(v.VolumeId)!;
    await mgr.modifyVolume({ VolumeId: v.VolumeId, Size: 2 * MiB }, kms.user);
    expect(dev.size).toBe(2 * MiB);
    expect(resized).toEqual([{ volumeId: v.VolumeId, size: 2 * MiB, originalSize: MiB, attached: true }]);
    await mgr.detachVolume({ VolumeId: v.VolumeId }, kms.user);
  });
});
