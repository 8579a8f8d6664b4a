import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { createExclusive } from '../util/exclusive-create.js';
import { fsyncDir } from '../util/atomic-write.js';
import type { SnapshotManifest, SnapshotStore } from './types.js';

const SNAPSHOT_ID = /^snap-[0-9a-f]{17}$/;

export interface PendingMarkersOptions {
  /** `<state>/snapshots-local/pending` (creates) or `.../copies` (copies). */
  dir: string;
  store: SnapshotStore;
  /** The StateMessage of a manifest a marker finds still `pending`. */
  why: string;
  /** Called once a still-`pending` manifest was durably written `error` (log, audit). */
  onSettled?: (m: SnapshotManifest) => void;
}

/**
 * The local markers of the snapshots this daemon writes (a create, a copy;
 * docs/architecture.md §12.4): `<dir>/<snap-id>`, an empty file made durable
 * (file and directory fsynced) before the `pending` manifest is written, and
 * removed only once a terminal manifest (`completed` or `error`) is durable.
 * A marker left behind (a crash, a shutdown, a terminal write the store
 * refused) means the manifest, if still `pending`, is this daemon's to end:
 * recover() writes it `error` naming no blocks, then removes the marker.
 */
export class PendingMarkers {
  private constructor(private readonly o: PendingMarkersOptions) {}

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

  /** Postcondition of a terminal manifest (`completed` or `error`) durably written: the marker goes. */
  async remove(snapshotId: string): Promise<void> {
    await fsp.rm(join(this.o.dir, snapshotId), { force: true });
  }

  /** At open: settles every marker in the directory. Returns the snapshots written `error`. */
  async recover(): Promise<string[]> {
    const settled: string[] = [];
    for (const name of await fsp.readdir(this.o.dir)) {
      if (!SNAPSHOT_ID.test(name)) continue;
      const m = await this.o.store.getManifest(name);
      if (m?.state === 'pending') {
        await this.o.store.putManifest(failedManifest(m, this.o.why));
        settled.push(name);
        this.o.onSettled?.(m);
      }
      await this.remove(name);
    }
    return settled;
  }
}

/** The `error` manifest of a snapshot that did not complete: no blocks (what it stored is garbage for the collector). */
export function failedManifest(m: SnapshotManifest, why: string): SnapshotManifest {
  const { header: _h, parentSnapshotId: _p, changedBlocks: _c, ...rest } = m;
  return { ...rest, state: 'error', stateMessage: why, blocks: [] };
}
