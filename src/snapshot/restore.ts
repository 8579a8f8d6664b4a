import { promises as fsp } from 'node:fs';
import type { Logger } from 'pino';
import type { Caller } from '../kms/types.js';
import type { XtsContext, XtsEngine } from '../crypto/xts.js';
import { silentLogger } from '../util/logger.js';
import { wipe } from '../util/wipe.js';
import { faultPoint } from '../util/fault-point.js';
import type { KeyService } from '../volume/key-service.js';
import { grantTokensOf, withKeyUse, type OpGrants } from '../volume/op-grants.js';
import type { CreateVolumeRequest, ImageBuildContext, ImageBuilt, VolumeManager } from '../volume/volume-manager.js';
import { buildLuks2Json, verifyVolumeKey, VOLUME_KEY_BYTES, type Luks2Volume } from '../volume/luks2-json.js';
import { createLuks2, createLuks2From, parseLuks2Header } from '../volume/luks2-header.js';
import { encodePlainHeader, parsePlainHeader, PLAIN_HEADER_SIZE } from '../volume/plain-image.js';
import { parseVolumeSize } from '../volume/size.js';
import { SnapshotError, snapshotNotFound } from './errors.js';
import { reencryptBlock } from './reencrypt.js';
import { newPipelineStats, pipeBlocks, type PipelineStats } from './block-pipeline.js';
import { ImageWriter, type ImageWriterOptions, type ImageWriterStats } from './image-writer.js';
import { SNAPSHOT_BLOCK_BYTES, type SnapshotManifest, type SnapshotStore } from './types.js';
import { refusedSnapshot, refusedSourceError } from './refused-snapshot.js';

/** CreateVolume with SnapshotId: Size may be left out (the snapshot's size is taken). */
export interface RestoreVolumeRequest extends Omit<CreateVolumeRequest, 'Size'> {
  SnapshotId: string;
  Size?: number | string;
}

export interface SnapshotRestoreOptions {
  store: SnapshotStore;
  volumes: VolumeManager;
  logger?: Logger;
  /** Blocks read and transformed ahead of the image writer (docs/architecture.md §14.5); default 16. */
  window?: number;
  /** How the image is written (runs, writes at once, early writeback). */
  writer?: ImageWriterOptions;
  /** Each restore's stage times (the benchmark reads them). */
  onTiming?: (t: RestoreTiming) => void;
  /**
   * DeleteSnapshot refuses the snapshot while a volume is restored from it
   * (InvalidSnapshot.InUse); resolves with the release. Taken before the
   * manifest is read (SnapshotManager.hold: atomic with a delete).
   */
  hold?: (snapshotId: string) => Promise<() => void>;
}

/** Where a restore's time went: the pipeline's stages (summed per block, overlapping) and the writer's. */
export interface RestoreTiming extends PipelineStats, ImageWriterStats {
  /** From the first block read to the image durable. */
  totalMs: number;
  reEncrypted: boolean;
}

/** A snapshot read for a restore or a copy: its manifest and its header area, checked. */
export interface OpenedSnapshot {
  manifest: SnapshotManifest;
  /** Bytes [0, dataOffset) of the image the snapshot was taken from. */
  header: Buffer;
  /** Data segment bytes (exact; `volumeSize` in the manifest is GiB). */
  size: number;
  /** The parsed LUKS2 header of an encrypted snapshot. */
  luks2?: Luks2Volume;
}

