import type { XtsContext } from '../crypto/xts.js';
import { SectorDevice, PARALLEL_MIN, chunkBytes, settleAll, type SectorDeviceOptions } from './sector-device.js';
import { SECTOR_SIZE } from './luks2-json.js';

const SS = SECTOR_SIZE;
const ZERO_SECTOR = Buffer.alloc(SS);
/** LUKS2 aes-xts-plain64 with sector_size 4096: the IV counts 512-byte units (DESIGN §3). */
const XTS_OPTS = { unitSize: 4096, tweakStep: 8 } as const;
/**
 * Runs up to this size are encrypted on the calling thread: a 16 KiB run takes
 * a few µs with AES-NI, less than the libuv thread-pool round trip the async
 * API costs (measured: 4 KiB random reads at QD32 went from 24k to 71k IOPS, see
 * docs/benchmarks.md). Larger runs go to the pool and never block the loop long.
 */
const SYNC_MAX = 16 * 1024;

export interface EncryptedBlockDeviceOptions extends SectorDeviceOptions {
  /** Key schedule of the verified volume key; this device destroys it on close/impairment. */
  xts: XtsContext;
}

/**
 * BlockDevice over a LUKS2 data segment: AES-256-XTS per 4 KiB sector,
 * tweak = 8·sector (dm-crypt plain64 in 512-byte units), whole runs per
 * engine call. All-zero ciphertext sectors (holes) read as zeros.
 */
export class EncryptedBlockDevice extends SectorDevice {
  readonly unencrypted = false;
  private xts: XtsContext | null;

  constructor(o: EncryptedBlockDeviceOptions) {
    super(o);
    this.xts = o.xts;
  }

  protected readonly transforms = true;

  protected seal(buf: Uint8Array, first: number): Promise<void> | void {
    const x = this.ctx();
    if (buf.length <= SYNC_MAX) return x.encryptSync(buf, first * 8, XTS_OPTS);
    if (buf.length < PARALLEL_MIN) return x.encrypt(buf, first * 8, XTS_OPTS);
    // Large runs: chunks encrypted in parallel on the libuv pool (one core each).
    const step = chunkBytes(buf.length);
    const jobs: Promise<void>[] = [];
    for (let off = 0; off < buf.length; off += step) jobs.push(x.encrypt(buf.subarray(off, Math.min(off + step, buf.length)), (first + off / SS) * 8, XTS_OPTS));
    return settleAll(jobs);
  }

  protected unseal(buf: Buffer, first: number): Promise<void> | void {
    const n = buf.length / SS;
    // Decrypt maximal runs of non-zero sectors; leave holes as zeros.
    let runStart = -1;
    let jobs: Promise<void>[] | null = null;
    for (let i = 0; i <= n; i++) {
      const zero = i < n && isZeroSector(buf, i * SS);
      if (i < n && !zero) {
        if (runStart < 0) runStart = i;
        continue;
      }
      if (runStart >= 0) {
        const run = buf.subarray(runStart * SS, i * SS);
        const tweak = (first + runStart) * 8;
        if (run.length <= SYNC_MAX) this.ctx().decryptSync(run, tweak, XTS_OPTS);
        else if (run.length < PARALLEL_MIN) (jobs ??= []).push(this.ctx().decrypt(run, tweak, XTS_OPTS));
        else {
          // A large run read from the page cache in one go: decrypt its chunks in parallel.
          const step = chunkBytes(run.length);
          for (let off = 0; off < run.length; off += step) {
            (jobs ??= []).push(this.ctx().decrypt(run.subarray(off, Math.min(off + step, run.length)), tweak + (off / SS) * 8, XTS_OPTS));
          }
        }
        runStart = -1;
      }
    }
    if (jobs === null) return undefined;
    return jobs.length === 1 ? jobs[0] : settleAll(jobs);
  }

  /** Destroy the key schedule (best effort zeroization). Called after drain. */
  wipeKey(): void {
    this.xts?.destroy();
    this.xts = null;
  }

  override close(): Promise<void> {
    return super.close(() => this.wipeKey());
  }

  private ctx(): XtsContext {
    if (!this.xts) throw this.failed ?? new Error('volume key wiped');
    return this.xts;
  }
}

/**
 * Whether the sector at `o` is all zeros (a hole). Ciphertext of anything
 * starts with 16 zero bytes with probability 2^-128, so the first 16 bytes
 * decide almost every sector without scanning 4 KiB; only a sector that
 * starts with zeros is compared in full.
 */
function isZeroSector(buf: Buffer, o: number): boolean {
  if ((buf.readUInt32LE(o) | buf.readUInt32LE(o + 4) | buf.readUInt32LE(o + 8) | buf.readUInt32LE(o + 12)) !== 0) return false;
  return ZERO_SECTOR.compare(buf, o, o + SS) === 0;
}
