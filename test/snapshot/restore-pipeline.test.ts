/**
 * The restore pipeline (src/snapshot/block-pipeline.ts, image-writer.ts,
 * docs/architecture.md §14.5) in process, with the real KMS core, a real
 * VolumeManager, the directory store and real files: blocks under another
 * key and under the same key land where they belong (runs across a hole), a
 * corrupted stored block fails the restore with SNAPSHOT_CORRUPT and leaves
 * an `error` volume with no image, a copy under another key goes through the
 * same pipeline into the store, a failing block stops the pipeline with
 * nothing left running, and the image writer gathers runs and writes short
 * and scattered blocks in place.
 */
import { closeSync, openSync, writeSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsService } from '../../src/kms/kms-core.js';
import { openAuthz, registerAuthzOperations } from '../../src/kms/authz/index.js';
import { selectXtsEngine } from '../../src/crypto/xts-engine.js';
import { VolumeManager } from '../../src/volume/volume-manager.js';
import { KmsCoreKeyService } from '../../src/volume/key-service.js';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { SnapshotRestore, type RestoreTiming } from '../../src/snapshot/restore.js';
import { pipeBlocks } from '../../src/snapshot/block-pipeline.js';
import { ImageWriter } from '../../src/snapshot/image-writer.js';
import { isNativeAvailable, startWriteback } from '../../src/native/addon.js';
import { SNAPSHOT_BLOCK_BYTES, type SnapshotManifest } from '../../src/snapshot/types.js';
import type { Caller } from '../../src/kms/types.js';
import { SnapshotCopier } from '../../src/snapshot/copy.js';
import { SnapshotGc } from '../../src/snapshot/gc.js';
import { makeSnapshot } from './make-snapshot.js';

const MiB = 1024 * 1024;
const B = SNAPSHOT_BLOCK_BYTES;
const ACCOUNT = '111122223333';
const REGION = 'us-east-1';
/** Blocks 0-5 of a 3 MiB volume; block 3 never written (a hole the snapshot does not store). */
const WRITTEN = [0, 1, 2, 4, 5];

