import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { join } from 'node:path';
import type { VolumeManager } from '../../src/volume/volume-manager.js';
import type { CallOptions, KeyService } from '../../src/volume/key-service.js';
import { KeyServiceError } from '../../src/volume/errors.js';
import type { ImpairedEvent } from '../../src/volume/key-cache.js';
import { tmpDir } from './helpers/image.js';
import { kmsHarness, type KmsHarness } from './helpers/kms.js';
import { openTestManager } from './helpers/manager.js';
import { ManualClock, seededRandom } from './helpers/manual-clock.js';
import { SEED, printSeedOnFailure } from '../crypto/seeded.js';

/**
 * The key cache's state machine (docs/architecture.md §6.3) on a manual
 * clock, through the VolumeManager and the real KMS core: the shared
 * key-and-grant check, refusals within one TTL, an unreachable KMS ridden
 * out until max-stale, each transition logged once. No wall clock: the test
 * moves time itself, so the bounds it asserts are exact, not "about".
 */
const MiB = 1 << 20;
const SS = 4096;
const TTL = 60_000;
const MAX_STALE = 10 * TTL;
printSeedOnFailure();

let t: ReturnType<typeof tmpDir>;
let kms: KmsHarness;
let mgr: VolumeManager;
let clock: ManualClock;
let impaired: ImpairedEvent[];
let logLines: string[];
let calls: Record<string, number>;
/** Plays AwsKeyService's open circuit: Decrypt and DescribeKey fail at once, unanswered, unless a Decrypt bypasses it. */
let circuitOpen: boolean;
let bypassed: number;
/** Rewrites ListRetirableGrants answers: an eventually consistent or truncated list. */
let listFault: ((r: { Grants: { GrantId: string; KeyId: string }[]; NextMarker?: string; Truncated?: boolean }) => typeof r) | null;

/** The harness's key service, counting the calls that reach it (the KMS side of the ledger). */
function counting(ks: KeyService): KeyService {
  const c = <A extends unknown[], R>(op: string, f: (...a: A) => Promise<R>) => (...a: A): Promise<R> => {
    calls[op] = (calls[op] ?? 0) + 1;
    return f.apply(ks, a);
  };
  const decrypt = c('Decrypt', ks.decrypt);
  const describeKey = c('DescribeKey', ks.describeKey);
  return {
    generateDataKeyWithoutPlaintext: c('GenerateDataKeyWithoutPlaintext', ks.generateDataKeyWithoutPlaintext),
    decrypt: (req, caller, opts?: CallOptions) => {
      if (opts?.bypassCircuit) bypassed++;
      else if (circuitOpen) return Promise.reject(new KeyServiceError('Decrypt', undefined, false, 'circuit open'));
      // An answer closes the circuit, as in AwsKeyService.
      return decrypt(req, caller, opts).then((r) => ((circuitOpen = false), r));
    },
    describeKey: (req, caller) => (circuitOpen ? Promise.reject(new KeyServiceError('DescribeKey', undefined, false, 'circuit open')) : describeKey(req, caller)),
    createGrant: c('CreateGrant', ks.createGrant),
    retireGrant: c('RetireGrant', ks.retireGrant),
    // Under a fault the KMS sees no marker of the fault's making.
    listRetirableGrants: (req, caller) => c('ListRetirableGrants', ks.listRetirableGrants!)(listFault ? { ...req, Marker: undefined } : req, caller).then((r) => (listFault ? listFault(r) : r)),
  };
}

beforeEach(async () => {
  t = tmpDir();
  kms = await kmsHarness(join(t.dir, 'kms'));
  clock = new ManualClock();
  impaired = [];
  logLines = [];
  calls = {};
  circuitOpen = false;
  listFault = null;
  bypassed = 0;
  mgr = await openTestManager(t.dir, kms, {
    keyService: counting(kms.keyService), keyCacheTtlMs: TTL, keyCacheMaxStaleMs: MAX_STALE, clock, random: seededRandom(SEED),
    onImpaired: (e) => impaired.push(e),
  }, logLines);
});
afterEach(async () => {
  await mgr.close();
  await kms.close();
  t.cleanup();
});

