/**
 * The snapshot store's collector (src/snapshot/gc.ts) on real stores: the
 * directory store and the S3 store on s3rver. Deleting a snapshot frees only
 * what no other manifest names; orphans are swept; pinned and young blocks
 * stay; a manifest another daemon writes during a sweep saves its blocks; a
 * collector killed with SIGKILL (at the crash point between manifest and
 * blocks, or anywhere in a sweep) leaves no manifest naming a missing block.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, symlinkSync, truncateSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { SnapshotError } from '../../src/snapshot/errors.js';
import { SnapshotGc, type CollectableStore } from '../../src/snapshot/gc.js';
import { MANIFEST_MAX_BYTES, manifestHashes } from '../../src/snapshot/manifest-check.js';
import { S3SnapshotStore } from '../../src/snapshot/s3-store.js';
import type { SnapshotManifest } from '../../src/snapshot/types.js';
import { ensureBuilt } from '../e2e/helpers.js';
import { S3RVER_CREDENTIALS, startS3Server, type S3Server } from './s3-helpers.js';
import { block, manifest, snapId } from './store-suite.js';

const HOUR = 3_600_000;
/** A collector whose clock runs two hours ahead: everything stored now is past a one-hour grace. */
const later = (store: CollectableStore): SnapshotGc => new SnapshotGc(store, { graceMs: HOUR, now: () => Date.now() + 2 * HOUR });

async function blocksOf(store: CollectableStore): Promise<string[]> {
  const out: string[] = [];
  for await (const h of store.listBlocks()) out.push(h);
  return out.sort();
}

async function putSnapshot(store: CollectableStore, hashes: { hash: string; data: Buffer }[], over: Partial<SnapshotManifest> = {}): Promise<string> {
  for (const b of hashes) await store.putBlock(b.hash, b.data);
  const id = snapId();
  const [header, ...data] = hashes;
  await store.putManifest(manifest(id, data.map((b, i) => [i * 3, b.hash]), { header: header!.hash, ...over }));
  return id;
}

/** No manifest names a block the store does not have. */
async function expectConsistent(store: CollectableStore): Promise<void> {
  const have = new Set(await blocksOf(store));
  for (const m of await store.listManifests()) for (const h of manifestHashes(m)) expect(have.has(h), `${m.snapshotId} names ${h}`).toBe(true);
}

let server: S3Server | undefined;
beforeAll(async () => {
  server = await startS3Server();
});
afterAll(async () => {
  await server?.stop();
});

let n = 0;
const stores: [string, () => Promise<{ store: CollectableStore; close: () => Promise<void> }>][] = [
  ['DirSnapshotStore', async () => {
    const dir = mkdtempSync('/tmp/ebsd-gc-');
    return { store: await DirSnapshotStore.open(join(dir, 'snapshots')), close: async () => rmSync(dir, { recursive: true, force: true }) };
  }],
  ['S3SnapshotStore', async () => {
    const store = await S3SnapshotStore.open({ bucket: server!.bucket, prefix: `gc${n++}`, endpoint: server!.endpoint, credentials: S3RVER_CREDENTIALS });
    return { store, close: async () => store.close() };
  }],
];

