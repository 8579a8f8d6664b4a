import type { SnapshotError } from './errors.js';
import type { DeleteWindows } from './store-settings.js';

/**
 * Snapshots (docs/architecture.md, "Snapshots"): a volume's data segment as
 * 512 KiB blocks of the bytes on disk (ciphertext for an encrypted volume),
 * content-addressed in a SnapshotStore and listed by one manifest per
 * snapshot. The manifest is the snapshot's only record: DescribeSnapshots
 * reads manifests from the store, so a snapshot in a shared store (S3) is
 * visible to, and restorable on, any daemon using that store.
 */

/**
 * The EBS direct APIs' block size; block `i` is data bytes [i·512 KiB, (i+1)·512 KiB),
 * the last block of a size that is not a multiple of it zero-padded past the size (docs/format.md, "Snapshot blocks").
 */
export const SNAPSHOT_BLOCK_BYTES = 512 * 1024;

/** EC2 snapshot states (DescribeSnapshots `State`). */
export type SnapshotState = 'pending' | 'completed' | 'error';

/** Block id in a store: lowercase hex SHA-256 of the stored bytes. */
export type BlockHash = string;

export interface SnapshotManifest {
  formatVersion: 1;
  /** `snap-` + 17 lowercase hex. */
  snapshotId: string;
  /** The source volume (`vol-…`), or for a copy the source's volume id, as EC2 reports it; '' for StartSnapshot. */
  volumeId: string;
  /** GiB, as VolumeSize. */
  volumeSize: number;
  state: SnapshotState;
  /** 0–100; `Progress` is this with a `%`. */
  progress: number;
  /** ISO 8601; the moment CreateSnapshot was accepted (the snapshot's point in time). */
  startTime: string;
  completionTime?: string;
  /** Why `state` is `error` (StateMessage). */
  stateMessage?: string;
  description: string;
  tags: { Key: string; Value: string }[];
  /** Owner account id (12 digits). */
  ownerId: string;
  encrypted: boolean;
  /** Key ARN; '' when not encrypted. */
  kmsKeyId: string;
  /** Identifies the data key's lineage: equal for snapshots and volumes sharing one data key. */
  dataEncryptionKeyId?: string;
  /**
   * The data key wrapped by KMS, as in the volume's LUKS2 token: blob
   * (base64), the key ARN and the encryption context it was wrapped under
   * (`{"aws:ebs:id": vol}` for a volume's snapshot, `{"aws:ebs:id": snap}`
   * for a copy under another key). Absent when not encrypted.
   */
  wrappedKey?: { ciphertextBlob: string; keyArn: string; encryptionContext: Record<string, string> };
  /** Store object holding the image's header area (LUKS2 header, or the plaintext marker), bytes [0, dataOffset). */
  header?: BlockHash;
  /** Bytes from the image start to the data segment. */
  dataOffset: number;
  /** The previous snapshot of the same lineage this one was taken incrementally against, if any. */
  parentSnapshotId?: string;
  /**
   * The snapshot the source volume was created from (CreateVolume's
   * SnapshotId), on a volume's snapshots: it ties them to that snapshot's
   * lineage for ListChangedBlocks when no `parentSnapshotId` does
   * (docs/architecture.md, "EBS direct APIs", Lineage).
   */
  sourceSnapshotId?: string;
  /**
   * Written blocks only, ascending by index: [block index, hash]. An index
   * not listed reads as zeros (never written, or a hole in the image).
   */
  blocks: [number, BlockHash][];
  /** Blocks this snapshot stored or changed relative to `parentSnapshotId` (all of `blocks` without a parent). */
  changedBlocks?: number;
  /**
   * On a copy (CopySnapshot) only, as EC2 shows TransferType only on copies: `standard`, the
   * one kind of copy ebsd makes (it takes no CompletionDurationMinutes, so no time-based copy).
   * Absent from copies made before ebsd recorded it.
   */
  transferType?: 'standard';
}

/** A manifest without its block list: what DescribeSnapshots shows. */
export type SnapshotSummary = Omit<SnapshotManifest, 'blocks'>;

/**
 * Where snapshot blocks and manifests live: a local directory by default, any
 * S3-compatible store through @aws-sdk/client-s3. Every method is safe to
 * call concurrently; none ever leaves a partly written object visible.
 */
