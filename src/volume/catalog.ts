import { join } from 'node:path';
import { atomicWrite } from '../util/atomic-write.js';
import { readTextIfExists } from '../util/read-if-exists.js';
import { parseStateJson, StateFileError } from '../util/state-json.js';

/** EC2 volume states (DescribeVolumes `State`). */
export type VolumeState = 'creating' | 'available' | 'in-use' | 'deleting' | 'error';

export interface AttachmentRecord {
  instanceId: string;
  device: string;
  attachTime: string;
  /** Host principal ARN that holds the grant. */
  hostPrincipal: string;
  grantId: string;
  /** Needed to re-attach after a daemon restart without the original caller; file is 0600. */
  grantToken: string;
}

export interface VolumeRecord {
  volumeId: string;
  size: number;
  state: VolumeState;
  kmsKeyId: string;
  createTime: string;
  tags: { Key: string; Value: string }[];
  /** Image file name inside the volumes directory. */
  image: string;
  attachment?: AttachmentRecord;
  /**
   * A measurement-only plaintext volume (CreateVolume `Cipher: "none"`): its
   * image is plain-image.ts, not LUKS2; `kmsKeyId` is '' and it never has a
   * grant. Absent (never `false`) for encrypted volumes.
   */
  unencrypted?: true;
  /** The snapshot the volume was created from (CreateVolume `SnapshotId`); absent otherwise. DescribeVolumes shows it. */
  snapshotId?: string;
  /**
   * Attach grants whose RetireGrant failed (KMS unreachable) at detach. They
   * are retried on the next start and before the next attach, and dropped
   * once retired or once KMS says the grant no longer exists.
   */
  pendingGrantRetirements?: PendingGrantRetirement[];
  /**
   * Intent of a ModifyVolume under way, written before the image changes
   * (file size, then LUKS2 header). A restart that finds it compares the
   * header with both sizes and rolls the catalog forward or back
   * (VolumeManager.recover), so header, file and catalog agree again.
   */
  modifying?: { originalSize: number; targetSize: number; since: string };
  /**
   * The last ModifyVolume that ended, as DescribeVolumesModifications shows it: `completed`,
   * or `failed` when an interrupted one was rolled back from the image header. Replaced by
   * the next; a volume never modified has none.
   */
  lastModification?: LastModification;
  /**
   * StartTime (ISO) of the volume's latest ModifyVolume requests, oldest first, at
   * most MODIFICATIONS_PER_WINDOW (volume-manager.ts): what EC2's limit of modifications
   * in a rolling window is counted from. Recorded with the modify's intent, so a
   * restart, a crash or a modify that failed does not give the count back.
   */
  modificationStarts?: string[];
  /**
   * Intent of a DetachVolume under way, written after the device is closed
   * and before the grant is retired. A restart that finds it finishes the
   * detach (retire the grant, record `available`) instead of resuming an
   * attachment whose grant may be gone.
   */
  detaching?: { since: string };
  /**
   * CreateVolume's ClientToken and a digest of the request it came with (its
   * parameters and caller): a repeat with the same token answers this volume,
   * one with other parameters is IdempotentParameterMismatch. Kept as long as
   * the record (so across restarts); forgotten with the volume at DeleteVolume.
   */
  clientToken?: { token: string; request: string };
  /** Why the volume is `error` (a restore from a snapshot that failed), as DescribeVolumes shows it. No secrets: error names and ids. */
  stateMessage?: string;
}

export interface LastModification {
  originalSize: number;
  targetSize: number;
  /** When the request came in (a settled one: when its intent was recorded). */
  startTime: string;
  endTime: string;
  state: 'completed' | 'failed';
  statusMessage?: string;
}

export interface PendingGrantRetirement {
  grantId: string;
  keyArn: string;
  /** Lets the retiring principal retire it by token (file is 0600, like the attachment's token). */
  grantToken?: string;
  /** When detach first failed to retire it. */
  since: string;
}