describe.each(stores)('collector on %s', (_name, open) => {
  const withStore = (title: string, fn: (store: CollectableStore) => Promise<void>): void => {
    test(title, async () => {
      const { store, close } = await open();
      try {
        await fn(store);
      } finally {
        await close();
      }
    });
  };

  withStore('deleting a snapshot frees its own blocks; a block another manifest names survives', async (store) => {
    const [shared, onlyA, onlyB, headerA] = Array.from({ length: 4 }, () => block(4096));
    const a = await putSnapshot(store, [headerA!, shared!, onlyA!]);
    const b = await putSnapshot(store, [shared!, onlyB!]); // b's header is `shared` too: headers are marked like blocks
    const gc = later(store);
    const r = await gc.deleteSnapshot(a);
    expect(r.deleted).toBe(true);
    // Its blocks are collected after the answer, in the background.
    expect(await r.collected).toMatchObject({ deleted: 2 });
    expect(await store.getManifest(a)).toBeUndefined();
    expect(await blocksOf(store)).toEqual([shared!.hash, onlyB!.hash].sort());
    expect((await store.getBlock(shared!.hash)).equals(shared!.data)).toBe(true);
    await expectConsistent(store);
    expect((await gc.deleteSnapshot(a)).deleted).toBe(false);
    await (await gc.deleteSnapshot(b)).collected;
    expect(await blocksOf(store)).toEqual([]);
  });

  withStore('a snapshot is deleted even while another manifest cannot be read: its blocks wait for a later sweep, which frees them once it can', async (store) => {
    const [headerA, onlyA, headerB, onlyB] = Array.from({ length: 4 }, () => block(4096));
    const a = await putSnapshot(store, [headerA!, onlyA!]);
    const b = await putSnapshot(store, [headerB!, onlyB!]);
    // b's manifest does not read back (a corrupt object, or one refused for its MAC): every mark stops on it.
    const broken: CollectableStore = Object.assign(Object.create(store) as CollectableStore, {
      getManifest: async (id: string) => {
        if (id === b) throw new SnapshotError('SNAPSHOT_CORRUPT', `snapshot manifest ${b}: does not read back`);
        return store.getManifest(id);
      },
    });
    const r = await later(broken).deleteSnapshot(a);
    expect(r).toEqual({ deleted: true, collected: expect.any(Promise) });
    // The collection fails on the partial mark, logged: undefined, the delete stands.
    expect(await r.collected).toBeUndefined();
    expect(await store.getManifest(a)).toBeUndefined();
    // Nothing freed on a partial mark: a's blocks are still there, b's too.
    expect(await blocksOf(store)).toEqual([headerA!.hash, onlyA!.hash, headerB!.hash, onlyB!.hash].sort());
    await expect(later(broken).sweep()).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT' });
    // Once b reads back, a sweep frees what only a named.
    expect(await later(store).sweep()).toMatchObject({ deleted: 2 });
    expect(await blocksOf(store)).toEqual([headerB!.hash, onlyB!.hash].sort());
  });

  withStore('a sweep frees orphans and keeps every block of every manifest, pending ones included', async (store) => {
    const kept = [block(1024), block(1024)];
    const pendingOfOtherDaemon = [block(1024), block(1024)];
    const orphans = [block(1024), block(1024), block(1024)];
    await putSnapshot(store, kept);
    // Began (on the collector's clock, two hours ahead) half an hour ago: after the orphans were put, so it cannot own them.
    await putSnapshot(store, pendingOfOtherDaemon, { state: 'pending', progress: 40, startTime: new Date(Date.now() + 1.5 * HOUR).toISOString() });
    for (const o of orphans) await store.putBlock(o.hash, o.data);
    const r = await later(store).sweep();
    expect(r).toMatchObject({ manifests: 2, examined: 7, deleted: 3, keptYoung: 0, keptPinned: 0 });
    expect(await blocksOf(store)).toEqual([...kept, ...pendingOfOtherDaemon].map((b) => b.hash).sort());
  });

  withStore('blocks put since another daemon\'s pending snapshot began are kept past the grace period, until it completes', async (store) => {
    const started = new Date(Date.now() - 60_000).toISOString();
    const id = snapId();
    await store.putManifest(manifest(id, [], { state: 'pending', progress: 10, startTime: started }));
    const itsBlocks = [block(1024), block(1024)];
    for (const b of itsBlocks) await store.putBlock(b.hash, b.data);
    const gc = new SnapshotGc(store, { graceMs: HOUR, now: () => Date.now() + 5 * HOUR });
    expect(await gc.sweep()).toMatchObject({ deleted: 0, keptYoung: 2 });
    // It completed naming one of them; the other was a block it ended up not needing.
    await store.putManifest(manifest(id, [[0, itsBlocks[0]!.hash]], { state: 'completed', startTime: started }));
    expect(await gc.sweep()).toMatchObject({ deleted: 1, keptYoung: 0 });
    expect(await blocksOf(store)).toEqual([itsBlocks[0]!.hash]);
  });

  withStore('young blocks are kept until the grace period has passed; pinned ones until released', async (store) => {
    const young = block(1024);
    const pinned = block(1024);
    await store.putBlock(young.hash, young.data);
    await store.putBlock(pinned.hash, pinned.data);
    let clock = Date.now();
    const gc = new SnapshotGc(store, { graceMs: HOUR, now: () => clock });
    const pin = await gc.pin([pinned.hash]);
    expect(gc.isPinned(pinned.hash)).toBe(true);
    expect(await gc.sweep()).toMatchObject({ deleted: 0, keptYoung: 1, keptPinned: 1 });
    clock += 2 * HOUR;
    expect(await gc.sweep()).toMatchObject({ deleted: 1, keptYoung: 0, keptPinned: 1 });
    expect(await blocksOf(store)).toEqual([pinned.hash]);
    pin.release();
    pin.release(); // twice is once
    expect(gc.isPinned(pinned.hash)).toBe(false);
    expect(await gc.sweep()).toMatchObject({ deleted: 1 });
    expect(await blocksOf(store)).toEqual([]);
  });

  withStore('blocks a live source names (creates under way) are kept like pinned ones, asked at each sweep', async (store) => {
    const b = block(1024);
    await store.putBlock(b.hash, b.data);
    let live: string[] = [b.hash];
    const gc = new SnapshotGc(store, { graceMs: HOUR, now: () => Date.now() + 2 * HOUR, live: () => live });
    expect(await gc.sweep()).toMatchObject({ deleted: 0, keptPinned: 1 });
    live = [];
    expect(await gc.sweep()).toMatchObject({ deleted: 1, keptPinned: 0 });
  });

  withStore('a manifest written by another daemon while a sweep runs saves the blocks it names', async (store) => {
    const late = block(1024);
    await store.putBlock(late.hash, late.data);
    let marks = 0;
    const lateId = snapId();
    // The other daemon's manifest lands between the sweep's first and second mark.
    const racing: CollectableStore = Object.assign(Object.create(store) as CollectableStore, {
      listManifestIds: async () => {
        if (marks++ === 1) await store.putManifest(manifest(lateId, [[0, late.hash]], { state: 'pending' }));
        return store.listManifestIds();
      },
    });
    const r = await later(racing).sweep();
    expect(marks).toBe(2);
    expect(r.deleted).toBe(0);
    expect(await blocksOf(store)).toEqual([late.hash]);
    await expectConsistent(store);
  });

  withStore('a block another daemon touches after its age was read is kept: ages are read again just before each delete', async (store) => {
    const GRACE = 2000;
    // Another daemon's putUnlessStored: a touch (the directory store's utimes; on S3 a copy onto
    // itself, which s3rver does not date anew), and the put EBS direct's PutSnapshotBlock does.
    const refresh = async (b: { hash: string; data: Buffer }): Promise<void> => {
      expect(await store.touchBlock!(b.hash)).toBe(true);
      await store.putBlock(b.hash, b.data);
    };
    const swept = block(1024);
    const freed = block(1024);
    const other = block(1024);
    await store.putBlock(swept.hash, swept.data);
    await store.putBlock(other.hash, other.data);
    const id = await putSnapshot(store, [freed, block(1024)]);
    await new Promise((r) => setTimeout(r, GRACE + 600)); // every block is past the grace period
    // The sweep's listing ends (minutes on a big shared store); then another daemon touches
    // `swept` (putUnlessStored: present, not put again) for a create whose pending manifest does
    // not name it yet.
    const sweeping: CollectableStore = Object.assign(Object.create(store) as CollectableStore, {
      listBlocksWithAge: async function* () {
        for await (const b of store.listBlocksWithAge()) yield b;
        await refresh(swept);
      },
    });
    const r = await new SnapshotGc(sweeping, { graceMs: GRACE }).sweep();
    expect(r).toMatchObject({ deleted: 1, keptYoung: 1 });
    expect(await store.hasBlock(swept.hash)).toBe(true);
    expect(await store.hasBlock(other.hash)).toBe(false);
    // DeleteSnapshot: the age of `freed` is read, then another daemon touches it.
    let touched = false;
    const deleting: CollectableStore = Object.assign(Object.create(store) as CollectableStore, {
      blockModifiedMs: async (h: string) => {
        const age = await store.blockModifiedMs(h);
        if (h === freed.hash && !touched) {
          touched = true;
          await refresh(freed);
        }
        return age;
      },
    });
    const d = await new SnapshotGc(deleting, { graceMs: GRACE }).deleteSnapshot(id);
    expect(await d.collected).toMatchObject({ deleted: 1, keptYoung: 1 });
    expect(touched).toBe(true);
    expect(await store.hasBlock(freed.hash)).toBe(true);
  });

  withStore('a delete is sent only within the delete window of its age read on a shared store: a late answer keeps the block; an aborted delete leaves it', async (store) => {
    const b = block(1024);
    await store.putBlock(b.hash, b.data);
    // Every age request answered after the window (a slow store, a stalled host): nothing is deleted.
    const slow: CollectableStore = Object.assign(Object.create(store) as CollectableStore, {
      blockModifiedMs: async (h: string) => {
        const age = await store.blockModifiedMs(h);
        await new Promise((r) => setTimeout(r, 150));
        return age;
      },
    });
    const r = await new SnapshotGc(slow, { graceMs: 0, deleteWindowMs: 50, now: () => Date.now() + HOUR }).sweep();
    if (store.singleWriter) {
      // Only this daemon writes the directory store: no other host's touch to wait out, the block goes.
      expect(r).toMatchObject({ deleted: 1 });
      return;
    }
    expect(r).toMatchObject({ deleted: 0, keptYoung: 1 });
    expect(await store.hasBlock(b.hash)).toBe(true);
    // S3: the window's AbortSignal ends the request (and its retries); the object stays.
    if (!store.deleteBlocks) {
      await expect(store.deleteBlock(b.hash, { signal: AbortSignal.abort() })).rejects.toBeDefined();
      expect(await store.hasBlock(b.hash)).toBe(true);
    }
    // Answered in time: freed.
    expect(await new SnapshotGc(store, { graceMs: 0, deleteWindowMs: 5_000, now: () => Date.now() + HOUR }).sweep()).toMatchObject({ deleted: 1 });
    expect(await store.hasBlock(b.hash)).toBe(false);
  });

  withStore('a store shown as shared that has the batch delete: each block goes by the windowed delete, never the batch (it has no time bound)', async (store) => {
    const b = block(1024);
    await store.putBlock(b.hash, b.data);
    const batches: string[][] = [];
    const signals: (AbortSignal | undefined)[] = [];
    const shared: CollectableStore = Object.assign(Object.create(store) as CollectableStore, {
      singleWriter: undefined,
      deleteBlocks: async (hs: string[]) => void batches.push(hs),
      deleteBlock: async (h: string, o: { signal?: AbortSignal } = {}) => {
        signals.push(o.signal);
        await store.deleteBlock(h, o);
      },
    });
    expect(await new SnapshotGc(shared, { graceMs: 0, deleteWindowMs: 5_000, now: () => Date.now() + HOUR }).sweep()).toMatchObject({ deleted: 1 });
    expect(batches).toEqual([]);
    expect(signals).toHaveLength(1);
    expect(signals[0]).toBeInstanceOf(AbortSignal);
    expect(await store.hasBlock(b.hash)).toBe(false);
  });

  withStore('a manifest that cannot be read stops the sweep before anything is deleted', async (store) => {
    const b = block(1024);
    await putSnapshot(store, [b]);
    const orphan = block(1024);
    await store.putBlock(orphan.hash, orphan.data);
    const broken: CollectableStore = Object.assign(Object.create(store) as CollectableStore, {
      listManifestIds: async () => [...(await store.listManifestIds()), 'snap-../x'],
    });
    await expect(later(broken).sweep()).rejects.toMatchObject({ code: 'SNAPSHOT_INVALID_PARAMETER' });
    expect(await blocksOf(store)).toEqual([b.hash, orphan.hash].sort());
  });

  withStore('pin() waits for a delete of that block already under way', async (store) => {
    const b = block(1024);
    await store.putBlock(b.hash, b.data);
    let letGo!: () => void;
    const held = new Promise<void>((r) => (letGo = r));
    let started!: () => void;
    const deleteStarted = new Promise<void>((r) => (started = r));
    const slow: CollectableStore = Object.assign(Object.create(store) as CollectableStore, {
      deleteBlock: async (h: string) => {
        started();
        await held;
        await store.deleteBlock(h);
      },
      // The directory store's bulk delete, which the collector prefers when a store has it.
      ...(store.deleteBlocks
        ? {
            deleteBlocks: async (hs: string[]) => {
              started();
              await held;
              await store.deleteBlocks!(hs);
            },
          }
        : {}),
    });
    const gc = later(slow);
    const sweeping = gc.sweep();
    await deleteStarted;
    let pinned = false;
    const pinning = gc.pin([b.hash]).then((p) => ((pinned = true), p));
    await new Promise((r) => setImmediate(r));
    expect(pinned).toBe(false);
    letGo();
    const pin = await pinning;
    // The block is gone and the pin knows it: whoever pinned it puts it again.
    expect(await store.hasBlock(b.hash)).toBe(false);
    expect((await sweeping).deleted).toBe(1);
    pin.release();
  });
});

