import { ArgRangeError } from '../util/errors.js';
import { EbsdError } from '../util/errors.js';
export const DEFAULT_STATE_DIR = '/var/lib/ebsd';
export const DEFAULT_MOUNT_DIR = '/mnt/ebsd';
export function checkDaemonConfig(c) {
    if (c.cipher !== 'aes-xts-plain64' && c.cipher !== 'none') {
        throw new ArgRangeError('cipher', `must be aes-xts-plain64 or none, got ${String(c.cipher)}`);
    }
    if (c.cipher === 'none' && !c.allowUnencrypted) {
        throw new EbsdError('UNENCRYPTED_REFUSED', '--cipher none stores volume data in PLAINTEXT and exists only to measure encryption overhead; add --allow-unencrypted to confirm');
    }
    for (const [name, v] of [['keyCacheTtlMs', c.keyCacheTtlMs], ['keyCacheMaxStaleMs', c.keyCacheMaxStaleMs]]) {
        if (v !== undefined && (!Number.isSafeInteger(v) || v < 0))
            throw new ArgRangeError(name, `must be a non-negative integer, got ${v}`);
    }
}
/** `300`, `300s`, `5m`, `1h`, `250ms` -> milliseconds. */
export function parseDuration(v, name) {
    if (typeof v === 'number') {
        if (!Number.isFinite(v) || v < 0)
            throw new ArgRangeError(name, `must be a non-negative duration, got ${v}`);
        return Math.round(v * 1000);
    }
    const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(v);
    if (!m)
        throw new ArgRangeError(name, `"${v}" is not a duration (e.g. 300, 300s, 5m, 1h, 250ms)`);
    const mult = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's')];
    return Math.round(Number(m[1]) * mult);
}
//# sourceMappingURL=config.js.map