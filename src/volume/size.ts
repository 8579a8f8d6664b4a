import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { invalidParameter, VolumeError } from './errors.js';
import { LUKS2_DATA_OFFSET } from './luks2-json.js';

export const MIN_VOLUME_SIZE = 1024 * 1024; // 1 MiB
export const MAX_VOLUME_SIZE = 64 * 1024 ** 4; // 64 TiB, EBS io2 Block Express maximum
/** What every size refusal says: ebsd's Size is not EC2's (GiB, an integer). */
export const SIZE_UNIT_HINT = 'Size is in bytes, or a string with a unit such as "8GiB" (EC2\'s Size is GiB)';
const UNITS: ReadonlyMap<string, number> = new Map([
  ['', 1], ['B', 1], ['K', 1024], ['KiB', 1024], ['M', 1024 ** 2], ['MiB', 1024 ** 2], ['G', 1024 ** 3], ['GiB', 1024 ** 3], ['T', 1024 ** 4], ['TiB', 1024 ** 4],
]);

/**
 * Volume size: a byte count (number or decimal string) or a binary-suffixed
 * string (`8GiB`, `512M`). Must be a multiple of 4 KiB in [1 MiB, 64 TiB].
 */
export function parseVolumeSize(v: unknown, name = 'Size'): number {
  let bytes: number;
  if (typeof v === 'number') bytes = v;
  else if (typeof v === 'string') {
    // Said apart, so a refusal names what is wrong: a sign, a fraction, a unit, or (below) the range.
    const m = /^\s*(-?)([0-9]+)(\.[0-9]*)?\s*([A-Za-z]{0,3})\s*$/.exec(v);
    const shown = v.slice(0, 64);
    const unit = m ? UNITS.get(m[4]!) : undefined;
    if (m && unit !== undefined && m[1] === '' && m[3] !== undefined) {
      throw invalidParameter(`Invalid value '${shown}' for ${name}: a whole number of bytes or of its unit (1536MiB for 1.5GiB). ${SIZE_UNIT_HINT}.`);
    }
    if (m && m[1] === '' && unit === undefined) {
      throw invalidParameter(`Invalid value '${shown}' for ${name}: unknown unit '${m[4]}' (use KiB, MiB, GiB or TiB). ${SIZE_UNIT_HINT}.`);
    }
    if (!m || unit === undefined) throw invalidParameter(`Invalid value '${shown}' for ${name}. Use bytes or a suffix KiB, MiB, GiB, TiB: ${SIZE_UNIT_HINT}.`);
    // A negative or a 30-digit size is out of range, and said so (Number of the digits is at worst Infinity).
    bytes = m[1] === '-' ? -1 : Number(m[2]) * unit;
  } else throw invalidParameter(`${name} is required`);
  if (!Number.isSafeInteger(bytes) || bytes < MIN_VOLUME_SIZE || bytes > MAX_VOLUME_SIZE) {
    throw invalidParameter(`Invalid value '${String(v).slice(0, 64)}' for ${name}: must be from 1 MiB to 64 TiB. ${SIZE_UNIT_HINT}.`);
  }
  if (bytes % 4096 !== 0) throw invalidParameter(`Invalid value '${String(v)}' for ${name}: must be a multiple of 4 KiB.`);
  return bytes;
}

/**
 * The size checked against the filesystem that holds the images: a volume of
 * `size` bytes needs an image file of header + `size` bytes, and ext4 with
 * 4 KiB blocks stops at 16 TiB per file (EFBIG), below the 64 TiB EBS allows.
 * Probed with a sparse temp file in `dir` (no blocks are allocated); on EFBIG
 * the largest length the filesystem takes is found by bisection and named.
 * Returns the size in bytes.
 */
export async function checkImageSizeFits(dir: string, v: unknown, name = 'Size'): Promise<number> {
  const size = parseVolumeSize(v, name);
  const need = LUKS2_DATA_OFFSET + size;
  // Named as atomicWrite names its temp files, so the start-up clean-up removes one a crash left behind.
  const probe = join(dir, `.size-probe.${randomBytes(6).toString('hex')}.tmp`);
  const fh = await fsp.open(probe, 'wx', 0o600);
  try {
    if (await fits(fh, need)) return size;
    let lo = 0; // fits
    let hi = need; // does not
    while (hi - lo > 4096) {
      const mid = Math.floor((lo + hi) / 2 / 4096) * 4096;
      if (await fits(fh, mid)) lo = mid;
      else hi = mid;
    }
    const largest = Math.max(0, Math.floor((lo - LUKS2_DATA_OFFSET) / 4096) * 4096);
    throw new VolumeError(
      'VOLUME_TOO_LARGE_FOR_FILESYSTEM',
      `Invalid value '${String(v)}' for ${name}: a volume of ${size} bytes needs an image file of ${need} bytes, but the filesystem holding ${dir} ` +
        `allows files of at most ${lo} bytes (EFBIG); the largest volume it can hold is ${largest} bytes`,
      { awsName: 'InvalidParameterValue' },
    );
  } finally {
    await fh.close();
    await fsp.rm(probe, { force: true });
  }
}

async function fits(fh: fsp.FileHandle, len: number): Promise<boolean> {
  try {
    await fh.truncate(len);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EFBIG' || code === 'EINVAL') return false;
    throw e;
  }
}
