import { SECTOR_SIZE } from './luks2-json.js';

/**
 * How a byte range of a volume maps onto its 4096-byte sectors and onto the
 * parallel chunks large runs are split into (docs/architecture.md §3).
 */
export const SS = SECTOR_SIZE;

/**
 * Runs from this size up are split into chunks that proceed independently
 * (pread, then decrypt, each on the libuv pool), so one large request keeps
 * both the disk/page-cache copy and the cipher busy on every core instead of
 * doing pread-then-decrypt serially on one (docs/architecture.md §3.1).
 * Measured in docs/benchmarks.md (Block device).
 */
export const PARALLEL_MIN = 128 * 1024;
/** Split a run into about this many chunks (the libuv pool has 4 threads by default). */
const PARALLEL_CHUNKS = 4;
const MIN_CHUNK = 64 * 1024;

/** Byte length of each chunk when a `len`-byte run is split (a multiple of the sector size). */
export function chunkBytes(len: number): number {
  return Math.max(MIN_CHUNK, Math.ceil(len / PARALLEL_CHUNKS / SS) * SS);
}

/** First sector of [offset, offset + length) and the sector after its last. */
export function firstSector(offset: number): number {
  return Math.floor(offset / SS);
}
export function endSector(offset: number, length: number): number {
  return Math.ceil((offset + length) / SS);
}

/** Whether [offset, offset + length) is whole sectors. */
export function isWholeSectors(offset: number, length: number): boolean {
  return offset % SS === 0 && length % SS === 0;
}

/**
 * Wait for every job, then fail with the first error. Unlike Promise.all it
 * never returns while a chunk is still being read or transformed in place,
 * so the caller may recycle or wipe the buffer as soon as it settles.
 */
export async function settleAll(jobs: Promise<void>[]): Promise<void> {
  const r = await Promise.allSettled(jobs);
  for (const x of r) if (x.status === 'rejected') throw x.reason;
}
