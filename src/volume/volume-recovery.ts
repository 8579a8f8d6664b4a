import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { fsyncDir } from '../util/atomic-write.js';
import type { Catalog, VolumeRecord } from './catalog.js';
import type { Attachments } from './attachments.js';
import { checkImageFile, growImageFile } from './backing-file.js';
import { formatOf } from './image-format.js';
import { errInfo } from './errors.js';

/** What recovery takes from the VolumeManager that owns it. */
export interface VolumeRecoveryDeps {
  /** `<stateDir>/volumes`. */
  dir: string;
  catalog: Catalog;
  attachments: Attachments;
  log: Logger;
  /** A `VolumeRecovered` event for the audit trail (the manager stamps the time). */
  audit: (ev: { eventName: 'VolumeRecovered'; volumeId: string; details: Record<string, unknown> }) => void;
  /** Remove a volume's image, its temp file and its lock. */
  removeImage: (rec: VolumeRecord) => Promise<void>;
}

/**
 * Bringing volume state back to agreement after a crash: the catalog
 * intents (`creating`, `deleting`, `modifying`, `detaching`) against what
 * the image headers say, and the temp files interrupted writes left. Runs
 * at start, before any request is served; settleModify also runs after a
 * failed ModifyVolume.
 */
export class VolumeRecovery {
  constructor(private readonly o: VolumeRecoveryDeps) {}

  /**
   * Finish what a crash interrupted: `creating` and `deleting` records lose
   * their image and their record; a `modifying` intent is settled from the
   * LUKS2 header (settleModify); a `detaching` intent is finished (grant
   * retired, `available`); temp files of interrupted writes go (they may
   * hold grant tokens). Records still `in-use` are returned for
   * resumeAttachments(). Images with no record are reported, never deleted
   * (a lost catalog must not cost data).
   */
  async recover(): Promise<{ removed: string[]; inUse: string[]; orphans: string[] }> {
    const removed: string[] = [];
    for (const r of this.o.catalog.list()) {
      if (r.state === 'creating' || r.state === 'deleting') {
        await this.o.removeImage(r);
        await this.o.catalog.remove(r.volumeId);
        removed.push(r.volumeId);
        this.o.audit({ eventName: 'VolumeRecovered', volumeId: r.volumeId, details: { was: r.state, action: 'removed' } });
        continue;
      }
      if (r.modifying) await this.settleModify(r).catch((e) => this.o.log.error({ volumeId: r.volumeId, err: errInfo(e) }, 'could not settle an interrupted modify'));
      else await this.reconcileSize(r).catch((e) => this.o.log.warn({ volumeId: r.volumeId, err: errInfo(e) }, 'could not read the image header at start'));
      const cur = this.o.catalog.get(r.volumeId)!;
      if (cur.detaching && cur.attachment) {
        try {
          await this.o.attachments.finishDetach(cur);
          this.o.audit({ eventName: 'VolumeRecovered', volumeId: r.volumeId, details: { was: 'detaching', action: 'detached' } });
        } catch (e) {
          this.o.log.error({ volumeId: r.volumeId, err: errInfo(e) }, 'could not finish an interrupted detach; the next start retries');
        }
      }
    }
    const known = new Set(this.o.catalog.list().map((r) => r.image));
    const orphans: string[] = [];
    const temps: string[] = [];
    for (const f of await fsp.readdir(this.o.dir)) {
      // `.vol-….img.tmp` (create) and `.catalog.json.<hex>.tmp` (atomicWrite): never live across a start.
      if (/^\..+\.tmp$/.test(f)) {
        await fsp.rm(join(this.o.dir, f), { force: true });
        temps.push(f);
      } else if (/^vol-[0-9a-f]{17}\.img$/.test(f) && !known.has(f)) orphans.push(f);
    }
    if (temps.length) await fsyncDir(this.o.dir);
    if (removed.length || orphans.length || temps.length) this.o.log.warn({ removed, orphans, temps }, 'recovered volume catalog after an interrupted operation');
    const inUse = this.o.catalog.list().filter((r) => r.state === 'in-use').map((r) => r.volumeId);
    return { removed, inUse, orphans };
  }

  /**
   * Settle a ModifyVolume a crash or an error interrupted, from what the
   * image header says: the new size (the header was written) rolls the
   * catalog forward, anything else rolls it back to the larger of the old
   * size and the header's. The file is grown to cover the header's size if
   * it falls short; it is never shrunk.
   */
  async settleModify(rec: VolumeRecord, why?: string): Promise<void> {
    const m = rec.modifying!;
    const h = await this.imageSize(rec);
    await growImageFile(join(this.o.dir, rec.image), h.dataOffset + h.size);
    const size = h.size === m.targetSize ? m.targetSize : Math.max(m.originalSize, h.size);
    rec.size = size;
    delete rec.modifying;
    const completed = size === m.targetSize;
    rec.lastModification = {
      originalSize: m.originalSize, targetSize: m.targetSize, startTime: m.since, endTime: new Date().toISOString(),
      state: completed ? 'completed' : 'failed',
      ...(completed ? {} : { statusMessage: `${why ?? 'interrupted'}; rolled back to ${size} bytes (the size the image header records)` }),
    };
    await this.o.catalog.put(rec);
    this.o.log.warn({ volumeId: rec.volumeId, originalSize: m.originalSize, targetSize: m.targetSize, headerSize: h.size, size }, 'settled an interrupted ModifyVolume from the image header');
    this.o.audit({ eventName: 'VolumeRecovered', volumeId: rec.volumeId, details: { was: 'modifying', action: size === m.targetSize ? 'completed' : 'rolled-back', size } });
  }

  /**
   * A header larger than the catalog (a modify interrupted before intents
   * were recorded): the header and the data behind it win, never the smaller
   * catalog size.
   */
  private async reconcileSize(rec: VolumeRecord): Promise<void> {
    if (rec.state !== 'available' && rec.state !== 'in-use') return;
    const h = await this.imageSize(rec);
    if (h.size <= rec.size) return;
    this.o.log.warn({ volumeId: rec.volumeId, catalogSize: rec.size, headerSize: h.size }, 'image header is larger than the catalog; taking the header size');
    rec.size = h.size;
    await this.o.catalog.put(rec);
  }

  /** The data size and offset the image header records (symlinks and non-regular files refused). */
  async imageSize(rec: VolumeRecord): Promise<{ size: number; dataOffset: number }> {
    const path = join(this.o.dir, rec.image);
    await checkImageFile(path);
    return formatOf(rec).readHeader(path);
  }
}
