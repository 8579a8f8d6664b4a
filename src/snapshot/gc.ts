import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { faultPoint } from '../util/fault-point.js';
import { silentLogger } from '../util/logger.js';
import { checkBlockHash, manifestHashes } from './manifest-check.js';
import { inParallel } from '../util/in-parallel.js';
import type { BlockHash, SnapshotManifest, SnapshotStore } from './types.js';
import { SnapshotError } from './errors.js';
import { DEFAULT_DELETE_WINDOW_MS } from './store-settings.js';

/** A block as a store lists it for the collector: `modifiedMs` is when it was last put (the store's clock). */
export interface BlockWithAge {
  hash: BlockHash;
  modifiedMs: number;
}

/** What the collector needs beyond SnapshotStore: each block's age. Both stores have it. */
export interface CollectableStore extends SnapshotStore {
  listBlocksWithAge(): AsyncIterable<BlockWithAge>;
  /** When the block was last put; undefined when absent. */
  blockModifiedMs(hash: BlockHash): Promise<number | undefined>;
  /**
   * deleteBlock of many at once, when the store can do better than one at a
   * time (the directory store rewrites each pack's index once, not once per
   * block). Same contract: absent is not an error. It has no time bound, so
   * the collector uses it only on a store this daemon alone writes
   * (singleWriter); a shared store's blocks go one by one, each within its
   * delete window.
   */
  deleteBlocks?(hashes: BlockHash[]): Promise<void>;
  /** Lets go of connections (S3); the daemon calls it on stop. */
  close?(): void;
  /** A read-only call that proves a remote store answers (S3); the daemon logs the outcome at start. */
  check?(): Promise<void>;
}

/**
 * A block put less than this long ago is never swept, referenced or not: it
 * may belong to a snapshot another daemon sharing the store is writing, whose
 * manifest does not name it yet. One hour covers a writer that names its
 * blocks in its pending manifest as it goes (every progress update), clock
 * skew between NTP-synced hosts and the store (seconds), and S3 retries with
 * backoff (seconds); an orphan it keeps costs only space until the next sweep
 * (docs/architecture.md §13.3).
 */
export const DEFAULT_GC_GRACE_MS = 60 * 60_000;

/**
 * A block's delete is sent only within the store's delete window (its
 * deleteWindows(), DEFAULT_DELETE_WINDOW_MS without one) of the request that
 * read its age, and abandoned (AbortSignal) when the window runs out: S3 has
 * no delete conditional on age, so a host that put or touched the block after
 * that read (a create naming it) learns it is safe by asking again once the
 * window and a margin have surely passed (DeleteWindows.recheckMs;
 * docs/architecture.md §13.3). An age read that came back late keeps its
 * block to the next sweep.
 */
export { DEFAULT_DELETE_WINDOW_MS };

/** Store requests (age lookups, deletes, presence checks) in flight at once: S3 answers each in one round trip. */
export const STORE_REQUESTS_IN_FLIGHT = 16;

/**
 * Manifests read at once by a mark (and by a listing that keeps only what it
 * needs of each): each is held parsed until folded in, up to ~50 MiB of heap
 * for a 100 GiB volume's snapshot, so fewer than STORE_REQUESTS_IN_FLIGHT.
 */
export const MARK_READERS = 4;

/**
 * The most distinct block hashes the deletes' collections queued behind a collection under way hold
 * (collectSoon merges them into one set, ~150 bytes a hash: ~150 MiB at this bound, about five fully
 * written 100 GiB volumes' snapshots). Past it the set is dropped and a sweep of the whole store
 * frees their blocks instead (it holds the store's block list for its own listing, once).
 */
export const COLLECT_CANDIDATES_MAX = 1_000_000;

