import { KMS_PAGED } from './kms-members.js';

type R = Record<string, unknown>;

/**
 * A KMS list operation as the AWS CLI runs it: every page, from Marker to NextMarker while
 * Truncated, its results gathered in one list, and the answer printed without Truncated and
 * NextMarker (`aws kms list-keys` prints `{"Keys": [...]}`). As the AWS CLI does, a request that
 * gives Limit or Marker itself is one page, printed whole (Truncated, NextMarker) for the
 * caller to go on from.
 */
export async function kmsPages(op: string, req: R, call: (req: R) => Promise<R>): Promise<R> {
  const results = KMS_PAGED[op];
  if (results === undefined || req.Limit !== undefined || req.Marker !== undefined) return call(req);
  const first = await call(req);
  const all: unknown[] = [...((first[results] as unknown[] | undefined) ?? [])];
  const seen = new Set<string>();
  let page = first;
  while (page.Truncated === true && typeof page.NextMarker === 'string') {
    // A marker that comes back twice would page forever; the AWS CLI stops with an error too.
    if (seen.has(page.NextMarker)) throw new Error(`${op}: the same NextMarker was answered twice`);
    seen.add(page.NextMarker);
    page = await call({ ...req, Marker: page.NextMarker });
    all.push(...((page[results] as unknown[] | undefined) ?? []));
  }
  const { Truncated: _t, NextMarker: _m, ...rest } = first;
  return { ...rest, [results]: all };
}