export interface SnapshotStore {
  /** For status and errors: `dir:/var/lib/ebsd/snapshots` or `s3://bucket/prefix`. */
  readonly location: string;
  /**
   * True when only this daemon writes and collects the store (the directory
   * store, under the state-dir lock): the collector's pins alone protect a
   * create's blocks, and a pending manifest need not name them for another
   * host's collector (src/snapshot/snapshot-manager.ts). Absent: shared.
   */
  readonly singleWriter?: boolean;
  /**
   * On a store several daemons write (no singleWriter): the collector's delete
   * window and the writers' wait after it, as the store records them for every
   * host (src/snapshot/store-settings.ts). Read from the store once; a failed
   * read throws and is tried again at the next call. Absent: the defaults.
   */
  deleteWindows?(): Promise<DeleteWindows>;
  /** Stores `data` under `hash` (the caller computed it); durable when it resolves; a present block is left as it is. */
  putBlock(hash: BlockHash, data: Uint8Array): Promise<void>;
  /**
   * The block's bytes; throws SnapshotError `SNAPSHOT_BLOCK_NOT_FOUND` when absent.
   * `maxBytes` (default SNAPSHOT_BLOCK_BYTES): a larger object is SNAPSHOT_CORRUPT,
   * refused by the S3 store on its Content-Length before the body is read (the
   * directory store, whose objects only this daemon writes, does not check);
   * a header area's read passes its manifest's dataOffset.
   */
  getBlock(hash: BlockHash, maxBytes?: number): Promise<Buffer>;
  hasBlock(hash: BlockHash): Promise<boolean>;
  /**
   * True when the store knows without I/O that the block is present (a pack's
   * index in memory); false means "ask hasBlock". Lets a check over thousands
   * of blocks (an incremental's inherited ones) skip an await per block.
   */
  hasBlockInMemory?(hash: BlockHash): boolean;
  /**
   * hasBlock that also makes a present block's age now (its mtime, S3
   * LastModified), so another daemon's collector, which sweeps only blocks
   * older than its grace period, keeps a block this daemon is about to name
   * instead of storing it again (src/snapshot/gc.ts). Optional: without it a
   * present block is put again.
   */
  touchBlock?(hash: BlockHash): Promise<boolean>;
  /**
   * Absent is not an error. `signal`: a store that deletes over the network
   * gives up when it aborts (the collector's delete window, src/snapshot/gc.ts),
   * throwing; the delete may have landed or not.
   */
  deleteBlock(hash: BlockHash, opts?: { signal?: AbortSignal }): Promise<void>;
  listBlocks(): AsyncIterable<BlockHash>;
  /** Replaces the manifest atomically (readers see the old or the new one), durable when it resolves. */
  putManifest(m: SnapshotManifest): Promise<void>;
  /**
   * undefined when absent. Read-only for the caller, like listManifests'
   * results: the directory store hands out one shared, frozen object per
   * completed manifest (dir-store.ts), so a change throws; build a new one
   * (spread, structuredClone) to alter it.
   */
  getManifest(snapshotId: string): Promise<SnapshotManifest | undefined>;
  /**
   * Every manifest. One that cannot be read (SNAPSHOT_CORRUPT) throws, so the
   * collector never sweeps on a partial mark, unless `onCorrupt` is given:
   * then it is reported there and left out (DescribeSnapshots).
   */
  listManifests(opts?: { onCorrupt?: (snapshotId: string, err: SnapshotError) => void }): Promise<SnapshotManifest[]>;
  /**
   * The ids of every manifest, none read. Whoever needs every manifest's
   * blocks (the collector's mark) reads them one by one with getManifest and
   * lets each go: listManifests holds all of them, every block list at once
   * (hundreds of MiB for a few large volumes' snapshots).
   */
  listManifestIds(): Promise<string[]>;
  /** listManifests, each manifest's block list dropped once it is parsed (DescribeSnapshots): memory for the summaries, not every block. */
  listManifestSummaries(opts?: { onCorrupt?: (snapshotId: string, err: SnapshotError) => void }): Promise<SnapshotSummary[]>;
  /**
   * The manifest's stored bytes as they are: not parsed, not verified, undefined when absent. What a
   * refused manifest's delete records of it before removing it (its digest, size, and the store's
   * ETag / last-modified in the audit event; docs/architecture.md §13.5). Bounded by the store's
   * manifest limit (MANIFEST_MAX_BYTES): a larger one is not read, `data` is absent and `bytes` is
   * its size as the store gives it. Optional: a store without it gives no such record.
   */
  readManifestRaw?(snapshotId: string): Promise<RawManifest | undefined>;
  /** Absent is not an error. */
  deleteManifest(snapshotId: string): Promise<void>;
  /**
   * Optional: many puts, one wait for the disk (a snapshot's blocks). A store
   * without it is used through putBlock, one durable put at a time.
   */
  openBlockBatch?(): BlockBatch;
}

/** A manifest's stored bytes, unparsed (SnapshotStore.readManifestRaw). */
export interface RawManifest {
  /** Absent when the object is over the manifest limit (not read). */
  data?: Buffer;
  /** Its size in bytes. */
  bytes: number;
  /** The store's ETag of the object (S3), as the store gives it. */
  etag?: string;
  /** When the store last wrote it (S3 LastModified, the file's mtime), ISO 8601. */
  lastModified?: string;
}

/** Puts whose durability is settled together (SnapshotStore.openBlockBatch). */
export interface BlockBatch {
  /** Writes the block without waiting for the disk; it is not visible (hasBlock false, not listed) before commit(). */
  put(hash: BlockHash, data: Uint8Array): Promise<void>;
  /** Makes every block put so far durable, then visible; resolves when they are. */
  commit(): Promise<void>;
  /** Drops the blocks put and not committed. */
  abort(): Promise<void>;
}