export interface SnapshotGcOptions {
  graceMs?: number;
  /** COLLECT_CANDIDATES_MAX unless given (tests give a small one). */
  collectCandidatesMax?: number;
  /** The store's deleteWindows() (DEFAULT_DELETE_WINDOW_MS without it) unless given; the store's writers wait longer (recheckMs). */
  deleteWindowMs?: number;
  /** The clock ages are measured against; Date.now by default (tests inject theirs). */
  now?: () => number;
  /**
   * Pins pulled rather than taken: blocks that operations in progress hold
   * without calling pin() (an operation that keeps its own set). Asked at each mark.
   */
  live?: () => Iterable<BlockHash>;
  log?: Logger;
}

export interface SweepResult {
  /** Manifests marked from (any state). */
  manifests: number;
  /** Blocks the sweep looked at. */
  examined: number;
  deleted: number;
  /** Unreferenced, but younger than the grace period, or put since a pending snapshot began. */
  keptYoung: number;
  /** Unreferenced, but pinned by an operation in progress on this daemon. */
  keptPinned: number;
}

/** What SnapshotGc.deleteSnapshot did; whatever the background work meets, a delete that took effect stays `deleted`. */
export interface DeleteOutcome {
  /** The manifest was removed by this call (false: it was absent, or `readable` below). */
  deleted: boolean;
  /** Asked to remove a refused manifest, this read found it readable (put back meanwhile): nothing was deleted. */
  readable?: true;
  /**
   * A readable manifest's delete: the collection of its blocks, in the background, shared with the deletes queued
   * with it (one collection of all their blocks, or a sweep past COLLECT_CANDIDATES_MAX); resolves once its blocks
   * were considered (undefined: failed or not run, logged).
   */
  collected?: Promise<SweepResult | undefined>;
  /** A refused manifest's delete: the store's sweep, in the background (undefined: failed or not run, logged). */
  sweep?: Promise<SweepResult | undefined>;
  /** A refused manifest's delete: what was removed (RemovedManifest), for the audit. */
  removedUnread?: RemovedManifest;
}

/**
 * A refused manifest's delete keeps this of it for the audit (SnapshotGc.deleteSnapshot): its stored
 * bytes' SHA-256 (hex; absent when it was over the manifest limit and not read), its size, and the
 * store's ETag and last-modified where the store gives them. Never its content.
 */
export interface RemovedManifest {
  sha256?: string;
  bytes: number;
  etag?: string;
  lastModified?: string;
}

/** Held by an operation while it relies on blocks no manifest names yet; release() when its manifest does (or it gave up). */
export interface BlockPin {
  release(): void;
}

/**
 * The snapshot store's garbage collector (docs/architecture.md §13.3): mark
 * every block any manifest names (every state, every daemon sharing the
 * store), sweep the rest, except blocks pinned by an operation in progress
 * here, blocks younger than the grace period, and blocks put since a pending
 * snapshot (of any daemon) began.
 *
 * Crash safety: deleteSnapshot removes the manifest first, durably, and its
 * blocks after; a crash between leaves orphans a later sweep frees, never a
 * manifest naming a missing block. The marks are taken twice, before and
 * after the candidates are chosen, so a manifest written meanwhile by
 * another daemon still saves its blocks. Each block's age is read again
 * after the second mark, just before its delete (one request each on S3):
 * the ages that chose the candidates may be minutes old, and a block another
 * daemon put or touched since, for a snapshot whose pending manifest does not
 * name it yet, is young again and kept. That delete is sent within
 * deleteWindowMs of the age request, or not at all, so a daemon that touched
 * the block just after the read learns by asking again the store's recheckMs later
 * (docs/architecture.md §13.3, rule 5).
 *
 * Pins: an operation pins a block before it checks for it or relies on it
 * (`await gc.pin(hashes)`): pin() waits for a delete of that block already
 * under way, so afterwards the block is either present and safe or absent
 * (and will be put again).
 */