describe('restore pipeline', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ebsd-restore-pipeline-'));
  let kms: KmsService;
  let mgr: VolumeManager;
  let root: Caller;
  let keyA = '';
  let keyB = '';
  let store: DirSnapshotStore;
  let snap: SnapshotManifest;
  const data = new Map<number, Buffer>();

  async function readVolume(id: string): Promise<Buffer> {
    await mgr.attachVolume({ VolumeId: id }, root);
    try {
      const out = Buffer.alloc(6 * B);
      await mgr.getBlockDevice(id).read(0, out.length, out);
      return out;
    } finally {
      await mgr.detachVolume({ VolumeId: id }, root);
    }
  }

  function expected(): Buffer {
    const out = Buffer.alloc(6 * B);
    for (const [i, b] of data) b.copy(out, i * B);
    return out;
  }

  async function restored(restore: SnapshotRestore, kmsKeyId?: string): Promise<ReturnType<VolumeManager['describeVolumes']>['Volumes'][number]> {
    const v = await restore.createVolume({ SnapshotId: snap.snapshotId, ...(kmsKeyId ? { KmsKeyId: kmsKeyId } : {}) }, root);
    await mgr.settled();
    return mgr.describeVolumes({ VolumeIds: [v.VolumeId] }).Volumes[0]!;
  }

  beforeAll(async () => {
    const authz = await openAuthz({ stateDir: dir, kmsDir: join(dir, 'kms'), accountId: ACCOUNT, region: REGION });
    kms = await KmsService.open({ stateDir: join(dir, 'kms'), accountId: ACCOUNT, region: REGION, authorizer: authz.authorizer });
    registerAuthzOperations(kms, authz.authorizer, { onKeyDeleted: kms.context.onKeyDeleted });
    root = authz.identities.callerForUid(0);
    mgr = await VolumeManager.open({ stateDir: dir, keyService: new KmsCoreKeyService(kms), hostPrincipal: root, xtsEngine: selectXtsEngine('auto'), region: REGION });
    keyA = (await kms.call('CreateKey', { Description: 'pipeline A' }, root)).KeyMetadata.Arn;
    keyB = (await kms.call('CreateKey', { Description: 'pipeline B' }, root)).KeyMetadata.Arn;
    const vol = (await mgr.createVolume({ Size: 6 * B, KmsKeyId: keyA }, root)).VolumeId;
    await mgr.attachVolume({ VolumeId: vol }, root);
    for (const i of WRITTEN) {
      data.set(i, randomBytes(B));
      await mgr.getBlockDevice(vol).write(i * B, data.get(i)!);
    }
    await mgr.getBlockDevice(vol).flush();
    await mgr.detachVolume({ VolumeId: vol }, root);
    snap = await makeSnapshot(dir, vol);
    store = await DirSnapshotStore.open(join(dir, 'snapshots'));
    expect(snap.blocks.map(([i]) => i)).toEqual(WRITTEN);
  }, 60_000);

  afterAll(async () => {
    await mgr?.close().catch(() => {});
    await kms?.close().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  });

  it('another key: every block re-encrypted through the pipeline, runs of 1 MiB gathered across the hole, data read back equal', async () => {
    const timings: RestoreTiming[] = [];
    const restore = new SnapshotRestore({ store, volumes: mgr, window: 3, writer: { runBytes: MiB, maxWrites: 2 }, onTiming: (t) => timings.push(t) });
    const d = await restored(restore, keyB);
    expect(d.State, d.StateMessage).toBe('available');
    expect(d.KmsKeyId).toBe(keyB);
    expect((await readVolume(d.VolumeId)).equals(expected())).toBe(true);
    // Blocks 0-1 (1 MiB: the run is full), 2 (3 is a hole), 4-5: three writes, one per run.
    expect(timings).toHaveLength(1);
    expect(timings[0]).toMatchObject({ blocks: WRITTEN.length, bytes: WRITTEN.length * B, writes: 3, reEncrypted: true });
  });

  it('same key: ciphertext copied as stored (the image blocks are the snapshot\'s bytes), data read back equal', async () => {
    const restore = new SnapshotRestore({ store, volumes: mgr });
    const d = await restored(restore);
    expect(d.State, d.StateMessage).toBe('available');
    const img = readFileSync(join(dir, 'volumes', `${d.VolumeId}.img`));
    for (const [i, hash] of snap.blocks) {
      const off = snap.dataOffset + i * B;
      expect(img.subarray(off, off + B).equals(await store.getBlock(hash)), `block ${i}`).toBe(true);
    }
    expect((await readVolume(d.VolumeId)).equals(expected())).toBe(true);
  });

  /** Changes one byte of the stored block `k` of `m` (found by content, whatever the store's layout: a file per block or a pack), restores `m` under `key`, puts the byte back. */
  async function restoreCorrupted(m: SnapshotManifest, k: number, key: string): Promise<{ d: ReturnType<VolumeManager['describeVolumes']>['Volumes'][number]; files: string[] }> {
    const block = await store.getBlock(m.blocks[k]![1]);
    const probe = block.subarray(1000, 1064);
    const files: string[] = [];
    const walk = (d: string): void => {
      for (const n of readdirSync(d)) {
        const p = join(d, n);
        if (statSync(p).isDirectory()) walk(p);
        else if (readFileSync(p).indexOf(probe) >= 0) files.push(p);
      }
    };
    walk(join(dir, 'snapshots'));
    expect(files.length).toBeGreaterThan(0);
    const saved = files.map((p) => [p, readFileSync(p)] as const);
    try {
      for (const [p, bytes] of saved) {
        const changed = Buffer.from(bytes);
        changed[changed.indexOf(probe) + 10]! ^= 0x01;
        writeFileSync(p, changed);
      }
      const v = await new SnapshotRestore({ store, volumes: mgr, window: 2 }).createVolume({ SnapshotId: m.snapshotId, KmsKeyId: key }, root);
      await mgr.settled();
      return { d: mgr.describeVolumes({ VolumeIds: [v.VolumeId] }).Volumes[0]!, files };
    } finally {
      for (const [p, bytes] of saved) writeFileSync(p, bytes);
    }
  }

  it('a stored block with one byte changed: the restore fails with SNAPSHOT_CORRUPT, the volume is error with no image left', async () => {
    const { d } = await restoreCorrupted(snap, 3, keyB);
    expect(d.State).toBe('error');
    expect(d.StateMessage).toMatch(/^SNAPSHOT_CORRUPT: /);
    expect(readdirSync(join(dir, 'volumes')).filter((n) => n.includes(d.VolumeId))).toEqual([]);
  });

  it('copy under another key through the pipeline: every block stored anew (ciphertext differs), the copy restores to the same data', async () => {
    const gc = new SnapshotGc(store, {});
    const copier = await SnapshotCopier.open({
      store, keyService: new KmsCoreKeyService(kms), xtsEngine: selectXtsEngine('auto'), region: REGION, accountId: ACCOUNT,
      localDir: join(dir, 'copies'), pin: (h) => gc.pin(h), window: 2,
    });
    const { SnapshotId } = await copier.copySnapshot({ SourceSnapshotId: snap.snapshotId, SourceRegion: REGION, KmsKeyId: keyB }, root);
    await copier.settled();
    const c = (await store.getManifest(SnapshotId))!;
    expect(c.state, c.stateMessage).toBe('completed');
    expect(c.kmsKeyId).toBe(keyB);
    expect(c.blocks.map(([i]) => i)).toEqual(WRITTEN);
    for (const [k, [, h]] of c.blocks.entries()) {
      expect(h).not.toBe(snap.blocks[k]![1]);
      expect((await store.getBlock(h)).equals(await store.getBlock(snap.blocks[k]![1]))).toBe(false);
    }
    const v = await new SnapshotRestore({ store, volumes: mgr }).createVolume({ SnapshotId }, root);
    await mgr.settled();
    const d = mgr.describeVolumes({ VolumeIds: [v.VolumeId] }).Volumes[0]!;
    expect(d.State, d.StateMessage).toBe('available');
    expect((await readVolume(d.VolumeId)).equals(expected())).toBe(true);
    // The copy's blocks went through the store's batch (a pack file in the directory store): a changed byte there fails a restore too.
    const { d: bad, files } = await restoreCorrupted(c, 1, keyA);
    expect(files.every((f) => f.startsWith(join(dir, 'snapshots', 'packs')))).toBe(true);
    expect(bad.State).toBe('error');
    expect(bad.StateMessage).toMatch(/^SNAPSHOT_CORRUPT: /);
  });

  it('a block failing stops the pipeline: no block starts after it, none is still running when it rejects', async () => {
    let running = 0;
    let started = 0;
    const put: number[] = [];
    const err = new Error('block 1 refused');
    await expect(
      pipeBlocks({
        store,
        manifest: snap,
        window: 2,
        transform: async (index) => {
          started++;
          running++;
          await new Promise((r) => setImmediate(r));
          running--;
          if (index === 1) throw err;
        },
        sink: { put: async (index) => void put.push(index) },
      }),
    ).rejects.toBe(err);
    expect(running).toBe(0);
    expect(put).toEqual([0]);
    // Window 2: at most blocks 0-2 were started (block 2 once block 0 was taken).
    expect(started).toBeLessThanOrEqual(3);
  });

  it('image writer: scattered and short blocks in place, consecutive ones gathered into one writev each', async () => {
    const path = join(dir, 'writer.img');
    const offset = 4096;
    writeFileSync(path, Buffer.alloc(offset + 8 * B));
    const w = await ImageWriter.open(path, offset, { runBytes: 4 * B, maxWrites: 1 });
    const blocks: [number, Buffer][] = [[0, randomBytes(B)], [1, randomBytes(B)], [2, randomBytes(B)], [5, randomBytes(B)], [6, randomBytes(B)], [7, randomBytes(B / 2)]];
    for (const [i, b] of blocks) await w.put(i, b);
    await w.finish();
    const img = readFileSync(path);
    const want = Buffer.alloc(offset + 8 * B);
    for (const [i, b] of blocks) b.copy(want, offset + i * B);
    expect(img.equals(want)).toBe(true);
    // Runs: 0-2, then 5-7 (the short block 7 ends it).
    expect(w.stats.writes).toBe(2);
  });

  it('startWriteback (native sync_file_range WRITE): resolves on a written range, rejects on a bad fd with the errno named as node:fs does', async () => {
    // The addon is built for the tests (scripts/build-native.mjs); writeback.c is part of it.
    expect(isNativeAvailable()).toBe(true);
    expect(startWriteback).not.toBeNull();
    const fd = openSync(join(dir, 'wb.bin'), 'w');
    try {
      writeSync(fd, randomBytes(MiB));
      await expect(startWriteback!(fd, 0, MiB)).resolves.toBeUndefined();
    } finally {
      closeSync(fd);
    }
    // No process has this many files open: a descriptor that is surely not one.
    await expect(startWriteback!(2 ** 31 - 1, 0, MiB)).rejects.toMatchObject({ code: 'EBADF', syscall: 'sync_file_range' });
    expect(() => startWriteback!(fd, -1, 1)).toThrow(/pos/);
  });
});
