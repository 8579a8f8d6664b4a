import { join } from 'node:path';
import type { Caller } from '../../src/kms/types.js';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { SnapshotGc } from '../../src/snapshot/gc.js';
import { SnapshotManager, type SnapshotAuditEvent, type SnapshotManagerOptions, type SnapshotVolumes } from '../../src/snapshot/snapshot-manager.js';
import { SnapshotRestore, type RestoreVolumeRequest } from '../../src/snapshot/restore.js';
import { SnapshotCopier, type CopyAuditEvent, type CopySnapshotRequest } from '../../src/snapshot/copy.js';
import type { SnapshotManifest, SnapshotStore } from '../../src/snapshot/types.js';
import type { VolumeManager } from '../../src/volume/volume-manager.js';
import type { BlockDevice } from '../../src/volume/types.js';
import { openImageDataReader } from '../../src/snapshot/volume-image.js';
import { tempDir, type TempDir } from '../helpers/temp-dir.js';
import { kmsHarness, type KmsHarness } from '../volume/helpers/kms.js';
import { openTestManager } from '../volume/helpers/manager.js';
import { testEngine } from '../volume/helpers/engine.js';

/**
 * The daemon's snapshot wiring in this process (src/daemon/daemon.ts): the real
 * KMS core, VolumeManager (attach gives the real SectorDevice, no FUSE mount),
 * directory store, collector (grace 0), SnapshotManager with its change trackers
 * on the attach hooks, SnapshotRestore and SnapshotCopier. `wrapStore` puts a wrapper between
 * the manager and the store (fault injection); the collector and the restore
 * keep the real one, as in the daemon.
 */
export interface SnapshotHarness {
  t: TempDir;
  kms: KmsHarness;
  mgr: VolumeManager;
  store: DirSnapshotStore;
  gc: SnapshotGc;
  snaps: SnapshotManager;
  restore: SnapshotRestore;
  copier: SnapshotCopier;
  caller: Caller;
  /** CreateSnapshot, polled until the manifest leaves `pending`. */
  snapshot(volumeId: string): Promise<SnapshotManifest>;
  /** The snapshot's manifest once it left `pending`, polled. */
  settled(snapshotId: string): Promise<SnapshotManifest>;
  /** CopySnapshot in this region, waited for; the copy's manifest. */
  copy(req: Omit<CopySnapshotRequest, 'SourceRegion'>): Promise<SnapshotManifest>;
  /** CreateVolume from a snapshot, waited for; the new volume's id and state (`available` or `error`) and StateMessage. */
  restoreVolume(req: RestoreVolumeRequest): Promise<{ volumeId: string; state: string; message?: string }>;
  /** Attach, read the whole data segment, detach. */
  readVolume(volumeId: string): Promise<Buffer>;
  /** A new volume of `data.length` bytes holding `data`: created, attached, written, detached; its id. */
  writtenVolume(data: Buffer): Promise<string>;
  close(): Promise<void>;
}

export interface SnapshotHarnessOptions {
  /** Between the SnapshotManager and the store (the collector and the restore keep the real one). */
  wrapStore?: (s: DirSnapshotStore) => SnapshotStore;
  /** Between the SnapshotManager and an attached volume's device, as the snapshot sees it (the data path keeps the real one). */
  wrapDevice?: (dev: BlockDevice) => BlockDevice;
  /** Opens a create's own read handle on the image (SnapshotManagerOptions.openReader): a test may hold its reads. */
  openReader?: SnapshotManagerOptions['openReader'];
  /** The audit seam of the SnapshotManager and the SnapshotCopier (the daemon writes these events to its audit log). */
  onAudit?: (ev: SnapshotAuditEvent | CopyAuditEvent) => void | Promise<void>;
  /** The SnapshotManager's first wait before a marker is tried again (SnapshotManagerOptions.markerRetryMs). */
  markerRetryMs?: number;
  /** Where the directory store lives (default `<temp>/snapshots`): a test may give a small filesystem of its own. */
  snapshotsDir?: string;
  /** The SnapshotManager's wait before it asks again for the blocks a create found (SnapshotManagerOptions.foundRecheckMs). */
  foundRecheckMs?: number;
}

/**
 * `s` as a wrapStore gives it to the SnapshotManager, with the methods in `over` in place of its own
 * (fault injection, counting calls); every other member is the store's, bound to it.
 */
export function overrideStore(s: DirSnapshotStore, over: Partial<SnapshotStore>): SnapshotStore {
  return new Proxy(s, {
    get(t, k) {
      if (Object.prototype.hasOwnProperty.call(over, k)) return (over as Record<string | symbol, unknown>)[k];
      const v = Reflect.get(t, k, t) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
    },
  }) as SnapshotStore;
}

/**
 * An `openReader` for the harness: the copy's own read handle on the image (openImageDataReader),
 * with `before` awaited ahead of each of its reads (a test holds, counts or fails them there).
 */
