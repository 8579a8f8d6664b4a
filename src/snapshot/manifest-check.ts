import { SnapshotError } from './errors.js';
import { inParallel } from '../util/in-parallel.js';
import { charCount } from '../util/char-count.js';
import type { BlockHash, SnapshotManifest, SnapshotSummary } from './types.js';

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
 * The largest manifest a store writes or reads (bytes of JSON). A blocks
 * entry is at most 79 bytes (`[134217727,"<64 hex>"],`), so 64 MiB holds
 * about 850 Ki written blocks of 512 KiB, 415 GiB of written data; a fully
 * written 64 TiB volume (128 Mi blocks) would need 10 GiB of JSON, past what
 * V8 can hold as one string (512 MiB) anyway. The cap bounds what one object
 * in a shared store can make a reader allocate (16 listed at once by the S3
 * store: 1 GiB), instead of letting it exhaust the heap.
 */
export const MANIFEST_MAX_BYTES = 64 * 1024 * 1024;

/** Too large to read or write: SNAPSHOT_CORRUPT on read, SNAPSHOT_STORE (refused) on write. */
export function checkManifestBytes(where: string, bytes: number, writing: boolean): void {
  if (bytes <= MANIFEST_MAX_BYTES) return;
  throw new SnapshotError(
    writing ? 'SNAPSHOT_STORE' : 'SNAPSHOT_CORRUPT',
    `snapshot manifest ${where} is ${bytes} bytes, over the ${MANIFEST_MAX_BYTES}-byte limit`,
  );
}

const VOLUME_ID = /^vol-[0-9a-f]{17}$/;
const OWNER_ID = /^\d{12}$/;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
/** ISO 8601 as Date#toISOString writes it (what ebsd stores). */
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$/;
const STATES: ReadonlySet<unknown> = new Set(['pending', 'completed', 'error']);
/** EC2's limits: 50 tags, Key 1–128, Value 0–256 characters; Description 255 (Unicode characters, as the EC2 edge counts them). */
const TAGS_MAX = 50;
const TAG_KEY_MAX = 128;
const TAG_VALUE_MAX = 256;
const DESCRIPTION_MAX = 255;
/** GiB: 64 TiB, EBS's largest volume (src/volume/size.ts). */
const VOLUME_GIB_MAX = 65536;
/** 512 KiB blocks per GiB. */
const BLOCKS_PER_GIB = 2048;
const TEXT_MAX = 4096;

/** The most of a value read from an untrusted manifest that an error (and so the log) quotes. */
export const QUOTED_MAX = 128;

/** `s`, a value taken from an untrusted manifest (a key ARN it names, JSON.parse's excerpt of it), cut to QUOTED_MAX characters for an error message. */
export function quoted(s: string): string {
  return s.length <= QUOTED_MAX ? s : `${s.slice(0, QUOTED_MAX)}… (${s.length - QUOTED_MAX} more characters)`;
}

/**
 * A manifest's text as a store read it back, checked in every field a
 * reader relies on (DescribeSnapshots, authorization, restore, the
 * collector): JSON of at most MANIFEST_MAX_BYTES, `formatVersion` 1, the id
 * it is stored under, the ids' patterns, ISO times, states and numbers in
 * range, tags as EC2 bounds them, the wrapped key's shape, and `blocks` as
 * [index, hash] pairs in ascending order below the volume's size. The
 * collector marks from these fields, so a manifest that fails here stops a
 * sweep instead of freeing the blocks it names. `where` names the object in
 * the error.
 */
