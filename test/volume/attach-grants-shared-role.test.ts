import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import type { VolumeManager } from '../../src/volume/volume-manager.js';
import type { ImpairedEvent } from '../../src/volume/key-cache.js';
import { tmpDir } from './helpers/image.js';
import { kmsHarness, type KmsHarness } from './helpers/kms.js';
import { openTestManager } from './helpers/manager.js';
import { ManualClock, seededRandom } from './helpers/manual-clock.js';
import { SEED, printSeedOnFailure } from '../crypto/seeded.js';

/**
 * Two hosts on one IAM role (docs/architecture.md §6.2): two state dirs, one
 * KMS, one host principal, as hosts of a fleet whose instances share an
 * instance profile. ListRetirableGrants shows each host both hosts' attach
 * grants; a host starting must retire only its own orphans.
 */
const MiB = 1 << 20;
const TTL = 60_000;
printSeedOnFailure();

let t: ReturnType<typeof tmpDir>;
let kms: KmsHarness;
let clock: ManualClock;
let impaired: ImpairedEvent[];
const open: VolumeManager[] = [];

const host = async (name: string): Promise<VolumeManager> => {
  const m = await openTestManager(join(t.dir, name), kms, { keyCacheTtlMs: TTL, keyCacheMaxStaleMs: 10 * TTL, clock, random: seededRandom(SEED), onImpaired: (e) => impaired.push(e) });
  open.push(m);
  return m;
};
const close = async (m: VolumeManager): Promise<void> => {
  open.splice(open.indexOf(m), 1);
  await m.close();
};
const grants = async (keyArn: string): Promise<{ GrantId: string; Name?: string }[]> =>
  ((await kms.core.call('ListGrants', { KeyId: keyArn }, kms.root)) as { Grants: { GrantId: string; Name?: string }[] }).Grants;
/** An attach grant as a host made them before names carried the instance (`ebsd-attach-<vol>`). */
const oldFormatGrant = async (keyArn: string, volumeId: string): Promise<string> =>
  ((await kms.core.call('CreateGrant', {
    KeyId: keyArn, GranteePrincipal: kms.host.arn, RetiringPrincipal: kms.host.arn, Operations: ['Decrypt'],
    Constraints: { EncryptionContextSubset: { 'aws:ebs:id': volumeId } }, Name: `ebsd-attach-${volumeId}`,
  }, kms.root)) as { GrantId: string }).GrantId;

beforeEach(async () => {
  t = tmpDir();
  kms = await kmsHarness(join(t.dir, 'kms'));
  clock = new ManualClock();
  impaired = [];
});
afterEach(async () => {
  for (const m of open.splice(0)) await m.close();
  await kms.close();
  t.cleanup();
});

describe('attach grants of hosts sharing one IAM role', () => {
  test('each host has its own InstanceId, kept across restarts, and names its attach grants with it', async () => {
    const a = await host('a');
    const b = await host('b');
    expect(a.instanceId).toMatch(/^i-[0-9a-f]{17}$/);
    expect(b.instanceId).toMatch(/^i-[0-9a-f]{17}$/);
    expect(a.instanceId).not.toBe(b.instanceId);
    expect(readFileSync(join(t.dir, 'a', 'volumes', 'instance-id'), 'utf8').trim()).toBe(a.instanceId);
    const k = await kms.createKey();
    const v = await a.createVolume({ Size: MiB, KmsKeyId: k }, kms.user);
    await a.attachVolume({ VolumeId: v.VolumeId }, kms.user);
    expect((await grants(k)).map((g) => g.Name)).toEqual([`ebsd-attach-${a.instanceId}-${v.VolumeId}`]);
    const id = a.instanceId;
    await close(a);
    expect((await host('a')).instanceId).toBe(id);
  });

  test('a host starting leaves the other host\'s live attach grants alone: both volumes keep serving past a key-check round', async () => {
    const k = await kms.createKey();
    const a = await host('a');
    const va = await a.createVolume({ Size: MiB, KmsKeyId: k }, kms.user);
    await a.attachVolume({ VolumeId: va.VolumeId }, kms.user);
    const b = await host('b'); // its start sweeps the role's retirable grants, a's among them
    const vb = await b.createVolume({ Size: MiB, KmsKeyId: k }, kms.user);
    await b.attachVolume({ VolumeId: vb.VolumeId }, kms.user);
    await close(a);
    const a2 = await host('a'); // and a's restart sweeps b's
    expect((await grants(k)).map((g) => g.Name).sort()).toEqual([`ebsd-attach-${a2.instanceId}-${va.VolumeId}`, `ebsd-attach-${b.instanceId}-${vb.VolumeId}`].sort());
    await clock.advance(2 * TTL);
    expect(impaired).toEqual([]);
    expect(b.describeKeyCaches([vb.VolumeId]).map((c) => c.State)).toEqual(['cached']);
  });

  test('upgrade: an old-format grant (ebsd-attach-<vol>) is retired by the host whose catalog holds the volume, and left alone by any other host', async () => {
    const k = await kms.createKey();
    const a = await host('a');
    const mine = await a.createVolume({ Size: MiB, KmsKeyId: k }, kms.user); // available: no attachment holds a grant
    const mineGrant = await oldFormatGrant(k, mine.VolumeId);
    const unknownGrant = await oldFormatGrant(k, 'vol-0123456789abcdef0'); // nobody here knows this volume: another host's, perhaps
    const b = await host('b');
    expect((await grants(k)).map((g) => g.GrantId).sort()).toEqual([mineGrant, unknownGrant].sort());
    await close(a);
    await host('a');
    expect((await grants(k)).map((g) => g.GrantId)).toEqual([unknownGrant]);
    await close(b);
    await host('b');
    expect((await grants(k)).map((g) => g.GrantId)).toEqual([unknownGrant]);
  });
});
