/**
 * DeleteSnapshot of a refused manifest (docs/architecture.md §13.5) sweeps the whole store, which on
 * a large S3 store lists and marks for minutes: the collector (src/snapshot/gc.ts) removes the
 * manifest and answers, and sweeps after, in the background. Here the S3 store is s3rver behind a
 * proxy on loopback that holds the sweep's listing of the blocks (ListObjectsV2 under `blocks/`)
 * until the test lets it go, as a slow listing of a large store would: the delete has answered,
 * the manifest gone, while the listing is held and every block still there; once the listing goes
 * on, the sweep frees the block only the refused manifest named. A second refused delete made
 * while the first's sweep waits to begin joins it. Readable snapshots' deletes queued behind a held
 * sweep are collected together, from one set of their blocks, or, past the collector's bound on that
 * set (collectCandidatesMax, small here), by a sweep of the whole store.
 */
import { createServer, request, type Server } from 'node:http';
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { SnapshotGc } from '../../src/snapshot/gc.js';
import { S3SnapshotStore } from '../../src/snapshot/s3-store.js';
import { S3RVER_CREDENTIALS, startS3Server, type S3Server } from './s3-helpers.js';
import { block, manifest, snapId } from './store-suite.js';

const PREFIX = 'gc-refused-bg';
/** What the refused manifests are overwritten with. */
const NOT_JSON = '{"snapshotId": not json';
/** The longest the proxy holds a listing if the test never lets it go (old code, which answers only after its sweep). */
const HOLD_BOUND_MS = 20_000;

/** A proxy in front of s3rver that holds ListObjectsV2 of the blocks while `held` is armed. */
class ListingHoldingProxy {
  private server: Server | undefined;
  private armed = false;
  private readonly waiting: (() => void)[] = [];
  /** Block listings held now. */
  holding = 0;
  endpoint = '';

  constructor(private readonly upstream: string) {}

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const url = new URL(req.url!, 'http://x');
        const blockListing = req.method === 'GET' && url.searchParams.get('list-type') === '2' && (url.searchParams.get('prefix') ?? '').endsWith('/blocks/');
        const forward = (): void => {
          const up = request(`${this.upstream}${req.url}`, { method: req.method, headers: req.headers }, (r) => {
            res.writeHead(r.statusCode!, r.headers);
            r.pipe(res);
          });
          up.on('error', () => res.destroy());
          up.end(Buffer.concat(chunks));
        };
        if (!blockListing || !this.armed) return forward();
        this.holding++;
        let gone = false;
        const go = (): void => {
          if (gone) return;
          gone = true;
          clearTimeout(bound);
          this.holding--;
          forward();
        };
        const bound = setTimeout(go, HOLD_BOUND_MS);
        this.waiting.push(go);
      });
    });
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r));
    this.endpoint = `http://127.0.0.1:${(this.server.address() as { port: number }).port}`;
  }

  hold(): void {
    this.armed = true;
  }

  release(): void {
    this.armed = false;
    for (const go of this.waiting.splice(0)) go();
  }

  async stop(): Promise<void> {
    this.release();
    const s = this.server;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }
}

