import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Caller } from '../../src/kms/types.js';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { EbsDirect } from '../../src/snapshot/ebs-direct.js';
import { ClientTokens, startSnapshotAnswer } from '../../src/snapshot/ebs-direct-client-tokens.js';
import { parsePutSnapshotBlock, parseStartSnapshot } from '../../src/snapshot/ebs-direct-input.js';
import type { SnapshotSummary } from '../../src/snapshot/types.js';
import { tempDirPerTest } from '../helpers/temp-dir.js';

/**
 * StartSnapshot ClientTokens across a restart, in process: the token map
 * rebuilt from the manifests (ClientTokens.load and its bound), and an
 * EbsDirect closed and opened again on the same directory store and pending
 * directory, as a restarted daemon opens them. Unencrypted snapshots (no KMS
 * is called for them), a real directory store.
 */
const BLOCK = 512 * 1024;
const ACCOUNT = '111122223333';
const root = { type: 'Root', arn: `arn:aws:iam::${ACCOUNT}:root`, accountId: ACCOUNT } as unknown as Caller;
const bob = { type: 'IAMUser', arn: `arn:aws:iam::${ACCOUNT}:user/bob`, accountId: ACCOUNT, principalId: 'AIDABOB' } as unknown as Caller;
const digest = (s: string): string => createHash('sha256').update(s).digest('base64');

const tmp = tempDirPerTest('ebsd-ebs-tokens-');
const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0)) await c();
});

/** A summary as the store lists it, with `clientToken` when `token` is given. */
function summary(n: number, o: { token?: string; state?: SnapshotSummary['state']; at?: number } = {}): SnapshotSummary {
  return {
    formatVersion: 1, snapshotId: `snap-${n.toString(16).padStart(17, '0')}`, volumeId: '', volumeSize: 1, state: o.state ?? 'completed', progress: 100,
    startTime: new Date(Date.UTC(2026, 0, 1) + (o.at ?? n) * 1000).toISOString(), description: '', tags: [], ownerId: ACCOUNT,
    encrypted: false, kmsKeyId: '', dataOffset: 0,
    ...(o.token !== undefined ? { clientToken: { token: o.token, request: digest(o.token) } } : {}),
  };
}

describe('ClientTokens.load: the map rebuilt from the manifests', () => {
  it('takes every pending snapshot\'s token and the newest others up to the bound; manifests without a token are left out', () => {
    const t = new ClientTokens(4);
    const n = t.load([
      summary(1, { token: 'old' }), summary(2, { token: 'p1', state: 'pending' }), summary(3, { token: 'e', state: 'error' }),
      summary(4), summary(5, { token: 'new' }), summary(6, { token: 'p2', state: 'pending' }), summary(7, { token: 'mid', at: 4 }),
    ]);
    expect(n).toBe(4);
    // Two pending, then two slots: 'new' (5 s) and 'mid' (4 s), newer than 'e' (3 s) and 'old' (1 s).
    for (const k of ['p1', 'p2', 'new', 'mid']) expect(t.get(k), k).toBeDefined();
    for (const k of ['e', 'old']) expect(t.get(k), k).toBeUndefined();
  });

  it('the bound forgets the oldest loaded token first when a new one comes; a pending snapshot\'s never', async () => {
    const t = new ClientTokens(3);
    t.load([summary(1, { token: 'a', state: 'pending' }), summary(2, { token: 'b' }), summary(3, { token: 'c' })]);
    expect(t.size).toBe(3);
    const pending = new Set([summary(1).snapshotId]);
    t.add('d', { request: digest('d'), response: Promise.resolve({}), snapshotId: summary(9).snapshotId }, (id) => pending.has(id));
    expect(t.get('a')).toBeDefined(); // pending: kept though oldest
    expect(t.get('b')).toBeUndefined();
    expect(t.get('c')).toBeDefined();
    expect(t.get('d')).toBeDefined();
  });

  it('a token known already keeps its entry; of two manifests naming one token the newer wins; the answer is the original one', async () => {
    const t = new ClientTokens(10);
    const live = { request: 'live', response: Promise.resolve({ SnapshotId: 'x' }) };
    t.add('k', live, () => false);
    t.load([summary(1, { token: 'k' }), summary(2, { token: 'dup' }), summary(3, { token: 'dup' })]);
    expect(t.get('k')).toBe(live);
    expect(t.get('dup')!.snapshotId).toBe(summary(3).snapshotId);
    expect(await t.get('dup')!.response).toEqual(startSnapshotAnswer(summary(3)));
    expect((await t.get('dup')!.response).Status).toBe('pending');
  });

  it('refuses a bound that is no positive integer', () => {
    expect(() => new ClientTokens(0)).toThrow(RangeError);
  });
});

