import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import type { WriteGate } from '../volume/write-gate.js';
import { VolumeError } from '../volume/errors.js';
import { atomicWrite, fsyncDir } from '../util/atomic-write.js';
import { readTextIfExists } from '../util/read-if-exists.js';
import { parseStateJson } from '../util/state-json.js';
import { BlockBitmap } from './block-bitmap.js';
import { SnapshotError } from './errors.js';
import type { CowSession, SyncRawReader } from './cow-session.js';

/**
 * What a volume's changed-block tracking says when a snapshot starts
 * (docs/architecture.md §12.3): `base` is the snapshot since whose point in
 * time every written block is in `changed`; no base means "unknown, copy
 * everything".
 */
export interface TrackingState {
  base: string | undefined;
  changed: BlockBitmap;
}

/** `<local>/tracking/<vol>.json`: the tracking of a volume that is not attached, or the dirty mark of one that is. */
interface TrackingFile {
  formatVersion: 1;
  volumeId: string;
  /** True only when written at a clean detach or after a snapshot of a detached volume. */
  clean: boolean;
  baseSnapshotId?: string;
  /** BlockBitmap, base64. */
  changed?: string;
}

const VOLUME_ID = /^vol-[0-9a-f]{17}$/;
const SNAPSHOT_ID = /^snap-[0-9a-f]{17}$/;

/** The tracking files of this host (local state: tracking describes this host's writes, whatever store the snapshots live in). */
export class TrackingFiles {
  constructor(readonly dir: string) {}

  static async open(dir: string): Promise<TrackingFiles> {
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    return new TrackingFiles(dir);
  }

  /** `<dir>/<vol>.json`; a volumeId that is not a volume id is a RangeError. */
  path(volumeId: string): string {
    if (!VOLUME_ID.test(volumeId)) throw new RangeError(`volumeId: not a volume id: ${JSON.stringify(volumeId)}`);
    return join(this.dir, `${volumeId}.json`);
  }

  /**
   * The tracking recorded clean, or an unknown base when there is none
   * (never written, or a crash left the dirty mark). A file that is not
   * exactly what saveClean or markDirty writes (not JSON, another
   * formatVersion, another volume, a clean mark without a snapshot id or
   * without a well-formed `changed` bitmap) is SNAPSHOT_CORRUPT: callers
   * take it as unknown (the next snapshot is full). Reading a damaged file
   * as "nothing changed" would make that snapshot an incremental missing
   * every write since the base.
   */
  async load(volumeId: string): Promise<TrackingState> {
    const p = this.path(volumeId);
    const text = await readTextIfExists(p);
    if (text === undefined) return { base: undefined, changed: new BlockBitmap() };
    const f = parseStateJson('SNAPSHOT_CORRUPT', p, text) as Partial<TrackingFile> | null;
    const corrupt = (why: string): SnapshotError => new SnapshotError('SNAPSHOT_CORRUPT', `${p} is corrupt: ${why}`);
    if (typeof f !== 'object' || f === null || Array.isArray(f)) throw corrupt('not a JSON object');
    if (f.formatVersion !== 1) throw corrupt(`formatVersion ${JSON.stringify(f.formatVersion)}, not 1`);
    if (f.volumeId !== volumeId) throw corrupt(`it names volume ${JSON.stringify(f.volumeId)}`);
    if (typeof f.clean !== 'boolean') throw corrupt('`clean` is not true or false');
    if (!f.clean) return { base: undefined, changed: new BlockBitmap() };
    if (typeof f.baseSnapshotId !== 'string' || !SNAPSHOT_ID.test(f.baseSnapshotId)) throw corrupt('a clean mark without a snapshot id in `baseSnapshotId`');
    if (typeof f.changed !== 'string') throw corrupt('a clean mark without the `changed` bitmap');
    try {
      return { base: f.baseSnapshotId, changed: BlockBitmap.fromBase64(f.changed) };
    } catch (e) {
      throw new SnapshotError('SNAPSHOT_CORRUPT', `${p} is corrupt: \`changed\` is not a block bitmap`, { cause: e });
    }
  }