/**
 * CreateVolume from a snapshot (docs/architecture.md §14.1), EC2's rules:
 * Size defaults to the snapshot's and may not be smaller; a volume from an
 * encrypted snapshot is always encrypted; the snapshot must be `completed`.
 *
 * - Same KMS key (none given, or the snapshot's): the data key is shared.
 *   ReEncrypt binds the wrapped key to the new volume's context, so its
 *   attach grant works: on the caller's behalf via EC2 with the embedded
 *   KMS; with a remote KMS as the host, through short-lived grants made on
 *   the caller's behalf (op-grants.ts). The blocks are copied as they are
 *   stored, ciphertext; the header is the snapshot's with the token, label
 *   and uuid changed: the LUKS2 digest stays, attach verifies the key as for
 *   any volume.
 * - Another key: a new data key under it, the snapshot's key unwrapped
 *   (Decrypt on the caller's behalf: it needs kms:Decrypt on the old key, as
 *   EBS requires; with a remote KMS the Decrypt is the host's through a
 *   short-lived grant, and the local check of restore-authz.ts asks that of
 *   the caller), every block decrypted and encrypted again, both keys
 *   wiped, a new LUKS2 header. The old key is then no longer needed.
 *
 * The volume is `creating` while blocks are written and `available` after; a
 * crash leaves `creating`, which the next start removes (VolumeRecovery).
 */
export class SnapshotRestore {
  private readonly store: SnapshotStore;
  private readonly volumes: VolumeManager;
  private readonly log: Logger;
  private readonly window: number | undefined;
  private readonly writerOptions: ImageWriterOptions;
  private readonly onTiming: SnapshotRestoreOptions['onTiming'];
  private readonly hold: SnapshotRestoreOptions['hold'];

  constructor(o: SnapshotRestoreOptions) {
    this.hold = o.hold;
    this.store = o.store;
    this.volumes = o.volumes;
    this.log = (o.logger ?? silentLogger).child({ component: 'restore' });
    this.window = o.window;
    this.writerOptions = o.writer ?? {};
    this.onTiming = o.onTiming;
  }

  async createVolume(req: RestoreVolumeRequest, caller: Caller): ReturnType<VolumeManager['createVolume']> {
    // Held before the manifest is read: a DeleteSnapshot either refuses (InUse) or has finished (then NotFound).
    const release = (await this.hold?.(req.SnapshotId)) ?? (() => {});
    const held = { started: false };
    try {
      return await this.createVolumeHeld(req, caller, release, held);
    } finally {
      if (!held.started) release();
    }
  }

  /**
   * What createVolume refuses of the request and the snapshot before anything is made, as it
   * words it: a DryRun's answer (the manifest is read, nothing held or written).
   */
  async checkCreate(req: RestoreVolumeRequest): Promise<void> {
    refuseRestore(await openSnapshot(this.store, req.SnapshotId), req);
  }

  /** createVolume with the snapshot held; `held.started` once the build owns the release. */
  private async createVolumeHeld(req: RestoreVolumeRequest, caller: Caller, release: () => void, held: { started: boolean }): ReturnType<VolumeManager['createVolume']> {
    const snap = await openSnapshot(this.store, req.SnapshotId);
    const m = snap.manifest;
    const { size, plainAsked } = refuseRestore(snap, req);
    // The new volume's key, resolved before anything is created: a key that does not exist (or the caller may not
    // describe) fails the request, as it does without SnapshotId, and the volume shows its key ARN while `creating`.
    const target = await this.targetKey(snap, req, plainAsked, caller);
    const { SnapshotId: _s, Size: _z, ...rest } = req;
    // EC2 answers `creating` at once; the blocks are written behind it (`--wait` polls for `available`).
    return this.volumes.createVolume({ ...rest, ...(target !== undefined ? { KmsKeyId: target } : {}), Size: size }, caller, (o) => {
      held.started = true;
      return this.build(snap, target, o).finally(release);
    }, { background: true, snapshotId: m.snapshotId });
  }

  /**
   * The key ARN of the volume restored from `snap`: none for a plaintext one; the snapshot's when no
   * KmsKeyId is given (EC2), else KmsKeyId resolved (DescribeKey on the caller's behalf, via EC2);
   * for an unencrypted snapshot restored encrypted, KmsKeyId or `alias/aws/ebs`.
   */
  private async targetKey(snap: OpenedSnapshot, req: RestoreVolumeRequest, plainAsked: boolean, caller: Caller): Promise<string | undefined> {
    const m = snap.manifest;
    if (!m.encrypted && plainAsked) return undefined;
    if (m.encrypted && req.KmsKeyId === undefined) return m.wrappedKey!.keyArn;
    const via: Caller = { ...caller, viaService: this.volumes.viaService };
    return (await this.volumes.keyService.describeKey({ KeyId: req.KmsKeyId ?? 'alias/aws/ebs' }, via)).KeyMetadata.Arn;
  }

