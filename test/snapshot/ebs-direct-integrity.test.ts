import { createHash, randomBytes } from 'node:crypto';
import { utimesSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Caller } from '../../src/kms/types.js';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { SnapshotGc } from '../../src/snapshot/gc.js';
import { EbsDirect, MAX_PENDING_PER_PARTY, MAX_PENDING_SNAPSHOTS, PENDING_MANIFEST_EVERY_MS, type Scheduler } from '../../src/snapshot/ebs-direct.js';
import { parsePutSnapshotBlock, parseStartSnapshot } from '../../src/snapshot/ebs-direct-input.js';
import type { SnapshotManifest } from '../../src/snapshot/types.js';
import { tempDirPerTest } from '../helpers/temp-dir.js';
import { storeWith } from './in-process-host.js';

/**
 * Integrity of snapshots written through the EBS direct APIs, with a shared
 * store and another host's collector: the pending manifest is saved by a
 * timer, CompleteSnapshot refuses puts while it writes and checks its blocks
 * are present, the pending limit holds under concurrency, pins are one per
 * index, and a put refreshes the age of a block already stored. Unencrypted
 * snapshots (KMS is not called for them), a real directory store, the real
 * collector, an injected clock and timer.
 */
const BLOCK = 512 * 1024;
const HOUR = 3_600_000;
const ACCOUNT = '111122223333';
const caller = { type: 'Root', arn: `arn:aws:iam::${ACCOUNT}:root`, accountId: ACCOUNT } as unknown as Caller;
const hex = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const putReq = (snap: string, index: number, data: Buffer) => parsePutSnapshotBlock({
  SnapshotId: snap, BlockIndex: index, BlockData: data, DataLength: BLOCK, Checksum: createHash('sha256').update(data).digest('base64'), ChecksumAlgorithm: 'SHA256',
});

const tmp = tempDirPerTest('ebsd-ebs-integrity-');
// Registered after the directories' afterEach, so it runs before it (vitest runs
// afterEach hooks in reverse order, sequence.hooks 'stack'): the EbsDirect instances
// close before their directories go.
const closers: (() => void)[] = [];
afterEach(() => {
  for (const c of closers.splice(0)) c();
});

/** A timer the test fires: each scheduled call is kept with its delay until run() or cancel. */
class TestTimers {
  readonly calls: { fn: () => Promise<void>; ms: number; cancelled: boolean; ran: boolean }[] = [];
  readonly schedule: Scheduler = (fn, ms) => {
    const c = { fn, ms, cancelled: false, ran: false };
    this.calls.push(c);
    return { cancel: () => { c.cancelled = true; } };
  };
  get live(): TestTimers['calls'] {
    return this.calls.filter((c) => !c.cancelled && !c.ran);
  }
  async runDue(): Promise<number> {
    const due = this.live;
    for (const c of due) {
      c.ran = true;
      await c.fn();
    }
    return due.length;
  }
}

async function setup(o: { maxPending?: number; maxPendingPerParty?: number; maxClientTokens?: number; gc?: boolean } = {}) {
  const dir = tmp();
  const store = await DirSnapshotStore.open(join(dir, 'snapshots'));
  const gc = new SnapshotGc(store);
  const timers = new TestTimers();
  const clock = { now: Date.now() };
  // No KMS here: plaintext snapshots, as a daemon started with --allow-unencrypted begins them.
  const d = new EbsDirect({
    store, pendingDir: join(dir, 'pending'), keys: {} as never, xts: {} as never, accountId: ACCOUNT, region: 'us-east-1', allowUnencrypted: true,
    now: () => clock.now, schedule: timers.schedule, pin: (h) => gc.pin(h), ...(o.maxPending !== undefined ? { maxPending: o.maxPending } : {}),
    ...(o.maxClientTokens !== undefined ? { maxClientTokens: o.maxClientTokens } : {}),
    ...(o.maxPendingPerParty !== undefined ? { maxPendingPerParty: o.maxPendingPerParty } : {}),
  });
  closers.push(() => d.close());
  return { dir, store, gc, timers, clock, d };
}

