/** Limit/Marker paging shared by the List* operations. Markers are opaque to callers. */
import { InvalidMarkerException } from './errors.js';
import { optInt, optStr } from './validate.js';
export function page(req, items, def, max) {
    const limit = optInt(req, 'Limit', 1, max) ?? def;
    const marker = optStr(req, 'Marker', 1, 1024);
    let start = 0;
    if (marker !== undefined) {
        const m = /^p1:(\d+)$/.exec(Buffer.from(marker, 'base64url').toString('utf8'));
        if (!m || Number(m[1]) > items.length)
            throw new InvalidMarkerException('The marker that specifies where pagination should next begin is not valid.');
        start = Number(m[1]);
    }
    const slice = items.slice(start, start + limit);
    const end = start + slice.length;
    return end < items.length
        ? { items: slice, Truncated: true, NextMarker: Buffer.from(`p1:${end}`).toString('base64url') }
        : { items: slice, Truncated: false };
}
//# sourceMappingURL=paging.js.map