describe('EbsDirect: a StartSnapshot ClientToken survives a restart', () => {
  async function open(dir: string, o: { maxClientTokens?: number } = {}) {
    const store = await DirSnapshotStore.open(join(dir, 'snapshots'));
    const d = new EbsDirect({
      store, pendingDir: join(dir, 'pending'), keys: {} as never, xts: {} as never, accountId: ACCOUNT, region: 'us-east-1', allowUnencrypted: true,
      ...(o.maxClientTokens !== undefined ? { maxClientTokens: o.maxClientTokens } : {}),
    });
    const marked = await d.recover();
    let closed = false;
    const close = async (): Promise<void> => {
      if (closed) return;
      closed = true;
      await d.close();
    };
    closers.push(close);
    return { store, d, marked, close };
  }
  const start = (d: EbsDirect, body: Record<string, unknown>, who: Caller = root) => d.startSnapshot(parseStartSnapshot(body), who);

  it('a pending snapshot\'s token: the same request answers the first snapshot (now error, as every snapshot a restart left pending), another request or caller is ConflictException', async () => {
    const dir = tmp();
    const a = await open(dir);
    const req = { VolumeSize: 1, ClientToken: 'tok-p', Description: 'backup', Tags: [{ Key: 'k', Value: 'v' }] };
    const first = await start(a.d, req);
    const data = randomBytes(BLOCK);
    await a.d.putSnapshotBlock(parsePutSnapshotBlock({ SnapshotId: first.SnapshotId, BlockIndex: 0, BlockData: data, DataLength: BLOCK, Checksum: createHash('sha256').update(data).digest('base64'), ChecksumAlgorithm: 'SHA256' }), root);
    expect((await a.store.getManifest(first.SnapshotId as string))!.clientToken).toMatchObject({ token: 'tok-p' });
    await a.close();

    const b = await open(dir);
    expect(b.marked).toEqual([first.SnapshotId]);
    const before = (await b.store.listManifestIds()).length;
    const again = await start(b.d, req);
    expect(again).toEqual(first);
    expect((await b.store.listManifestIds()).length).toBe(before);
    // The restart ended it: no blocks are taken (docs/architecture.md §15).
    expect((await b.store.getManifest(first.SnapshotId as string))!.state).toBe('error');
    await expect(start(b.d, { ...req, VolumeSize: 2 })).rejects.toMatchObject({ awsName: 'ConflictException' });
    await expect(start(b.d, req, bob)).rejects.toMatchObject({ awsName: 'ConflictException' });
    expect((await b.store.listManifestIds()).length).toBe(before);
  });

  it('a completed snapshot\'s token answers its original result after a restart; a child\'s answer keeps its ParentSnapshotId', async () => {
    const dir = tmp();
    const a = await open(dir);
    const parent = await start(a.d, { VolumeSize: 1, ClientToken: 'tok-c' });
    await a.d.completeSnapshot({ SnapshotId: parent.SnapshotId as string, ChangedBlocksCount: 0 });
    const child = await start(a.d, { VolumeSize: 1, ClientToken: 'tok-child', ParentSnapshotId: parent.SnapshotId });
    expect(child.ParentSnapshotId).toBe(parent.SnapshotId);
    await a.close();

    const b = await open(dir);
    expect(await start(b.d, { VolumeSize: 1, ClientToken: 'tok-c' })).toEqual(parent);
    // The child became error at the restart (its manifest's parent link dropped): the answer is still the original.
    expect((await b.store.getManifest(child.SnapshotId as string))!.parentSnapshotId).toBeUndefined();
    expect(await start(b.d, { VolumeSize: 1, ClientToken: 'tok-child', ParentSnapshotId: parent.SnapshotId })).toEqual(child);
  });

  it('a token whose snapshot was deleted starts a new snapshot, before and after a restart', async () => {
    const dir = tmp();
    const a = await open(dir);
    const req = { VolumeSize: 1, ClientToken: 'tok-d' };
    const first = await start(a.d, req);
    await a.d.completeSnapshot({ SnapshotId: first.SnapshotId as string, ChangedBlocksCount: 0 });
    await a.store.deleteManifest(first.SnapshotId as string);
    const second = await start(a.d, req);
    expect(second.SnapshotId).not.toBe(first.SnapshotId);
    // Concurrent retries of it answer that one snapshot.
    const [x, y] = await Promise.all([start(a.d, req), start(a.d, req)]);
    expect([x.SnapshotId, y.SnapshotId]).toEqual([second.SnapshotId, second.SnapshotId]);
    await a.d.completeSnapshot({ SnapshotId: second.SnapshotId as string, ChangedBlocksCount: 0 });
    await a.close();

    const b = await open(dir);
    expect((await start(b.d, req)).SnapshotId).toBe(second.SnapshotId);
    await b.store.deleteManifest(second.SnapshotId as string);
    const third = await start(b.d, req);
    expect([first.SnapshotId, second.SnapshotId]).not.toContain(third.SnapshotId);
  });

  it('after a restart the bound holds: the newest completed snapshots\' tokens are read back, the oldest are not', async () => {
    const dir = tmp();
    const a = await open(dir, { maxClientTokens: 2 });
    const ids: string[] = [];
    for (const k of ['t1', 't2', 't3']) {
      const r = await start(a.d, { VolumeSize: 1, ClientToken: k });
      await a.d.completeSnapshot({ SnapshotId: r.SnapshotId as string, ChangedBlocksCount: 0 });
      ids.push(r.SnapshotId as string);
    }
    await a.close();
    // Start times a second apart, t1 the oldest (the manifests' own startTime orders them).
    for (const [n, id] of ids.entries()) {
      const m = (await a.store.getManifest(id))!;
      await a.store.putManifest({ ...m, startTime: new Date(Date.UTC(2026, 0, 1) + n * 1000).toISOString() });
    }

    const b = await open(dir, { maxClientTokens: 2 });
    expect((await start(b.d, { VolumeSize: 1, ClientToken: 't3' })).SnapshotId).toBe(ids[2]);
    expect((await start(b.d, { VolumeSize: 1, ClientToken: 't2' })).SnapshotId).toBe(ids[1]);
    expect((await start(b.d, { VolumeSize: 1, ClientToken: 't1' })).SnapshotId).not.toBe(ids[0]); // past the bound: a new snapshot
  });

  it('a manifest written before tokens were recorded (no clientToken) loads as before; its token is simply not known', async () => {
    const dir = tmp();
    const a = await open(dir);
    const r = await start(a.d, { VolumeSize: 1, ClientToken: 'legacy' });
    await a.d.completeSnapshot({ SnapshotId: r.SnapshotId as string, ChangedBlocksCount: 0 });
    await a.close();
    const { clientToken: _t, ...old } = (await a.store.getManifest(r.SnapshotId as string))!;
    await a.store.putManifest(old);

    const b = await open(dir);
    expect((await b.store.getManifest(r.SnapshotId as string))!.state).toBe('completed');
    expect((await start(b.d, { VolumeSize: 1, ClientToken: 'legacy' })).SnapshotId).not.toBe(r.SnapshotId);
  });
});