export class SnapshotGc {
  readonly graceMs: number;
  private readonly deleteWindowMs: number | undefined;
  private readonly now: () => number;
  private readonly log: Logger;
  private readonly live: () => Iterable<BlockHash>;
  private readonly pins = new Map<BlockHash, number>();
  private readonly deleting = new Map<BlockHash, Promise<void>>();
  /** One collection at a time on this daemon. */
  private queue: Promise<unknown> = Promise.resolve();
  /** The background sweep of refused manifests' deletes (sweepSoon) queued and not yet begun, and the snapshots it is for. */
  private refusedSweep: { snapshotIds: string[]; done: Promise<SweepResult | undefined> } | undefined;
  /**
   * The collection of readable manifests' deletes (collectSoon) queued and not yet begun: the snapshots it is for and
   * the blocks their manifests named, merged; `candidates` undefined once past collectCandidatesMax (a sweep instead).
   */
  private queuedCollection: { snapshotIds: string[]; candidates: Set<BlockHash> | undefined; done: Promise<SweepResult | undefined> } | undefined;
  private readonly collectCandidatesMax: number;
  private closed = false;
  /** Told each snapshot whose manifest deleteSnapshot removed (onManifestDeleted). */
  private readonly deletedListeners = new Set<(snapshotId: string) => void>();

  constructor(private readonly store: CollectableStore, opts: SnapshotGcOptions = {}) {
    this.graceMs = opts.graceMs ?? DEFAULT_GC_GRACE_MS;
    this.deleteWindowMs = opts.deleteWindowMs;
    this.now = opts.now ?? Date.now;
    this.log = opts.log ?? silentLogger;
    this.live = opts.live ?? (() => []);
    this.collectCandidatesMax = opts.collectCandidatesMax ?? COLLECT_CANDIDATES_MAX;
  }

