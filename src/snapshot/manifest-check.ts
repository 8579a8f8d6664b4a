import { SnapshotError } from './errors.js';
import type { BlockHash, SnapshotManifest } from './types.js';

const HASH = /^[0-9a-f]{64}$/;
const SNAP_ID = /^snap-[0-9a-f]{17}$/;

export function isBlockHash(v: unknown): v is BlockHash {
  return typeof v === 'string' && HASH.test(v);
}

export function isSnapshotId(v: unknown): v is string {
  return typeof v === 'string' && SNAP_ID.test(v);
}

export function checkBlockHash(hash: unknown): asserts hash is BlockHash {
  if (!isBlockHash(hash)) throw new SnapshotError('SNAPSHOT_INVALID_PARAMETER', `not a block hash (64 lowercase hex): ${JSON.stringify(hash)?.slice(0, 80)}`);
}

export function checkSnapshotId(id: unknown): asserts id is string {
  if (!isSnapshotId(id)) {
    throw new SnapshotError('SNAPSHOT_INVALID_PARAMETER', `not a snapshot id (snap- and 17 hex): ${JSON.stringify(id)?.slice(0, 80)}`, { awsName: 'InvalidSnapshotID.Malformed' });
  }
}

/** Every block a manifest needs from the store: its data blocks and its header object. */
export function manifestHashes(m: SnapshotManifest): BlockHash[] {
  const out = m.blocks.map(([, h]) => h);
  if (m.header) out.push(m.header);
  return out;
}

/**
 * A manifest's text as a store read it back. Checked as far as a reader
 * relies on it: JSON, `formatVersion` 1, the id it is stored under, and
 * `blocks` as [index, hash] pairs in ascending order. The collector marks
 * from these fields, so a manifest that fails here stops a sweep instead of
 * freeing the blocks it names. `where` names the object in the error.
 */
export function parseManifest(where: string, snapshotId: string, text: string): SnapshotManifest {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new SnapshotError('SNAPSHOT_CORRUPT', `snapshot manifest ${where} is not valid JSON: ${(e as Error).message}`);
  }
  const bad = (why: string): SnapshotError => new SnapshotError('SNAPSHOT_CORRUPT', `snapshot manifest ${where}: ${why}`);
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad('not a JSON object');
  const m = v as Partial<SnapshotManifest>;
  if (m.formatVersion !== 1) throw bad(`formatVersion ${JSON.stringify(m.formatVersion)} is not 1`);
  if (m.snapshotId !== snapshotId) throw bad(`names snapshot ${JSON.stringify(m.snapshotId)}, stored as ${snapshotId}`);
  if (!Array.isArray(m.blocks)) throw bad('blocks is not an array');
  let last = -1;
  for (const b of m.blocks as unknown[]) {
    if (!Array.isArray(b) || b.length !== 2 || !Number.isSafeInteger(b[0]) || (b[0] as number) <= last || !isBlockHash(b[1])) {
      throw bad(`blocks entry ${JSON.stringify(b)?.slice(0, 100)} is not [index, sha256] in ascending index order`);
    }
    last = b[0] as number;
  }
  if (m.header !== undefined && !isBlockHash(m.header)) throw bad('header is not a block hash');
  return m as SnapshotManifest;
}