  /** Durable when it resolves. */
  async saveClean(volumeId: string, s: TrackingState): Promise<void> {
    const f: TrackingFile = { formatVersion: 1, volumeId, clean: s.base !== undefined, ...(s.base ? { baseSnapshotId: s.base, changed: s.changed.toBase64() } : {}) };
    await atomicWrite(this.path(volumeId), `${JSON.stringify(f)}\n`);
  }

  /** Written before the first write of an attachment passes: a crash from here on loses the tracking (the next snapshot is full). */
  async markDirty(volumeId: string): Promise<void> {
    const f: TrackingFile = { formatVersion: 1, volumeId, clean: false };
    await atomicWrite(this.path(volumeId), `${JSON.stringify(f)}\n`);
  }

  /**
   * No tracking file: the volume's tracking is unknown (the next snapshot is
   * full). Durable when it resolves. Used when the volume was deleted (a
   * volume id is never reused, so the file would only be litter) and when an
   * attach could not write its dirty mark (ChangeTracker).
   */
  async remove(volumeId: string): Promise<void> {
    await fsp.rm(this.path(volumeId), { force: true });
    await fsyncDir(this.dir);
  }

  /**
   * Remove the tracking files of volumes `exists` does not know (deleted
   * while the daemon was down, or a crash between DeleteVolume and remove).
   * Files not named `vol-<17 hex>.json` are left alone. Returns the volume ids removed.
   */
  async prune(exists: (volumeId: string) => boolean): Promise<string[]> {
    const removed: string[] = [];
    for (const name of (await fsp.readdir(this.dir)).sort()) {
      const id = name.endsWith('.json') ? name.slice(0, -'.json'.length) : '';
      if (!VOLUME_ID.test(id) || exists(id)) continue;
      await this.remove(id);
      removed.push(id);
    }
    return removed;
  }
}

/**
 * The write gate of an attached volume (src/volume/write-gate.ts): records
 * every written 512 KiB block (changed-block tracking) and, while a
 * snapshot of the volume runs, holds back a write to sectors of blocks it
 * has not copied yet until the CowSession has their old bytes.
 *
 * It opens only once the dirty mark is durable (`ready`): a write that
 * passed before could be missing from the tracking after a crash. If the
 * file cannot be read or the mark cannot be written (ENOSPC on the temp
 * file, EIO), the file is removed instead, durably, which says "unknown"
 * as well as a dirty mark does; if even that fails the gate stays shut:
 * every write fails with VOLUME_IO (EIO at the FUSE boundary) and tries the
 * removal, then the dirty mark, again, and the gate opens once one of them
 * is durable (docs/architecture.md §12.3). Letting writes through with the
 * last clean file still on disk would make a crash's next snapshot an
 * incremental that misses them.
 */
export class ChangeTracker implements WriteGate {
  private state: TrackingState = { base: undefined, changed: new BlockBitmap() };
  private arming: Promise<void> | undefined;
  private armError: unknown;
  /** Set while no "unknown" could be made durable on disk: writes fail with it (see the class comment). */
  private shut: VolumeError | undefined;
  /** The retry of a shut gate under way (one at a time, shared by the writes waiting for it). */
  private reopening: Promise<void> | undefined;
  private cow: CowSession | undefined;
  /** After the tracking was saved at detach, a write would make it wrong: `stale` says so. */
  private saved = false;
  stale = false;

  constructor(readonly volumeId: string, private readonly files: TrackingFiles) {
    this.arming = (async () => {
      try {
        this.state = await files.load(volumeId);
        await files.markDirty(volumeId);
      } catch (e) {
        // Tracking is unknown, never wrong: the next snapshot copies everything, after a crash too.
        this.armError = e;
        this.state = { base: undefined, changed: new BlockBitmap() };
        await this.forget();
      }
    })().finally(() => {
      this.arming = undefined;
    });
  }

