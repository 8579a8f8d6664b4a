import { sha256HexOffLoop } from '../util/sha256.js';
import { BlockBitmap, type BlockSet } from './block-bitmap.js';
import type { BlockBatch, BlockHash, SnapshotStore } from './types.js';
import { SNAPSHOT_BLOCK_BYTES } from './types.js';

const ZERO_BLOCK = Buffer.alloc(SNAPSHOT_BLOCK_BYTES);

export interface CopyPlan {
  /**
   * The blocks to read (ascending): a BlockRange or a BlockBitmap, never a
   * list or a Set of indexes, which would not hold the 2^27 blocks of a
   * 64 TiB volume (V8 caps a Set or Map at 2^24 entries).
   */
  blocks: BlockSet;
  /** Reads block `i` as it was at the snapshot's point in time (512 KiB). */
  read: (i: number) => Promise<Buffer>;
  /** A block to read before the next in order (a block a write captured), if any. */
  nextFirst?: () => number | undefined;
  store: SnapshotStore;
  /** When given, blocks go through it (durable at its commit(), which the caller awaits) instead of putBlock. */
  batch?: BlockBatch;
  /** Called with the number of blocks done and the hashes so far; the caller decides how often it records progress. */
  onProgress?: (done: number, total: number, hashes: ReadonlyMap<number, BlockHash>) => void;
  /** Awaited before a hash is checked or put, so garbage collection spares it while no manifest names it yet. */
  pin?: (hash: BlockHash) => Promise<void>;
  /** Checked between blocks; a truthy return aborts the copy with that error. */
  aborted?: () => unknown;
  /** Blocks in flight at once (read, hash, put overlap): default 8. */
  concurrency?: number;
  /**
   * Awaited by each worker before it takes its next block; the function it
   * resolves to is called when that block is done (cow-pacer.ts: the copier
   * yields to the volume's foreground writes).
   */
  pace?: () => Promise<() => void>;
  /** Called with a block's buffer once it is hashed and stored (or found all zeros): the reader may fill it again (block-buffers.ts). */
  recycle?: (buf: Buffer) => void;
}

export interface CopyResult {
  /** Block index -> hash, for every read block that is not all zeros. */
  hashes: Map<number, BlockHash>;
  /** Read blocks that are all zeros (never written, holes): listed nowhere, they read as zeros. */
  zeroBlocks: number;
  /** Blocks put that the store did not have yet. */
  storedBlocks: number;
  /** Hashes found in the store (touched, not put): whoever names them checks they are still there on a shared store. */
  found: Set<BlockHash>;
}

/**
 * Stores a block unless the store has it; true if it was put. An existing block
 * is touched, not only looked up: another daemon's collector spares it until a
 * manifest of ours names it. With a batch, the put is durable at its commit().
 */
export async function putUnlessStored(store: SnapshotStore, batch: BlockBatch | undefined, hash: BlockHash, data: Uint8Array): Promise<boolean> {
  if (await (store.touchBlock ? store.touchBlock(hash) : Promise.resolve(false))) return false;
  await (batch ? batch.put(hash, data) : store.putBlock(hash, data));
  return true;
}

/**
 * Reads, hashes and stores a snapshot's blocks (docs/architecture.md §12.1).
 * A few blocks are in flight at once so reading, SHA-256 and the store's
 * durable writes overlap; each put is durable before the copy resolves.
 */
export async function copyBlocks(p: CopyPlan): Promise<CopyResult> {
  const hashes = new Map<number, BlockHash>();
  let zeroBlocks = 0;
  let storedBlocks = 0;
  const found = new Set<BlockHash>();
  const total = p.blocks.size;
  // One bit per block: a volume's worth costs 16 MiB at 64 TiB.
  const done = new BlockBitmap();
  const order = p.blocks.indexes();
  let finished = 0;
  const next = (): number | undefined => {
    for (;;) {
      const first = p.nextFirst?.();
      if (first !== undefined && !done.has(first)) {
        done.add(first);
        return first;
      }
      if (first !== undefined) return undefined; // cannot happen: a captured block is taken once
      for (let r = order.next(); !r.done; r = order.next()) {
        if (done.has(r.value)) continue;
        done.add(r.value);
        return r.value;
      }
      return undefined;
    }
  };
  let failure: unknown;
  const worker = async (): Promise<void> => {
    for (;;) {
      // Paced before next(): a block is picked only when it is about to be read.
      const paced = p.pace ? await p.pace() : undefined;
      const i = failure === undefined ? next() : undefined;
      if (i === undefined) return paced?.();
      try {
        await copyOne(i);
      } finally {
        paced?.();
      }
    }
  };
  const copyOne = async (i: number): Promise<void> => {
    {
      const stop = p.aborted?.();
      if (stop) throw (failure = stop);
      const buf = await p.read(i).catch((e: unknown) => { throw (failure ??= e); });
      if (buf.equals(ZERO_BLOCK)) {
        zeroBlocks++;
      } else {
        // On libuv's pool: 512 KiB of SHA-256 does not hold the loop that serves FUSE (docs/benchmarks.md, "Snapshots").
        const hash = await sha256HexOffLoop(buf);
        try {
          await p.pin?.(hash);
          if (await putUnlessStored(p.store, p.batch, hash, buf)) storedBlocks++;
          else found.add(hash);
        } catch (e) {
          throw (failure ??= e);
        }
        hashes.set(i, hash);
      }
      // Every read of buf is done (the put resolved once its bytes were written).
      p.recycle?.(buf);
      finished++;
      p.onProgress?.(finished, total, hashes);
    }
  };
  const n = Math.max(1, Math.min(p.concurrency ?? 8, total));
  const results = await Promise.allSettled(Array.from({ length: n }, worker));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return { hashes, zeroBlocks, storedBlocks, found };
}