async function refusal(p: Promise<unknown>): Promise<{ awsName?: string; reason?: string; message: string }> {
  const e = await p.then(() => undefined, (x: unknown) => x);
  expect(e, 'expected a refusal').toBeDefined();
  return e as { awsName?: string; reason?: string; message: string };
}

describe('EBS direct APIs: snapshot integrity', () => {
  it('a block put just before an idle gap is named by the pending manifest within the interval, so another host\'s collector keeps it', async () => {
    const { store, timers, clock, d } = await setup();
    const snap = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1, Timeout: 4320 }), caller)).SnapshotId as string;
    expect(timers.live).toHaveLength(0); // nothing unsaved yet
    const a = randomBytes(BLOCK);
    const b = randomBytes(BLOCK);
    await d.putSnapshotBlock(putReq(snap, 0, a), caller);
    await d.putSnapshotBlock(putReq(snap, 5, b), caller);
    // One save scheduled for both puts, within the interval; not written yet.
    expect(timers.live.map((c) => c.ms)).toEqual([PENDING_MANIFEST_EVERY_MS]);
    expect((await store.getManifest(snap))!.blocks).toEqual([]);
    clock.now += PENDING_MANIFEST_EVERY_MS;
    expect(await timers.runDue()).toBe(1);
    expect((await store.getManifest(snap))!).toMatchObject({ state: 'pending', blocks: [[0, hex(a)], [5, hex(b)]] });
    expect(timers.live).toHaveLength(0); // saved: no timer until the next put

    // Two idle hours; another daemon sharing the store (its own pins, clock two hours on) sweeps.
    clock.now += 2 * HOUR;
    const otherHost = new SnapshotGc(store, { now: () => Date.now() + 2 * HOUR });
    await otherHost.sweep();
    expect(await store.hasBlock(hex(a))).toBe(true);
    expect(await store.hasBlock(hex(b))).toBe(true);

    // A put then CompleteSnapshot before the timer fires: the timer is cancelled, the completed manifest names all.
    const c = randomBytes(BLOCK);
    await d.putSnapshotBlock(putReq(snap, 7, c), caller);
    const timer = timers.live;
    expect(timer).toHaveLength(1);
    await d.completeSnapshot({ SnapshotId: snap, ChangedBlocksCount: 3 }, caller);
    expect(timer[0]!.cancelled).toBe(true);
    expect((await store.getManifest(snap))!).toMatchObject({ state: 'completed', blocks: [[0, hex(a)], [5, hex(b)], [7, hex(c)]] });

    // close() cancels the timer of a snapshot left pending.
    const other = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), caller)).SnapshotId as string;
    await d.putSnapshotBlock(putReq(other, 0, randomBytes(BLOCK)), caller);
    const left = timers.live;
    expect(left).toHaveLength(1);
    d.close();
    expect(left[0]!.cancelled).toBe(true);
  });

  it('CompleteSnapshot refuses while a written block is missing from the store; the snapshot stays pending and completes once the block is put again', async () => {
    const { store, d } = await setup();
    const snap = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), caller)).SnapshotId as string;
    const a = randomBytes(BLOCK);
    const b = randomBytes(BLOCK);
    await d.putSnapshotBlock(putReq(snap, 2, a), caller);
    await d.putSnapshotBlock(putReq(snap, 3, b), caller);
    // Freed by a collector that did not see it named (another host, an older daemon).
    await store.deleteBlock(hex(b));
    const e = await refusal(d.completeSnapshot({ SnapshotId: snap, ChangedBlocksCount: 2 }, caller));
    expect(e.awsName, e.message).toBe('InternalServerException');
    expect(e.message).toMatch(/block\(s\) 3 is no longer in .*put those blocks again/);
    expect((await store.getManifest(snap))!.state).toBe('pending');
    // Put again, then complete: every block named is readable.
    await d.putSnapshotBlock(putReq(snap, 3, b), caller);
    expect(await d.completeSnapshot({ SnapshotId: snap, ChangedBlocksCount: 2 }, caller)).toEqual({ Status: 'completed' });
    const m = (await store.getManifest(snap))!;
    expect(m).toMatchObject({ state: 'completed', blocks: [[2, hex(a)], [3, hex(b)]] });
    for (const [, h] of m.blocks) expect(await store.hasBlock(h)).toBe(true);
    expect(await store.hasBlock(m.header!)).toBe(true);

    // The header gone: refused too (it cannot be put again through the API), still pending.
    const bare = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), caller)).SnapshotId as string;
    await store.deleteBlock((await store.getManifest(bare))!.header!);
    const h = await refusal(d.completeSnapshot({ SnapshotId: bare, ChangedBlocksCount: 0 }, caller));
    expect(h.awsName, h.message).toBe('InternalServerException');
    expect(h.message).toMatch(/its header is no longer in .*start the snapshot again/);
    expect((await store.getManifest(bare))!.state).toBe('pending');
  });

  it('a CompleteSnapshot begun before the Timeout that fails after it leaves the snapshot pending, with a Timeout from the failure: its retry completes it', async () => {
    const { store, timers, clock, d } = await setup();
    const orig = store.putManifest.bind(store);
    let entered!: () => void;
    const inside = new Promise<void>((r) => (entered = r));
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let fail = true;
    store.putManifest = async (m: SnapshotManifest) => {
      if (m.state === 'completed' && fail) {
        fail = false;
        entered();
        await gate; // the write takes long (a KMS wait lasts up to 2 minutes), then fails
        throw new Error('store unavailable (test)');
      }
      return orig(m);
    };
    const snap = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1, Timeout: 10 }), caller)).SnapshotId as string;
    await d.putSnapshotBlock(putReq(snap, 0, randomBytes(BLOCK)), caller);
    clock.now += 9 * 60_000; // a minute before the Timeout
    const completing = d.completeSnapshot({ SnapshotId: snap, ChangedBlocksCount: 1 }, caller);
    await inside;
    clock.now += 2 * 60_000; // the Timeout passes while the completion writes
    release();
    await expect(completing).rejects.toThrow(/store unavailable/);
    await timers.runDue(); // the Timeout sweep
    expect((await store.getManifest(snap))!.state).toBe('pending');
    expect(await d.completeSnapshot({ SnapshotId: snap, ChangedBlocksCount: 1 }, caller)).toEqual({ Status: 'completed' });
    expect((await store.getManifest(snap))!.state).toBe('completed');
  });

  it('another identity\'s CompleteSnapshot Checksum is refused unread, right or wrong, pending or completed (no answer to a guess at the content); without Checksum it completes', async () => {
    const { d } = await setup();
    const other = { ...caller, type: 'IAMUser', arn: `arn:aws:iam::${ACCOUNT}:user/alice`, principalId: 'AIDAALICE' } as unknown as Caller;
    const snap = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), caller)).SnapshotId as string;
    const data = randomBytes(BLOCK);
    await d.putSnapshotBlock(putReq(snap, 0, data), caller);
    const right = createHash('sha256').update(createHash('sha256').update(data).digest()).digest('base64');
    const wrong = createHash('sha256').update('guess').digest('base64');
    const ask = (c: string) => ({ SnapshotId: snap, ChangedBlocksCount: 1, Checksum: c, ChecksumAlgorithm: 'SHA256' as const, ChecksumAggregationMethod: 'LINEAR' as const });
    for (const phase of ['pending', 'completed']) {
      const answers = [await refusal(d.completeSnapshot(ask(right), other)), await refusal(d.completeSnapshot(ask(wrong), other))];
      for (const a of answers) expect(a.message).toMatch(/was begun by another identity.*was not read/);
      expect(answers[0]!.message).toBe(answers[1]!.message);
      if (phase === 'pending') {
        // Still pending: the right guess sealed nothing. The identity that began it completes it, its Checksum compared.
        await expect(d.completeSnapshot(ask(wrong), caller)).rejects.toThrow(/does not match/);
        expect(await d.completeSnapshot(ask(right), caller)).toEqual({ Status: 'completed' });
      }
    }
    expect(await d.completeSnapshot({ SnapshotId: snap, ChangedBlocksCount: 1 }, other)).toEqual({ Status: 'completed' });
    expect(await d.completeSnapshot(ask(right), caller)).toEqual({ Status: 'completed' });
  });

  it('PutSnapshotBlock during CompleteSnapshot is refused (not acknowledged and dropped); a failed manifest write leaves the snapshot pending and writable', async () => {
    const { store, gc, d } = await setup();
    const orig = store.putManifest.bind(store);
    let hold: { entered: () => void; gate: Promise<void> } | undefined;
    let failNext = false;
    store.putManifest = async (m: SnapshotManifest) => {
      if (m.state === 'completed' && failNext) {
        failNext = false;
        throw new Error('store unavailable (test)');
      }
      if (m.state === 'completed' && hold) {
        hold.entered();
        await hold.gate;
      }
      return orig(m);
    };
    const snap = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), caller)).SnapshotId as string;
    const a = randomBytes(BLOCK);
    await d.putSnapshotBlock(putReq(snap, 0, a), caller);

    // The manifest write fails: still pending, still writable, and completes later with every block.
    failNext = true;
    await expect(d.completeSnapshot({ SnapshotId: snap, ChangedBlocksCount: 1 }, caller)).rejects.toThrow(/store unavailable/);
    expect((await store.getManifest(snap))!.state).toBe('pending');
    const b = randomBytes(BLOCK);
    await d.putSnapshotBlock(putReq(snap, 1, b), caller);

    // CompleteSnapshot held inside its manifest write: a put now is refused, and so is a second complete.
    let entered!: () => void;
    const inside = new Promise<void>((r) => (entered = r));
    let open!: () => void;
    hold = { entered, gate: new Promise<void>((r) => (open = r)) };
    const completing = d.completeSnapshot({ SnapshotId: snap, ChangedBlocksCount: 2 }, caller);
    await inside;
    const c = randomBytes(BLOCK);
    const e = await refusal(d.putSnapshotBlock(putReq(snap, 2, c), caller));
    expect(e.awsName, e.message).toBe('ValidationException');
    expect(e.reason).toBe('INVALID_SNAPSHOT_ID');
    expect(e.message).toMatch(/being completed/);
    // A second complete asking for something else is refused naming it; one asking the same shares the first's answer.
    const other = await refusal(d.completeSnapshot({ SnapshotId: snap, ChangedBlocksCount: 3 }, caller));
    expect(other.reason).toBe('INVALID_PARAMETER_VALUE');
    expect(other.message).toMatch(/being completed .*ChangedBlocksCount is 3, not 2/);
    const repeat = d.completeSnapshot({ SnapshotId: snap, ChangedBlocksCount: 2 }, caller);
    expect(gc.isPinned(hex(c))).toBe(false);
    open();
    expect(await completing).toEqual({ Status: 'completed' });
    expect(await repeat).toEqual({ Status: 'completed' });
    expect((await store.getManifest(snap))!).toMatchObject({ state: 'completed', blocks: [[0, hex(a)], [1, hex(b)]], changedBlocks: 2 });
    // Completed: no pin left, the manifest holds the blocks.
    expect(gc.isPinned(hex(a)) || gc.isPinned(hex(b))).toBe(false);
  });

  it('StartSnapshot\'s pending limit holds for concurrent starts; a ClientToken retried concurrently gets one snapshot, and after completion still answers the original result', async () => {
    const { store, d } = await setup({ maxPending: 2 });
    const got = await Promise.allSettled(Array.from({ length: 10 }, () => d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), caller)));
    const ok = got.filter((r): r is PromiseFulfilledResult<Record<string, unknown>> => r.status === 'fulfilled');
    expect(ok).toHaveLength(2);
    for (const r of got) if (r.status === 'rejected') expect((r.reason as { awsName?: string }).awsName).toBe('ConcurrentLimitExceededException');
    expect((await store.listManifests()).filter((m) => m.state === 'pending')).toHaveLength(2);
    await d.completeSnapshot({ SnapshotId: ok[0]!.value.SnapshotId as string, ChangedBlocksCount: 0 }, caller);

    // One slot free: two concurrent retries with one token take it once, and answer the same snapshot.
    const req = parseStartSnapshot({ VolumeSize: 1, ClientToken: 'retry-1' });
    const [x, y] = await Promise.all([d.startSnapshot(req, caller), d.startSnapshot(req, caller)]);
    expect(y.SnapshotId).toBe(x.SnapshotId);
    expect((await store.listManifests()).filter((m) => m.state === 'pending')).toHaveLength(2);
    // Completed: a retry with the token answers the original result and starts nothing (AWS: a retry
    // "after it has completed successfully" returns the original result); other parameters: ConflictException.
    await d.completeSnapshot({ SnapshotId: x.SnapshotId as string, ChangedBlocksCount: 0 }, caller);
    const before = (await store.listManifests()).length;
    const again = await d.startSnapshot(req, caller);
    expect(again).toEqual(x);
    expect((await store.listManifests()).length).toBe(before);
    await expect(d.startSnapshot(parseStartSnapshot({ VolumeSize: 2, ClientToken: 'retry-1' }), caller)).rejects.toMatchObject({ awsName: 'ConflictException' });
  });

  it('one principal holds at most its share of the pending snapshots: past it its StartSnapshot is ConcurrentLimitExceededException, while another principal still starts one', async () => {
    const { d } = await setup({ maxPending: 8, maxPendingPerParty: 2 });
    const hog: Caller = { ...caller, arn: `arn:aws:iam::${ACCOUNT}:user/hog`, principalId: 'AIDAHOG' };
    const other: Caller = { ...caller, arn: `arn:aws:iam::${ACCOUNT}:user/other`, principalId: 'AIDAOTHER' };
    // Started all at once and one after the other: the share holds both ways.
    const got = await Promise.allSettled(Array.from({ length: 10 }, () => d.startSnapshot(parseStartSnapshot({ VolumeSize: 1, Timeout: 4320 }), hog)));
    expect(got.filter((r) => r.status === 'fulfilled')).toHaveLength(2);
    for (const r of got) if (r.status === 'rejected') expect((r.reason as { awsName?: string }).awsName).toBe('ConcurrentLimitExceededException');
    await expect(d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), hog)).rejects.toMatchObject({ awsName: 'ConcurrentLimitExceededException' });
    const mine = await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), other);
    expect(mine.Status).toBe('pending');
    // Completing one of the hog's gives it back one slot.
    const first = got.find((r): r is PromiseFulfilledResult<Record<string, unknown>> => r.status === 'fulfilled')!.value;
    await d.completeSnapshot({ SnapshotId: first.SnapshotId as string, ChangedBlocksCount: 0 }, caller);
    expect((await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), hog)).Status).toBe('pending');
  });

  it('the sessions one identity mints share its share: minting sessions gets no more pending snapshots (src/kms/caller-party.ts)', async () => {
    const { d } = await setup({ maxPending: 8, maxPendingPerParty: 2 });
    const origin = `arn:aws:iam::${ACCOUNT}:user/minter`;
    const session = (n: number): Caller => ({ ...caller, type: 'AssumedRole', arn: `arn:aws:sts::${ACCOUNT}:assumed-role/backup/s${n}`, principalId: `AROABACKUP:s${n}`, origin });
    expect((await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), session(1))).Status).toBe('pending');
    expect((await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), session(2))).Status).toBe('pending');
    const e = await refusal(d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), session(3)));
    expect(e.awsName).toBe('ConcurrentLimitExceededException');
    expect(e.message).toContain('assumed-role/backup/s3 (with the other sessions minted by the same identity) already has 2 snapshots pending');
    expect(e.message).not.toContain(origin); // whoever holds the session is not told who minted it
    // The origin itself, calling with its own key, is the same party; another user is not.
    expect((await refusal(d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), { ...caller, arn: origin, principalId: 'AIDAMINTER' }))).awsName).toBe('ConcurrentLimitExceededException');
    expect((await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), { ...caller, arn: `arn:aws:iam::${ACCOUNT}:user/other`, principalId: 'AIDAOTHER' })).Status).toBe('pending');
  });

  it('by default one principal may hold a quarter of the pending snapshots (MAX_PENDING_PER_PARTY of MAX_PENDING_SNAPSHOTS)', () => {
    expect(MAX_PENDING_PER_PARTY).toBe(MAX_PENDING_SNAPSHOTS / 4);
  });

  it('past the ClientToken bound the oldest token of a snapshot no longer pending is forgotten, never a pending one', async () => {
    const { store, d } = await setup({ maxClientTokens: 3 });
    const start = (token: string) => d.startSnapshot(parseStartSnapshot({ VolumeSize: 1, ClientToken: token }), caller);
    const a = await start('a'); // stays pending: a long upload
    const b = await start('b');
    const c = await start('c');
    for (const x of [b, c]) await d.completeSnapshot({ SnapshotId: x.SnapshotId as string, ChangedBlocksCount: 0 }, caller);
    await start('d'); // past the bound: 'b' goes, not the older 'a'
    expect((await start('a')).SnapshotId).toBe(a.SnapshotId);
    expect((await start('c')).SnapshotId).toBe(c.SnapshotId);
    const before = (await store.listManifests()).length;
    expect((await start('b')).SnapshotId).not.toBe(b.SnapshotId); // forgotten: a new snapshot
    expect((await store.listManifests()).length).toBe(before + 1);
  });

  it('one pin per index: writing an index again releases the old block\'s pin; completion releases the rest', async () => {
    const { gc, d } = await setup();
    const snap = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), caller)).SnapshotId as string;
    const a = randomBytes(BLOCK);
    const b = randomBytes(BLOCK);
    await d.putSnapshotBlock(putReq(snap, 4, a), caller);
    expect(gc.isPinned(hex(a))).toBe(true);
    await d.putSnapshotBlock(putReq(snap, 4, b), caller);
    expect(gc.isPinned(hex(a))).toBe(false);
    expect(gc.isPinned(hex(b))).toBe(true);
    // The same block again at the same index: still exactly one pin (released once by completion).
    await d.putSnapshotBlock(putReq(snap, 4, b), caller);
    await d.completeSnapshot({ SnapshotId: snap, ChangedBlocksCount: 1 }, caller);
    expect(gc.isPinned(hex(b))).toBe(false);
  });

  it('a put of a block already in the store refreshes its age, so another host\'s collector keeps it until the manifest names it', async () => {
    const { dir, store, d } = await setup();
    const data = randomBytes(BLOCK);
    const hash = hex(data);
    // An orphan two hours old (of a snapshot deleted earlier, waiting for a sweep).
    await store.putBlock(hash, data);
    const old = new Date(Date.now() - 2 * HOUR);
    utimesSync(join(dir, 'snapshots', 'blocks', hash.slice(0, 2), hash), old, old);
    expect((await store.blockModifiedMs(hash))!).toBeLessThan(Date.now() - HOUR);
    const snap = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), caller)).SnapshotId as string;
    await d.putSnapshotBlock(putReq(snap, 0, data), caller);
    expect((await store.blockModifiedMs(hash))!).toBeGreaterThan(old.getTime() + HOUR);
    // Another daemon (its own pins) sweeps before our manifest names the block.
    await new SnapshotGc(store).sweep();
    expect(await store.hasBlock(hash)).toBe(true);
    await d.completeSnapshot({ SnapshotId: snap, ChangedBlocksCount: 1 }, caller);
    expect(Buffer.from(await store.getBlock(hash)).equals(data)).toBe(true);
  });

  it('the parent deleted while a child StartSnapshot is under way: the child keeps the parent\'s blocks, or is refused when the delete came first', async () => {
    const dir = tmp();
    const real = await DirSnapshotStore.open(join(dir, 'snapshots'));
    const gc = new SnapshotGc(real, { graceMs: 0 });
    // Runs once, at the chosen moment: the daemon's DeleteSnapshot of the parent, its checks passed.
    let during: { at: 'header-put' | 'pin'; id: string } | undefined;
    const deleteNow = async (at: 'header-put' | 'pin'): Promise<void> => {
      if (during?.at !== at) return;
      const id = during.id;
      during = undefined;
      const r = await gc.deleteSnapshot(id);
      expect(r.deleted).toBe(true);
      await r.collected; // its blocks collected at this moment too (the collector does it after the delete resolves)
    };
    const store = storeWith(real, { putBlock: async (h, b) => { await deleteNow('header-put'); return real.putBlock(h, b); } });
    const d = new EbsDirect({
      store, pendingDir: join(dir, 'pending'), keys: {} as never, xts: {} as never, accountId: ACCOUNT, region: 'us-east-1', allowUnencrypted: true,
      pin: async (h) => { await deleteNow('pin'); return gc.pin(h); },
    });
    closers.push(() => d.close());
    const parentOf = async (): Promise<{ snap: string; blocks: Buffer[] }> => {
      const snap = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), caller)).SnapshotId as string;
      const blocks = [randomBytes(BLOCK), randomBytes(BLOCK)];
      for (const [i, b] of blocks.entries()) await d.putSnapshotBlock(putReq(snap, i, b), caller);
      await d.completeSnapshot({ SnapshotId: snap, ChangedBlocksCount: 2 }, caller);
      return { snap, blocks };
    };

    // The delete lands after the child read its parent (during the child's header put): the child still completes
    // naming the parent's blocks, and they are all in the store.
    const p1 = await parentOf();
    during = { at: 'header-put', id: p1.snap };
    const child = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1, ParentSnapshotId: p1.snap }), caller)).SnapshotId as string;
    expect(during).toBeUndefined(); // the delete ran
    expect(await real.getManifest(p1.snap)).toBeUndefined();
    expect(await d.completeSnapshot({ SnapshotId: child, ChangedBlocksCount: 0 }, caller)).toEqual({ Status: 'completed' });
    const m = (await real.getManifest(child))!;
    expect(m.blocks.map(([, h]) => h)).toEqual(p1.blocks.map(hex));
    for (const b of p1.blocks) expect(Buffer.from(await real.getBlock(hex(b))).equals(b)).toBe(true);
    expect((await gc.sweep()).deleted).toBe(0);

    // The delete lands before the child's second read of its parent: refused as not found, nothing left pending.
    const p2 = await parentOf();
    during = { at: 'pin', id: p2.snap };
    const e = await refusal(d.startSnapshot(parseStartSnapshot({ VolumeSize: 1, ParentSnapshotId: p2.snap }), caller));
    expect(e.awsName).toBe('ResourceNotFoundException');
    expect((await real.listManifests()).filter((x) => x.state === 'pending')).toHaveLength(0);
  });
});