  private async build(snap: OpenedSnapshot, target: string | undefined, o: ImageBuildContext): Promise<ImageBuilt> {
    const m = snap.manifest;
    const t0 = Date.now();
    const built = await this.buildImage(snap, target, o);
    this.log.info({ snapshotId: m.snapshotId, volumeId: o.volumeId, blocks: m.blocks.length, reEncrypted: built.details?.reEncrypted, ms: Date.now() - t0 }, 'volume restored from snapshot');
    return built;
  }

  /** `target`: the new volume's key ARN (targetKey), undefined for a plaintext volume. */
  private async buildImage(snap: OpenedSnapshot, target: string | undefined, o: ImageBuildContext): Promise<ImageBuilt> {
    const m = snap.manifest;
    const details = { snapshotId: m.snapshotId };
    if (target === undefined) {
      // Measurement-only snapshot to a measurement-only volume: the blocks as they are, a header naming the new volume.
      const fh = await fsp.open(o.path, 'wx', 0o600);
      try {
        await fh.write(encodePlainHeader(o.volumeId, o.size), 0, PLAIN_HEADER_SIZE, 0);
        await fh.truncate(m.dataOffset + o.size);
      } finally {
        await fh.close();
      }
      await this.copyBlocks(snap, o, m.dataOffset, null, null);
      return { kmsKeyId: '', unencrypted: true, details: { ...details, reEncrypted: false } };
    }
    // The same key as the snapshot's (none given, or one resolving to its ARN): the data key is shared.
    if (m.encrypted && target === m.wrappedKey!.keyArn) return this.buildSameKey(snap, o, details);
    // Another key, or a measurement-only snapshot to an encrypted volume: a new data key under it.
    return this.buildNewKey(snap, target, o, details);
  }

  /** Same KMS key: share the data key (ReEncrypt to the new volume's context), copy ciphertext. */
  private async buildSameKey(snap: OpenedSnapshot, o: ImageBuildContext, details: Record<string, unknown>): Promise<ImageBuilt> {
    const wk = snap.manifest.wrappedKey!;
    const ctx = { 'aws:ebs:id': o.volumeId };
    // With a remote KMS, two short-lived grants (op-grants.ts): ReEncryptFrom on the snapshot's context, ReEncryptTo on the new volume's.
    const grants = [
      { keyId: wk.keyArn, operations: ['ReEncryptFrom' as const], context: wk.encryptionContext },
      { keyId: wk.keyArn, operations: ['ReEncryptTo' as const], context: ctx },
    ];
    const r = await withKeyUse(this.volumes.opGrants, `${o.volumeId}-rewrap`, grants, o.via, (use) =>
      o.keyService.reEncrypt(
        {
          CiphertextBlob: Buffer.from(wk.ciphertextBlob, 'base64'),
          SourceKeyId: wk.keyArn,
          SourceEncryptionContext: wk.encryptionContext,
          DestinationKeyId: wk.keyArn,
          DestinationEncryptionContext: ctx,
          ...grantTokensOf(use),
        },
        use.caller,
      ),
    );
    await createLuks2From(o.path, snap.header, {
      size: o.size,
      label: o.volumeId,
      mutate: (json) => {
        for (const t of Object.values(json.tokens)) {
          if (t.type !== 'ebsd-kms') continue;
          t.key_arn = r.KeyId;
          t.ciphertext_blob = Buffer.from(r.CiphertextBlob).toString('base64');
          t.encryption_context = ctx;
          t.volume_id = o.volumeId;
        }
      },
    });
    await this.copyBlocks(snap, o, snap.manifest.dataOffset, null, null);
    return { kmsKeyId: r.KeyId, details: { ...details, reEncrypted: false } };
  }