  async pin(hashes: Iterable<BlockHash>): Promise<BlockPin> {
    const held: BlockHash[] = [];
    for (const h of hashes) {
      checkBlockHash(h);
      this.pins.set(h, (this.pins.get(h) ?? 0) + 1);
      held.push(h);
    }
    await Promise.all(held.map((h) => this.deleting.get(h)).filter((p) => p !== undefined));
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        for (const h of held) {
          const n = this.pins.get(h)! - 1;
          if (n === 0) this.pins.delete(h);
          else this.pins.set(h, n);
        }
      },
    };
  }

  /**
   * `fn` is called with each snapshot id whose manifest deleteSnapshot
   * removes, right after the removal and before its blocks are freed (the
   * EBS direct APIs drop their cached copy of it). Returns the unsubscribe.
   */
  onManifestDeleted(fn: (snapshotId: string) => void): () => void {
    this.deletedListeners.add(fn);
    return () => this.deletedListeners.delete(fn);
  }

  isPinned(hash: BlockHash): boolean {
    return this.pins.has(hash);
  }

  /**
   * Removes the snapshot's manifest and resolves, then frees the blocks it
   * named that no other manifest names (and no pin holds, and are past the
   * grace period) in the background, queued behind the collection under way
   * (`collected`, collectSoon): a delete never waits for a sweep, which on a
   * large S3 store takes minutes. Absent manifest: nothing to do (`deleted:
   * false`). Once the manifest is
   * gone the snapshot is deleted, whatever its blocks' collection meets: a
   * collection that fails (another manifest that cannot be read, which stops
   * every mark; a store that fails) is logged and leaves the blocks to a later
   * sweep, as a crash at that point does, instead of failing a delete that
   * took effect (and its caller's audit event with it).
   *
   * A manifest that cannot be trusted (SNAPSHOT_CORRUPT: its MAC refused,
   * docs/architecture.md §13.5, or unreadable) is removed unread, and the whole
   * store is swept: its block list is never used to choose what to free (nor,
   * while it exists, to keep: every mark stops on it), so the sweep, which
   * marks from the manifests left, frees what only it named. That sweep lists
   * and marks the whole store (minutes on a large S3 store), so it runs after
   * the delete has answered (`sweep`, sweepSoon): a caller waiting for it would
   * time out and retry a delete that took effect. `refused`: the caller found it
   * so; should this read find it readable after all (put back meanwhile),
   * nothing is deleted and `readable` says so, for the caller to judge it as it
   * now reads.
   */
  async deleteSnapshot(snapshotId: string, opts: { refused?: boolean } = {}): Promise<DeleteOutcome> {
    /** Removed unread (SNAPSHOT_CORRUPT), or `m` as it reads. */
    const readOrRemove = async (): Promise<{ m: SnapshotManifest | undefined } | { removed: Promise<SweepResult | undefined>; evidence: RemovedManifest | undefined }> => {
      try {
        return { m: await this.store.getManifest(snapshotId) };
      } catch (err) {
        if (!(err instanceof SnapshotError) || err.code !== 'SNAPSHOT_CORRUPT') throw err;
        // The only evidence of what was stored goes with it: its digest, size and the store's stamps are kept for the
        // caller's audit event, its content never (docs/architecture.md §13.5). A read that fails fails the delete.
        const evidence = await this.removedManifest(snapshotId);
        await this.store.deleteManifest(snapshotId);
        for (const fn of this.deletedListeners) fn(snapshotId);
        return { removed: this.sweepSoon(snapshotId), evidence };
      }
    };
    // Neither kind of delete is queued behind the collection under way (a sweep of a large S3 store lists and marks for
    // minutes, longer than a client waits for DeleteSnapshot's answer, which it would then retry and be told NotFound).
    //
    // A refused manifest: no mark uses it (each stops on it), so removing it meanwhile frees nothing a collection would
    // have kept; a mark that reads past it goes on.
    //
    // A readable one: the manifest is removed at once, and the blocks it named are collected afterwards, queued behind
    // the collection under way (collectSoon). Removing it while a collection runs is safe: a mark of that collection that
    // read it before the removal keeps its blocks (they wait for the collection queued here); one that did not read it
    // marks every other manifest, so it frees only blocks no other manifest names, which are what this delete frees
    // anyway. Either mark still keeps pinned blocks (pins are checked just before each delete) and blocks younger than
    // the grace period or put since a pending snapshot began, and a restore or copy reading this snapshot holds it
    // (the manager refuses the delete: InvalidSnapshot.InUse). The order is the one a crash relies on: the manifest
    // first, durably, then its blocks; a daemon that stops first leaves them to a later sweep.
    const r = await readOrRemove();
    if ('removed' in r) return { deleted: true, sweep: r.removed, ...(r.evidence ? { removedUnread: r.evidence } : {}) };
    const m = r.m;
    if (opts.refused && m) return { deleted: false, readable: true };
    if (!m) return { deleted: false };
    await this.store.deleteManifest(snapshotId);
    for (const fn of this.deletedListeners) fn(snapshotId);
    faultPoint('gc.after-manifest-delete');
    return { deleted: true, collected: this.collectSoon(snapshotId, manifestHashes(m)) };
  }

  /**
   * The collection of a deleted snapshot's blocks (deleteSnapshot: `hashes`, those its manifest named), queued
   * behind the collection under way and run in the background; resolves with its result, or undefined when it
   * failed (another manifest that cannot be read, which stops every mark; a store that fails) or did not run (the
   * daemon stopping): logged, and the blocks are left to a later sweep, as after a crash at that point.
   *
   * Deletes that come while it waits to begin join it: their hashes go into one set (a block several of them named
   * is held once), so what waits behind a long sweep is the distinct blocks, not each delete's list. Past
   * collectCandidatesMax distinct blocks the set is dropped and the queued collection becomes a sweep of the whole
   * store, which frees the same blocks (every block no manifest names) without holding them meanwhile.
   */
  private collectSoon(snapshotId: string, hashes: Iterable<BlockHash>): Promise<SweepResult | undefined> {
    const queued = this.queuedCollection;
    if (queued) {
      queued.snapshotIds.push(snapshotId);
      this.addCandidates(queued, hashes);
      return queued.done;
    }
    const entry: { snapshotIds: string[]; candidates: Set<BlockHash> | undefined; done: Promise<SweepResult | undefined> } = {
      snapshotIds: [snapshotId], candidates: new Set(), done: Promise.resolve(undefined),
    };
    this.addCandidates(entry, hashes);
    entry.done = this.serial(async () => {
      if (this.queuedCollection === entry) this.queuedCollection = undefined; // begun: a delete from now on queues another
      const { snapshotIds, candidates } = entry;
      entry.candidates = undefined;
      const store = this.store.location;
      if (this.closed) {
        this.log.warn({ snapshotIds, store }, 'snapshots deleted; their blocks are left to a later sweep: the daemon is stopping');
        return undefined;
      }
      try {
        if (!candidates) {
          const result = await this.sweepNow();
          this.log.info({ snapshotIds, candidatesMax: this.collectCandidatesMax, ...result }, 'snapshots deleted; their unshared blocks freed by a sweep of the store (more blocks queued than a collection holds)');
          return result;
        }
        // Ages are asked only for the blocks nothing else holds: one request each on S3.
        const result = await this.collect([...candidates], (hs) => this.agesOf(hs), this.now());
        this.log.info({ snapshotIds, ...result }, 'snapshots deleted; their unshared blocks freed');
        return result;
      } catch (err) {
        this.log.warn({ snapshotIds, store, err }, 'snapshots deleted; their blocks are left to a later sweep: they could not be collected now');
        return undefined;
      }
    });
    this.queuedCollection = entry;
    return entry.done;
  }

  /** `hashes` into the queued collection's set; past collectCandidatesMax the set is dropped (a sweep instead). */
  private addCandidates(entry: { candidates: Set<BlockHash> | undefined }, hashes: Iterable<BlockHash>): void {
    const set = entry.candidates;
    if (!set) return;
    for (const h of hashes) {
      set.add(h);
      if (set.size > this.collectCandidatesMax) {
        entry.candidates = undefined;
        return;
      }
    }
  }

  /** What a refused manifest's delete records of it (RemovedManifest), read raw just before its removal; undefined from a store that cannot say. */
  private async removedManifest(snapshotId: string): Promise<RemovedManifest | undefined> {
    const raw = await this.store.readManifestRaw?.(snapshotId);
    if (!raw) return undefined;
    return {
      bytes: raw.bytes,
      ...(raw.data ? { sha256: createHash('sha256').update(raw.data).digest('hex') } : {}),
      ...(raw.etag ? { etag: raw.etag } : {}),
      ...(raw.lastModified ? { lastModified: raw.lastModified } : {}),
    };
  }

  /**
   * The sweep a refused manifest's delete needs (deleteSnapshot), queued behind the collection under
   * way and run in the background; resolves with its result, or undefined when it failed or did not
   * run (the daemon stopping): logged, and the blocks only that manifest named are left to a later
   * sweep, as after a crash. Deletes that come while it waits to begin join it: one sweep frees what
   * each of their manifests alone named.
   */
  private sweepSoon(snapshotId: string): Promise<SweepResult | undefined> {
    const queued = this.refusedSweep;
    if (queued) {
      queued.snapshotIds.push(snapshotId);
      return queued.done;
    }
    const snapshotIds = [snapshotId];
    const done = this.serial(async () => {
      this.refusedSweep = undefined; // begun: a delete from now on needs a sweep of its own
      const store = this.store.location;
      if (this.closed) {
        this.log.warn({ snapshotIds, store }, 'snapshots with a refused manifest deleted; the blocks only they named are left to a later sweep: the daemon is stopping');
        return undefined;
      }
      try {
        const result = await this.sweepNow();
        this.log.info({ snapshotIds, ...result }, 'snapshots with a refused manifest deleted; the store swept');
        return result;
      } catch (err) {
        this.log.warn({ snapshotIds, store, err }, 'snapshots with a refused manifest deleted; the blocks only they named are left to a later sweep: the store could not be swept now');
        return undefined;
      }
    });
    this.refusedSweep = { snapshotIds, done };
    return done;
  }

  /** Resolves once every collection queued so far (deletes' collections, sweeps) has ended, however it ended. */
  idle(): Promise<void> {
    return this.queue.then(() => {});
  }

  /** A queued background sweep (sweepSoon) or collection (collectSoon) not yet begun is not begun: the daemon is stopping. One under way runs on (the store's close ends it). */
  close(): void {
    this.closed = true;
  }

  /** Frees every block no manifest names: orphans of crashes, of deleted snapshots' young blocks, of failed writes. */
  sweep(): Promise<SweepResult> {
    return this.serial(async () => {
      const result = await this.sweepNow();
      if (result.deleted || result.keptYoung || result.keptPinned) this.log.info({ store: this.store.location, ...result }, 'snapshot store swept');
      return result;
    });
  }

  private async sweepNow(): Promise<SweepResult> {
    const now = this.now();
    const ages = new Map<BlockHash, number>();
    for await (const b of this.store.listBlocksWithAge()) ages.set(b.hash, b.modifiedMs);
    return this.collect([...ages.keys()], async () => ages, now);
  }

  private async collect(hashes: BlockHash[], agesOf: (hs: BlockHash[]) => Promise<Map<BlockHash, number>>, now: number): Promise<SweepResult> {
    // First mark: the blocks are judged against the manifests of this moment.
    let marked = await this.mark();
    const manifests = marked.manifests;
    let live = new Set(this.live());
    let keptYoung = 0;
    let keptPinned = 0;
    const unheld: BlockHash[] = [];
    for (const h of hashes) {
      if (marked.refs.has(h)) continue;
      if (this.pins.has(h) || live.has(h)) keptPinned++;
      else unheld.push(h);
    }
    const ages = await agesOf(unheld);
    // Put since a pending snapshot began (less the grace, for clock skew): maybe that snapshot's.
    const pendingFrom = marked.pendingSinceMs - this.graceMs;
    const doomed = unheld.filter((h) => {
      const modifiedMs = ages.get(h);
      if (modifiedMs === undefined) return false; // already gone
      if (now - modifiedMs >= this.graceMs && modifiedMs < pendingFrom) return true;
      keptYoung++;
      return false;
    });
    let deleted = 0;
    if (doomed.length) {
      // Second mark: a manifest written since the first (another daemon's) still saves its blocks.
      marked = await this.mark();
      live = new Set(this.live());
      const pendingFromNow = marked.pendingSinceMs - this.graceMs;
      // The ages above may be minutes old (a long listing of a shared store): another daemon may
      // have put or touched a block since, for a snapshot whose pending manifest does not name it
      // yet. Each block's age is read again just before it is deleted and judged by the same rule
      // (against the second mark's pending snapshots).
      // Read before the ages below, so its round trip (once per start) never eats into a window.
      const windowMs = this.deleteWindowMs ?? (this.store.singleWriter ? Number.POSITIVE_INFINITY : ((await this.store.deleteWindows?.())?.deleteWindowMs ?? DEFAULT_DELETE_WINDOW_MS));
      const stillOld = (modifiedMs: number | undefined): boolean => {
        if (modifiedMs === undefined) return false; // already gone
        if (now - modifiedMs >= this.graceMs && modifiedMs < pendingFromNow) return true;
        keptYoung++;
        return false;
      };
      // The batch delete has no time bound: only on a store this daemon alone writes (the directory store), where no
      // other host touches its blocks and its pins cover this one's writers, so no delete window applies (rule 5). A
      // shared store takes the windowed path below, one delete per block, even if it can delete many at once.
      const deleteBlocks = this.store.singleWriter ? this.store.deleteBlocks?.bind(this.store) : undefined;
      if (deleteBlocks) {
        const unmarked = doomed.filter((h) => !marked.refs.has(h));
        const agesNow = await this.agesOf(unmarked);
        // Pins are checked last, synchronously before the delete starts; pin() waits for it.
        const go = unmarked.filter((h) => {
          if (!stillOld(agesNow.get(h))) return false;
          if (this.pins.has(h) || live.has(h)) {
            keptPinned++;
            return false;
          }
          return true;
        });
        if (go.length) {
          const p = deleteBlocks(go);
          for (const h of go) this.deleting.set(h, p.catch(() => {}));
          try {
            await p;
          } finally {
            for (const h of go) this.deleting.delete(h);
          }
          deleted += go.length;
        }
      } else {
        await inParallel(doomed, STORE_REQUESTS_IN_FLIGHT, async (h) => {
          if (marked.refs.has(h)) return;
          const asked = performance.now();
          if (!stillOld(await this.store.blockModifiedMs(h))) return;
          // Pins are checked last, synchronously before the delete starts; pin() waits for it.
          if (this.pins.has(h) || live.has(h)) {
            keptPinned++;
            return;
          }
          // The delete lands within the window of the age read, or not at all: a host that touched the
          // block since asks again only after the window and a margin (recheckMs), and then finds it or not.
          const left = windowMs - (performance.now() - asked);
          if (left <= 0) {
            keptYoung++;
            return;
          }
          const signal = Number.isFinite(left) ? AbortSignal.timeout(Math.ceil(left)) : undefined;
          const p = this.store.deleteBlock(h, signal ? { signal } : {});
          this.deleting.set(h, p.catch(() => {}));
          try {
            await p;
          } catch (e) {
            // Given up at the window's end: maybe deleted, maybe not; a later sweep sees which.
            if (!signal?.aborted) throw e;
            keptYoung++;
            return;
          } finally {
            this.deleting.delete(h);
          }
          deleted++;
        });
      }
    }
    return { manifests, examined: hashes.length, deleted, keptYoung, keptPinned };
  }

  private async agesOf(hashes: BlockHash[]): Promise<Map<BlockHash, number>> {
    const out = new Map<BlockHash, number>();
    await inParallel(hashes, STORE_REQUESTS_IN_FLIGHT, async (h) => {
      const m = await this.store.blockModifiedMs(h);
      if (m !== undefined) out.set(h, m);
    });
    return out;
  }

  /**
   * Every block any manifest names, and the start of the oldest `pending`
   * snapshot (its writer, maybe on another host, puts blocks its manifest
   * names only when it completes). A manifest that cannot be read throws: no
   * sweep on a partial mark.
   */
  private async mark(): Promise<{ refs: Set<BlockHash>; manifests: number; pendingSinceMs: number }> {
    const refs = new Set<BlockHash>();
    let manifests = 0;
    let pendingSinceMs = Number.POSITIVE_INFINITY;
    // One manifest at a time per reader, folded into `refs` and let go: memory is the distinct
    // blocks plus MARK_READERS manifests, not every manifest's block list at once.
    await inParallel(await this.store.listManifestIds(), MARK_READERS, async (id) => {
      const m = await this.store.getManifest(id);
      if (!m) return; // deleted since the listing
      manifests++;
      for (const h of manifestHashes(m)) refs.add(h);
      if (m.state === 'pending') {
        const t = Date.parse(m.startTime);
        // A start we cannot read protects everything rather than nothing.
        pendingSinceMs = Math.min(pendingSinceMs, Number.isFinite(t) ? t : Number.NEGATIVE_INFINITY);
      }
    });
    return { refs, manifests, pendingSinceMs };
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => {});
    return run;
  }
}