export function readerBefore(before: (pos: number, len: number, into: Buffer) => Promise<void>): SnapshotManagerOptions['openReader'] {
  return async (...a) => {
    const r = await openImageDataReader(...a);
    return {
      read: async (pos, len, into) => {
        await before(pos, len, into);
        return r.read(pos, len, into);
      },
      close: () => r.close(),
    };
  };
}

export async function openSnapshotHarness(o: SnapshotHarnessOptions = {}): Promise<SnapshotHarness> {
  const t = tempDir('ebsd-snap-inproc-');
  let kms: KmsHarness | undefined;
  let mgr: VolumeManager | undefined;
  let snaps: SnapshotManager | undefined;
  try {
    kms = await kmsHarness(join(t.dir, 'kms'));
    const store = await DirSnapshotStore.open(o.snapshotsDir ?? join(t.dir, 'snapshots'), { removeTemps: true });
    const gc = new SnapshotGc(store, { graceMs: 0 });
    let sm: SnapshotManager | undefined;
    const m = await openTestManager(t.dir, kms, {
      allowUnencrypted: true,
      expose: (dev) => sm?.volumeAttached(dev),
      hide: async (id) => {
        await sm?.volumeDetaching(id, m.getBlockDevice(id));
      },
    });
    mgr = m;
    const wrapDevice = o.wrapDevice;
    const volumes: SnapshotVolumes = wrapDevice
      ? { withVolumeForSnapshot: (id, fn) => m.withVolumeForSnapshot(id, (v) => fn(v.device ? { ...v, device: wrapDevice(v.device) } : v)), describeVolumes: () => m.describeVolumes() }
      : m;
    sm = await SnapshotManager.open({ store: o.wrapStore ? o.wrapStore(store) : store, gc, localDir: join(t.dir, 'snapshots-local'), volumes, accountId: '111122223333', ...(o.openReader ? { openReader: o.openReader } : {}), ...(o.onAudit ? { onAudit: o.onAudit } : {}), ...(o.markerRetryMs !== undefined ? { markerRetryMs: o.markerRetryMs } : {}), ...(o.foundRecheckMs !== undefined ? { foundRecheckMs: o.foundRecheckMs } : {}) });
    snaps = sm;
    const restore = new SnapshotRestore({ store, volumes: m, hold: (id) => sm!.hold(id) });
    const copier = await SnapshotCopier.open({
      store, keyService: kms.keyService, xtsEngine: await testEngine(), region: 'us-east-1', accountId: '111122223333',
      localDir: join(t.dir, 'snapshots-local', 'copies'), pin: (hs) => gc.pin(hs), hold: (id) => sm!.hold(id),
      allowUnencrypted: true, // as the volume manager: encryption by default off, so plaintext sources copy as they are
      ...(o.onAudit ? { onAudit: o.onAudit } : {}),
    });
    sm.showCopies((id) => copier.runningManifest(id)); // as the daemon wires them
    const caller = kms.root;
    const k = kms;
    const settled = async (snapshotId: string): Promise<SnapshotManifest> => {
      for (;;) {
        // As DescribeSnapshots sees it: a create's state once its manifest is durable (the store's file shows a moment before).
        const man = await sm!.getManifest(snapshotId);
        if (man && man.state !== 'pending') return man;
        await new Promise((r) => setTimeout(r, 10));
      }
    };
    return {
      t, kms: k, mgr: m, store, gc, snaps: sm, restore, copier, caller,
      async copy(req) {
        const { SnapshotId } = await copier.copySnapshot({ ...req, SourceRegion: 'us-east-1' }, caller);
        await copier.settled();
        return (await store.getManifest(SnapshotId))!;
      },
      settled,
      async snapshot(volumeId) {
        return settled((await sm!.createSnapshot({ VolumeId: volumeId }, caller)).SnapshotId);
      },
      async restoreVolume(req) {
        const v = await restore.createVolume(req, caller);
        await m.settled();
        const d = m.describeVolumes({ VolumeIds: [v.VolumeId] }).Volumes[0]! as { State: string; StateMessage?: string };
        return { volumeId: v.VolumeId, state: d.State, ...(d.StateMessage !== undefined ? { message: d.StateMessage } : {}) };
      },
      async readVolume(volumeId) {
        await m.attachVolume({ VolumeId: volumeId }, caller);
        try {
          const dev = m.getBlockDevice(volumeId)!;
          const out = Buffer.alloc(dev.size);
          await dev.read(0, dev.size, out);
          return out;
        } finally {
          await m.detachVolume({ VolumeId: volumeId }, caller);
        }
      },
      async writtenVolume(data) {
        const volumeId = (await m.createVolume({ Size: data.length }, caller)).VolumeId;
        await m.attachVolume({ VolumeId: volumeId }, caller);
        await m.getBlockDevice(volumeId)!.write(0, data);
        await m.detachVolume({ VolumeId: volumeId }, caller);
        return volumeId;
      },
      async close() {
        await copier.settled();
        await sm!.close();
        await m.close();
        await k.close();
        t.cleanup();
      },
    };
  } catch (e) {
    await snaps?.close().catch(() => {});
    await mgr?.close().catch(() => {});
    await kms?.close().catch(() => {});
    t.cleanup();
    throw e;
  }
}