  /** Another KMS key (or an unencrypted snapshot): a new data key, every block decrypted (if encrypted) and encrypted under it. */
  private async buildNewKey(snap: OpenedSnapshot, keyId: string, o: ImageBuildContext, details: Record<string, unknown>): Promise<ImageBuilt> {
    const m = snap.manifest;
    let oldKey: Uint8Array | undefined;
    let newKey: Uint8Array | undefined;
    let from: XtsContext | null = null;
    let to: XtsContext | null = null;
    try {
      if (m.encrypted) {
        const grants = this.volumes.opGrants;
        oldKey = await unwrapSnapshotKey(o.keyService, snap, o.via, grants ? { grants, stepId: `${o.volumeId}-source-key` } : undefined);
        from = o.xtsEngine.createContext(oldKey);
        wipe(oldKey);
      }
      const gen = await this.volumes.newDataKey(keyId, o.volumeId, o.via);
      newKey = gen.key;
      const ctx = { 'aws:ebs:id': o.volumeId };
      const json = buildLuks2Json({
        size: o.size,
        volumeKey: newKey,
        token: { key_arn: gen.keyArn, ciphertext_blob: Buffer.from(gen.blob).toString('base64'), encryption_context: ctx, volume_id: o.volumeId },
      });
      to = o.xtsEngine.createContext(newKey);
      wipe(newKey);
      const dataOffset = Number(json.segments['0']!.offset);
      await createLuks2(o.path, { json, size: o.size, dataOffset, label: o.volumeId });
      await this.copyBlocks(snap, o, dataOffset, from, to);
      return { kmsKeyId: gen.keyArn, details: { ...details, reEncrypted: true } };
    } finally {
      // Best effort in JS (the GC may have copied them); the contexts wipe their native copies.
      wipe(oldKey, newKey);
      from?.destroy();
      to?.destroy();
    }
  }

  /**
   * Every stored block into the image at dataOffset + index·512 KiB,
   * re-encrypted when `from`/`to` are given, then one fdatasync: the
   * pipeline of docs/architecture.md §14.5 (store reads, XTS on the pool and
   * image writes overlapped, bounded by `window` blocks).
   */
  private async copyBlocks(snap: OpenedSnapshot, o: ImageBuildContext, dataOffset: number, from: XtsContext | null, to: XtsContext | null): Promise<void> {
    const total = snap.manifest.blocks.length;
    let done = 0;
    const t0 = performance.now();
    const stats = newPipelineStats();
    const writer = await ImageWriter.open(o.path, dataOffset, this.writerOptions);
    try {
      await pipeBlocks({
        store: this.store,
        manifest: snap.manifest,
        window: this.window,
        stats,
        transform: async (index, data) => {
          const inside = bytesInside(snap, index, data);
          if (from || to) await reencryptBlock(from, to, data.subarray(0, inside), index);
        },
        sink: {
          put: async (index, data) => {
            // The zero padding of a last block past the snapshot's size is not written: the image stays 16 MiB + size (docs/format.md).
            const inside = Math.min(data.length, snap.size - index * SNAPSHOT_BLOCK_BYTES);
            await writer.put(index, inside < data.length ? data.subarray(0, inside) : data);
            o.progress(Math.floor((++done * 100) / total));
          },
        },
      });
      faultPoint('restore.after-blocks');
      await writer.finish();
    } catch (e) {
      await writer.abort().catch(() => {});
      throw e;
    }
    const timing: RestoreTiming = { ...stats, ...writer.stats, totalMs: performance.now() - t0, reEncrypted: from !== null || to !== null };
    this.log.debug({ volumeId: o.volumeId, ...timing }, 'restore stages');
    this.onTiming?.(timing);
  }
}

/**
 * The manifest and header of a snapshot a restore or copy reads: it must
 * exist (InvalidSnapshot.NotFound) and be `completed` (IncorrectState); the
 * header must read back as written and say the same as the manifest.
 */