export function parseManifest(where: string, snapshotId: string, text: string): SnapshotManifest {
  checkManifestBytes(where, Buffer.byteLength(text, 'utf8'), false);
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    // JSON.parse's message quotes the text around the fault: what a store writer put there, cut short.
    throw new SnapshotError('SNAPSHOT_CORRUPT', `snapshot manifest ${where} is not valid JSON: ${quoted((e as Error).message)}`);
  }
  const bad = (why: string): SnapshotError => new SnapshotError('SNAPSHOT_CORRUPT', `snapshot manifest ${where}: ${why}`);
  const show = (x: unknown): string => String(JSON.stringify(x)).slice(0, 100);
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad('not a JSON object');
  const m = v as Record<string, unknown>;
  const str = (k: string, max: number, optional = false): void => {
    if (optional && m[k] === undefined) return;
    if (typeof m[k] !== 'string' || charCount(m[k] as string) > max) throw bad(`${k} ${show(m[k])} is not a string of at most ${max} characters`);
  };
  const int = (k: string, min: number, max: number): void => {
    const x = m[k];
    if (!Number.isSafeInteger(x) || (x as number) < min || (x as number) > max) throw bad(`${k} ${show(x)} is not an integer in [${min}, ${max}]`);
  };
  const time = (k: string, optional = false): void => {
    if (optional && m[k] === undefined) return;
    if (typeof m[k] !== 'string' || !ISO_TIME.test(m[k] as string) || !Number.isFinite(Date.parse(m[k] as string))) throw bad(`${k} ${show(m[k])} is not an ISO 8601 time`);
  };
  if (m.formatVersion !== 1) throw bad(`formatVersion ${show(m.formatVersion)} is not 1`);
  if (m.snapshotId !== snapshotId) throw bad(`names snapshot ${show(m.snapshotId)}, stored as ${snapshotId}`);
  // '' for StartSnapshot (EBS direct APIs), else the source volume's id.
  if (m.volumeId !== '' && !(typeof m.volumeId === 'string' && VOLUME_ID.test(m.volumeId))) throw bad(`volumeId ${show(m.volumeId)} is neither '' nor vol- and 17 hex`);
  int('volumeSize', 1, VOLUME_GIB_MAX);
  if (!STATES.has(m.state)) throw bad(`state ${show(m.state)} is not pending, completed or error`);
  int('progress', 0, 100);
  time('startTime');
  time('completionTime', true);
  str('stateMessage', TEXT_MAX, true);
  str('description', DESCRIPTION_MAX);
  if (!Array.isArray(m.tags) || m.tags.length > TAGS_MAX) throw bad(`tags is not an array of at most ${TAGS_MAX}`);
  for (const t of m.tags as unknown[]) {
    const tag = t as { Key?: unknown; Value?: unknown } | null;
    if (typeof tag !== 'object' || tag === null || typeof tag.Key !== 'string' || tag.Key === '' || charCount(tag.Key) > TAG_KEY_MAX
      || typeof tag.Value !== 'string' || charCount(tag.Value) > TAG_VALUE_MAX) {
      throw bad(`tag ${show(t)} is not {Key (1-${TAG_KEY_MAX} characters), Value (0-${TAG_VALUE_MAX})}`);
    }
  }
  if (typeof m.ownerId !== 'string' || !OWNER_ID.test(m.ownerId)) throw bad(`ownerId ${show(m.ownerId)} is not a 12-digit account id`);
  if (typeof m.encrypted !== 'boolean') throw bad(`encrypted ${show(m.encrypted)} is not true or false`);
  str('kmsKeyId', 2048);
  str('dataEncryptionKeyId', 256, true);
  if (m.wrappedKey !== undefined) {
    const w = m.wrappedKey as { ciphertextBlob?: unknown; keyArn?: unknown; encryptionContext?: unknown } | null;
    const ctx = w?.encryptionContext;
    if (typeof w !== 'object' || w === null
      || typeof w.ciphertextBlob !== 'string' || w.ciphertextBlob.length === 0 || w.ciphertextBlob.length > 8192 || !BASE64.test(w.ciphertextBlob)
      || typeof w.keyArn !== 'string' || w.keyArn.length === 0 || w.keyArn.length > 2048
      || typeof ctx !== 'object' || ctx === null || Array.isArray(ctx) || !Object.values(ctx).every((x) => typeof x === 'string')) {
      throw bad('wrappedKey is not {ciphertextBlob (base64), keyArn, encryptionContext (string values)}');
    }
  }
  if (m.header !== undefined && !isBlockHash(m.header)) throw bad('header is not a block hash');
  int('dataOffset', 0, 2 ** 40);
  if (m.parentSnapshotId !== undefined && !isSnapshotId(m.parentSnapshotId)) throw bad(`parentSnapshotId ${show(m.parentSnapshotId)} is not a snapshot id`);
  if (m.sourceSnapshotId !== undefined && !isSnapshotId(m.sourceSnapshotId)) throw bad(`sourceSnapshotId ${show(m.sourceSnapshotId)} is not a snapshot id`);
  if (m.changedBlocks !== undefined) int('changedBlocks', 0, Number.MAX_SAFE_INTEGER);
  if (m.transferType !== undefined && m.transferType !== 'standard') throw bad(`transferType ${show(m.transferType)} is not 'standard'`);
  if (!Array.isArray(m.blocks)) throw bad('blocks is not an array');
  // Block i holds bytes [i·512 KiB, (i+1)·512 KiB) of a volumeSize-GiB volume.
  const end = (m.volumeSize as number) * BLOCKS_PER_GIB;
  let last = -1;
  for (const b of m.blocks as unknown[]) {
    if (!Array.isArray(b) || b.length !== 2 || !Number.isSafeInteger(b[0]) || (b[0] as number) <= last || (b[0] as number) >= end || !isBlockHash(b[1])) {
      throw bad(`blocks entry ${show(b)} is not [index, sha256] in ascending index order below ${end} (volumeSize ${m.volumeSize as number} GiB)`);
    }
    last = b[0] as number;
  }
  return m as unknown as SnapshotManifest;
}

/** The manifest without its block list (a new object; the manifest is left as it is). */
export function summaryOf(m: SnapshotManifest): SnapshotSummary {
  const { blocks: _blocks, ...rest } = m;
  return rest;
}

/**
 * A store's listing of whole manifests (listManifests, listManifestSummaries): the manifests `ids`
 * names, read `readers` at a time, each through `keep` as soon as it is read (a summary drops its
 * block list there, so a listing never holds every one); a corrupt one as skipCorrupt says, one
 * deleted since `ids` was listed left out; in the order of `ids`.
 */
export async function readListedManifests<T>(
  ids: string[], readers: number, read: (snapshotId: string) => Promise<SnapshotManifest | undefined>,
  onCorrupt: ((snapshotId: string, err: SnapshotError) => void) | undefined, keep: (m: SnapshotManifest) => T,
): Promise<T[]> {
  const got: (T | undefined)[] = new Array(ids.length);
  await inParallel(ids.map((id, i) => [id, i] as const), readers, async ([id, i]) => {
    const m = await skipCorrupt(id, () => read(id), onCorrupt);
    if (m) got[i] = keep(m);
  });
  return got.filter((m): m is T => m !== undefined);
}

/** A store's manifest read while listing: a corrupt one is reported to `onCorrupt` and left out, or thrown when there is none. */
export async function skipCorrupt(
  snapshotId: string, read: () => Promise<SnapshotManifest | undefined>, onCorrupt: ((snapshotId: string, err: SnapshotError) => void) | undefined,
): Promise<SnapshotManifest | undefined> {
  try {
    return await read();
  } catch (e) {
    if (!onCorrupt || !(e instanceof SnapshotError) || e.code !== 'SNAPSHOT_CORRUPT') throw e;
    onCorrupt(snapshotId, e);
    return undefined;
  }
}
