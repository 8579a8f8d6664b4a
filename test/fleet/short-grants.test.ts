/**
 * Short-lived op grants (src/volume/op-grants.ts, README "A fleet"): a host
 * whose key policy allows only kms:GenerateDataKeyWithoutPlaintext,
 * kms:CreateGrant and kms:DescribeKey (no kms:Decrypt, no kms:ReEncrypt*)
 * creates, attaches, snapshots, restores under the same key and another key,
 * and copies, every unwrap and re-wrap going through a grant made for the step
 * and retired right after. Under that policy KMS itself refuses a host whose
 * attach grant was revoked, even before any key-check round listed the grant.
 * Host A serves the KMS (--kms-only on loopback); host B uses it with
 * --kms-endpoint, signing as the IAM user host-b.
 */
import { spawnSync } from 'node:child_process';
import { CreateGrantCommand, KMSClient, type CreateGrantCommandInput } from '@aws-sdk/client-kms';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { auditEvents, startKmsDaemon } from '../kms-net/helpers.js';
import { seededBytes, printSeedOnFailure } from '../crypto/seeded.js';
import { settled } from '../snapshot/helpers.js';
import { until } from './netns.js';
import { opGrantName } from '../../src/volume/op-grants.js';
import { cleanupHostAndKms, createRemoteHostUser, hostBEnv, savedAwsEnv, type RemoteHostUser } from './remote-host.js';

const randomBytes = seededBytes('fleet/short-grants');
printSeedOnFailure();
const MiB = 1 << 20;

/**
 * The README's key policy for a customer key, in its narrower form: the account everything;
 * the host no kms:Decrypt nor kms:ReEncrypt*, and kms:CreateGrant only for grants of Decrypt,
 * ReEncryptFrom, ReEncryptTo to itself, retired by itself. Every grant ebsd makes (attach
 * grants, op grants) must pass these conditions for the tests below to succeed.
 */