export async function openSnapshot(store: SnapshotStore, snapshotId: string): Promise<OpenedSnapshot> {
  return checkedSnapshot(store, snapshotId, await readSource(store, snapshotId));
}

/**
 * The manifest of a restore's or copy's source (undefined: none). One the store holds but this daemon
 * refuses to trust (its manifest MAC, docs/architecture.md §13.5; its JSON, §13) is a snapshot in
 * `error`, refused as any snapshot not `completed` is: IncorrectState, naming it and why, not a
 * failure of ours (an InternalFailure the SDKs would retry).
 */
export async function readSource(store: SnapshotStore, snapshotId: string): Promise<SnapshotManifest | undefined> {
  try {
    return await store.getManifest(snapshotId);
  } catch (e) {
    const r = refusedSnapshot(snapshotId, e, '');
    throw r ? refusedSourceError(r, e) : e;
  }
}

/** openSnapshot for a manifest already read (`undefined`: it does not exist). */
export async function checkedSnapshot(store: SnapshotStore, snapshotId: string, m: SnapshotManifest | undefined): Promise<OpenedSnapshot> {
  if (!m) throw snapshotNotFound(snapshotId);
  if (m.state !== 'completed') {
    throw new SnapshotError('SNAPSHOT_INCORRECT_STATE', `Snapshot '${snapshotId}' is in state '${m.state}'; only a completed snapshot can be restored or copied`, { awsName: 'IncorrectState' });
  }
  if (!m.header) throw corrupt(m, 'it names no header');
  // Every store hashes what it reads back against the name (docs/architecture.md §13): a changed byte is SNAPSHOT_CORRUPT.
  // Read only if it is no larger than the manifest says: an object of any size is not read whole first.
  const header = await store.getBlock(m.header, m.dataOffset);
  if (header.length !== m.dataOffset) throw corrupt(m, `its header is ${header.length} bytes, the manifest says the data starts at ${m.dataOffset}`);
  if (m.encrypted) {
    if (!m.wrappedKey) throw corrupt(m, 'it is encrypted but carries no wrapped key');
    const v = parseLuks2Header(header, `snapshot ${snapshotId} header`).volume;
    if (v.dataOffset !== m.dataOffset) throw corrupt(m, `its LUKS2 data offset ${v.dataOffset} is not the manifest's ${m.dataOffset}`);
    // Every writer stores the wrapped key its header's token names (volume-image.ts, copy.ts, ebs-direct-header.ts). A
    // same-key restore or copy never sees the plaintext key, so a manifest naming another wrapped key is caught here,
    // before anything is created, not at the restored volume's first attach (the LUKS2 digest check).
    if (!sameWrappedKey(m.wrappedKey, v)) throw corrupt(m, 'its wrapped data key is not the one its LUKS2 header names');
    return { manifest: m, header, size: v.size, luks2: v };
  }
  const p = parsePlainHeader(header, `snapshot ${snapshotId} header`);
  return { manifest: m, header, size: p.size };
}

/**
 * The snapshot's data key, unwrapped on the caller's behalf (Decrypt with the
 * context it was wrapped under) and checked against the snapshot's LUKS2
 * digest. With `through`, the Decrypt is the host's through a short-lived
 * `[Decrypt]` grant on that context (op-grants.ts), retired right after. The
 * caller wipes it.
 */
export async function unwrapSnapshotKey(ks: KeyService, snap: OpenedSnapshot, via: Caller, through?: { grants: OpGrants; stepId: string }): Promise<Uint8Array> {
  const wk = snap.manifest.wrappedKey!;
  const req = { CiphertextBlob: Buffer.from(wk.ciphertextBlob, 'base64'), KeyId: wk.keyArn, EncryptionContext: wk.encryptionContext };
  const key = through
    ? await through.grants.run(through.stepId, [{ keyId: wk.keyArn, operations: ['Decrypt'], context: wk.encryptionContext }], via, async (use) => (await ks.decrypt({ ...req, ...grantTokensOf(use) }, use.caller)).Plaintext)
    : (await ks.decrypt(req, via)).Plaintext;
  try {
    if (key.length !== VOLUME_KEY_BYTES) throw corrupt(snap.manifest, `its data key unwrapped to ${key.length} bytes`);
    verifyVolumeKey(snap.luks2!, key);
  } catch (e) {
    wipe(key);
    throw e;
  }
  return key;
}

