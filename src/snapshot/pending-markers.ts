import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { createExclusive } from '../util/exclusive-create.js';
import { fsyncDir } from '../util/atomic-write.js';
import type { Clock } from '../util/clock.js';
import { RetrySet } from '../util/retry-set.js';
import { SnapshotError } from './errors.js';
import { errInfo, KeyServiceError } from '../volume/errors.js';
import type { SnapshotManifest, SnapshotStore } from './types.js';

const SNAPSHOT_ID = /^snap-[0-9a-f]{17}$/;
/** First wait before a marker the store could not settle is tried again; doubled each time, up to the cap. */
const DEFAULT_RETRY_MS = 5_000;
const DEFAULT_MAX_RETRY_MS = 5 * 60_000;

export interface PendingMarkersOptions {
  /** `<state>/snapshots-local/pending` (creates) or `.../copies` (copies). */
  dir: string;
  store: SnapshotStore;
  /** The StateMessage of a manifest a marker finds still `pending` (unless retry() was told why). */
  why: string;
  log: Logger;
  /** Called once a still-`pending` manifest was durably written `error` (log, audit), with the StateMessage written. */
  onSettled?: (m: SnapshotManifest, why: string) => void;
  /** Timers for the retries (tests drive a manual clock); default the system clock, unref'd. */
  clock?: Clock;
  retryMs?: number;
  maxRetryMs?: number;
}

/**
 * The local markers of the snapshots this daemon writes (a create, a copy;
 * docs/architecture.md §12.4): `<dir>/<snap-id>`, an empty file made durable
 * (file and directory fsynced) before the `pending` manifest is written, and
 * removed only once a terminal manifest (`completed` or `error`) is durable.
 * A marker left behind (a crash, a shutdown, a terminal write the store
 * refused) means the manifest, if still `pending`, is this daemon's to end:
 * settling writes it `error` naming no blocks, then removes the marker.
 *
 * A store that does not answer while settling (an S3 outage at start) keeps
 * the marker: a warning names the snapshot, and the settle is tried again in
 * the background with backoff (retryMs, doubled up to maxRetryMs), so an
 * outage never keeps the daemon from starting (§13.1). Only markers handed
 * to the retries (at recover(), or by retry()) are tried again: a marker of a
 * run still under way is never touched.
 */
export class PendingMarkers {
  /** Markers to settle at the next retry, each with why its run ended if it said (else `why`, a restart). */
  private readonly unsettled: RetrySet<string | undefined>;

  private constructor(private readonly o: PendingMarkersOptions) {
    this.unsettled = new RetrySet({
      attempt: async (id, why) => (await this.trySettle(id, why)) !== 'kept',
      firstMs: o.retryMs ?? DEFAULT_RETRY_MS,
      maxMs: o.maxRetryMs ?? DEFAULT_MAX_RETRY_MS,
      ...(o.clock ? { clock: o.clock } : {}),
    });
  }

  static async open(o: PendingMarkersOptions): Promise<PendingMarkers> {
    await fsp.mkdir(o.dir, { recursive: true, mode: 0o700 });
    return new PendingMarkers(o);
  }

  /** Precondition of the `pending` manifest: its marker is durable first, so a crash right after still finds it. */
  async add(snapshotId: string): Promise<void> {
    const path = join(this.o.dir, snapshotId);
    if (!(await createExclusive(path, ''))) throw new Error(`the marker ${path} already exists: snapshot id ${snapshotId} is taken`);
    await fsyncDir(this.o.dir);
  }

  /**
   * The `pending` manifest `m`, written after its marker. A failed write
   * hands the marker to the retries (the write may have landed): the
   * snapshot is then ended `error` once the store answers.
   */
  async putPending(m: SnapshotManifest): Promise<void> {
    await this.add(m.snapshotId);
    try {
      await this.o.store.putManifest(m);
    } catch (e) {
      this.retry(m.snapshotId);
      throw e;
    }
  }

