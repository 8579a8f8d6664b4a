import type { XtsContext } from '../crypto/xts.js';
import { SECTOR_SIZE } from '../volume/luks2-json.js';
import { SNAPSHOT_BLOCK_BYTES } from './types.js';

/**
 * Re-encryption of snapshot blocks from one data key to another, in the
 * volume's XTS geometry (docs/format.md "JSON area": 4 KiB sectors, the tweak
 * of sector k counted from the data segment start is 8·k, dm-crypt counting
 * 512-byte units). Used by a restore or a copy under a different KMS key
 * (docs/architecture.md §14.1, §14.2).
 *
 * A sector whose stored bytes are all zeros is a hole (it reads as zeros,
 * docs/format.md "File layout") and stays all zeros: decrypting and
 * re-encrypting it would turn a hole into ciphertext of garbage.
 */
const SS = SECTOR_SIZE;
const XTS_OPTS = { unitSize: 4096, tweakStep: 8 } as const;
/** Sectors per snapshot block: block i starts at sector i·128. */
export const SECTORS_PER_BLOCK = SNAPSHOT_BLOCK_BYTES / SS;

/**
 * Re-encrypt one block in place: `from` decrypts (null: the block is
 * plaintext, from a measurement-only volume), `to` encrypts (null: leave
 * plaintext). Runs of non-hole sectors go to the engine whole (the native
 * engine runs them on the libuv pool, so several blocks in flight use
 * several cores). `blockIndex` places the block in the segment.
 */
export async function reencryptBlock(from: XtsContext | null, to: XtsContext | null, data: Buffer, blockIndex: number): Promise<void> {
  if (data.length % SS !== 0) throw new RangeError(`block ${blockIndex} is ${data.length} bytes, not a whole number of ${SS}-byte sectors`);
  const first = blockIndex * SECTORS_PER_BLOCK;
  const n = data.length / SS;
  let runStart = -1;
  const jobs: Promise<void>[] = [];
  for (let i = 0; i <= n; i++) {
    const hole = i < n && isZeroSector(data, i * SS);
    if (i < n && !hole) {
      if (runStart < 0) runStart = i;
      continue;
    }
    if (runStart >= 0) {
      const run = data.subarray(runStart * SS, i * SS);
      const tweak = (first + runStart) * 8;
      jobs.push(transform(from, to, run, tweak));
      runStart = -1;
    }
  }
  await Promise.all(jobs);
}

async function transform(from: XtsContext | null, to: XtsContext | null, run: Buffer, tweak: number): Promise<void> {
  if (from) await from.decrypt(run, tweak, XTS_OPTS);
  if (to) await to.encrypt(run, tweak, XTS_OPTS);
}

const ZERO_SECTOR = Buffer.alloc(SS);

/** Whether the sector at `o` is all zeros; the first 16 bytes decide almost every ciphertext sector. */
function isZeroSector(buf: Buffer, o: number): boolean {
  if ((buf.readUInt32LE(o) | buf.readUInt32LE(o + 4) | buf.readUInt32LE(o + 8) | buf.readUInt32LE(o + 12)) !== 0) return false;
  return ZERO_SECTOR.compare(buf, o, o + SS) === 0;
}

/** Whether a whole block is zeros (a restore or copy never stores or writes one). */
export function isZeroBlock(buf: Buffer): boolean {
  for (let o = 0; o < buf.length; o += SS) if (!isZeroSector(buf, o)) return false;
  return true;
}