const ZERO_BLOCK = Buffer.alloc(SNAPSHOT_BLOCK_BYTES);

/**
 * How many bytes of stored block `index` lie inside the snapshot's data size
 * (docs/format.md, "Snapshot blocks"): all of a block before the last; of the
 * last block of a size that is not a multiple of 512 KiB, the bytes up to the
 * size, the rest being the zero padding ebsd stores. A block that starts past
 * the size, or whose bytes past it are not all zeros, is SNAPSHOT_CORRUPT:
 * ebsd never writes one, and decrypting or encrypting such bytes would use
 * tweaks past the end of the volume.
 */
export function bytesInside(snap: OpenedSnapshot, index: number, data: Buffer): number {
  const start = index * SNAPSHOT_BLOCK_BYTES;
  if (start >= snap.size) throw corrupt(snap.manifest, `block ${index} starts at byte ${start}, at or past the snapshot's end (${snap.size} bytes)`);
  const inside = Math.min(data.length, snap.size - start);
  if (inside < data.length && !data.subarray(inside).equals(ZERO_BLOCK.subarray(0, data.length - inside))) {
    throw corrupt(snap.manifest, `block ${index} (${data.length} bytes) holds bytes other than zeros past the snapshot's end (${snap.size} bytes: ${inside} of the block's bytes are inside)`);
  }
  return inside;
}

/** The manifest's wrapped key is the one the LUKS2 token of its header names (key, blob and context alike). */
function sameWrappedKey(w: NonNullable<SnapshotManifest['wrappedKey']>, v: Luks2Volume): boolean {
  const t = v.token;
  const a = Object.entries(w.encryptionContext);
  const b = t.encryption_context;
  return t.key_arn === w.keyArn && t.ciphertext_blob === w.ciphertextBlob
    && a.length === Object.keys(b).length && a.every(([k, x]) => Object.hasOwn(b, k) && b[k] === x);
}

function corrupt(m: SnapshotManifest, why: string): SnapshotError {
  return new SnapshotError('SNAPSHOT_CORRUPT', `Snapshot '${m.snapshotId}' cannot be read: ${why}`);
}

/** The size and cipher a restore of `snap` asks for, refused as CreateVolume refuses them. */
function refuseRestore(snap: Awaited<ReturnType<typeof openSnapshot>>, req: RestoreVolumeRequest): { size: number; plainAsked: boolean } {
  const m = snap.manifest;
  const size = req.Size === undefined ? snap.size : parseVolumeSize(req.Size);
  if (size < snap.size) {
    throw new SnapshotError('SNAPSHOT_INVALID_PARAMETER', `Volume of size ${size} bytes is smaller than snapshot '${m.snapshotId}', expect size >= ${snap.size} bytes`, { awsName: 'InvalidParameterValue' });
  }
  const plainAsked = req.Cipher === 'none' || req.Encrypted === false;
  if (m.encrypted && plainAsked) {
    throw new SnapshotError('SNAPSHOT_INVALID_PARAMETER', `Snapshot '${m.snapshotId}' is encrypted: a volume created from it is always encrypted (Encrypted false / Cipher none refused)`, { awsName: 'InvalidParameterCombination' });
  }
  if (plainAsked && req.KmsKeyId !== undefined) throw new SnapshotError('SNAPSHOT_INVALID_PARAMETER', 'KmsKeyId cannot be given for an unencrypted volume (Cipher none / Encrypted false): it has no key', { awsName: 'InvalidParameterCombination' });
  return { size, plainAsked };
}
