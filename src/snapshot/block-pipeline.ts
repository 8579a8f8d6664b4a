import { SnapshotError } from './errors.js';
import { SNAPSHOT_BLOCK_BYTES, type SnapshotManifest, type SnapshotStore } from './types.js';

/**
 * The read side of a restore or a copy (docs/architecture.md §14.5): every
 * block of a manifest read from the store (which checks its SHA-256 against
 * its name), transformed in place (re-encrypted, or left as it is), and
 * handed to a sink in manifest order, with the stages overlapped and bounded:
 * at most `window` blocks are read or transformed ahead of the block the sink
 * takes next, so memory stays at `window` blocks whatever the snapshot's size,
 * while the store's reads, the XTS jobs on the libuv pool and the sink's
 * writes all run at once. Buffers go from the store to the sink untouched
 * (no copy).
 */
export interface BlockSink {
  /** Takes block `index` (in manifest order); resolves when it can take the next one. */
  put(index: number, data: Buffer): Promise<void>;
}

/** Time spent per stage, summed over blocks (stages overlap, so the sum exceeds the wall time). */
export interface PipelineStats {
  blocks: number;
  bytes: number;
  /** Store reads, the store's hash check included. */
  readMs: number;
  transformMs: number;
  /** Time the pipeline waited for the sink to take a block (its backpressure). */
  sinkWaitMs: number;
  /** From the first read to the last block taken by the sink. */
  wallMs: number;
}

export interface PipeBlocksOptions {
  store: SnapshotStore;
  manifest: SnapshotManifest;
  /** Blocks read or transformed ahead of the sink; default 16 (docs/benchmarks.md, "Restore under another key"). */
  window?: number;
  /** Runs on each block after its read, in place (may run for several blocks at once). */
  transform?: (index: number, data: Buffer) => Promise<void>;
  sink: BlockSink;
  /** Filled as the blocks go (for the log and the benchmark). */
  stats?: PipelineStats;
}

export const DEFAULT_WINDOW = 16;

export function newPipelineStats(): PipelineStats {
  return { blocks: 0, bytes: 0, readMs: 0, transformMs: 0, sinkWaitMs: 0, wallMs: 0 };
}

/**
 * Every block of `manifest` through `transform` into `sink`. On the first
 * failure nothing new starts, the blocks under way settle (no job still holds
 * a buffer or a file when this returns) and the failure is thrown.
 */
export async function pipeBlocks(o: PipeBlocksOptions): Promise<void> {
  const m = o.manifest;
  const window = Math.max(1, o.window ?? DEFAULT_WINDOW);
  const st = o.stats ?? newPipelineStats();
  const t0 = performance.now();
  const started: Promise<Buffer>[] = [];
  let failed = false;
  const start = (k: number): void => {
    const [index, hash] = m.blocks[k]!;
    const p = (async () => {
      const r0 = performance.now();
      const data = await o.store.getBlock(hash);
      st.readMs += performance.now() - r0;
      if (data.length > SNAPSHOT_BLOCK_BYTES) throw new SnapshotError('SNAPSHOT_CORRUPT', `block ${index} of ${m.snapshotId} is ${data.length} bytes, more than ${SNAPSHOT_BLOCK_BYTES}`);
      if (o.transform) {
        const x0 = performance.now();
        await o.transform(index, data);
        st.transformMs += performance.now() - x0;
      }
      return data;
    })();
    // Marked handled at once: a block failing ahead of the one awaited is reported when its turn comes.
    p.catch(() => {
      failed = true;
    });
    started[k] = p;
  };
  let next = 0;
  try {
    for (let k = 0; k < m.blocks.length; k++) {
      while (!failed && next < m.blocks.length && next < k + window) start(next++);
      const data = await started[k]!;
      delete started[k];
      const w0 = performance.now();
      await o.sink.put(m.blocks[k]![0], data);
      st.sinkWaitMs += performance.now() - w0;
      st.blocks++;
      st.bytes += data.length;
    }
  } finally {
    st.wallMs = performance.now() - t0;
    await Promise.allSettled(started.filter(Boolean));
  }
}