async function attachMany(n: number, keys: string[]): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    const v = await mgr.createVolume({ Size: MiB, KmsKeyId: keys[i % keys.length]! }, kms.user);
    await mgr.attachVolume({ VolumeId: v.VolumeId }, kms.user);
    ids.push(v.VolumeId);
  }
  return ids;
}
const states = (ids: string[]) => mgr.describeKeyCaches(ids).map((c) => c.State);
const lines = (re: RegExp) => logLines.filter((l) => re.test(l));

describe('KeyCache and the shared key check on a manual clock', () => {
  test('refresh traffic: 12 volumes under 2 keys cost under 1 KMS call per volume per TTL, and every volume decrypts through its grant within 4 TTL', async () => {
    const keys = [await kms.createKey(), await kms.createKey()];
    const ids = await attachMany(12, keys);
    for (const k of Object.keys(calls)) delete calls[k];
    await clock.advance(8 * TTL);
    expect(states(ids)).toEqual(ids.map(() => 'cached'));
    const total = Object.values(calls).reduce((a, b) => a + b, 0);
    const perVolumePerTtl = total / ids.length / 8;
    expect(perVolumePerTtl, JSON.stringify(calls)).toBeLessThan(1);
    // Each volume's own Decrypt (about every 4 TTL, drawn from [3, 4] TTL) plus the shared rounds (every [0.75, 0.9] TTL).
    expect(calls.Decrypt).toBeGreaterThanOrEqual(2 * ids.length);
    expect(calls.Decrypt).toBeLessThanOrEqual(3 * ids.length);
    expect(calls.ListRetirableGrants).toBeGreaterThanOrEqual(8);
    expect(calls.ListRetirableGrants).toBeLessThanOrEqual(11);
    expect(calls.DescribeKey).toBe(2 * calls.ListRetirableGrants!);
    // Every volume was confirmed within the last TTL.
    for (const c of mgr.describeKeyCaches(ids)) expect(clock.now() - Date.parse(c.LastUnwrapTime!)).toBeLessThan(TTL);
  });

  test('DisableKey: every volume under the key is impaired within one TTL, with the Decrypt\'s DisabledException; the other key\'s volumes keep serving', async () => {
    const [k1, k2] = [await kms.createKey(), await kms.createKey()];
    const ids = await attachMany(6, [k1!, k2!]);
    await clock.advance(TTL / 3); // any moment in the period
    await kms.disableKey(k1!);
    await clock.advance(TTL);
    const under1 = ids.filter((_, i) => i % 2 === 0);
    const under2 = ids.filter((_, i) => i % 2 === 1);
    expect(impaired.map((e) => e.volumeId).sort()).toEqual([...under1].sort());
    expect(impaired.every((e) => e.reason === 'kms-refused' && e.awsName === 'DisabledException')).toBe(true);
    expect(states(under2)).toEqual(under2.map(() => 'cached'));
    const dev = mgr.getBlockDevice(under1[0]!)!;
    await expect(dev.read(0, SS, Buffer.alloc(SS))).rejects.toMatchObject({ code: 'VOLUME_IMPAIRED' });
    await mgr.getBlockDevice(under2[0]!)!.read(0, SS, Buffer.alloc(SS));
    expect(lines(/volume impaired \(ok -> impaired\)/)).toHaveLength(under1.length);
  });

  test('RevokeGrant: only that volume is impaired, within one TTL; a volume attached just before a round is not (the list is confirmed by a Decrypt, never trusted to impair)', async () => {
    const k = await kms.createKey();
    const ids = await attachMany(3, [k]);
    const rec = (id: string) => mgr.describeVolumes({ VolumeIds: [id] }).Volumes[0]!;
    expect(rec(ids[0]!).State).toBe('in-use');
    const grants = await kms.grantIds(k);
    expect(grants).toHaveLength(3);
    // Which grant is ids[1]'s: the one that disappears when it is detached and re-attached.
    await mgr.detachVolume({ VolumeId: ids[1]! }, kms.user);
    const left = await kms.grantIds(k);
    await mgr.attachVolume({ VolumeId: ids[1]! }, kms.user);
    const mine = (await kms.grantIds(k)).find((g) => !left.includes(g))!;
    await clock.advance(TTL / 2);
    await kms.revokeGrant(k, mine);
    await clock.advance(TTL);
    expect(impaired.map((e) => [e.volumeId, e.reason])).toEqual([[ids[1], 'kms-refused']]);
    expect(states([ids[0]!, ids[2]!])).toEqual(['cached', 'cached']);
  });

  test('RevokeGrant while the host may also Decrypt by policy (the old README key policy): the grant a round listed and the next two do not impairs the volume within two TTL (grant-revoked), not a policy Decrypt', async () => {
    await kms.authz.identities.attachPolicy('role/EbsdHost', 'decrypt-by-policy', JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'kms:Decrypt', Resource: '*' }] }));
    const k = await kms.createKey();
    const ids = await attachMany(1, [k]);
    const [grantId] = await kms.grantIds(k);
    ids.push(...(await attachMany(1, [k])));
    await clock.advance(TTL); // a round has listed both grants
    await kms.revokeGrant(k, grantId!);
    await clock.advance(2 * TTL);
    expect(impaired.map((e) => [e.volumeId, e.reason])).toEqual([[ids[0], 'grant-revoked']]);
    expect(states([ids[1]!])).toEqual(['cached']);
    await expect(mgr.getBlockDevice(ids[0]!)!.read(0, SS, Buffer.alloc(SS))).rejects.toMatchObject({ code: 'VOLUME_IMPAIRED' });
    expect(lines(/attach grants listed before are gone/)).toHaveLength(1);
  });

  test('RevokeGrant before the first round, while the host may Decrypt by policy: the grant never listed is judged gone after three complete lists and five minutes (grant-revoked), not before', async () => {
    await kms.authz.identities.attachPolicy('role/EbsdHost', 'decrypt-by-policy', JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'kms:Decrypt', Resource: '*' }] }));
    const k = await kms.createKey();
    const ids = await attachMany(1, [k]);
    const [grantId] = await kms.grantIds(k);
    await kms.revokeGrant(k, grantId!); // before any round has listed it
    ids.push(...(await attachMany(1, [k])));
    const rounds = () => calls.ListRetirableGrants ?? 0;
    await clock.advance(4 * TTL); // four minutes: three or more complete lists without it, inside the five minutes a new grant may take to show
    expect(rounds()).toBeGreaterThanOrEqual(3);
    expect(impaired).toEqual([]);
    expect(states(ids)).toEqual(['cached', 'cached']); // each round's Decrypt, allowed by policy, confirmed it
    await clock.advance(2 * TTL);
    expect(impaired.map((e) => [e.volumeId, e.reason])).toEqual([[ids[0], 'grant-revoked']]);
    expect(states([ids[1]!])).toEqual(['cached']);
    expect(lines(/attach grants never listed since the attach are gone/)).toHaveLength(1);
    expect(mgr.describeKeyCaches([ids[0]!])[0]!.LastError ?? JSON.stringify(mgr.describeKeyCaches([ids[0]!])[0])).toMatch(/was never listed for the host/);
  });

  test('a volume resumed under a new host identity (its grant retirable by the old one, so in none of the new lists) is not judged by its absence', async () => {
    await kms.authz.identities.attachPolicy('role/EbsdHost', 'decrypt-by-policy', JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'kms:Decrypt', Resource: '*' }] }));
    const k = await kms.createKey();
    const ids = await attachMany(1, [k]);
    await mgr.close();
    // The same role, another session: ListRetirableGrants names only the new session's grants.
    await kms.authz.identities.mapUid(998, 'role/EbsdHost', { session: 'host-2' });
    const host2 = kms.authz.identities.callerForUid(998);
    mgr = await openTestManager(t.dir, kms, {
      keyService: counting(kms.keyService), keyCacheTtlMs: TTL, keyCacheMaxStaleMs: MAX_STALE, clock, random: seededRandom(SEED), hostPrincipal: host2,
      onImpaired: (e) => impaired.push(e),
    }, logLines);
    expect((await mgr.resumeAttachments()).resumed).toEqual(ids);
    const rounds = () => calls.ListRetirableGrants ?? 0;
    const from = rounds();
    await clock.advance(8 * TTL); // past three complete lists and five minutes
    expect(rounds() - from).toBeGreaterThanOrEqual(3);
    expect(impaired).toEqual([]);
    expect(states(ids)).toEqual(['cached']); // each round's Decrypt through the old grant confirms it
  });

  test('a new grant the list shows only after four minutes (eventual consistency) impairs nothing', async () => {
    await kms.authz.identities.attachPolicy('role/EbsdHost', 'decrypt-by-policy', JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'kms:Decrypt', Resource: '*' }] }));
    const k = await kms.createKey();
    const ids = await attachMany(1, [k]);
    const [grantId] = await kms.grantIds(k);
    listFault = (r) => ({ ...r, Grants: r.Grants.filter((g) => g.GrantId !== grantId) });
    await clock.advance(4 * TTL);
    listFault = null;
    await clock.advance(4 * TTL);
    expect(impaired).toEqual([]);
    expect(states(ids)).toEqual(['cached']);
  });

  test('ListRetirableGrants is eventually consistent: a grant missing from one complete list, then listed again, impairs nothing; missing from two in a row, it does', async () => {
    await kms.authz.identities.attachPolicy('role/EbsdHost', 'decrypt-by-policy', JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'kms:Decrypt', Resource: '*' }] }));
    const k = await kms.createKey();
    const ids = await attachMany(1, [k]);
    const [grantId] = await kms.grantIds(k);
    await clock.advance(TTL); // a round has listed the grant
    const rounds = () => calls.ListRetirableGrants ?? 0;
    const hide = (r: Parameters<NonNullable<typeof listFault>>[0]) => ({ ...r, Grants: r.Grants.filter((g) => g.GrantId !== grantId) });
    listFault = hide;
    const before = rounds();
    while (rounds() === before) await clock.advance(TTL / 10);
    listFault = null; // one round missed it
    await clock.advance(2 * TTL);
    expect(impaired).toEqual([]);
    expect(states(ids)).toEqual(['cached']);
    listFault = hide;
    const from = rounds();
    while (rounds() < from + 2) await clock.advance(TTL / 10);
    expect(impaired.map((e) => [e.volumeId, e.reason])).toEqual([[ids[0], 'grant-revoked']]);
  });

  test('a list of grants that ends truncated without a marker, or is still truncated at the page cap, is not complete: a grant missing from it impairs nothing', async () => {
    await kms.authz.identities.attachPolicy('role/EbsdHost', 'decrypt-by-policy', JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'kms:Decrypt', Resource: '*' }] }));
    const k = await kms.createKey();
    const ids = await attachMany(1, [k]);
    await clock.advance(TTL); // a round has listed the grant
    listFault = () => ({ Grants: [], Truncated: true });
    await clock.advance(3 * TTL);
    expect(impaired).toEqual([]);
    expect(states(ids)).toEqual(['cached']); // each round's Decrypt confirms it instead
    expect(lines(/ended truncated without a marker or at the page cap/)).toHaveLength(1);
    listFault = () => ({ Grants: [], Truncated: true, NextMarker: 'more' });
    await clock.advance(3 * TTL);
    expect(impaired).toEqual([]);
    expect(states(ids)).toEqual(['cached']);
  });

  test('KMS unreachable: stale (logged once however many retries fail), reads go on, back to cached when it answers, no re-attach; past max-stale: impaired, logged once', async () => {
    const k = await kms.createKey();
    const ids = await attachMany(3, [k]);
    const grantsBefore = calls.CreateGrant;
    await clock.advance(TTL);
    kms.setUnreachable(true);
    await clock.advance(3 * TTL); // a dozen failed rounds at TTL/4, and each volume's own Decrypt
    expect(states(ids)).toEqual(ids.map(() => 'stale'));
    const [st] = mgr.describeKeyCaches([ids[0]!]);
    expect(st).toMatchObject({ LastError: { AwsName: 'KMSInternalException' } });
    expect(Date.parse(st!.ExpiryTime!) - Date.parse(st!.LastUnwrapTime!)).toBe(MAX_STALE);
    await mgr.getBlockDevice(ids[0]!)!.read(0, SS, Buffer.alloc(SS));
    expect(calls.ListRetirableGrants).toBeGreaterThanOrEqual(10);
    expect(lines(/cached -> stale/)).toHaveLength(ids.length);
    expect(lines(/shared key check: KMS unreachable/)).toHaveLength(1);

    kms.setUnreachable(false);
    await clock.advance(TTL / 4 + 1);
    expect(states(ids)).toEqual(ids.map(() => 'cached'));
    expect(lines(/stale -> cached/)).toHaveLength(ids.length);
    expect(lines(/shared key check: KMS answers again/)).toHaveLength(1);
    expect(calls.CreateGrant).toBe(grantsBefore);

    kms.setUnreachable(true);
    await clock.advance(MAX_STALE - TTL);
    expect(impaired).toEqual([]);
    await clock.advance(TTL);
    expect(impaired.map((e) => e.reason)).toEqual(ids.map(() => 'kms-unreachable'));
    expect(lines(/cached -> stale/)).toHaveLength(2 * ids.length);
    expect(lines(/volume impaired \(stale -> impaired\)/)).toHaveLength(ids.length);
    // Impaired volumes leave the check: nothing is armed for them any more.
    const after = calls.ListRetirableGrants;
    await clock.advance(2 * TTL);
    expect(calls.ListRetirableGrants).toBe(after);
  });

  test('a circuit still open at the max-stale deadline after KMS came back: one last Decrypt bypasses it, and the volumes stay cached', async () => {
    const k = await kms.createKey();
    const ids = await attachMany(2, [k]);
    await clock.advance(TTL);
    kms.setUnreachable(true);
    circuitOpen = true;
    await clock.advance(3 * TTL);
    expect(states(ids)).toEqual(ids.map(() => 'stale'));
    kms.setUnreachable(false); // KMS is back; the circuit's doubled open period has not run out
    const deadline = Math.max(...mgr.describeKeyCaches(ids).map((c) => Date.parse(c.ExpiryTime!)));
    await clock.advance(deadline - clock.now() - TTL / 2);
    expect(states(ids)).toEqual(ids.map(() => 'stale'));
    expect(bypassed).toBe(0);
    await clock.advance(TTL / 2 + 1); // ExpiryTime is rounded down to the millisecond
    expect(impaired).toEqual([]);
    expect(states(ids)).toEqual(ids.map(() => 'cached'));
    expect(bypassed).toBe(ids.length);
    expect(lines(/stale -> cached/)).toHaveLength(ids.length);
  });

  test('a circuit still open at the max-stale deadline while KMS is still down: the last Decrypt fails too and the volumes are impaired at the deadline', async () => {
    const k = await kms.createKey();
    const ids = await attachMany(2, [k]);
    await clock.advance(TTL);
    kms.setUnreachable(true);
    circuitOpen = true;
    await clock.advance(TTL);
    const deadline = Math.min(...mgr.describeKeyCaches(ids).map((c) => Date.parse(c.ExpiryTime!)));
    await clock.advance(deadline - clock.now() - 1);
    expect(impaired).toEqual([]);
    await clock.advance(TTL / 2);
    expect(bypassed).toBe(ids.length);
    expect(impaired.map((e) => e.reason)).toEqual(ids.map(() => 'kms-unreachable'));
    expect(lines(/volume impaired \(stale -> impaired\)/)).toHaveLength(ids.length);
  });

  test('a host that may not list its grants falls back to a Decrypt per volume per round, and says so once', async () => {
    await kms.authz.identities.detachPolicy('role/EbsdHost', 'housekeeping');
    await kms.authz.identities.attachPolicy('role/EbsdHost', 'describe', JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'kms:DescribeKey', Resource: '*' }] }));
    const k = await kms.createKey();
    const ids = await attachMany(2, [k]);
    const before = calls.Decrypt ?? 0;
    await clock.advance(3 * TTL);
    expect(states(ids)).toEqual(ids.map(() => 'cached'));
    expect((calls.Decrypt ?? 0) - before).toBeGreaterThanOrEqual(3 * ids.length);
    expect(lines(/may not list its grants/)).toHaveLength(1);
    await kms.disableKey(k);
    await clock.advance(TTL);
    expect(impaired.map((e) => e.awsName)).toEqual(ids.map(() => 'DisabledException'));
  });
});