function grantOnlyPolicy(h: RemoteHostUser): string {
  return JSON.stringify({
    Version: '2012-10-17',
    Statement: [
      { Sid: 'Account', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${h.account}:root` }, Action: 'kms:*', Resource: '*' },
      { Sid: 'EbsdHosts', Effect: 'Allow', Principal: { AWS: h.hostArn }, Action: ['kms:GenerateDataKeyWithoutPlaintext', 'kms:DescribeKey'], Resource: '*' },
      {
        Sid: 'EbsdHostGrants', Effect: 'Allow', Principal: { AWS: h.hostArn }, Action: 'kms:CreateGrant', Resource: '*',
        Condition: {
          'ForAllValues:StringEquals': { 'kms:GrantOperations': ['Decrypt', 'ReEncryptFrom', 'ReEncryptTo'] },
          StringEquals: { 'kms:GranteePrincipal': h.hostArn, 'kms:RetiringPrincipal': h.hostArn },
        },
      },
    ],
  });
}

describe('a host without kms:Decrypt in the key policy: every unwrap through a short-lived grant', () => {
  const a = new Env('sg-kms');
  const b = new Env('sg-host');
  const saved = savedAwsEnv();
  let k = '';
  let k2 = '';
  let host: RemoteHostUser;
  const data = randomBytes(MiB);
  let kmsAt = '';
  const hostArgs = (): string[] => ['--kms-endpoint', kmsAt, '--key-cache-ttl', '2s', '--key-cache-max-stale', '60s'];

  const volume = async (id: string): Promise<any> => (await b.api('ebsd.DescribeVolumes', { VolumeIds: [id] })).Volumes[0];
  const status = async (id: string): Promise<any> => (await b.api('ebsd.Status')).Volumes.find((v: any) => v.VolumeId === id);
  const grantsOn = async (key: string): Promise<{ GrantId: string; Name?: string }[]> => (await a.api('TrentService.ListGrants', { KeyId: key })).Grants;
  const opGrantsLeft = async (): Promise<string[]> => [...(await grantsOn(k)), ...(await grantsOn(k2))].map((g) => g.Name ?? '').filter((n) => n.startsWith('ebsd-op-'));

  /** A restore from `snapshotId` (under `key`, or the snapshot's), attached; its first MiB. */
  async function restoreAndRead(snapshotId: string, key?: string): Promise<{ id: string; head: Buffer; kmsKeyId: string }> {
    const id = (await b.api('ebsd.CreateVolume', { SnapshotId: snapshotId, ...(key ? { KmsKeyId: key } : {}) })).VolumeId as string;
    const v = await until(`${id} restored`, async () => { const d = await volume(id); return d.State !== 'creating' ? d : undefined; }, 60_000);
    expect(v.State, JSON.stringify(v)).toBe('available');
    await b.api('ebsd.AttachVolume', { VolumeId: id });
    const head = await readDirect(b.file(id), MiB);
    await b.untilClosed(id);
    await b.api('ebsd.DetachVolume', { VolumeId: id });
    return { id, head, kmsKeyId: v.KmsKeyId };
  }

  beforeAll(async () => {
    ensureBuilt();
    const { url } = await startKmsDaemon(a);
    host = await createRemoteHostUser(a);
    k = (await a.api('TrentService.CreateKey', { Description: 'K' })).KeyMetadata.Arn;
    k2 = (await a.api('TrentService.CreateKey', { Description: 'K2' })).KeyMetadata.Arn;
    for (const id of [k, k2]) await a.api('TrentService.PutKeyPolicy', { KeyId: id, PolicyName: 'default', Policy: grantOnlyPolicy(host) });
    hostBEnv(host, url);
    kmsAt = url;
    await b.start(hostArgs());
  }, 180_000);

  afterAll(async () => {
    await cleanupHostAndKms(b, a, saved);
  }, 60_000);

  it('create, attach, write and read, snapshot, restore under the same key and another, copy under both: the op grants are retired', async () => {
    const vol = (await b.api('ebsd.CreateVolume', { Size: '16MiB', KmsKeyId: k })).VolumeId as string;
    await b.api('ebsd.AttachVolume', { VolumeId: vol });
    await writeDirect(b.file(vol), data);
    expect((await readDirect(b.file(vol), MiB)).equals(data)).toBe(true);
    await b.untilClosed(vol);
    await b.api('ebsd.DetachVolume', { VolumeId: vol });
    const s = await settled(b, (await b.api('ebsd.CreateSnapshot', { VolumeId: vol })).SnapshotId);
    expect(s.State).toBe('completed');
    const snap = s.SnapshotId as string;

    const same = await restoreAndRead(snap);
    expect(same.kmsKeyId).toBe(k);
    expect(same.head.equals(data)).toBe(true);
    const other = await restoreAndRead(snap, k2);
    expect(other.kmsKeyId).toBe(k2);
    expect(other.head.equals(data)).toBe(true);

    for (const key of [undefined, k2]) {
      const c = await settled(b, (await b.api('ebsd.CopySnapshot', { SourceSnapshotId: snap, SourceRegion: 'us-east-1', ...(key ? { KmsKeyId: key } : {}) })).SnapshotId);
      expect(c.State, JSON.stringify(c)).toBe('completed');
      expect(c.KmsKeyId).toBe(key ?? k);
      const r = await restoreAndRead(c.SnapshotId);
      expect(r.head.equals(data)).toBe(true);
    }

    // Every step made its grant on the KMS and retired it: none is left on either key.
    const events = auditEvents(a);
    const opCreates = events.filter((e) => e.eventName === 'CreateGrant' && !e.errorCode && JSON.stringify(e.requestParameters ?? {}).includes('ebsd-op-'));
    // create's digest; restore same key (2), other key (2); copy same key (1), other key (2); the restores from the copies (2, 1)
    expect(opCreates.length).toBeGreaterThanOrEqual(8);
    expect(events.filter((e) => e.eventName === 'RetireGrant' && !e.errorCode).length).toBeGreaterThanOrEqual(opCreates.length);
    expect(await opGrantsLeft()).toEqual([]);
    // And the host never decrypted without one: every Decrypt and ReEncrypt it made succeeded through a grant.
    const hostKeyCalls = events.filter((e) => (e.eventName === 'Decrypt' || e.eventName === 'ReEncrypt') && String(e.userIdentity?.arn).endsWith(':user/host-b'));
    expect(hostKeyCalls.length).toBeGreaterThan(0);
    expect(hostKeyCalls.filter((e) => e.errorCode)).toEqual([]);
    // Every CreateGrant ebsd made (attach and op grants) passed the policy's CreateGrant conditions...
    expect(events.filter((e) => e.eventName === 'CreateGrant' && e.errorCode)).toEqual([]);
    // ... which do bite: the host may not grant another operation, nor to another principal.
    const asHost = new KMSClient({ endpoint: kmsAt, region: 'us-east-1', credentials: { accessKeyId: host.key.AccessKeyId, secretAccessKey: host.key.SecretAccessKey } });
    try {
      const grant = (over: Partial<CreateGrantCommandInput>) => asHost.send(new CreateGrantCommand({ KeyId: k, GranteePrincipal: host.hostArn, RetiringPrincipal: host.hostArn, Operations: ['Decrypt'], ...over }));
      await expect(grant({ Operations: ['Decrypt', 'Encrypt'] })).rejects.toMatchObject({ name: 'AccessDeniedException' });
      await expect(grant({ GranteePrincipal: `arn:aws:iam::${host.account}:root` })).rejects.toMatchObject({ name: 'AccessDeniedException' });
      await expect(grant({ RetiringPrincipal: `arn:aws:iam::${host.account}:root` })).rejects.toMatchObject({ name: 'AccessDeniedException' });
    } finally {
      asHost.destroy();
    }
  });

  it('an attach grant revoked right after attach, before any check round: the next Decrypt through it is refused and the volume impaired', async () => {
    const vol = (await b.api('ebsd.CreateVolume', { Size: '16MiB', KmsKeyId: k })).VolumeId as string;
    try {
      await b.api('ebsd.AttachVolume', { VolumeId: vol });
      await writeDirect(b.file(vol), data);
      expect((await readDirect(b.file(vol), MiB)).equals(data)).toBe(true);
      const g = (await grantsOn(k)).find((x) => x.Name?.startsWith('ebsd-attach-') && x.Name.endsWith(`-${vol}`));
      expect(g).toBeTruthy();
      await a.api('TrentService.RevokeGrant', { KeyId: k, GrantId: g!.GrantId });
      // The first round misses the grant and sends the volume to decrypt through it: KMS refuses (no policy Allow to fall back on).
      const st = await until('impaired', async () => { const v = await status(vol); return v?.KeyCache?.State === 'impaired' ? v : undefined; }, 30_000);
      expect(st.KeyCache.Impaired.Reason).toBe('kms-refused');
      expect(st.KeyCache.Impaired.AwsName).toMatch(/AccessDeniedException|InvalidGrantTokenException/);
      await expect(readDirect(b.file(vol), 4096)).rejects.toThrow(/Input\/output error/);
    } finally {
      if ((await volume(vol))?.Attachments?.length) await b.api('ebsd.DetachVolume', { VolumeId: vol, Force: true });
    }
  });

  it('an op grant a crash left behind (killed between its CreateGrant and its use) is retired at the next start; another instance\'s is left alone', async () => {
    const instance = readFileSync(join(b.state, 'volumes', 'instance-id'), 'utf8').trim();
    let theirs: string | undefined;
    try {
      await b.stop();
      process.env.EBSD_TEST_FAULT = 'op-grant.after-create';
      try {
        await b.start(hostArgs());
      } finally {
        delete process.env.EBSD_TEST_FAULT;
      }
      // The create's [Decrypt] grant is made, then the daemon dies before the Decrypt and the RetireGrant.
      await expect(b.api('ebsd.CreateVolume', { Size: '16MiB', KmsKeyId: k })).rejects.toThrow();
      await b.kill9(); // gone already: its output flushed
      const creating = (JSON.parse(readFileSync(join(b.state, 'volumes', 'catalog.json'), 'utf8')).volumes as { volumeId: string; state: string }[]).filter((v) => v.state === 'creating');
      expect(creating).toHaveLength(1);
      const vol = creating[0]!.volumeId;
      const mine = opGrantName(instance, `${vol}-new-key`, 0);
      expect(await opGrantsLeft()).toEqual([mine]);
      const hostArn = (await a.api('ebsd.IamListUsers')).Users.find((u: any) => u.UserName === 'host-b').Arn as string;
      const other = opGrantName('i-0123456789abcdef0', `${vol}-new-key`, 0);
      theirs = (await a.api('TrentService.CreateGrant', {
        KeyId: k, GranteePrincipal: hostArn, RetiringPrincipal: hostArn, Operations: ['Decrypt'],
        Constraints: { EncryptionContextSubset: { 'aws:ebs:id': vol } }, Name: other,
      })).GrantId as string;
      await b.start(hostArgs());
      expect(await opGrantsLeft()).toEqual([other]);
    } finally {
      if (theirs) await a.api('TrentService.RevokeGrant', { KeyId: k, GrantId: theirs });
    }
  });
});


/** O_DIRECT through dd: the page cache must not answer for a volume whose key is gone (as test/fleet/fleet.test.ts). */
async function writeDirect(path: string, data: Buffer): Promise<void> {
  const r = spawnSync('dd', ['of=' + path, 'bs=64k', 'oflag=direct', 'conv=notrunc,fsync', 'iflag=fullblock', 'status=none'], { input: data });
  if (r.status !== 0) throw new Error(`dd write ${path}: ${r.stderr}`);
}

async function readDirect(path: string, length: number): Promise<Buffer> {
  const r = spawnSync('dd', ['if=' + path, 'bs=64k', `count=${Math.ceil(length / 65536)}`, 'iflag=direct', 'status=none'], { maxBuffer: 64 * MiB });
  if (r.status !== 0) throw new Error(`dd read ${path}: ${r.stderr}`);
  return r.stdout.subarray(0, length);
}
