import { pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import { Luks2Error } from './errors.js';
import { wipe } from '../util/wipe.js';

/**
 * The LUKS2 JSON metadata area as ebsd writes and reads it
 * (LUKS2 on-disk format specification §3: keyslots, tokens, segments,
 * digests, config). Sizes and offsets are decimal strings, as the
 * specification requires for 64-bit values.
 */
export const LUKS2_HDR_SIZE = 16384; // binary header + JSON area, per copy
export const LUKS2_BIN_HDR_SIZE = 4096;
export const LUKS2_JSON_SIZE = LUKS2_HDR_SIZE - LUKS2_BIN_HDR_SIZE; // 12288
export const LUKS2_DATA_OFFSET = 16 * 1024 * 1024; // cryptsetup's default for LUKS2
/** Keyslots area: from the end of both header copies to the data segment, as `luksFormat` lays it out. */
export const LUKS2_KEYSLOTS_SIZE = LUKS2_DATA_OFFSET - 2 * LUKS2_HDR_SIZE; // 16744448
export const SECTOR_SIZE = 4096;
export const VOLUME_KEY_BYTES = 64;
export const EBSD_TOKEN_TYPE = 'ebsd-kms';
export const CIPHER = 'aes-xts-plain64';
/**
 * PBKDF2 iterations of the key digest. The digest only recognises a 512-bit
 * random key (it protects no passphrase), so a slow KDF buys nothing;
 * 1000 is cryptsetup's floor (LUKS_MKD_ITERATIONS_MIN).
 */
export const DIGEST_ITERATIONS = 1000;

export interface EbsdKmsToken {
  type: typeof EBSD_TOKEN_TYPE;
  keyslots: string[];
  key_arn: string;
  /** KMS ciphertext blob of the 64-byte volume key, base64. */
  ciphertext_blob: string;
  encryption_context: Record<string, string>;
  volume_id: string;
}

export interface Luks2Segment {
  type: 'crypt';
  offset: string;
  size: string;
  iv_tweak: string;
  encryption: string;
  sector_size: number;
  [k: string]: unknown;
}

export interface Luks2Digest {
  type: 'pbkdf2';
  keyslots: string[];
  segments: string[];
  hash: string;
  iterations: number;
  salt: string;
  digest: string;
  [k: string]: unknown;
}

export interface Luks2Json {
  keyslots: Record<string, unknown>;
  tokens: Record<string, Record<string, unknown>>;
  segments: Record<string, Luks2Segment>;
  digests: Record<string, Luks2Digest>;
  config: { json_size: string; keyslots_size: string; [k: string]: unknown };
}

/** Everything ebsd needs from a validated header, plus the raw JSON for rewrites. */
export interface Luks2Volume {
  json: Luks2Json;
  size: number;
  dataOffset: number;
  sectorSize: number;
  tokenId: string;
  token: EbsdKmsToken;
  digestId: string;
}

/** LUKS2 pbkdf2 digest (spec §3.5): PBKDF2(hash, key, salt, iterations) -> hash-length bytes. */
export function makeDigest(volumeKey: Uint8Array, iterations = DIGEST_ITERATIONS): Luks2Digest {
  const salt = randomBytes(32);
  const d = pbkdf2Sync(volumeKey, salt, iterations, 32, 'sha256');
  try {
    return {
      type: 'pbkdf2',
      keyslots: [],
      segments: ['0'],
      hash: 'sha256',
      iterations,
      salt: salt.toString('base64'),
      digest: d.toString('base64'),
    };
  } finally {
    wipe(d);
  }
}

/** Constant-time check of a candidate key against a pbkdf2 digest. */
export function digestMatches(digest: Luks2Digest, volumeKey: Uint8Array): boolean {
  const want = Buffer.from(digest.digest, 'base64');
  const hash = digest.hash;
  if (!['sha1', 'sha256', 'sha512'].includes(hash)) return false;
  const got = pbkdf2Sync(volumeKey, Buffer.from(digest.salt, 'base64'), digest.iterations, want.length, hash);
  try {
    return want.length > 0 && timingSafeEqual(got, want);
  } finally {
    wipe(got); // best effort: the GC may have copied it
  }
}

export interface BuildJsonOptions {
  size: number;
  volumeKey: Uint8Array;
  token: Omit<EbsdKmsToken, 'type' | 'keyslots'>;
  digestIterations?: number;
}

export function buildLuks2Json(o: BuildJsonOptions): Luks2Json {
  return {
    keyslots: {},
    tokens: { '0': { type: EBSD_TOKEN_TYPE, keyslots: [], ...o.token } },
    segments: {
      '0': {
        type: 'crypt',
        offset: String(LUKS2_DATA_OFFSET),
        size: String(o.size),
        iv_tweak: '0',
        encryption: CIPHER,
        sector_size: SECTOR_SIZE,
      },
    },
    digests: { '0': makeDigest(o.volumeKey, o.digestIterations) },
    config: { json_size: String(LUKS2_JSON_SIZE), keyslots_size: String(LUKS2_KEYSLOTS_SIZE) },
  };
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isU64Str = (v: unknown): v is string => typeof v === 'string' && /^(0|[1-9][0-9]{0,19})$/.test(v);

/** Parse and check the JSON area of one copy (spec §3: mandatory objects; ebsd layout). */
export function parseLuks2Json(area: Uint8Array, jsonSize: number): Luks2Volume {
  const nul = area.indexOf(0);
  const text = Buffer.from(area.buffer, area.byteOffset, nul < 0 ? area.length : nul).toString('utf8');
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch (e) {
    throw new Luks2Error('LUKS2_BAD_JSON', 'JSON area is not valid JSON', { cause: e });
  }
  if (!isObj(j)) throw new Luks2Error('LUKS2_BAD_JSON', 'JSON area is not an object');
  for (const k of ['keyslots', 'tokens', 'segments', 'digests', 'config']) {
    if (!isObj(j[k])) throw new Luks2Error('LUKS2_BAD_JSON', `JSON area lacks the "${k}" object`);
  }
  const json = j as unknown as Luks2Json;
  if (!isU64Str(json.config.json_size) || Number(json.config.json_size) !== jsonSize) {
    throw new Luks2Error('LUKS2_BAD_JSON', `config.json_size ${String(json.config.json_size)} != ${jsonSize}`);
  }
  const segIds = Object.keys(json.segments);
  if (segIds.length !== 1) throw new Luks2Error('LUKS2_UNSUPPORTED', `expected one segment, found ${segIds.length}`);
  const seg = json.segments[segIds[0]!]!;
  if (!isObj(seg) || seg.type !== 'crypt') throw new Luks2Error('LUKS2_UNSUPPORTED', 'segment is not of type crypt');
  if (seg.encryption !== CIPHER) throw new Luks2Error('LUKS2_UNSUPPORTED', `cipher ${String(seg.encryption)} is not ${CIPHER}`);
  if (seg.sector_size !== SECTOR_SIZE) throw new Luks2Error('LUKS2_UNSUPPORTED', `sector_size ${String(seg.sector_size)} != ${SECTOR_SIZE}`);
  if (seg.iv_tweak !== '0') throw new Luks2Error('LUKS2_UNSUPPORTED', 'iv_tweak must be "0"');
  if (!isU64Str(seg.offset) || !isU64Str(seg.size)) {
    throw new Luks2Error('LUKS2_UNSUPPORTED', 'segment offset and size must be fixed decimal strings');
  }
  const dataOffset = Number(seg.offset);
  const size = Number(seg.size);
  if (!Number.isSafeInteger(size) || size <= 0 || size % SECTOR_SIZE !== 0 || dataOffset % SECTOR_SIZE !== 0) {
    throw new Luks2Error('LUKS2_UNSUPPORTED', `segment size ${seg.size} / offset ${seg.offset} not sector aligned`);
  }
  let digestId: string | undefined;
  for (const [id, d] of Object.entries(json.digests)) {
    if (isObj(d) && d.type === 'pbkdf2' && Array.isArray(d.segments) && d.segments.includes(segIds[0]!)) {
      if (typeof d.salt !== 'string' || typeof d.digest !== 'string' || typeof d.hash !== 'string' || !Number.isInteger(d.iterations)) {
        throw new Luks2Error('LUKS2_BAD_JSON', `digest ${id} is malformed`);
      }
      digestId = id;
    }
  }
  if (digestId === undefined) throw new Luks2Error('LUKS2_UNSUPPORTED', 'no pbkdf2 digest bound to the data segment');
  let tokenId: string | undefined;
  for (const [id, t] of Object.entries(json.tokens)) {
    if (isObj(t) && t.type === EBSD_TOKEN_TYPE) tokenId = id;
  }
  if (tokenId === undefined) throw new Luks2Error('LUKS2_NO_TOKEN', `no ${EBSD_TOKEN_TYPE} token`);
  const t = json.tokens[tokenId]!;
  const ctx = t.encryption_context;
  if (
    typeof t.key_arn !== 'string' ||
    typeof t.ciphertext_blob !== 'string' ||
    typeof t.volume_id !== 'string' ||
    !isObj(ctx) ||
    !Object.values(ctx).every((v) => typeof v === 'string')
  ) {
    throw new Luks2Error('LUKS2_NO_TOKEN', `${EBSD_TOKEN_TYPE} token ${tokenId} is malformed`);
  }
  return { json, size, dataOffset, sectorSize: SECTOR_SIZE, tokenId, token: t as unknown as EbsdKmsToken, digestId };
}

/** Serialize to exactly `jsonSize` bytes, NUL padded (spec §3: the area is NUL-terminated). */
export function serializeLuks2Json(json: Luks2Json, jsonSize: number): Buffer {
  const text = Buffer.from(JSON.stringify(json), 'utf8');
  if (text.length >= jsonSize) throw new Luks2Error('LUKS2_BAD_JSON', `metadata needs ${text.length} bytes, area holds ${jsonSize - 1}`);
  const out = Buffer.alloc(jsonSize);
  text.copy(out);
  return out;
}

/** Precondition of any I/O with an unwrapped key: it matches the LUKS2 digest of the data segment. */
export function verifyVolumeKey(v: Luks2Volume, volumeKey: Uint8Array): void {
  if (volumeKey.length !== VOLUME_KEY_BYTES || !digestMatches(v.json.digests[v.digestId]!, volumeKey)) {
    throw new Luks2Error('LUKS2_DIGEST_MISMATCH', `volume key does not match LUKS2 digest ${v.digestId}`);
  }
}
