import { existsSync, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { sha256HexOffLoop } from '../util/sha256.js';
import type { Logger } from 'pino';
import type { Caller } from '../kms/types.js';
import type { BlockDevice } from '../volume/types.js';
import type { SnapshotSource } from '../volume/write-gate.js';
import type { VolumeForSnapshot } from '../volume/volume-manager.js';
import { silentLogger } from '../util/logger.js';
import { faultPoint } from '../util/fault-point.js';
import { KeyedMutex } from '../util/lock.js';
import { errInfo } from '../volume/errors.js';
import { syncWriteGuard } from '../volume/native-io.js';
import { BlockBitmap, BlockRange, type BlockSet } from './block-bitmap.js';
import { copyBlocks, putUnlessStored } from './block-copier.js';
import { ChangeTracker, TrackingFiles, type TrackingState } from './change-tracker.js';
import { CowSession } from './cow-session.js';
import { CowMemory, resolveCowBudget } from './cow-memory.js';
import { CopyPacer } from './cow-pacer.js';
import { auditCompletion, SnapshotError, snapshotNotFound } from './errors.js';
import { failedManifest, PendingMarkers } from './pending-markers.js';
import { matchesFilters, toEc2Snapshot, type Ec2Snapshot, type SnapshotFilter } from './snapshot-view.js';
import { isRefused, refusedSnapshot, type RefusedManifestWarnings, type RefusedSnapshot, type ShownSnapshot } from './refused-snapshot.js';
import { FilterBudget } from '../util/ec2-filter.js';
import { openImageDataReader, readImageHeader, type ImageDataReader } from './volume-image.js';
import { SNAPSHOT_BLOCK_BYTES, type BlockBatch, type BlockHash, type SnapshotManifest, type SnapshotStore } from './types.js';
import { MARK_READERS, STORE_REQUESTS_IN_FLIGHT, type BlockPin, type RemovedManifest, type SnapshotGc } from './gc.js';
import { inParallel } from '../util/in-parallel.js';
import { recheckMsOf } from './store-settings.js';
import { skipCorrupt, summaryOf } from './manifest-check.js';
import { systemClock, withTimeout, type Clock } from '../util/clock.js';
import { putCompletedWaitingForKms } from './manifest-mac.js';

const GiB = 1024 ** 3;
/** Progress is recorded in the manifest at most this many times per snapshot (not per block). */
const PROGRESS_STEPS = 10;
/** On a single-writer store, progress is recorded at most once per this many milliseconds. */
const PROGRESS_MIN_MS = 1000;
/** The StateMessage of a create a restart interrupted. */
const CREATE_INTERRUPTED = 'The daemon stopped (crash or restart) while the snapshot was being created.';
/** How long a failed set-up waits for its `error` manifest to be written before leaving it to the marker's retry. */
const SETUP_FAILURE_WRITE_MS = 2000;
/** Volumes whose last header area is kept to skip hashing an unchanged one (at most 16 MiB each). */
const HEADER_CACHE_VOLUMES = 4;

/** What the snapshot manager takes from the volume layer (VolumeManager implements it). */
export interface SnapshotVolumes {
  withVolumeForSnapshot<T>(volumeId: string, fn: (v: VolumeForSnapshot) => Promise<T>): Promise<T>;
  /** The volumes this host has, for removing the tracking of deleted ones at open (optional: without it nothing is pruned). */
  describeVolumes?(): { Volumes: { VolumeId: string }[] };
}

export interface SnapshotAuditEvent {
  eventName: 'CreateSnapshot' | 'DeleteSnapshot' | 'SnapshotCompleted' | 'SnapshotFailed';
  snapshotId: string;
  volumeId?: string;
  principal?: string;
  details?: Record<string, unknown>;
}

export interface SnapshotManagerOptions {
  store: SnapshotStore;
  /** This host's own snapshot state (tracking files, pending-create markers): `<state>/snapshots-local`. */
  localDir: string;
  volumes: SnapshotVolumes;
  accountId: string;
  /**
   * The store's collector (gc.ts): DeleteSnapshot removes the manifest and frees
   * the blocks no other manifest names; a create pins every block it stores or
   * inherits until its manifest names them.
   */
  gc: Pick<SnapshotGc, 'pin' | 'deleteSnapshot'>;
  /** The warning for a manifest refused on a read by id (getShown), shared with the listing's, so each is given once; without it every such read warns. */
  refusedWarnings?: RefusedManifestWarnings;
  /** Resolves once the event is written; SnapshotCompleted is awaited before the snapshot shows completed (auditCompletion). */
  onAudit?: (ev: SnapshotAuditEvent) => void | Promise<void>;
  logger?: Logger;
  /**
   * Memory for captured sectors, shared by every snapshot of this daemon
   * (cow-memory.ts, docs/architecture.md §12.2); default: the default budget.
   */
  cowMemory?: CowMemory;
  /** Timers of the background settle of markers the store could not answer for (PendingMarkers); default the system clock. */
  clock?: Clock;
  /** First wait before such a marker is tried again (doubled each time, up to 5 minutes); default 5 s. */
  markerRetryMs?: number;
  /** On a shared store, the wait between a create's last put or touch and its asking again for its blocks (the store's deleteWindows().recheckMs unless given). */
  foundRecheckMs?: number;
  /** Opens a create's own read handle on the image (tests hold its reads); default openImageDataReader. */
  openReader?: typeof openImageDataReader;
  /**
   * Called once per create that got as far as its `pending` manifest, when it ends `completed` or
   * `error`, with the seconds from CreateSnapshot to that end: the daemon's metrics (src/daemon/metrics.ts).
   */
  onCreateEnded?: (state: 'completed' | 'error', seconds: number) => void;
}

export interface CreateSnapshotRequest {
  VolumeId: string;
  Description?: string;
  TagSpecifications?: { ResourceType: 'snapshot'; Tags: { Key: string; Value: string }[] }[];
}

/** The snapshot surface of a device, when the data path provides it (src/volume/write-gate.ts). */
export function asSnapshotSource(dev: BlockDevice | undefined): SnapshotSource | undefined {
  const d = dev as Partial<SnapshotSource> | undefined;
  return d && typeof d.setWriteGate === 'function' && typeof d.withWritesPaused === 'function' ? (d as SnapshotSource) : undefined;
}

/** One snapshot being created: what it holds while its manifest does not name its blocks yet. */
interface RunningCreate {
  snapshotId: string;
  volumeId: string;
  parentId: string | undefined;
  /** Pins on the blocks put or inherited so far: garbage collection spares them until the manifest names them. */
  pins: BlockPin[];
  abort: unknown;
  /** Ends the wait before the shared store's re-check at once (close()), set only while that wait is under way. */
  wake?: () => void;
  cow?: CowSession;
  /** performance.now() when CreateSnapshot arrived: the log's split of the snapshot's time. */
  startedMs: number;
  /** The write watchdog's counters when the run started (syncWriteGuard: process-wide), for the log's deltas. */
  guardAtStart: { trips: number; held: number };
  pacer?: CopyPacer;
  /** Resolves once the run has let go of everything (pins, the pending marker) after its last manifest write. */
  settled: Promise<void>;
  /** A terminal manifest (`completed` or `error`) is durable: only then may the pending marker go. */
  terminal: boolean;
  /**
   * The last of this create's manifests the store has durably (with the point in time as its
   * StartTime once taken, which the store gets with the next write): DescribeSnapshots answers
   * from it while the run lasts (no one else writes a running create's manifest), instead of
   * reading it from the store, where each read queues behind the copy's jobs on libuv's pool.
   */
  written?: SnapshotManifest;
  /** Why the run failed, once it did: the StateMessage its marker's retry writes if its own `error` write failed. */
  failure?: string;
  /** Blocks copied so far and to copy (0 and 0 until the copy starts): `inProgress`. */
  copied: number;
  toCopy: number;
}

/**
 * Thrown by a create's set-up, inside the volume's lock, when the volume's previous create has ended
 * (its terminal manifest durable) but not let go yet: the create waits for it outside the lock (the
 * previous one's undo of its tracking takes that lock) and tries again.
 */
class LetGoFirst extends Error {
  constructor(readonly run: RunningCreate) {
    super(`snapshot ${run.snapshotId} is letting go of its volume`);
  }
}

/**
 * DeleteSnapshot of a manifest it found refused that the collector then read valid (rewritten meanwhile) reads it again
 * and judges it as it reads, this many times at most; past that, SNAPSHOT_STORE.
 */
export const DELETE_REREADS_MAX = 3;

/**
 * EC2 snapshots of this host's volumes (docs/architecture.md §12):
 * CreateSnapshot (point in time, copy-on-write on an attached volume,
 * incremental through changed-block tracking), DescribeSnapshots and
 * DeleteSnapshot over the manifests of a SnapshotStore, and recovery of
 * creates a crash interrupted.
 */
export class SnapshotManager {
  private readonly log: Logger;
  private readonly trackers = new Map<string, ChangeTracker>();
  private readonly running = new Map<string, RunningCreate>();
  private copies: ((snapshotId: string) => SnapshotManifest | undefined) | undefined;
  /** Snapshots a restore or copy reads: DeleteSnapshot refuses them (InvalidSnapshot.InUse). */
  private readonly holds = new Map<string, number>();
  private readonly deleting = new KeyedMutex();
  /** The set-ups of one volume's creates, one after the other (createSnapshot): the copies are not in it. */
  private readonly creates = new KeyedMutex();
  /** The copy-on-write session of each volume whose snapshot is still copying: every attachment's gate holds it until the copy ends. */
  private readonly cows = new Map<string, CowSession>();
  private readonly openReader: typeof openImageDataReader;
  private closing = false;
  /** Creates under way, accepted or not: close() waits for them. */
  private readonly jobs = new Set<Promise<unknown>>();
  /** The last header area hashed per volume (headerHash). */
  private readonly headerCache = new Map<string, { bytes: Buffer; hash: BlockHash }>();
  /**
   * One header-area buffer whose bytes nobody needs any more (headerHash), for
   * the next header read: kept between snapshots, with the cache at most five
   * header areas (16 MiB each in ebsd's layout) outside the heap. A read that
   * fails, or one of another size, simply leaves it to be allocated again.
   */
  private spareHeader: Buffer | undefined;
  private readonly cowMemory: CowMemory;

  private constructor(private readonly o: SnapshotManagerOptions, private readonly tracking: TrackingFiles, private readonly markers: PendingMarkers) {
    this.log = (o.logger ?? silentLogger).child({ component: 'snapshot' });
    this.cowMemory = o.cowMemory ?? new CowMemory(resolveCowBudget().bytes);
    this.openReader = o.openReader ?? openImageDataReader;
  }

  /** Where copy-on-write sessions spill captured sectors beyond their memory cap: `<local>/cow`. */
  private get cowDir(): string {
    return join(this.o.localDir, 'cow');
  }

  get store(): SnapshotStore {
    return this.o.store;
  }

  /** Opens the local state and settles the creates a crash interrupted (recover()). */
  static async open(o: SnapshotManagerOptions): Promise<SnapshotManager> {
    const tracking = await TrackingFiles.open(join(o.localDir, 'tracking'));
    const log = (o.logger ?? silentLogger).child({ component: 'snapshot' });
    const markers = await PendingMarkers.open({
      dir: join(o.localDir, 'pending'),
      store: o.store,
      why: CREATE_INTERRUPTED,
      log,
      onSettled: (s, why) => {
        // A run that failed and said why was audited SnapshotFailed as it failed; only its `error` manifest waited for the store.
        if (why !== CREATE_INTERRUPTED) return log.warn({ snapshotId: s.snapshotId, volumeId: s.volumeId, reason: why }, 'failed snapshot marked error once the store answered');
        log.warn({ snapshotId: s.snapshotId, volumeId: s.volumeId }, 'snapshot interrupted by a restart: marked error');
        // A SnapshotCompleted may already be in the audit log (it is written before the manifest): the log says how it
        // ended, as docs/architecture.md §5.8 promises; a write that fails is logged by the daemon only.
        void Promise.resolve(o.onAudit?.({ eventName: 'SnapshotFailed', snapshotId: s.snapshotId, volumeId: s.volumeId, details: { reason: 'the daemon restarted during the create' } })).catch(() => {});
      },
      ...(o.clock ? { clock: o.clock } : {}),
      ...(o.markerRetryMs !== undefined ? { retryMs: o.markerRetryMs } : {}),
    });
    const m = new SnapshotManager(o, tracking, markers);
    await m.recover();
    if (o.volumes.describeVolumes) {
      const known = new Set(o.volumes.describeVolumes().Volumes.map((v) => v.VolumeId));
      const pruned = await tracking.prune((id) => known.has(id));
      if (pruned.length) m.log.info({ volumeIds: pruned }, 'removed the changed-block tracking of volumes that no longer exist');
    }
    return m;
  }

  /** DeleteVolume succeeded: the volume's changed-block tracking file goes too. */
  async volumeDeleted(volumeId: string): Promise<void> {
    this.trackers.delete(volumeId);
    this.headerCache.delete(volumeId);
    await this.tracking.remove(volumeId);
  }

  /**
   * A create this daemon started and did not finish (crash, SIGKILL, a
   * terminal manifest the store refused) left a marker in `<local>/pending`:
   * its manifest, if still `pending`, becomes `error` with no blocks, so it
   * never shows as completed and references nothing (its stored blocks are
   * garbage for collection). A store that does not answer keeps the marker,
   * settled in the background once it does (PendingMarkers): the daemon
   * starts anyway. Another host's pending snapshots in a shared store are
   * not this host's to judge.
   */
  async recover(): Promise<string[]> {
    // Copy-on-write spill files are nameless while in use (cow-spill.ts); one left here by a crash right after its open is garbage.
    await fsp.rm(this.cowDir, { recursive: true, force: true });
    return this.markers.recover();
  }

  /** Pending markers the store has not yet let this daemon settle (tests). */
  get unsettledMarkers(): string[] {
    return this.markers.waiting;
  }

  // ---- tracking on attach / detach ----------------------------------------

  /** A volume was attached (or resumed): install its change tracker as the device's write gate. */
  volumeAttached(dev: BlockDevice): void {
    const src = asSnapshotSource(dev);
    if (!src) return;
    const t = new ChangeTracker(dev.volumeId, this.tracking);
    // A snapshot still copying (taken before a detach, or while detached): its session is in the gate before the gate is
    // in the device, so no write of this attachment reaches a block it has not copied yet (docs/architecture.md §12.1).
    const cow = this.cows.get(dev.volumeId);
    if (cow) t.setCow(cow);
    this.trackers.set(dev.volumeId, t);
    src.setWriteGate(t);
    void t.ready().then((err) => {
      if (t.writesRefused) this.log.error({ volumeId: dev.volumeId, err: errInfo(err) }, 'changed-block tracking could not be marked unknown on disk; writes to the volume fail (EIO) until it can');
      else if (err) this.log.warn({ volumeId: dev.volumeId, err: errInfo(err) }, 'changed-block tracking could not be read or marked; the next snapshot copies every block');
    });
  }

  /**
   * A volume is being detached (its file hidden, no new requests): once every
   * accepted write reached the disk and is durable (fdatasync, inside the
   * write pause), save its tracking with the clean mark. The clean mark says
   * "the image differs from the base only in these blocks", so it must not
   * be durable before the data it describes: with the save first, a failed
   * (EIO) or interrupted (power) last flush of the detach would leave a clean
   * file over blocks that never reached the disk, and the next snapshot would
   * be an incremental missing them. A flush that fails leaves the dirty mark
   * written at attach: the next snapshot copies every block
   * (docs/architecture.md §12.3).
   */
  async volumeDetaching(volumeId: string, dev: BlockDevice | undefined): Promise<void> {
    const t = this.trackers.get(volumeId);
    if (!t) return;
    this.trackers.delete(volumeId);
    const src = asSnapshotSource(dev);
    try {
      await t.ready();
      // The gate was installed through this device's SnapshotSource (volumeAttached); without it nothing can be flushed.
      if (!dev || !src) throw new SnapshotError('SNAPSHOT_INCORRECT_STATE', `no data path to flush for ${volumeId}`);
      await src.withWritesPaused(async () => {
        await dev.flush();
        await this.tracking.saveClean(volumeId, t.snapshotForSave());
      });
      src.setWriteGate(undefined);
      if (t.stale) await this.tracking.markDirty(volumeId);
    } catch (e) {
      this.log.warn({ volumeId, err: errInfo(e) }, 'could not save changed-block tracking at detach; the next snapshot copies every block');
    }
  }

  // ---- CreateSnapshot -------------------------------------------------------

  /**
   * Accepts a snapshot: writes its `pending` manifest, takes the point in
   * time, and resolves with EC2's CreateSnapshot answer; the copy goes on in
   * the background. The volume is held (VolumeManager.withVolumeForSnapshot)
   * for the set-up only: the copy reads through its own handle on the image
   * and its copy-on-write session stays in every gate of the volume until
   * it ends, so attach, detach, grow and delete go on meanwhile
   * (docs/architecture.md §12.1). One pending snapshot per volume: a
   * create of a volume whose snapshot by this daemon is still pending is
   * refused at once (ConcurrentSnapshotLimitExceeded), nothing changed.
   */
  createSnapshot(req: CreateSnapshotRequest, caller: Caller): Promise<Ec2Snapshot> {
    if (this.closing) return Promise.reject(shuttingDown());
    const snapshotId = `snap-${randomBytes(9).toString('hex').slice(0, 17)}`;
    // The time the request arrived: the pending manifest, written before the point in time, has it until the next manifest write.
    const startTime = new Date().toISOString();
    const startedMs = performance.now();
    let accepted: (s: Ec2Snapshot) => void = () => {};
    const answer = new Promise<Ec2Snapshot>((res) => (accepted = res));
    let isAccepted = false;
    const job = (async () => {
      // Filled inside the volume's mutex; what letGo() lets go of.
      const ctx: { run?: RunningCreate; settle?: () => void } = {};
      let gone = false;
      const letGo = async (): Promise<void> => {
        const run = ctx.run;
        if (!run || gone) return;
        gone = true;
        for (const p of run.pins) p.release();
        this.running.delete(snapshotId);
        // Without a terminal manifest the marker stays, so the snapshot cannot stay `pending` for good: settled in the background, else at the next start.
        if (run.terminal) await this.markers.remove(snapshotId).catch(() => {});
        else this.markers.retry(snapshotId, run.failure);
        ctx.settle?.();
      };
      try {
        const set = await this.creates.run(String(req.VolumeId), async () => {
          // A create whose terminal manifest is durable (no longer pending to anyone who asks) may still be letting go of
          // its session, pins and marker, and undoing its tracking (which takes the volume's lock): this one waits for that.
          for (;;) {
            const before = this.pendingCreateOf(String(req.VolumeId));
            if (before?.terminal) await before.settled;
            try {
              return await this.setUp(req, snapshotId, startTime, startedMs, ctx);
            } catch (e) {
              // One that ended while this create waited for the volume's lock: waited for outside the lock (its undo takes it).
              if (e instanceof LetGoFirst) {
                await e.run.settled;
                continue;
              }
              // A pending manifest already written is ended `error` at once, not left pending until the marker's retry,
              // and audited as it ends. The write is bounded: a set-up that failed on an unhealthy store must not hold
              // the caller's answer, and the volume's next creates, for the store client's whole timeout (the marker's
              // retry ends it then, and audits it).
              const run = ctx.run;
              if (run?.written && !run.terminal) {
                const why = `The snapshot could not be created: ${(e as Error)?.message ?? String(e)}`;
                run.failure = why;
                const failed = failedManifest(run.written, why);
                const wrote = await withTimeout(this.o.clock ?? systemClock, this.o.store.putManifest(failed), SETUP_FAILURE_WRITE_MS).then(() => true, () => false);
                if (wrote) {
                  run.terminal = true;
                  run.written = failed;
                }
                this.ended('error', run);
                // Audited as it fails, as copy() audits a failed copy, whether its `error` manifest is written now or by the retry.
                void Promise.resolve(this.o.onAudit?.({ eventName: 'SnapshotFailed', snapshotId, volumeId: run.volumeId, details: { reason: why } })).catch(() => {});
              }
              // Within the set-up's turn: the next create of the volume does not find this one still running.
              await letGo();
              throw e;
            }
          }
        });
        // The volume is free from here on (docs/architecture.md §12.1): the copy reads through its own handle.
        const { v, m, header, parent, plan, recheckMs } = set;
        // The event and the answer run inside copy()'s failure handling: a throw there still ends the session and undoes the tracking.
        await this.copy(m, header, v, plan, parent, ctx.run!, recheckMs, () => {
          this.o.onAudit?.({ eventName: 'CreateSnapshot', snapshotId, volumeId: v.volumeId, principal: caller.arn, details: { incremental: plan.incremental, ...(parent ? { parentSnapshotId: parent.snapshotId } : {}) } });
          const answerOf = toEc2Snapshot(m);
          isAccepted = true;
          accepted(answerOf);
        });
      } finally {
        await letGo();
      }
    })();
    this.jobs.add(job);
    void job.catch(() => {}).finally(() => this.jobs.delete(job));
    const done = job.catch((e: unknown) => {
      if (!isAccepted) throw e;
      // After the answer the failure is the snapshot's state (error), already recorded by copy().
    });
    return Promise.race([answer, done.then(() => answer)]);
  }

  /**
   * This daemon's creates under way (from their `pending` manifest to their end), each with the share of
   * its blocks copied so far (0 until the copy starts): the daemon's metrics.
   */
  inProgress(): { volumeId: string; copiedRatio: number }[] {
    const out: { volumeId: string; copiedRatio: number }[] = [];
    for (const r of this.running.values()) if (!r.terminal && r.failure === undefined) out.push({ volumeId: r.volumeId, copiedRatio: r.toCopy > 0 ? r.copied / r.toCopy : 0 });
    return out;
  }

  /** onCreateEnded, once per run; an observer that throws must not change how the snapshot ends. */
  private ended(state: 'completed' | 'error', run: RunningCreate): void {
    try {
      this.o.onCreateEnded?.(state, (performance.now() - run.startedMs) / 1000);
    } catch (e) {
      this.log.warn({ snapshotId: run.snapshotId, err: errInfo(e) }, 'the snapshot end observer threw');
    }
  }

  /**
   * This daemon's create of the volume that has not let go yet: the pending one if there is one (at most one, createSnapshot),
   * else one whose terminal manifest is durable (a create may start beside it: it no longer captures anything the next needs).
   */
  private pendingCreateOf(volumeId: string): RunningCreate | undefined {
    let ending: RunningCreate | undefined;
    for (const r of this.running.values()) {
      if (r.volumeId !== volumeId) continue;
      if (!r.terminal) return r;
      ending ??= r;
    }
    return ending;
  }

  /**
   * Steps 1 and 2 of a create (docs/architecture.md §12.1), inside the volume's lock: checks, the `pending`
   * manifest and marker, the parent, the point in time. `ctx.run` is set once there is something to let go of.
   */
  private setUp(req: CreateSnapshotRequest, snapshotId: string, startTime: string, startedMs: number, ctx: { run?: RunningCreate; settle?: () => void }): Promise<{ v: VolumeForSnapshot; m: SnapshotManifest; header: Buffer; parent: SnapshotManifest | undefined; plan: SnapshotPlan; recheckMs: number }> {
    return this.o.volumes.withVolumeForSnapshot(req.VolumeId, async (v) => {
      if (this.closing) throw shuttingDown();
      if (v.state !== 'available' && v.state !== 'in-use') {
        throw new SnapshotError('SNAPSHOT_INCORRECT_STATE', `The volume '${v.volumeId}' is '${v.state}'`, { awsName: 'IncorrectState' });
      }
      // One pending snapshot per volume (EC2 allows five, one for st1/sc1): two at once would need a copy-on-write
      // session and a changed-block epoch each, and an incremental whose parent is still pending (docs/architecture.md
      // §12.1). Refused at once rather than queued: a client that timed out waiting would retry, and each retry would
      // queue one more snapshot (CreateSnapshot has no ClientToken). The message begins with EC2's own for this
      // error, so a script that matches it matches ebsd's; then which snapshot holds the volume.
      const busy = this.pendingCreateOf(v.volumeId);
      if (busy?.terminal) throw new LetGoFirst(busy);
      if (busy) {
        throw new SnapshotError('SNAPSHOT_CONCURRENT_LIMIT', `Maximum allowed in-progress snapshots for a single volume exceeded. The volume '${v.volumeId}' has a pending snapshot '${busy.snapshotId}': ebsd takes one pending snapshot per volume; create the next once it has left 'pending'.`, { awsName: 'ConcurrentSnapshotLimitExceeded' });
      }
      const src = asSnapshotSource(v.device);
      if (v.state === 'in-use' && (!v.device || !src || !this.trackers.has(v.volumeId))) {
        throw new SnapshotError('SNAPSHOT_INCORRECT_STATE', v.device ? `the data path of ${v.volumeId} cannot take a snapshot while attached` : `The volume '${v.volumeId}' is recorded in-use but not served by this host (see the daemon log)`, { awsName: 'IncorrectState' });
      }
      // On a shared store, the wait before the create asks again for its blocks comes from the store's settings
      // (store-settings.ts): read beside the header, and checked before anything is written, so settings this daemon
      // cannot follow (or a store that does not answer for them) refuse the create here, nothing left behind, not
      // after every block was read, encrypted and put.
      const recheck = recheckMsOf(this.o.store, this.o.foundRecheckMs);
      recheck.catch(() => {}); // awaited below; a header read that fails first must not leave it unhandled
      const hdr = await readImageHeader(v, (n) => this.headerBuffer(n));
      // close() aborts only the runs it finds in `running`: one that began during the read refuses here, nothing written yet.
      if (this.closing) throw shuttingDown();
      const recheckMs = await recheck;
      const tags = (req.TagSpecifications ?? []).flatMap((s) => s.Tags);
      const m: SnapshotManifest = {
        formatVersion: 1,
        snapshotId,
        volumeId: v.volumeId,
        volumeSize: Math.ceil(v.size / GiB),
        state: 'pending',
        progress: 0,
        startTime,
        description: req.Description ?? '',
        tags,
        ownerId: this.o.accountId,
        encrypted: v.encrypted,
        kmsKeyId: v.encrypted ? v.kmsKeyId : '',
        ...(hdr.dataEncryptionKeyId ? { dataEncryptionKeyId: hdr.dataEncryptionKeyId } : {}),
        ...(hdr.wrappedKey ? { wrappedKey: hdr.wrappedKey } : {}),
        dataOffset: hdr.dataOffset,
        // A restored volume's snapshots stay in its source snapshot's lineage (ListChangedBlocks).
        ...(v.snapshotId ? { sourceSnapshotId: v.snapshotId } : {}),
        blocks: [],
      };
      const run: RunningCreate = { snapshotId, volumeId: v.volumeId, parentId: undefined, pins: [], abort: undefined, startedMs, guardAtStart: { trips: syncWriteGuard.trips, held: syncWriteGuard.held }, settled: new Promise<void>((r) => (ctx.settle = r)), terminal: false, copied: 0, toCopy: 0 };
      ctx.run = run;
      // Crash from here on: recover() turns the pending manifest into error.
      await this.markers.putPending(m);
      faultPoint('snapshot.after-pending');
      run.written = { ...m }; // what the store has: m gets the point in time as its StartTime below
      this.running.set(snapshotId, run);
      // A close() that began while the pending manifest was written did not find this run: aborted as it would have been.
      if (this.closing) run.abort ??= shutDownDuring();
      // A detached volume's tracking is read once: the volume is held, so its file cannot change meanwhile.
      const detached = src ? undefined : await this.detachedTracking(v.volumeId, snapshotId);
      const tracker = this.trackers.get(v.volumeId);
      const base = src ? ((await tracker?.ready()), tracker?.base) : detached!.base;
      const parent = await this.parentOf(v.volumeId, m.dataEncryptionKeyId, run, base);
      run.parentId = parent?.snapshotId;
      const nBlocks = Math.ceil(v.size / SNAPSHOT_BLOCK_BYTES);
      const plan = src
        ? await this.pointInTimeAttached(v, src, hdr.dataOffset, parent, nBlocks, run)
        : await this.pointInTimeDetached(v, hdr.dataOffset, parent, nBlocks, detached!, run);
      // EC2's StartTime is when the snapshot was initiated: its point in time, not the request's arrival (the volume's
      // lock, the header read, the pending manifest and the parent's look-up come between). The answer and this daemon's
      // DescribeSnapshots show it at once (copy()); every later manifest carries it.
      m.startTime = plan.pointInTime;
      return { v, m, header: hdr.header, parent, plan, recheckMs };
    });
  }

  /**
   * The parent for an incremental (docs/architecture.md §12.3): the
   * tracking's base when it is a completed snapshot of this volume under the
   * same data key (one manifest read: the changed blocks are relative to it,
   * so it is the one an incremental can use); otherwise the latest such
   * snapshot, found by listing every manifest (the snapshot then reads every
   * block, which costs far more than the listing). The parent comes pinned
   * (pinParent): undefined when it was deleted meanwhile. `base`: the
   * tracking's base (undefined: unknown).
   */
  private async parentOf(volumeId: string, dek: string | undefined, run: RunningCreate, base: string | undefined): Promise<SnapshotManifest | undefined> {
    if (base) {
      const m = await this.o.store.getManifest(base).catch((err: unknown) => {
        // Refused (docs/architecture.md §13.5): never a parent, whose block list nothing may trust. Said, since the
        // snapshot then reads every block (against an older parent found below, or none: a full snapshot).
        if (refusedSnapshot(base, err, this.o.accountId)) {
          this.log.warn({ snapshotId: run.snapshotId, volumeId, parentSnapshotId: base, err: errInfo(err) }, `the parent snapshot ${base} has a refused manifest (the snapshot it stands for is in state error): this snapshot is not incremental against it and reads every block`);
        }
        return undefined;
      });
      if (m && m.volumeId === volumeId && m.state === 'completed' && m.dataEncryptionKeyId === dek) return this.pinParent(m, run);
    }
    // Read one by one, keeping only the latest match's id: not every manifest's block list at once (listManifests).
    const best = { id: '', startTime: '' };
    const refused: string[] = [];
    await inParallel(await this.o.store.listManifestIds(), MARK_READERS, async (id) => {
      // Corrupt: left out (its volume is unknown: nothing in it is trusted); a store error fails the create.
      const m = await skipCorrupt(id, () => this.o.store.getManifest(id), (rid) => void refused.push(rid));
      if (!m || m.volumeId !== volumeId || m.state !== 'completed' || m.dataEncryptionKeyId !== dek) return;
      if (!best.id || m.startTime > best.startTime || (m.startTime === best.startTime && m.snapshotId < best.id)) Object.assign(best, { id: m.snapshotId, startTime: m.startTime });
    });
    const others = refused.filter((id) => id !== base);
    if (others.length) {
      this.log.warn({ snapshotId: run.snapshotId, volumeId, refused: others.slice(0, 20) }, 'snapshots with refused manifests were not considered as this snapshot\'s parent (whose volume they are for is not known); if one was its latest, this snapshot reads every block');
    }
    if (!best.id) return undefined;
    const m = await this.o.store.getManifest(best.id);
    return m ? this.pinParent(m, run) : undefined;
  }

  /**
   * Called in the same turn as the parent's manifest read (gc.pin takes its
   * pins before its first await): a DeleteSnapshot of the parent from here on
   * cannot free a block this create will inherit. Then the manifest is read
   * again: if the parent went before the pins (its blocks may be gone), there
   * is no parent and the snapshot is full, decided before its point in time
   * (the tracking is relative to the deleted parent, so it is of no use).
   * docs/architecture.md §12.4.
   */
  private async pinParent(m: SnapshotManifest, run: RunningCreate): Promise<SnapshotManifest | undefined> {
    run.pins.push(await this.o.gc.pin(new Set(m.blocks.map(([, h]) => h))));
    // A store error is an error (the create fails), not a deletion: a full snapshot of a large volume is not a retry.
    const still = await this.o.store.getManifest(m.snapshotId);
    if (still?.state === 'completed') return m;
    this.log.warn({ snapshotId: run.snapshotId, volumeId: m.volumeId, parentSnapshotId: m.snapshotId }, 'the parent snapshot was deleted as this snapshot started: it copies every block');
    return undefined;
  }

  private async pointInTimeAttached(v: VolumeForSnapshot, src: SnapshotSource, dataOffset: number, parent: SnapshotManifest | undefined, nBlocks: number, run: RunningCreate): Promise<SnapshotPlan> {
    const t = this.trackers.get(v.volumeId)!;
    await t.ready();
    // The copy's own handle, in the device's mode: a detach closing the device's fd does not end the copy.
    const reader = await this.openReader(v.imagePath, dataOffset, v.volumeId, { direct: src.backingDirect === true });
    try {
      const readRaw = clampedReader(reader, v.size);
      // Everything that does not need the pause is prepared before it: all writes of the volume wait while it lasts.
      const every = new BlockRange(nBlocks);
      const cowOptions = { memory: this.cowMemory, spillPath: join(this.cowDir, `${run.snapshotId}.spill`) };
      let at: { before: TrackingState; incremental: boolean; cow: CowSession; time: string } | undefined;
      await src.withWritesPaused(() => {
        // The point in time: no write is in flight, and none passes until the gate holds the copy-on-write set.
        // Constant work whatever the volume's size (docs/architecture.md §12.2): the tracker's epoch and the session, whose
        // set of blocks is the range of every block or the epoch's bitmap as it is (begin() starts a new one for later
        // writes, so nothing changes it while the session reads it).
        let incremental = false;
        let cow: CowSession | undefined;
        const before = t.begin(run.snapshotId, (b) => {
          incremental = parent !== undefined && b.base === parent.snapshotId;
          cow = new CowSession(incremental ? b.changed : every, readRaw, cowOptions);
          return cow;
        });
        // A later attachment of the volume installs it too (volumeAttached), until the copy ends.
        this.cows.set(v.volumeId, cow!);
        run.cow = cow!;
        run.pacer = new CopyPacer(() => cow!.writes);
        at = { before, incremental, cow: cow!, time: new Date().toISOString() };
      });
      const { before, incremental, cow, time } = at!;
      const pacer = run.pacer!;
      // The copier reads the session's set (not changed by anyone from the point in time on): no list of indexes.
      return this.planOf(v.volumeId, run, { incremental, pointInTime: time, blocks: incremental ? before.changed : every, before, cow, pacer, reader, readRaw });
    } catch (e) {
      await reader.close().catch(() => {});
      throw e;
    }
  }

  /** The copy's plan once the point in time is taken: its blocks read through the session, then the reader's. */
  private planOf(volumeId: string, run: RunningCreate, p: { incremental: boolean; pointInTime: string; blocks: BlockSet; before: TrackingState; cow: CowSession; pacer: CopyPacer; reader: ImageDataReader; readRaw: RawReader }): SnapshotPlan {
    const { cow, pacer, reader, readRaw, before } = p;
    return {
      incremental: p.incremental,
      pointInTime: p.pointInTime,
      blocks: p.blocks,
      read: async (i) => (await cow.take(i)) ?? readBlock(readRaw, i, cow.buffers.take()),
      recycle: (buf) => cow.buffers.give(buf),
      nextFirst: () => cow.nextCaptured(),
      pace: () => pacer.before(),
      tracking: before,
      rollback: () => this.rollbackTracking(volumeId, run.snapshotId, before),
      close: () => this.endCow(volumeId, cow, reader),
    };
  }

  /**
   * The tracking of a detached volume, as its file says; a file that cannot
   * be read or is not well formed (torn, damaged, edited) is "unknown": the
   * snapshot copies every block, never fails for it (docs/architecture.md §12.3).
   */
  private async detachedTracking(volumeId: string, snapshotId: string): Promise<TrackingState> {
    try {
      return await this.tracking.load(volumeId);
    } catch (e) {
      this.log.warn({ snapshotId, volumeId, err: errInfo(e) }, 'changed-block tracking cannot be read: the snapshot copies every block');
      return { base: undefined, changed: new BlockBitmap() };
    }
  }

  private async pointInTimeDetached(v: VolumeForSnapshot, dataOffset: number, parent: SnapshotManifest | undefined, nBlocks: number, before: TrackingState, run: RunningCreate): Promise<SnapshotPlan> {
    const incremental = parent !== undefined && before.base === parent.snapshotId;
    // A block past the end cannot have been written; one from a damaged file is not read.
    before.changed.truncate(nBlocks);
    const blocks = incremental ? before.changed : new BlockRange(nBlocks);
    // Buffered, as every attachment opens its image (openImageDataReader): an attach during the copy shares the page cache.
    const reader = await this.openReader(v.imagePath, dataOffset, v.volumeId);
    try {
      const readRaw = clampedReader(reader, v.size);
      // No write can reach the image now (the volume is held, no device): the point in time is here. An attach
      // during the copy installs this session in its gate before its first write passes (volumeAttached).
      const cow = new CowSession(blocks, readRaw, { memory: this.cowMemory, spillPath: join(this.cowDir, `${run.snapshotId}.spill`) });
      const pointInTime = new Date().toISOString();
      this.cows.set(v.volumeId, cow);
      run.cow = cow;
      run.pacer = new CopyPacer(() => cow.writes);
      const pacer = run.pacer;
      // The tracking names this snapshot as its base from its point in time (ChangeTracker.begin says why that is
      // safe while it is pending): an attach during the copy loads it and tracks on top of it. Written inside the
      // volume's lock, before any attach can read the file. A failed write leaves the old clean file, still true
      // (every block written since its base is in it), so the next snapshot is merely larger.
      await this.tracking.saveClean(v.volumeId, { base: run.snapshotId, changed: new BlockBitmap() }).catch((e: unknown) => this.log.warn({ volumeId: v.volumeId, err: errInfo(e) }, 'could not save changed-block tracking'));
      return this.planOf(v.volumeId, run, { incremental, pointInTime, blocks, before, cow, pacer, reader, readRaw });
    } catch (e) {
      await reader.close().catch(() => {});
      throw e;
    }
  }

  /**
   * The snapshot `snapshotId` failed: the tracking that names it as its base
   * (ChangeTracker.begin) goes back to the base before it, its blocks
   * changed again, whether it is an attached volume's tracker or the file of
   * a detached one. Inside the volume's lock, so no attach loads or detach
   * saves the file meanwhile; a volume deleted since has nothing to undo.
   * Undone or not, it is never wrong: a base that is not a completed
   * snapshot only makes the next snapshot copy every block.
   */
  private async rollbackTracking(volumeId: string, snapshotId: string, before: TrackingState): Promise<void> {
    try {
      await this.o.volumes.withVolumeForSnapshot(volumeId, async () => {
        const t = this.trackers.get(volumeId);
        if (t) {
          await t.ready();
          t.rollback(snapshotId, before);
          return;
        }
        const now = await this.tracking.load(volumeId);
        if (now.base !== snapshotId) return;
        now.changed.or(before.changed);
        await this.tracking.saveClean(volumeId, { base: before.base, changed: now.changed });
      });
    } catch (e) {
      // Deleted meanwhile (DeleteVolume went on during the copy): no tracking left to undo, nor a next snapshot.
      if ((e as { code?: unknown })?.code === 'VOLUME_NOT_FOUND') {
        this.log.info({ snapshotId, volumeId }, 'the volume of the failed snapshot was deleted meanwhile: no changed-block tracking to undo');
        return;
      }
      this.log.warn({ snapshotId, volumeId, err: errInfo(e) }, 'could not undo the changed-block tracking of the failed snapshot; the next snapshot copies every block');
    }
  }

  /**
   * The copy ended: its session leaves the volume's gate (whichever
   * attachment holds it now) and the map later attachments install from,
   * then its captures are freed and its read handle closed once no capture
   * read is under way.
   */
  private async endCow(volumeId: string, cow: CowSession, reader: ImageDataReader): Promise<void> {
    if (this.cows.get(volumeId) === cow) this.cows.delete(volumeId);
    this.trackers.get(volumeId)?.dropCow(cow);
    await cow.end();
    await reader.close();
  }

  /**
   * The snapshot from its set-up on: `accept` (the CreateSnapshot event and answer) first, then the copy and the
   * terminal manifest. Whatever throws from `accept` on ends as a failed snapshot: recorded `error`, its session
   * out of every gate, its tracking undone. `recheckMs`: on a shared store, the wait from the last put or touch
   * before every block is asked for again (the store's settings, read at set-up).
   */
  private async copy(m: SnapshotManifest, header: Buffer, v: VolumeForSnapshot, plan: SnapshotPlan, parent: SnapshotManifest | undefined, run: RunningCreate, recheckMs: number, accept: () => void): Promise<void> {
    const nBlocks = Math.ceil(v.size / SNAPSHOT_BLOCK_BYTES);
    let recorded = 0;
    let lastRecordMs = performance.now();
    let progressWrite: Promise<void> = Promise.resolve();
    let batch: BlockBatch | undefined;
    let headerStored: Promise<BlockHash> | undefined;
    let closed = false;
    const close = async (): Promise<void> => {
      if (closed) return;
      closed = true;
      await plan.close().catch((e: unknown) => this.log.warn({ snapshotId: m.snapshotId, volumeId: m.volumeId, err: errInfo(e) }, 'could not end the copy-on-write session or close the read handle'));
    };
    try {
      // The stored pending manifest has the time the set-up began (it is written before the point in time). The
      // answer and this daemon's DescribeSnapshots (run.written) show the point in time at once; the store gets it
      // with the next manifest write (progress, completed or error). Not rewritten before the answer: a durable
      // write there cost an incremental's CreateSnapshot 15-20 ms (docs/benchmarks.md, "Snapshots").
      run.written = { ...(run.written ?? m), startTime: m.startTime };
      accept();
      // Aborted before the copy began (close() during the point in time): recorded `error` at once.
      if (run.abort) throw run.abort;
      const inherited = new Map<number, BlockHash>();
      if (plan.incremental && parent) {
        for (const [i, h] of parent.blocks) if (i < nBlocks && !plan.blocks.has(i)) inherited.set(i, h);
        if (this.o.store.singleWriter) {
          // The parent may be deleted meanwhile: its blocks, pinned since its manifest was read (pinParent), stay until
          // this manifest names them; only this daemon collects this store, so the pins are enough.
          // One look-up of the method (the store may be a Proxy, describingStore), then no await for blocks the store knows in memory.
          const inMemory = this.o.store.hasBlockInMemory?.bind(this.o.store);
          for (const h of inherited.values()) {
            if (!inMemory?.(h) && !(await this.o.store.hasBlock(h))) throw new SnapshotError('SNAPSHOT_BLOCK_NOT_FOUND', `block ${h} of the parent ${parent.snapshotId} is missing from ${this.o.store.location}`);
          }
        } else {
          // A collector of another daemon sharing the store spares what a manifest names, pending ones too, and
          // re-reads a block's age just before it deletes (docs/architecture.md §13.3). The pins above are this
          // daemon's only. So: name the inherited blocks first, then touch each (its age renewed: a collector
          // that marked before our manifest and reads the age after the touch spares it); one gone by then is
          // found missing here, before anything names it as stored.
          if (inherited.size) await this.o.store.putManifest({ ...m, blocks: sortBlocks(inherited) });
          const gone: BlockHash[] = [];
          await inParallel([...new Set(inherited.values())], STORE_REQUESTS_IN_FLIGHT, async (h) => {
            if (!(await (this.o.store.touchBlock ? this.o.store.touchBlock(h) : this.o.store.hasBlock(h)))) gone.push(h);
          });
          if (gone.length) throw new SnapshotError('SNAPSHOT_BLOCK_NOT_FOUND', `block ${gone[0]} of the parent ${parent.snapshotId} is missing from ${this.o.store.location}${gone.length > 1 ? ` (and ${gone.length - 1} more)` : ''}`);
        }
      }
      // The blocks found in the store are named at each progress step, for the same collectors.
      batch = this.o.store.openBlockBatch?.();
      const b = batch;
      // The header area (16 MiB for LUKS2) is hashed on libuv's pool while the blocks are copied.
      headerStored = (async (): Promise<BlockHash> => {
        const { hash: h, bytes } = await this.headerHash(m.volumeId, header);
        run.pins.push(await this.o.gc.pin([h]));
        await putUnlessStored(this.o.store, b, h, bytes);
        return h;
      })();
      headerStored.catch(() => {});
      const t0 = performance.now();
      const gate = process.env.EBSD_TEST_SNAPSHOT_COPY_GATE;
      const res = await copyBlocks({
        ...(batch ? { batch } : {}),
        blocks: plan.blocks,
        read: gate ? async (i) => ((await copyGate(gate, () => run.abort !== undefined)), plan.read(i)) : plan.read,
        ...(plan.nextFirst ? { nextFirst: plan.nextFirst } : {}),
        ...(plan.pace ? { pace: plan.pace } : {}),
        ...(plan.recycle ? { recycle: plan.recycle } : {}),
        store: this.o.store,
        pin: async (h) => void run.pins.push(await this.o.gc.pin([h])),
        aborted: () => run.abort,
        onProgress: (done, total, sofar) => {
          run.copied = done;
          run.toCopy = total;
          // Bounded: one manifest write per tenth, never two at once; on a store only this daemon
          // collects, where the write only reports Progress, not before a second has passed since
          // the last (a small incremental is done before anyone could watch it).
          const step = Math.floor((done / total) * PROGRESS_STEPS);
          if (this.o.store.singleWriter && performance.now() - lastRecordMs < PROGRESS_MIN_MS) return;
          if (step > recorded && step < PROGRESS_STEPS) {
            lastRecordMs = performance.now();
            recorded = step;
            const progress = Math.min(99, Math.floor((done / total) * 100));
            const blocks = sortBlocks(new Map([...inherited, ...sofar]));
            const shown: SnapshotManifest = { ...m, progress, blocks };
            // Kept without its block list: no one reads a running create's blocks from it (only state, progress, tags,
            // key), and a list of every block so far would stay in memory until the next progress write.
            progressWrite = progressWrite.then(() => this.o.store.putManifest(shown)).then(() => void (run.written = { ...shown, blocks: [] })).catch((e: unknown) => this.log.warn({ snapshotId: m.snapshotId, err: errInfo(e) }, 'could not record progress'));
          }
        },
      });
      const headerHash = await headerStored;
      const t1 = performance.now();
      await batch?.commit();
      const t2 = performance.now();
      faultPoint('snapshot.after-blocks');
      const all = new Map(inherited);
      for (const [i, h] of res.hashes) all.set(i, h);
      const blocks = sortBlocks(all);
      const changedBlocks = parent ? countChanged(parent.blocks, blocks) : blocks.length;
      await progressWrite;
      const done: SnapshotManifest = {
        ...m,
        state: 'completed',
        progress: 100,
        header: headerHash,
        ...(parent ? { parentSnapshotId: parent.snapshotId } : {}),
        blocks,
        changedBlocks,
      };
      // On a store other daemons collect, a collector may have read the age of a block this create names just
      // before our reference to it, and delete it after: one found in the store (touched, not put); one put
      // because our touch found it gone, when an older copy's age was read before (by a collector whose delete
      // lands after our put, while another's delete made our touch miss); an inherited one whose parent is
      // deleted meanwhile. Its delete lands within the store's window of that read and margin, or never (gc.ts):
      // every block is asked again once that has passed since our last put or touch (the batch's commit), one
      // request each, so the completed manifest never names a block that is gone: the create fails instead.
      // Inherited blocks are safe while the parent's manifest still exists then (a collector deletes them only
      // after removing it, and our pending manifest names them since); otherwise each is asked too.
      // On a shared store: asks again for every block the manifest names (below); run again before a retried write.
      let recheck: (() => Promise<void>) | undefined;
      if (!this.o.store.singleWriter) {
        const named = [...new Set([...res.hashes.values(), headerHash])];
        // Every block is read: the copy-on-write session and the read handle go now, not after the wait.
        await close();
        await untilRecheck(run, t2 + recheckMs - performance.now());
        // Shutdown during the wait: the create ends `error` as any other under way does, not `completed` seconds later.
        if (run.abort) throw run.abort;
        recheck = async (): Promise<void> => {
          const asked = [...named];
          if (inherited.size && !(await this.o.store.getManifest(parent!.snapshotId))) asked.push(...new Set(inherited.values()));
          await this.checkStillThere(m.snapshotId, asked);
        };
        await recheck();
      }
      // Completed now, not when the last block was stored: on a shared store the check above came between, and
      // CompletionTime is when DescribeSnapshots can first show `completed` (as a copy's, copy.ts).
      done.completionTime = new Date().toISOString();
      // Every block is durable (putBlock resolved); the event, then the manifest that names them and shows it completed.
      await auditCompletion(this.o.onAudit, { eventName: 'SnapshotCompleted', snapshotId: m.snapshotId, volumeId: m.volumeId, details: { incremental: plan.incremental, changedBlocks, blocksStored: res.storedBlocks } });
      faultPoint('snapshot.after-completed-event');
      // A KMS not answering for its MAC is waited for (manifest-mac.ts, docs/architecture.md §13.5).
      await putCompletedWaitingForKms(done, {
        put: (x) => this.o.store.putManifest(x), stopped: () => run.abort !== undefined, recheck, log: this.log,
        pause: async (ms) => { await untilRecheck(run, ms); if (run.abort) throw run.abort; },
      });
      run.terminal = true;
      run.written = done;
      const t3 = performance.now();
      this.ended('completed', run);
      // The tracking names this snapshot as its base since its point in time (ChangeTracker.begin): nothing to commit.
      this.log.info(
        { snapshotId: m.snapshotId, volumeId: m.volumeId, incremental: plan.incremental, blocksRead: plan.blocks.size, blocksStored: res.storedBlocks, zeroBlocks: res.zeroBlocks, changedBlocks, blocks: blocks.length, cowSectors: run.cow?.capturedSectors ?? 0, cowSpilledSectors: run.cow?.spilledSectors ?? 0, cowNewSlabs: run.cow?.newSlabs ?? 0, pacedBlocks: run.pacer?.pacedBlocks ?? 0, cowPoolCaptures: run.cow?.poolCaptures ?? 0, writeTrips: syncWriteGuard.trips - run.guardAtStart.trips, writesHeld: syncWriteGuard.held - run.guardAtStart.held, startMs: Math.round(t0 - run.startedMs), copyMs: Math.round(t1 - t0), durableMs: Math.round(t2 - t1), manifestMs: Math.round(t3 - t2) },
        'snapshot completed',
      );
    } catch (e) {
      // The header's put may still be under way: the batch is dropped after it, not beside it.
      await headerStored?.catch(() => {});
      await batch?.abort().catch(() => {});
      const why = run.abort ? 'The daemon shut down while the snapshot was being created.' : `The snapshot could not be completed: ${(e as Error)?.message ?? String(e)}`;
      this.log.error({ snapshotId: m.snapshotId, volumeId: m.volumeId, err: errInfo(e) }, 'snapshot failed');
      this.ended('error', run);
      await progressWrite;
      run.failure = why;
      const failed = failedManifest(m, why);
      await this.o.store.putManifest(failed).then(
        () => void ((run.terminal = true), (run.written = failed)),
        (err: unknown) => this.log.error({ snapshotId: m.snapshotId, err: errInfo(err) }, 'could not record the failed snapshot; its marker is kept and it is marked error once the store answers (or at the next start)'),
      );
      try {
        void this.o.onAudit?.({ eventName: 'SnapshotFailed', snapshotId: m.snapshotId, volumeId: m.volumeId, details: { reason: why } });
      } catch (err) {
        this.log.error({ snapshotId: m.snapshotId, err: errInfo(err) }, 'could not audit the failed snapshot');
      }
      // The session first: a failed snapshot has nothing to capture, and the undo may wait a while for the volume's lock.
      await close();
      // After the error is recorded: the undo takes the volume's lock, which an attach may hold for a while.
      await plan.rollback();
      throw e;
    } finally {
      await close();
    }
  }

  /** Every hash in `named` is still in the store; SNAPSHOT_BLOCK_NOT_FOUND naming the missing ones otherwise. */
  private async checkStillThere(snapshotId: string, named: BlockHash[]): Promise<void> {
    const missing: BlockHash[] = [];
    await inParallel(named, STORE_REQUESTS_IN_FLIGHT, async (h) => {
      if (!(await this.o.store.hasBlock(h))) missing.push(h);
    });
    if (missing.length === 0) return;
    const shown = missing.slice(0, 5).join(', ') + (missing.length > 5 ? `, … (${missing.length} in all)` : '');
    throw new SnapshotError('SNAPSHOT_BLOCK_NOT_FOUND', `${snapshotId}: block(s) this snapshot stored in or found in ${this.o.store.location} are gone since (freed by a collector sharing the store?): ${shown}`);
  }

  /**
   * SHA-256 of a volume's header area, from the cache when the bytes equal
   * the last ones hashed for that volume. The cache holds one header per
   * volume, so a header that changed (a resize, a new token, anything any
   * writer did below dataOffset) is never mistaken for the old one; a
   * byte comparison is exact and costs a memcmp, where SHA-256 of 16 MiB
   * costs tens of milliseconds of a core (docs/benchmarks.md, "Snapshots").
   * Returns the bytes to store: the cached ones when equal, and `header`,
   * which nothing else holds then, becomes the spare the next read of its
   * size fills (when it owns its memory, not a view into a larger buffer).
   */
  private async headerHash(volumeId: string, header: Buffer): Promise<{ hash: BlockHash; bytes: Buffer }> {
    const c = this.headerCache.get(volumeId);
    if (c && c.bytes.equals(header)) {
      this.headerCache.delete(volumeId);
      this.headerCache.set(volumeId, c);
      if (header !== c.bytes && header.byteOffset === 0 && header.length === header.buffer.byteLength) this.spareHeader = header;
      return { hash: c.hash, bytes: c.bytes };
    }
    const hash = await sha256HexOffLoop(header);
    // The most recent few volumes only: each entry holds its header area (16 MiB for LUKS2).
    this.headerCache.delete(volumeId);
    this.headerCache.set(volumeId, { bytes: header, hash });
    for (const k of this.headerCache.keys()) {
      if (this.headerCache.size <= HEADER_CACHE_VOLUMES) break;
      this.headerCache.delete(k);
    }
    return { hash, bytes: header };
  }

  /** A buffer for a header area: the spare when it fits (taken, so no two reads share it), else a new one. */
  private headerBuffer(len: number): Buffer {
    const b = this.spareHeader;
    if (b?.length === len) {
      this.spareHeader = undefined;
      return b;
    }
    return Buffer.allocUnsafeSlow(len);
  }

  // ---- DescribeSnapshots / DeleteSnapshot ---------------------------------

  /**
   * Every snapshot in the store matching the ids and filters; an id that does not exist is InvalidSnapshot.NotFound.
   * SnapshotIds scopes the listing to a set of snapshots, as EC2's does: one named twice is listed once.
   * A manifest this daemon refuses to trust is a snapshot in `error` (RefusedSnapshot), by id and in the listing.
   * `read`: manifests of named ids the caller has just read (getShown; undefined: not found), used instead of reading them again.
   */
  async describeSnapshots(q: { SnapshotIds?: string[]; Filters?: SnapshotFilter[]; OwnerIds?: string[] }, read?: ReadonlyMap<string, SnapshotManifest | RefusedSnapshot | undefined>): Promise<ShownSnapshot[]> {
    // Summaries: each manifest's block list is dropped once read, so a listing holds no block lists.
    let all: ShownSnapshot[];
    if (q.SnapshotIds?.length) {
      all = [];
      for (const id of new Set(q.SnapshotIds)) {
        const m = read?.has(id) ? read.get(id) : await this.getShown(id);
        if (!m) throw snapshotNotFound(id);
        all.push(isRefused(m) ? m : summaryOf(m));
      }
    } else {
      const refused: RefusedSnapshot[] = [];
      const onCorrupt = (id: string, e: SnapshotError): void => {
        const r = refusedSnapshot(id, e, this.o.accountId);
        if (r) refused.push(r);
      };
      // A create this daemon runs as it answers it by id (its point in time as StartTime, as soon as it is taken).
      all = (await this.o.store.listManifestSummaries({ onCorrupt })).map((m) => {
        const shown = this.runningManifest(m.snapshotId);
        return shown ? summaryOf(shown) : m;
      });
      all.push(...refused);
    }
    const owners = q.OwnerIds?.map((o) => (o === 'self' ? this.o.accountId : o));
    const budget = new FilterBudget(); // one per request (ec2-filter.ts)
    return all.filter((m) => (!owners?.length || owners.includes(m.ownerId)) && matchesFilters(m, q.Filters ?? [], budget));
  }

  /**
   * A snapshot's manifest: for a create this daemon runs, the last one it wrote durably
   * (RunningCreate.written); for a copy under way, what the copier says (showCopies).
   */
  async getManifest(snapshotId: string): Promise<SnapshotManifest | undefined> {
    return this.runningManifest(snapshotId) ?? this.o.store.getManifest(snapshotId);
  }

  /**
   * getManifest, but a manifest the store holds and this daemon refuses to trust (SNAPSHOT_CORRUPT:
   * its MAC, docs/architecture.md §13.5, or its JSON, §13) is the snapshot in `error` it stands for,
   * with nothing taken from it but its id; any other failure (the store, the KMS) is thrown.
   */
  async getShown(snapshotId: string): Promise<SnapshotManifest | RefusedSnapshot | undefined> {
    try {
      return await this.getManifest(snapshotId);
    } catch (e) {
      const r = refusedSnapshot(snapshotId, e, this.o.accountId);
      if (!r) throw e;
      if (this.o.refusedWarnings) this.o.refusedWarnings.report(snapshotId, e as SnapshotError);
      else this.log.warn({ snapshotId, store: this.o.store.location, err: errInfo(e) }, 'snapshot manifest refused: the snapshot is shown in state error');
      return r;
    }
  }

  /** A create or copy this daemon runs, as DescribeSnapshots shows it (no store read); undefined for any other. */
  private runningManifest(snapshotId: string): SnapshotManifest | undefined {
    return this.running.get(snapshotId)?.written ?? this.copies?.(snapshotId);
  }

  /** The copier's running copies (SnapshotCopier.runningManifest), answered as this manager's own running creates are. */
  showCopies(lookup: (snapshotId: string) => SnapshotManifest | undefined): void {
    this.copies = lookup;
  }

  /**
   * DeleteSnapshot: refused while pending (IncorrectState) or while a
   * restore or copy reads it (InvalidSnapshot.InUse); then the manifest goes and
   * the delete answers, and garbage collection frees the blocks no other snapshot
   * references afterwards, in the background (SnapshotGc.deleteSnapshot: it does
   * not wait for a sweep under way).
   * A snapshot whose manifest is refused (getShown) is deleted too, its state
   * judged only by what this daemon knows (a create or copy it runs, a hold):
   * the manifest is removed unread and the store swept in the background, after
   * the answer (SnapshotGc.deleteSnapshot), so nothing its block list says is used
   * to keep or free anything.
   */
  async deleteSnapshot(snapshotId: string, caller: Caller): Promise<void> {
    await this.deleting.run(snapshotId, async () => {
      for (let flips = 0; ; flips++) {
        let m: SnapshotManifest | undefined;
        let refused: RefusedSnapshot | undefined;
        try {
          m = await this.o.store.getManifest(snapshotId);
        } catch (e) {
          refused = refusedSnapshot(snapshotId, e, this.o.accountId);
          if (!refused) throw e;
        }
        if (refused) {
          // Pending as far as this daemon knows: a create or copy of that id it runs (nothing in the manifest is believed).
          this.refuseDeleteWhileUsed(snapshotId, this.runningManifest(snapshotId) !== undefined);
          const r = await this.o.gc.deleteSnapshot(snapshotId, { refused: true });
          // Readable again by the collector's read (put back meanwhile): judged as it now reads, a few times at most: a
          // manifest whose content keeps changing would otherwise hold this id's lock for as long as it does.
          if (r.readable) {
            if (flips < DELETE_REREADS_MAX) continue;
            throw new SnapshotError('SNAPSHOT_STORE', `DeleteSnapshot of ${snapshotId}: its manifest was refused, then read back valid, ${flips + 1} times in a row (something keeps rewriting it in the store ${this.o.store.location}); nothing was deleted, try again once it stays as it is`);
          }
          if (!r.deleted) throw snapshotNotFound(snapshotId);
          // Nothing of the manifest is trusted, so the event names no volume; it records what was removed (its digest, size,
          // the store's ETag and last-modified), the only trace of the tampering left once it is gone.
          this.o.onAudit?.({ eventName: 'DeleteSnapshot', snapshotId, principal: caller.arn, details: { manifestRefused: true, ...removedDetails(r.removedUnread) } });
          this.log.info({ snapshotId }, 'snapshot deleted: its manifest was refused (removed unread; the store is swept in the background)');
          return;
        }
        if (!m) throw snapshotNotFound(snapshotId);
        // DescribeSnapshots shows `completed` (or `error`) as soon as that manifest is durable, a moment before the
        // run lets go of its pins: a delete in that moment waits for it instead of calling the snapshot pending.
        const run = this.running.get(snapshotId);
        if (run && m.state !== 'pending') await run.settled;
        this.refuseDeleteWhileUsed(snapshotId, m.state === 'pending' || this.running.has(snapshotId));
        // Manifest first (durably), then the blocks only it named: a crash between leaves orphans for a sweep.
        const r = await this.o.gc.deleteSnapshot(snapshotId);
        if (r.removedUnread) {
          // Refused by the collector's own read (rewritten since ours): removed unread, and recorded as any refused
          // manifest's delete, without a volume id (what our read said no longer describes what was removed; §13.5).
          this.o.onAudit?.({ eventName: 'DeleteSnapshot', snapshotId, principal: caller.arn, details: { manifestRefused: true, ...removedDetails(r.removedUnread) } });
          this.log.info({ snapshotId }, 'snapshot deleted: its manifest was refused when the collector read it (removed unread; the store is swept in the background)');
          return;
        }
        this.o.onAudit?.({ eventName: 'DeleteSnapshot', snapshotId, volumeId: m.volumeId, principal: caller.arn });
        this.log.info({ snapshotId, volumeId: m.volumeId }, 'snapshot deleted');
        return;
      }
    });
  }

  /** DeleteSnapshot's refusals: a snapshot `pending` (IncorrectState), one a restore or copy reads (InvalidSnapshot.InUse). */
  private refuseDeleteWhileUsed(snapshotId: string, pending: boolean): void {
    if (pending) {
      throw new SnapshotError('SNAPSHOT_INCORRECT_STATE', `The snapshot '${snapshotId}' is pending; delete it once it is completed or error.`, { awsName: 'IncorrectState' });
    }
    if ((this.holds.get(snapshotId) ?? 0) > 0) {
      throw new SnapshotError('SNAPSHOT_IN_USE', `The snapshot '${snapshotId}' is currently in use (a volume is being created from it, or it is being copied).`, { awsName: 'InvalidSnapshot.InUse' });
    }
  }

  /**
   * Marks a snapshot as read by a restore or copy until the returned function
   * is called: DeleteSnapshot refuses it meanwhile (InvalidSnapshot.InUse).
   * Taken inside DeleteSnapshot's per-snapshot mutex, so it is atomic with a
   * delete: either the delete has not checked yet (and refuses), or it has
   * finished (and the caller's manifest read, which must come after the hold,
   * finds nothing: InvalidSnapshot.NotFound). A hold taken after a manifest
   * read would let a delete free the blocks in between.
   */
  async hold(snapshotId: string): Promise<() => void> {
    return this.deleting.run(snapshotId, async () => {
      this.holds.set(snapshotId, (this.holds.get(snapshotId) ?? 0) + 1);
      let released = false;
      return () => {
        if (released) return;
        released = true;
        const n = (this.holds.get(snapshotId) ?? 1) - 1;
        if (n > 0) this.holds.set(snapshotId, n);
        else this.holds.delete(snapshotId);
      };
    });
  }

  /** Shutdown: creates under way stop and are recorded `error`; tracking stays with the trackers (saved at detach). */
  async close(): Promise<void> {
    this.closing = true;
    const runs = [...this.running.values()];
    for (const r of runs) {
      r.abort = shutDownDuring();
      r.wake?.();
      void r.cow?.end();
    }
    // The copy notices the abort at its next block and records the snapshot `error`.
    await Promise.allSettled([...this.jobs]);
    // Markers still waiting for the store stay for the next start's recover().
    await this.markers.close();
    this.headerCache.clear();
    this.spareHeader = undefined;
  }
}

interface SnapshotPlan {
  incremental: boolean;
  /** When the point in time was taken (ISO 8601): the snapshot's StartTime. */
  pointInTime: string;
  /** The blocks to read: a range (full) or the tracking's bitmap (incremental), sized by the volume in bits at most. */
  blocks: BlockSet;
  read: (i: number) => Promise<Buffer>;
  nextFirst?: () => number | undefined;
  /** The copier's pacing against the volume's writes (attached volumes). */
  pace?: () => Promise<() => void>;
  /** Hands a block's buffer back to the reader once stored (attached volumes). */
  recycle?: (buf: Buffer) => void;
  tracking: TrackingState;
  /** The snapshot failed: the tracking that names it goes back to its parent's base (SnapshotManager.rollbackTracking). */
  rollback: () => Promise<void>;
  /** The copy ended: its session leaves the volume's gates, its read handle is closed. */
  close: () => Promise<void>;
}

/** Reads of the data segment as the snapshot sees it: bytes past the snapshot's size (a volume grown since) read as zeros, as a last partial block is padded (docs/format.md, "Snapshot blocks"). */
/** Reads `len` bytes of the data segment at `pos` into `into`. */
type RawReader = (pos: number, len: number, into: Buffer) => Promise<void>;

function clampedReader(r: ImageDataReader, size: number): RawReader {
  return (pos, len, into) => {
    const inside = Math.max(0, Math.min(len, size - pos));
    if (inside < len) into.fill(0, inside, len);
    return inside > 0 ? r.read(pos, inside, into) : Promise.resolve();
  };
}

/**
 * Test-only, as EBSD_TEST_FAULT (src/util/fault-point.ts): while the file
 * EBSD_TEST_SNAPSHOT_COPY_GATE names exists, the copier waits before each
 * block (polled), so an end-to-end test acts on a volume whose snapshot is
 * surely still pending, without racing the copy. Unset, nothing waits.
 */
async function copyGate(path: string, aborted: () => boolean): Promise<void> {
  while (!aborted() && existsSync(path)) await new Promise((r) => setTimeout(r, 20));
}

async function readBlock(read: RawReader, i: number, buf: Buffer): Promise<Buffer> {
  await read(i * SNAPSHOT_BLOCK_BYTES, SNAPSHOT_BLOCK_BYTES, buf);
  return buf;
}

const shuttingDown = (): SnapshotError => new SnapshotError('SNAPSHOT_INCORRECT_STATE', 'the daemon is shutting down', { awsName: 'IncorrectState' });
/** Resolves `ms` from now, or at once when `run` is aborted (SnapshotManager.close()); the timer never outlives it. */
function untilRecheck(run: RunningCreate, ms: number): Promise<void> {
  if (run.abort !== undefined || ms <= 0) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      run.wake = undefined;
      resolve();
    };
    const timer = setTimeout(done, ms);
    run.wake = done;
  });
}

const shutDownDuring = (): SnapshotError => new SnapshotError('SNAPSHOT_INCORRECT_STATE', 'the daemon shut down during the snapshot', { awsName: 'IncorrectState' });

/** A refused manifest's delete's audit details of what was removed (flat: audit details keep scalars only). */
function removedDetails(r: RemovedManifest | undefined): Record<string, string | number> {
  if (!r) return {};
  return {
    manifestBytes: r.bytes,
    ...(r.sha256 ? { manifestSha256: r.sha256 } : {}),
    ...(r.etag ? { manifestETag: r.etag } : {}),
    ...(r.lastModified ? { manifestLastModified: r.lastModified } : {}),
  };
}

function sortBlocks(m: ReadonlyMap<number, BlockHash>): [number, BlockHash][] {
  return [...m.entries()].sort((a, b) => a[0] - b[0]);
}

/** Indexes whose hash differs between two ascending block lists (added, removed or changed). */
function countChanged(a: [number, BlockHash][], b: [number, BlockHash][]): number {
  const x = new Map(a);
  let n = 0;
  for (const [i, h] of b) {
    if (x.get(i) !== h) n++;
    x.delete(i);
  }
  return n + x.size;
}
