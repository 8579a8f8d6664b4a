import { invalidParameter } from './errors.js';

export const MIN_VOLUME_SIZE = 1024 * 1024; // 1 MiB
export const MAX_VOLUME_SIZE = 64 * 1024 ** 4; // 64 TiB, EBS io2 Block Express maximum
const UNITS: Record<string, number> = { '': 1, B: 1, K: 1024, KiB: 1024, M: 1024 ** 2, MiB: 1024 ** 2, G: 1024 ** 3, GiB: 1024 ** 3, T: 1024 ** 4, TiB: 1024 ** 4 };

/**
 * Volume size: a byte count (number or decimal string) or a binary-suffixed
 * string (`8GiB`, `512M`). Must be a multiple of 4 KiB in [1 MiB, 64 TiB].
 */
export function parseVolumeSize(v: unknown, name = 'Size'): number {
  let bytes: number;
  if (typeof v === 'number') bytes = v;
  else if (typeof v === 'string') {
    const m = /^\s*([0-9]+)\s*([A-Za-z]*)\s*$/.exec(v);
    const unit = m ? UNITS[m[2]!] : undefined;
    if (!m || unit === undefined) throw invalidParameter(`Invalid value '${v}' for ${name}. Use bytes or a suffix KiB, MiB, GiB, TiB.`);
    bytes = Number(m[1]) * unit;
  } else throw invalidParameter(`${name} is required`);
  if (!Number.isSafeInteger(bytes) || bytes < MIN_VOLUME_SIZE || bytes > MAX_VOLUME_SIZE) {
    throw invalidParameter(`Invalid value '${String(v)}' for ${name}: must be from 1 MiB to 64 TiB.`);
  }
  if (bytes % 4096 !== 0) throw invalidParameter(`Invalid value '${String(v)}' for ${name}: must be a multiple of 4 KiB.`);
  return bytes;
}