  /** Postcondition of a terminal manifest (`completed` or `error`) durably written: the marker goes. */
  async remove(snapshotId: string): Promise<void> {
    await fsp.rm(join(this.o.dir, snapshotId), { force: true });
  }

  /**
   * At open: settles every marker in the directory. Returns the snapshots
   * written `error` now; a marker the store could not answer for stays and
   * is retried in the background.
   */
  async recover(): Promise<string[]> {
    const settled: string[] = [];
    for (const name of await fsp.readdir(this.o.dir)) {
      if (!SNAPSHOT_ID.test(name)) continue;
      const r = await this.trySettle(name);
      if (r === 'marked') settled.push(name);
      else if (r === 'kept') this.unsettled.add(name, undefined);
    }
    return settled;
  }

  /**
   * A run ended without a terminal manifest (its writes failed): its marker is settled in the background,
   * the manifest written `error` with `why` (what ended the run; default: the options' `why`, a restart).
   */
  retry(snapshotId: string, why?: string): void {
    this.unsettled.add(snapshotId, why);
  }

  /** Markers still waiting for the store (tests, status). */
  get waiting(): string[] {
    return this.unsettled.keys;
  }

  /** Shutdown: no more retries; markers left stay for the next start's recover(). */
  async close(): Promise<void> {
    await this.unsettled.close();
  }

  /** 'marked': written `error` now; 'done': nothing was pending; 'kept': the store failed, the marker stays. */
  private async trySettle(snapshotId: string, why: string = this.o.why): Promise<'marked' | 'done' | 'kept'> {
    let marked = false;
    try {
      const m = await this.o.store.getManifest(snapshotId);
      if (m?.state === 'pending') {
        await this.o.store.putManifest(failedManifest(m, why));
        marked = true;
        this.o.onSettled?.(m, why);
      }
      await this.remove(snapshotId);
      return marked ? 'marked' : 'done';
    } catch (e) {
      // Marked but the marker not removed: the next start finds the manifest `error` and removes it.
      if (marked) return 'marked';
      this.o.log.warn({ snapshotId, store: this.o.store.location, err: errInfo(e) }, `snapshot ${snapshotId}, left pending by this daemon, cannot be marked error yet: ${whyNotSettled(e)}; its marker is kept and it is tried again`);
      return 'kept';
    }
  }
}

/**
 * Why a marker's manifest could not be read or written, for its warning: a manifest this daemon
 * refuses to trust (SNAPSHOT_CORRUPT: with --snapshot-manifest-key one written before it, without a
 * MAC, or one whose MAC does not verify, docs/architecture.md §13.5) is not a store that failed, and
 * does not settle by waiting.
 */
function whyNotSettled(e: unknown): string {
  if (e instanceof SnapshotError && e.code === 'SNAPSHOT_CORRUPT') {
    return 'its manifest in the store is refused (see err; with --snapshot-manifest-key a manifest without a MAC or whose MAC does not verify, docs/architecture.md §13.5), which waiting does not change: the snapshot is in state error, and once DeleteSnapshot removes it the next try lets the marker go';
  }
  for (let x = e as { cause?: unknown } | undefined, depth = 0; x && depth < 8; x = x.cause as typeof x, depth++) {
    // With --snapshot-manifest-key the write needs a MAC: the KMS, not the store, is what failed.
    if (x instanceof KeyServiceError) return x.authoritative ? 'the KMS refused its manifest MAC (see err)' : 'the KMS did not answer for its manifest MAC';
  }
  return 'the store failed';
}

/** The `error` manifest of a snapshot that did not complete: no blocks (what it stored is garbage for the collector). */
export function failedManifest(m: SnapshotManifest, why: string): SnapshotManifest {
  const { header: _h, parentSnapshotId: _p, changedBlocks: _c, ...rest } = m;
  return { ...rest, state: 'error', stateMessage: why, blocks: [] };
}
