/** Limit/Marker paging shared by the List* operations. Markers are opaque to callers. */
import { InvalidMarkerException } from './errors.js';
import { optInt, optStr } from './validate.js';
import type { KmsRequest } from './types.js';

const badMarker = (): InvalidMarkerException => new InvalidMarkerException('The marker that specifies where pagination should next begin is not valid.');

/**
 * One page of `items`. With `keyOf` (items sorted ascending by it), the
 * marker names the last item returned and the next page starts after it, so
 * an item added or removed between two calls neither repeats nor hides one
 * (an offset would shift). Without it, the marker is an offset.
 */
export function page<T>(req: KmsRequest, items: readonly T[], def: number, max: number, keyOf?: (t: T) => string): { items: T[]; Truncated: boolean; NextMarker?: string } {
  const limit = optInt(req, 'Limit', 1, max) ?? def;
  const marker = optStr(req, 'Marker', 1, 1024);
  let start = 0;
  if (marker !== undefined) {
    const text = Buffer.from(marker, 'base64url').toString('utf8');
    const k = keyOf ? /^k1:(.+)$/s.exec(text) : null;
    const m = keyOf ? null : /^p1:(\d+)$/.exec(text);
    if (k) {
      // Binary search for the first item after the marker (items are sorted by keyOf).
      const after = k[1]!;
      let lo = 0;
      let hi = items.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (keyOf!(items[mid]!) > after) hi = mid;
        else lo = mid + 1;
      }
      start = lo;
    } else if (m && Number(m[1]) <= items.length) {
      start = Number(m[1]);
    } else {
      throw badMarker();
    }
  }
  const slice = items.slice(start, start + limit);
  const end = start + slice.length;
  if (end >= items.length) return { items: slice, Truncated: false };
  const next = keyOf ? `k1:${keyOf(slice[slice.length - 1]!)}` : `p1:${end}`;
  return { items: slice, Truncated: true, NextMarker: Buffer.from(next).toString('base64url') };
}