interface CatalogFile {
  formatVersion: 1;
  volumes: VolumeRecord[];
}

/**
 * `volumes/catalog.json`: the volume records. Every change rewrites the whole
 * file with atomicWrite (temp, fsync, rename, fsync dir), one change at a
 * time, so a crash leaves the old or the new catalog, never a mix.
 */
export class Catalog {
  private readonly recs = new Map<string, VolumeRecord>();
  private chain: Promise<void> = Promise.resolve();

  private constructor(readonly path: string) {}

  /**
   * Read `<dir>/catalog.json`. A file that is not JSON, or not a catalog, is
   * refused naming the file (the daemon does not start). A record whose tags
   * are not `{Key: string, Value: string}` objects (written before requests
   * were validated) keeps its well-formed tags only, and a record without a
   * volume id is skipped, each with a warning, so one bad record cannot make
   * DescribeVolumes or Status fail for everyone.
   */
  static async load(dir: string, log?: { warn(obj: object, msg: string): void }): Promise<Catalog> {
    const c = new Catalog(join(dir, 'catalog.json'));
    const text = await readTextIfExists(c.path);
    if (text !== undefined) {
      const f = parseStateJson('CATALOG_CORRUPT', c.path, text) as CatalogFile | null;
      if (!f || f.formatVersion !== 1 || !Array.isArray(f.volumes)) throw new StateFileError('CATALOG_CORRUPT', c.path, `${c.path}: unknown catalog format`);
      f.volumes.forEach((v, i) => {
        if (!v || typeof v !== 'object' || typeof v.volumeId !== 'string') {
          log?.warn({ file: c.path, index: i }, 'catalog record without a volume id skipped');
          return;
        }
        const tags = Array.isArray(v.tags) ? v.tags : [];
        const good = tags.filter((t) => !!t && typeof t === 'object' && typeof t.Key === 'string' && typeof t.Value === 'string');
        if (good.length !== tags.length || !Array.isArray(v.tags)) {
          log?.warn({ file: c.path, volumeId: v.volumeId, dropped: tags.length - good.length }, 'catalog record had malformed tags; kept the well-formed ones');
        }
        c.recs.set(v.volumeId, { ...v, tags: good.map((t) => ({ Key: t.Key, Value: t.Value })) });
      });
    }
    return c;
  }

  get(id: string): VolumeRecord | undefined {
    const r = this.recs.get(id);
    return r && structuredClone(r);
  }

  list(): VolumeRecord[] {
    return [...this.recs.values()].map((r) => structuredClone(r));
  }

  /**
   * Record a change. Postcondition on failure (ENOSPC, EIO): the in-memory
   * record is what it was before, matching the file on disk, so a change
   * that never became durable is never shown (no phantom `creating` volume).
   */
  async put(rec: VolumeRecord): Promise<void> {
    const before = this.recs.get(rec.volumeId);
    const mine = structuredClone(rec);
    this.recs.set(rec.volumeId, mine);
    try {
      await this.persist();
    } catch (e) {
      if (this.recs.get(rec.volumeId) === mine) {
        if (before) this.recs.set(rec.volumeId, before);
        else this.recs.delete(rec.volumeId);
      }
      throw e;
    }
  }

  /**
   * Forget a record. It is gone from memory even if the write fails: callers
   * remove only records whose on-disk state (`creating`, `deleting`) a
   * restart removes anyway (VolumeManager.recover).
   */
  remove(id: string): Promise<void> {
    if (!this.recs.has(id)) return Promise.resolve();
    this.recs.delete(id);
    return this.persist();
  }

  private persist(): Promise<void> {
    const snapshot: CatalogFile = { formatVersion: 1, volumes: [...this.recs.values()] };
    const text = JSON.stringify(snapshot, null, 1);
    const p = this.chain.then(() => atomicWrite(this.path, text, 0o600));
    this.chain = p.catch(() => {});
    return p;
  }
}