describe('collector killed with SIGKILL (directory store)', () => {
  beforeAll(() => ensureBuilt());

  /** gc-child.mjs on `dir`; `onStart(kill)` runs once the child has opened the store and begins. */
  const runChild = (dir: string, args: string[], env: NodeJS.ProcessEnv = {}, onStart?: (kill: () => void) => void) =>
    new Promise<{ signal: NodeJS.Signals | null; out: string }>((res, rej) => {
      const p = spawn(process.execPath, [resolve(import.meta.dirname, 'gc-child.mjs'), dir, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      p.stdout.on('data', (c) => {
        out += c;
        if (out.includes('start') && onStart) {
          const f = onStart;
          onStart = undefined;
          f(() => void p.kill('SIGKILL'));
        }
      });
      p.stderr.on('data', (c) => (out += c));
      p.on('error', rej);
      // 'close', not 'exit': 'exit' may come before the last of its output ("done") is read from the pipes.
      p.on('close', (_code, signal) => res({ signal, out }));
    });

  test('killed between the manifest delete and the block deletes: orphans only, and the next sweep frees them', async () => {
    const dir = mkdtempSync('/tmp/ebsd-gc-kill-');
    try {
      const store = await DirSnapshotStore.open(dir);
      const [shared, a1, a2, b1] = Array.from({ length: 4 }, () => block(4096));
      const a = await putSnapshot(store, [a1!, shared!, a2!]);
      await putSnapshot(store, [b1!, shared!]);
      const r = await runChild(dir, ['delete', a], { EBSD_TEST_FAULT: 'gc.after-manifest-delete' });
      expect(r.signal).toBe('SIGKILL');
      expect(await store.getManifest(a)).toBeUndefined();
      expect(await blocksOf(store)).toHaveLength(4); // nothing freed yet
      await expectConsistent(store);
      expect((await later(store).sweep()).deleted).toBe(2);
      expect(await blocksOf(store)).toEqual([b1!.hash, shared!.hash].sort());
      await expectConsistent(store);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('killed anywhere in a sweep of 300 orphans: every manifest still whole; a later sweep finishes', async () => {
    const dir = mkdtempSync('/tmp/ebsd-gc-kill-');
    try {
      const store = await DirSnapshotStore.open(dir);
      const live = Array.from({ length: 5 }, () => block(512));
      await putSnapshot(store, live);
      for (let i = 0; i < 300; i++) {
        const o = block(512);
        await store.putBlock(o.hash, o.data);
      }
      const total = (await blocksOf(store)).length;
      const r = await runChild(dir, ['sweep'], {}, (kill) => {
        // Killed once it has freed something: in practice after the first few of 300 deletes.
        const poll = (): void => {
          const left = readdirSync(join(dir, 'blocks')).reduce((s, d) => s + readdirSync(join(dir, 'blocks', d)).length, 0);
          if (left < total) kill();
          else setTimeout(poll, 2);
        };
        poll();
      });
      expect(r.signal === 'SIGKILL' || r.out.includes('done')).toBe(true);
      const left = (await blocksOf(store)).length;
      expect(left).toBeLessThan(total);
      expect(left).toBeGreaterThanOrEqual(live.length);
      await expectConsistent(store);
      await later(store).sweep();
      expect(await blocksOf(store)).toEqual(live.map((b) => b.hash).sort());
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('collector memory (directory store, a child process)', () => {
  beforeAll(() => ensureBuilt());

  test('a sweep, and DescribeSnapshots\' listing, hold one manifest per reader, not every manifest\'s block list: 16 manifests of 100K blocks in a 160 MiB heap', async () => {
    const dir = mkdtempSync('/tmp/ebsd-gc-mem-');
    try {
      const store = await DirSnapshotStore.open(dir);
      const blocks: [number, string][] = Array.from({ length: 100_000 }, (_, i) => [i, i.toString(16).padStart(64, '0')]);
      // ~7.5 MB of JSON and ~25 MiB of heap parsed, each; all 16 at once (the mark before) is ~400 MiB.
      for (let i = 0; i < 16; i++) await store.putManifest(manifest(snapId(), blocks, { volumeSize: 100 }));
      const orphan = block(512);
      await store.putBlock(orphan.hash, orphan.data);
      const run = (mode: string) => new Promise<{ code: number | null; out: string }>((res, rej) => {
        const p = spawn(process.execPath, ['--max-old-space-size=160', resolve(import.meta.dirname, 'gc-child.mjs'), dir, mode], { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        p.stdout.on('data', (c) => (out += c));
        p.stderr.on('data', (c) => (out += c));
        p.on('error', rej);
        p.on('exit', (code) => res({ code, out }));
      });
      const r = await run('sweep');
      expect(r.out).toContain('done');
      expect(r.code).toBe(0);
      expect(await store.hasBlock(orphan.hash)).toBe(false);
      const d = await run('summaries');
      expect(d.out).toContain('16 summaries');
      expect(d.code).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);
});

test('a refused manifest over the manifest limit is removed unread: its size and last-modified are recorded, no digest (its bytes are not read)', async () => {
  const dir = mkdtempSync('/tmp/ebsd-gc-over-');
  try {
    const store = await DirSnapshotStore.open(dir);
    const id = snapId();
    await store.putManifest(manifest(id, []));
    // Sparse: its size over MANIFEST_MAX_BYTES without writing it.
    const size = MANIFEST_MAX_BYTES + 1;
    truncateSync(join(dir, 'manifests', `${id}.json`), size);
    await expect(store.getManifest(id)).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT' });
    const r = await new SnapshotGc(store, { graceMs: 0 }).deleteSnapshot(id, { refused: true });
    expect(r).toMatchObject({ deleted: true, removedUnread: { bytes: size, lastModified: expect.stringMatching(/^\d{4}-/) } });
    expect(r.removedUnread!.sha256).toBeUndefined();
    expect(await store.getManifest(id)).toBeUndefined();
    await r.sweep;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.each([
  ['a symlink to /dev/zero (no size, no end)', (p: string) => symlinkSync('/dev/zero', p)],
  ['a FIFO (its open would wait for a writer)', (p: string) => void execFileSync('mkfifo', [p])],
])('a manifest that is not a regular file, %s, is refused unread, and its delete removes it unread: size and last-modified recorded, no digest', async (_name, put) => {
  const dir = mkdtempSync('/tmp/ebsd-gc-notfile-');
  try {
    const store = await DirSnapshotStore.open(dir);
    const id = snapId();
    const p = join(dir, 'manifests', `${id}.json`);
    put(p);
    await expect(store.getManifest(id)).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT', message: expect.stringContaining('is not a regular file') });
    const r = await new SnapshotGc(store, { graceMs: 0 }).deleteSnapshot(id, { refused: true });
    expect(r).toMatchObject({ deleted: true, removedUnread: { bytes: 0, lastModified: expect.stringMatching(/^\d{4}-/) } });
    expect(r.removedUnread!.sha256).toBeUndefined();
    expect(await store.getManifest(id)).toBeUndefined();
    await r.sweep;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