  /** Makes the file say "unknown" durably: removed, else a dirty mark; shuts the gate if neither is durable. */
  private async forget(): Promise<void> {
    try {
      await this.files.remove(this.volumeId);
    } catch (removeError) {
      try {
        await this.files.markDirty(this.volumeId);
      } catch {
        const why = (removeError as Error)?.message ?? String(removeError);
        this.shut = new VolumeError('VOLUME_IO', `volume ${this.volumeId}: writes refused: its changed-block tracking could not be marked unknown on disk (${why}); they pass again once ${this.files.path(this.volumeId)} can be removed or rewritten`);
        return;
      }
    }
    this.shut = undefined;
  }

  /** WriteGate.mayRefuse: while arming (it may end shut) or shut, write-behind is not taken. */
  get mayRefuse(): boolean {
    return this.arming !== undefined || this.shut !== undefined;
  }

  /** Whether writes are refused because no "unknown" could be made durable (see the class comment). */
  get writesRefused(): boolean {
    return this.shut !== undefined;
  }

  /** The snapshot the tracking is relative to (undefined: unknown); read after ready(). */
  get base(): string | undefined {
    return this.state.base;
  }

  /**
   * Resolves once arming ended; the error, if the tracking file could not be
   * read or marked (tracking then starts unknown, and the gate may have
   * stayed shut: writesRefused).
   */
  async ready(): Promise<unknown> {
    await this.arming;
    return this.armError;
  }

  tryPass(pos: number, len: number, readNow?: SyncRawReader): boolean {
    if (this.arming || this.shut) return false;
    const r = BlockBitmap.blocksOf(pos, len);
    if (!r) return true;
    if (this.cow && !this.cow.tryPass(pos, len, readNow)) return false;
    this.record(r[0], r[1]);
    return true;
  }

  async pass(pos: number, len: number): Promise<void> {
    if (this.arming) await this.arming;
    if (this.shut) {
      this.reopening ??= this.forget().finally(() => {
        this.reopening = undefined;
      });
      await this.reopening;
      if (this.shut) throw this.shut;
    }
    const r = BlockBitmap.blocksOf(pos, len);
    if (!r) return;
    this.record(r[0], r[1]);
    const cow = this.cow;
    if (cow) await cow.beforeWrite(pos, len);
  }

  private record(first: number, last: number): void {
    this.state.changed.addRange(first, last);
    if (this.saved) this.stale = true;
  }

  /**
   * The snapshot's point in time; call with writes paused. Hands the
   * tracking up to now to `makeCow` (which decides what to copy) and starts
   * a new epoch (writes from now on belong to the next snapshot), with the
   * returned CowSession holding back writes to blocks not yet copied.
   *
   * The new epoch names `snapshotId` as its base at once, not when the
   * snapshot completes: the bits from here on are exactly the writes since
   * its point in time, which a detach may save and a later attach load
   * while the copy still runs. Naming a snapshot still pending (or one that
   * ends `error`) is safe: a base is used only when it is a completed
   * snapshot (SnapshotManager.parentOf), so until then the next snapshot
   * copies every block; a failed one is undone by rollback()
   * (docs/architecture.md §12.3).
   */
  begin(snapshotId: string, makeCow: (before: TrackingState) => CowSession): TrackingState {
    const before = this.state;
    this.cow = makeCow(before);
    this.state = { base: snapshotId, changed: new BlockBitmap() };
    return before;
  }

  /**
   * Installs a copy-on-write session of a snapshot still copying (taken
   * while the volume was attached before, or detached): call before the
   * gate is installed, so no write of this attachment passes without it.
   */
  setCow(cow: CowSession): void {
    this.cow = cow;
  }

  /** The session's snapshot ended (completed or failed): writes no longer pass it. */
  dropCow(cow: CowSession): void {
    if (this.cow === cow) this.cow = undefined;
  }

  /**
   * The snapshot `snapshotId` failed: if the tracking still names it as its
   * base, its blocks count as changed again, against the base before it.
   * Any other base (a later snapshot's, or unknown) is left as it is.
   */
  rollback(snapshotId: string, before: TrackingState): void {
    if (this.state.base !== snapshotId) return;
    this.state.base = before.base;
    this.state.changed.or(before.changed);
  }

  /** For a detach: the state to save. Later writes mark it stale. */
  snapshotForSave(): TrackingState {
    this.saved = true;
    return { base: this.state.base, changed: this.state.changed };
  }
}