/** Polls `fn` every 20 ms, 10 s at most, until it returns true; returns its last answer. */
async function until(fn: () => Promise<boolean> | boolean): Promise<boolean> {
  for (let i = 0; i < 500; i++) {
    if (await fn()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return fn();
}

describe('DeleteSnapshot of a refused manifest: the store is swept after the answer, not inside it', () => {
  let s3: S3Server | undefined;
  let proxy: ListingHoldingProxy | undefined;
  let store: S3SnapshotStore | undefined;

  beforeAll(async () => {
    s3 = await startS3Server();
    proxy = new ListingHoldingProxy(s3.endpoint);
    await proxy.start();
    store = await S3SnapshotStore.open({ bucket: s3.bucket, prefix: PREFIX, endpoint: proxy.endpoint, credentials: S3RVER_CREDENTIALS });
  }, 60_000);

  afterAll(async () => {
    store?.close();
    await proxy?.stop();
    await s3?.stop();
  });

  test('answers once the manifest is gone while the sweep\'s block listing is held; the sweep then frees what only it named, and a second refused delete joins the queued sweep', async () => {
    const [kept, onlyRefused, onlySecond] = [block(4096), block(4096), block(4096)];
    for (const b of [kept, onlyRefused, onlySecond]) await store!.putBlock(b!.hash, b!.data);
    const good = snapId();
    await store!.putManifest(manifest(good, [[0, kept!.hash]]));
    // Two manifests that do not read back (not JSON): refused (SNAPSHOT_CORRUPT), as one whose MAC fails is.
    const refused = snapId();
    const second = snapId();
    await store!.putManifest(manifest(refused, [[0, onlyRefused!.hash]]));
    await store!.putManifest(manifest(second, [[0, onlySecond!.hash]]));
    for (const id of [refused, second]) writeFileSync(s3!.objectFile(`${PREFIX}/manifests/${id}.json`), NOT_JSON);
    await expect(store!.getManifest(refused)).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT' });

    const gc = new SnapshotGc(store!, { graceMs: 0 });
    proxy!.hold();
    try {
      const r = await gc.deleteSnapshot(refused, { refused: true });
      // Answered: the manifest is gone, and nothing is freed yet (the old code answered only after its sweep, which the
      // proxy let go of after HOLD_BOUND_MS, the block freed by then).
      expect(await store!.hasBlock(onlyRefused!.hash)).toBe(true);
      expect(r.deleted).toBe(true);
      expect(await store!.getManifest(refused)).toBeUndefined();
      // What was removed, for the audit: the SHA-256 and size of the bytes written over it, S3's ETag and LastModified.
      const written = Buffer.from(NOT_JSON);
      expect(r.removedUnread).toEqual({
        sha256: createHash('sha256').update(written).digest('hex'), bytes: written.length,
        etag: expect.stringMatching(/^"?[0-9a-f]{32}"?$/), lastModified: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
      });
      // The sweep runs meanwhile, its listing held as a large store's would take minutes.
      expect(await until(() => proxy!.holding > 0)).toBe(true);
      expect(r.sweep).toBeDefined();
      // A second refused delete while that sweep runs: answered at once too (its manifest removed), its own sweep queued.
      const r2 = await gc.deleteSnapshot(second, { refused: true });
      expect(r2.deleted).toBe(true);
      expect(await store!.hasBlock(onlySecond!.hash)).toBe(true);
    } finally {
      proxy!.release();
    }
    // Once the listing goes on, the sweeps free what only the refused manifests named, and keep the other snapshot's.
    expect(await until(async () => !(await store!.hasBlock(onlyRefused!.hash)) && !(await store!.hasBlock(onlySecond!.hash)))).toBe(true);
    expect(await store!.hasBlock(kept!.hash)).toBe(true);
    expect(await store!.getManifest(good)).toBeDefined();
  }, 60_000);

  test('refused deletes made while a sweep is under way join one queued sweep; a closed collector does not begin it', async () => {
    const [a, b] = [block(4096), block(4096)];
    for (const x of [a, b]) await store!.putBlock(x!.hash, x!.data);
    const ids = [snapId(), snapId(), snapId()];
    for (const id of ids) {
      await store!.putManifest(manifest(id, [[0, a!.hash]]));
      writeFileSync(s3!.objectFile(`${PREFIX}/manifests/${id}.json`), 'not json');
    }
    const gc = new SnapshotGc(store!, { graceMs: 0 });
    proxy!.hold();
    let queued: Promise<unknown>[] = [];
    try {
      const first = await gc.deleteSnapshot(ids[0]!, { refused: true });
      expect(await until(() => proxy!.holding > 0)).toBe(true);
      // The first's sweep is under way (its listing held): the next two queue one sweep between them.
      const next = await Promise.all([gc.deleteSnapshot(ids[1]!, { refused: true }), gc.deleteSnapshot(ids[2]!, { refused: true })]);
      expect(next.map((x) => x.deleted)).toEqual([true, true]);
      expect(next[0]!.sweep).toBe(next[1]!.sweep);
      expect(next[0]!.sweep).not.toBe(first.sweep);
      queued = [first.sweep!, next[0]!.sweep!];
      gc.close();
    } finally {
      proxy!.release();
    }
    const [ran, skipped] = await Promise.all(queued);
    expect(ran).toMatchObject({ deleted: expect.any(Number) });
    expect(skipped).toBeUndefined();
    for (const id of ids) expect(await store!.getManifest(id)).toBeUndefined();
  }, 60_000);
  test('a readable snapshot\'s delete answers while a sweep is under way (its listing held), the manifest gone; its blocks are freed once the sweep ends, the others\' kept', async () => {
    const [kept, onlyDeleted] = [block(4096), block(4096)];
    for (const b of [kept, onlyDeleted]) await store!.putBlock(b!.hash, b!.data);
    const other = snapId();
    const deleted = snapId();
    await store!.putManifest(manifest(other, [[0, kept!.hash]]));
    await store!.putManifest(manifest(deleted, [[0, kept!.hash], [1, onlyDeleted!.hash]]));
    const gc = new SnapshotGc(store!, { graceMs: 0 });
    proxy!.hold();
    let sweeping: Promise<unknown> = Promise.resolve();
    let collected: Promise<unknown> | undefined;
    try {
      sweeping = gc.sweep();
      expect(await until(() => proxy!.holding > 0)).toBe(true);
      const r = await gc.deleteSnapshot(deleted);
      // Answered while the sweep is still held (the old code queued the delete behind it: it answered only once the
      // proxy let the listing go after HOLD_BOUND_MS); the manifest is gone, nothing freed yet.
      expect(proxy!.holding).toBe(1);
      expect(r.deleted).toBe(true);
      expect(r.collected).toBeDefined();
      collected = r.collected;
      expect(await store!.getManifest(deleted)).toBeUndefined();
      expect(await store!.hasBlock(onlyDeleted!.hash)).toBe(true);
    } finally {
      proxy!.release();
    }
    await sweeping;
    // The collection ran after the sweep (queued behind it): the block only the deleted snapshot named is gone (freed
    // by the sweep, whose mark came after the removal, or by the collection), the shared one kept.
    expect(await collected).toMatchObject({ examined: 2 });
    expect(await store!.hasBlock(onlyDeleted!.hash)).toBe(false);
    expect(await store!.hasBlock(kept!.hash)).toBe(true);
    expect(await store!.getManifest(other)).toBeDefined();
  }, 60_000);

  test('a readable snapshot\'s collection queued behind a sweep is not begun once the collector is closed; the delete stands', async () => {
    const only = block(4096);
    await store!.putBlock(only!.hash, only!.data);
    const id = snapId();
    await store!.putManifest(manifest(id, [[0, only!.hash]]));
    const gc = new SnapshotGc(store!, { graceMs: 0 });
    proxy!.hold();
    let sweeping: Promise<unknown> = Promise.resolve();
    let collected: Promise<unknown> | undefined;
    try {
      sweeping = gc.sweep();
      expect(await until(() => proxy!.holding > 0)).toBe(true);
      const r = await gc.deleteSnapshot(id);
      expect(r.deleted).toBe(true);
      expect(r.collected).toBeDefined();
      collected = r.collected;
      gc.close();
    } finally {
      proxy!.release();
    }
    await sweeping;
    expect(await collected).toBeUndefined();
    expect(await store!.getManifest(id)).toBeUndefined();
  }, 60_000);

  test('readable snapshots\' deletes queued behind a sweep under way are collected together, from one set of their blocks: each delete\'s `collected` resolves once they were considered', async () => {
    const [shared, onlyA, ab, onlyB, onlyC] = [block(4096), block(4096), block(4096), block(4096), block(4096)];
    for (const b of [shared, onlyA, ab, onlyB, onlyC]) await store!.putBlock(b!.hash, b!.data);
    const [other, a, b, c] = [snapId(), snapId(), snapId(), snapId()];
    await store!.putManifest(manifest(other, [[0, shared!.hash]]));
    await store!.putManifest(manifest(a, [[0, shared!.hash], [1, onlyA!.hash], [2, ab!.hash]]));
    await store!.putManifest(manifest(b, [[0, ab!.hash], [1, onlyB!.hash]]));
    await store!.putManifest(manifest(c, [[0, onlyC!.hash]]));
    const lines: string[] = [];
    const gc = new SnapshotGc(store!, { graceMs: 0, log: pino({ level: 'info' }, { write: (l: string) => void lines.push(l) }) });
    proxy!.hold();
    let sweeping: Promise<unknown> = Promise.resolve();
    const collected: Promise<unknown>[] = [];
    try {
      sweeping = gc.sweep();
      expect(await until(() => proxy!.holding > 0)).toBe(true);
      for (const id of [a, b, c]) {
        const r = await gc.deleteSnapshot(id);
        expect(r.deleted).toBe(true);
        collected.push(r.collected!);
      }
      // All answered while the sweep is held, the manifests gone, nothing freed yet.
      expect(proxy!.holding).toBe(1);
      for (const id of [a, b, c]) expect(await store!.getManifest(id)).toBeUndefined();
      expect(await store!.hasBlock(onlyC!.hash)).toBe(true);
    } finally {
      proxy!.release();
    }
    await sweeping;
    const results = await Promise.all(collected);
    // One collection of the distinct blocks the three named (`ab` and `shared` once each), shared by all three deletes.
    expect(results[0]).toMatchObject({ examined: 5 });
    expect(results[1]).toBe(results[0]);
    expect(results[2]).toBe(results[0]);
    for (const x of [onlyA, ab, onlyB, onlyC]) expect(await store!.hasBlock(x!.hash)).toBe(false);
    expect(await store!.hasBlock(shared!.hash)).toBe(true);
    const freed = lines.map((l) => JSON.parse(l)).filter((e) => /unshared blocks freed/.test(e.msg));
    expect(freed).toHaveLength(1);
    expect(freed[0].snapshotIds).toEqual([a, b, c]);
  }, 60_000);

  test('queued deletes whose blocks together pass the collector\'s bound: the set is dropped and a sweep of the store frees them', async () => {
    const blocks = [block(4096), block(4096), block(4096), block(4096)];
    for (const x of blocks) await store!.putBlock(x!.hash, x!.data);
    const [a, b] = [snapId(), snapId()];
    await store!.putManifest(manifest(a, [[0, blocks[0]!.hash], [1, blocks[1]!.hash]]));
    await store!.putManifest(manifest(b, [[0, blocks[2]!.hash], [1, blocks[3]!.hash]]));
    const lines: string[] = [];
    // Three hashes at most: each delete's two fit, the four of both do not.
    const gc = new SnapshotGc(store!, { graceMs: 0, collectCandidatesMax: 3, log: pino({ level: 'info' }, { write: (l: string) => void lines.push(l) }) });
    proxy!.hold();
    let sweeping: Promise<unknown> = Promise.resolve();
    const collected: Promise<unknown>[] = [];
    try {
      sweeping = gc.sweep();
      expect(await until(() => proxy!.holding > 0)).toBe(true);
      for (const id of [a, b]) collected.push((await gc.deleteSnapshot(id)).collected!);
      // The sweep under way goes on; the queued collection's own listing is held in its turn.
      proxy!.release();
      proxy!.hold();
      await sweeping;
      // What runs for the two deletes lists the store's blocks: a sweep, not a collection of their four blocks.
      expect(await until(() => proxy!.holding > 0)).toBe(true);
    } finally {
      proxy!.release();
    }
    const results = await Promise.all(collected);
    expect(results[0]).toBeDefined();
    expect(results[1]).toBe(results[0]);
    for (const x of blocks) expect(await store!.hasBlock(x!.hash)).toBe(false);
    const swept = lines.map((l) => JSON.parse(l)).filter((e) => /freed by a sweep of the store/.test(e.msg));
    expect(swept).toHaveLength(1);
    expect(swept[0]).toMatchObject({ snapshotIds: [a, b], candidatesMax: 3 });
  }, 60_000);
});
