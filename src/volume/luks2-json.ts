import { pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import { Luks2Error, type Luks2ErrorCode } from './errors.js';
import { parseStrictJson } from '../util/strict-json.js';
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

/** LUKS2 on-disk format §3: object keys of keyslots, tokens, segments and digests are decimal ids. */
const ID = /^(0|[1-9][0-9]{0,8})$/;
const U64_MAX = (1n << 64n) - 1n;
/** Spec §3.1: 64-bit values are decimal strings; no sign, no leading zeros, at most 2^64-1. */
const isU64Str = (v: unknown): v is string => typeof v === 'string' && /^(0|[1-9][0-9]{0,19})$/.test(v) && BigInt(v) <= U64_MAX;
/** RFC 4648 §4 base64, padded, no whitespace (cryptsetup writes it so). */
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Digest hashes ebsd can verify (and cryptsetup's LUKS2 pbkdf2 digests use). */
export const DIGEST_HASHES: ReadonlySet<string> = new Set(['sha1', 'sha256', 'sha512']);
/** Digest iterations accepted: cryptsetup's floor (LUKS_MKD_ITERATIONS_MIN) up to what attach may spend (10^7 PBKDF2-SHA256 rounds are seconds of event loop). */
export const DIGEST_ITERATIONS_MIN = 1000;
export const DIGEST_ITERATIONS_MAX = 10_000_000;
/** cryptsetup's LUKS2_MAX_KEYSLOTS_SIZE; the keyslots area is also a whole number of 4 KiB blocks. */
const KEYSLOTS_SIZE_MAX = 128 * 1024 * 1024;
/** The deepest nesting a LUKS2 document needs is 4 (keyslots.0.kdf.salt); 16 leaves room for extensions, far from any stack limit. */
export const LUKS2_JSON_MAX_DEPTH = 16;

/** A refusal naming the field at fault. */
function bad(code: Luks2ErrorCode, field: string, why: string, cause?: unknown): Luks2Error {
  return new Luks2Error(code, `${field}: ${why}`, { field, ...(cause !== undefined ? { cause } : {}) });
}

function objectAt(parent: Record<string, unknown>, key: string, field: string): Record<string, unknown> {
  const v = parent[key];
  if (!isObj(v)) throw bad('LUKS2_BAD_JSON', field, 'missing or not an object');
  return v;
}

/** A u64 decimal string that must also be a safe integer (every offset and size ebsd computes with). */
function u64At(o: Record<string, unknown>, key: string, field: string): number {
  const v = o[key];
  if (!isU64Str(v)) throw bad('LUKS2_BAD_JSON', field, `${describe(v)} is not a decimal string of a 64-bit unsigned integer`);
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw bad('LUKS2_BAD_JSON', field, `${v} is past 2^53-1, beyond what ebsd addresses`);
  return n;
}

function base64At(o: Record<string, unknown>, key: string, field: string, maxBytes: number): Buffer {
  const v = o[key];
  if (typeof v !== 'string' || v.length === 0 || !BASE64.test(v)) throw bad('LUKS2_BAD_JSON', field, 'not a non-empty base64 string');
  const b = Buffer.from(v, 'base64');
  if (b.length > maxBytes) throw bad('LUKS2_BAD_JSON', field, `${b.length} bytes, at most ${maxBytes}`);
  return b;
}

function stringArrayAt(o: Record<string, unknown>, key: string, field: string): string[] {
  const v = o[key];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw bad('LUKS2_BAD_JSON', field, 'not an array of strings');
  return v as string[];
}

function describe(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 32 ? `${v.slice(0, 32)}...` : v);
  return v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v;
}

function checkIds(section: Record<string, unknown>, name: string): void {
  for (const id of Object.keys(section)) {
    if (!ID.test(id)) throw bad('LUKS2_BAD_JSON', `${name}.${id}`, 'object ids must be decimal numbers');
    if (!isObj(section[id])) throw bad('LUKS2_BAD_JSON', `${name}.${id}`, 'not an object');
  }
}

/**
 * Parse and check the JSON area of one copy (LUKS2 on-disk format §3:
 * mandatory objects; cryptsetup's hdr_validate_* rules; ebsd's layout).
 * Every refusal is a Luks2Error whose `field` names the member at fault.
 */
export function parseLuks2Json(area: Uint8Array, jsonSize: number): Luks2Volume {
  const nul = area.indexOf(0);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(area.subarray(0, nul < 0 ? area.length : nul));
  } catch (e) {
    throw bad('LUKS2_BAD_JSON', '(json area)', 'not UTF-8', e);
  }
  let j: unknown;
  try {
    j = parseStrictJson(text, { what: 'LUKS2 JSON area', maxDepth: LUKS2_JSON_MAX_DEPTH });
  } catch (e) {
    // Duplicate member names, nesting past the bound, syntax: JsonDocumentError says which and where.
    throw bad('LUKS2_BAD_JSON', '(json area)', (e as Error).message, e);
  }
  if (!isObj(j)) throw bad('LUKS2_BAD_JSON', '(json area)', 'not an object');
  const keyslots = objectAt(j, 'keyslots', 'keyslots');
  const tokens = objectAt(j, 'tokens', 'tokens');
  const segments = objectAt(j, 'segments', 'segments');
  const digests = objectAt(j, 'digests', 'digests');
  const config = objectAt(j, 'config', 'config');
  for (const [name, sec] of [['keyslots', keyslots], ['tokens', tokens], ['segments', segments], ['digests', digests]] as const) checkIds(sec, name);
  const json = j as unknown as Luks2Json;

  // config (spec §3.6; cryptsetup hdr_validate_config)
  if (u64At(config, 'json_size', 'config.json_size') !== jsonSize) {
    throw bad('LUKS2_BAD_JSON', 'config.json_size', `${String(config.json_size)} != the ${jsonSize}-byte JSON area`);
  }
  const keyslotsSize = u64At(config, 'keyslots_size', 'config.keyslots_size');
  if (keyslotsSize % SECTOR_SIZE !== 0 || keyslotsSize > KEYSLOTS_SIZE_MAX) {
    throw bad('LUKS2_BAD_JSON', 'config.keyslots_size', `${keyslotsSize} is not a multiple of ${SECTOR_SIZE} up to ${KEYSLOTS_SIZE_MAX}`);
  }
  if (config.flags !== undefined) stringArrayAt(config, 'flags', 'config.flags');
  if (config.requirements !== undefined) {
    // Spec §3.6: a mandatory requirement is a feature a reader must implement to use the device
    // (online-reencrypt, opal, ...); cryptsetup refuses to activate one it does not know. ebsd implements none.
    const req = objectAt(config, 'requirements', 'config.requirements');
    if (req.mandatory !== undefined) {
      const m = stringArrayAt(req, 'mandatory', 'config.requirements.mandatory');
      if (m.length > 0) throw bad('LUKS2_UNSUPPORTED', 'config.requirements.mandatory', `requires ${m.map((x) => describe(x)).join(', ')}, which ebsd does not implement`);
    }
  }

  // The binary headers (two copies of hdrSize) and then the keyslots area come before any data.
  const hdrSize = jsonSize + LUKS2_BIN_HDR_SIZE;
  const areasEnd = 2 * hdrSize + keyslotsSize;

  // keyslots (spec §3.2): ebsd writes none, cryptsetup luksAddKey adds recovery ones; their areas must lie in the keyslots area.
  for (const [id, ks] of Object.entries(keyslots) as [string, Record<string, unknown>][]) {
    const area = objectAt(ks, 'area', `keyslots.${id}.area`);
    const off = u64At(area, 'offset', `keyslots.${id}.area.offset`);
    const size = u64At(area, 'size', `keyslots.${id}.area.size`);
    if (off < 2 * hdrSize || off + size > areasEnd) {
      throw bad('LUKS2_BAD_JSON', `keyslots.${id}.area`, `[${off}, ${off + size}) lies outside the keyslots area [${2 * hdrSize}, ${areasEnd})`);
    }
  }

  // segments (spec §3.4)
  const segIds = Object.keys(segments);
  if (segIds.length !== 1) throw bad('LUKS2_UNSUPPORTED', 'segments', `expected one segment, found ${segIds.length}`);
  const sid = segIds[0]!;
  const seg = segments[sid] as Record<string, unknown>;
  const f = (k: string): string => `segments.${sid}.${k}`;
  if (seg.type !== 'crypt') throw bad('LUKS2_UNSUPPORTED', f('type'), `${describe(seg.type)} is not "crypt"`);
  if (seg.encryption !== CIPHER) throw bad('LUKS2_UNSUPPORTED', f('encryption'), `${describe(seg.encryption)} is not ${CIPHER}`);
  if (seg.sector_size !== SECTOR_SIZE) throw bad('LUKS2_UNSUPPORTED', f('sector_size'), `${describe(seg.sector_size)} != ${SECTOR_SIZE}`);
  if (seg.iv_tweak !== '0') throw bad('LUKS2_UNSUPPORTED', f('iv_tweak'), 'must be "0"');
  if (seg.size === 'dynamic') throw bad('LUKS2_UNSUPPORTED', f('size'), '"dynamic" segments are not an ebsd layout');
  const dataOffset = u64At(seg, 'offset', f('offset'));
  const size = u64At(seg, 'size', f('size'));
  if (dataOffset % SECTOR_SIZE !== 0) throw bad('LUKS2_UNSUPPORTED', f('offset'), `${dataOffset} is not a multiple of ${SECTOR_SIZE}`);
  if (size <= 0 || size % SECTOR_SIZE !== 0) throw bad('LUKS2_UNSUPPORTED', f('size'), `${size} is not a positive multiple of ${SECTOR_SIZE}`);
  if (dataOffset < areasEnd) {
    // Writing the first sectors would overwrite both headers (with the token's wrapped key) or the keyslots.
    throw bad('LUKS2_BAD_JSON', f('offset'), `${dataOffset} overlaps the binary headers and keyslots area, which end at ${areasEnd}`);
  }
  if (!Number.isSafeInteger(dataOffset + size)) throw bad('LUKS2_BAD_JSON', f('size'), `offset + size ${dataOffset} + ${size} is past 2^53-1`);

  // digests (spec §3.5)
  let digestId: string | undefined;
  for (const [id, d] of Object.entries(digests) as [string, Record<string, unknown>][]) {
    const g = (k: string): string => `digests.${id}.${k}`;
    const segs = stringArrayAt(d, 'segments', g('segments'));
    stringArrayAt(d, 'keyslots', g('keyslots'));
    if (!segs.includes(sid)) continue;
    if (d.type !== 'pbkdf2') throw bad('LUKS2_UNSUPPORTED', g('type'), `${describe(d.type)} is not "pbkdf2"`);
    if (typeof d.hash !== 'string' || !DIGEST_HASHES.has(d.hash)) throw bad('LUKS2_UNSUPPORTED', g('hash'), `${describe(d.hash)} is not one of ${[...DIGEST_HASHES].join(', ')}`);
    const it = d.iterations;
    if (typeof it !== 'number' || !Number.isInteger(it) || it < DIGEST_ITERATIONS_MIN || it > DIGEST_ITERATIONS_MAX) {
      throw bad('LUKS2_UNSUPPORTED', g('iterations'), `${typeof it === 'number' ? it : describe(it)} is not an integer in [${DIGEST_ITERATIONS_MIN}, ${DIGEST_ITERATIONS_MAX}]`);
    }
    base64At(d, 'salt', g('salt'), 256);
    if (base64At(d, 'digest', g('digest'), 64).length < 16) throw bad('LUKS2_BAD_JSON', g('digest'), 'shorter than 16 bytes');
    digestId = id;
  }
  if (digestId === undefined) throw bad('LUKS2_UNSUPPORTED', 'digests', `no pbkdf2 digest bound to segment ${sid}`);

  // tokens (spec §3.3): the ebsd-kms token
  let tokenId: string | undefined;
  for (const [id, t] of Object.entries(tokens) as [string, Record<string, unknown>][]) {
    if (typeof t.type !== 'string') throw bad('LUKS2_BAD_JSON', `tokens.${id}.type`, 'not a string');
    stringArrayAt(t, 'keyslots', `tokens.${id}.keyslots`);
    if (t.type === EBSD_TOKEN_TYPE) {
      if (tokenId !== undefined) throw bad('LUKS2_NO_TOKEN', `tokens.${id}`, `a second ${EBSD_TOKEN_TYPE} token (the first is ${tokenId})`);
      tokenId = id;
    }
  }
  if (tokenId === undefined) throw bad('LUKS2_NO_TOKEN', 'tokens', `no ${EBSD_TOKEN_TYPE} token`);
  const t = tokens[tokenId] as Record<string, unknown>;
  const tf = (k: string): string => `tokens.${tokenId}.${k}`;
  for (const k of ['key_arn', 'volume_id'] as const) {
    if (typeof t[k] !== 'string' || (t[k] as string).length === 0) throw bad('LUKS2_NO_TOKEN', tf(k), 'not a non-empty string');
  }
  try {
    base64At(t, 'ciphertext_blob', tf('ciphertext_blob'), LUKS2_JSON_SIZE);
  } catch (e) {
    throw bad('LUKS2_NO_TOKEN', tf('ciphertext_blob'), 'not a non-empty base64 string', e);
  }
  const ctx = t.encryption_context;
  if (!isObj(ctx)) throw bad('LUKS2_NO_TOKEN', tf('encryption_context'), 'not an object');
  for (const [k, v] of Object.entries(ctx)) {
    if (typeof v !== 'string') throw bad('LUKS2_NO_TOKEN', `${tf('encryption_context')}.${k}`, 'not a string');
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
