import fc from 'fast-check';
import { createHash } from 'node:crypto';
import { buildLuks2Json, LUKS2_BIN_HDR_SIZE, type Luks2Json, type Luks2Volume } from '../../../src/volume/luks2-json.js';
import { Luks2Error } from '../../../src/volume/errors.js';
import { hostileValue, raw, str, type JNode } from '../harness/json-mutate.js';
import { duplicateMember, isStrictBase64 } from '../harness/oracles.js';

/**
 * What both LUKS2 targets share: valid documents to start from, the fields
 * worth aiming at, and the oracle an accepted header must pass
 * (LUKS2 on-disk format specification §2-§3, docs/format.md; the checks
 * cryptsetup makes: iterations, hashes, base64, requirements, u64 range).
 */

/** A few valid JSON areas, built once (each costs a PBKDF2 digest). */
export const BASES: readonly Luks2Json[] = [1, 2, 3].map((i) =>
  buildLuks2Json({
    size: i * 1024 * 1024,
    volumeKey: Buffer.alloc(64, i),
    token: {
      key_arn: `arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-12345678900${i}`,
      ciphertext_blob: Buffer.alloc(150 + i, i).toString('base64'),
      encryption_context: { 'aws:ebs:id': `vol-0123456789abcdef${i}` },
      volume_id: `vol-0123456789abcdef${i}`,
    },
  }),
);

export const LUKS_PATHS: string[][] = [
  ['segments', '0', 'offset'], ['segments', '0', 'size'], ['segments', '0', 'encryption'], ['segments', '0', 'sector_size'],
  ['segments', '0', 'iv_tweak'], ['segments', '0', 'type'], ['segments', '1'],
  ['digests', '0', 'iterations'], ['digests', '0', 'hash'], ['digests', '0', 'salt'], ['digests', '0', 'digest'], ['digests', '0', 'segments'],
  ['config', 'json_size'], ['config', 'keyslots_size'], ['config', 'requirements'], ['config', 'requirements', 'mandatory'], ['config', 'flags'],
  ['tokens', '0', 'ciphertext_blob'], ['tokens', '0', 'encryption_context'], ['tokens', '0', 'encryption_context', '__proto__'],
  ['tokens', '0', 'key_arn'], ['tokens', '0', 'type'], ['tokens', '0', 'volume_id'], ['tokens', '1'], ['keyslots', '0'],
];

const u64 = ['0', '4096', '16384', '32768', '65536', '16744448', '16773120', '16777216', '9007199254740992', '9007199254740993',
  '18446744073709551615', '18446744073709551616', '99999999999999999999', '1099511627776', '70368744177664'];

export const LUKS_VALUES: fc.Arbitrary<JNode> = fc.oneof(
  { arbitrary: fc.constantFrom(...u64).map(str), weight: 4 },
  { arbitrary: fc.constantFrom('1', '999', '1000', '10000000', '10000001', '2147483648', '1e15', '1.5', '-1000').map(raw), weight: 3 },
  { arbitrary: fc.constantFrom('sha1', 'sha256', 'sha512', 'md5', 'whirlpool', 'SHA256', 'sha3-256', '').map(str), weight: 2 },
  { arbitrary: fc.constantFrom('not base64!', 'AAAA', 'AAA=', 'AB==', 'A', '====', 'QUJD\nREVG', 'QUJD REVG', '').map(str), weight: 2 },
  { arbitrary: fc.constantFrom('{"mandatory":["online-reencrypt-v2"]}', '{"mandatory":[]}', '{"mandatory":"x"}', '{"optional":["x"]}', '["x"]').map(raw), weight: 2 },
  { arbitrary: fc.constantFrom('aes-xts-plain64', 'aes-cbc-essiv:sha256', 'cipher_null-ecb').map(str), weight: 1 },
  { arbitrary: hostileValue, weight: 3 },
);

const U64_MAX = 2n ** 64n - 1n;
const DIGEST_HASHES = new Set(['sha1', 'sha256', 'sha512']);

/**
 * Why an accepted JSON area is invalid, or undefined. `text` is the area up
 * to its first NUL, `jsonSize` its size (the header is jsonSize + 4096).
 */
export function luksInvalid(v: Luks2Volume, text: string, jsonSize: number): { invalid: string; why: string } | undefined {
  const dup = duplicateMember(text);
  if (dup !== undefined) return { invalid: 'LUKS2 JSON with duplicate member names refused', why: `"${dup}" occurs twice` };
  const j = JSON.parse(text) as Record<string, any>;
  const seg = Object.values(j.segments as Record<string, any>)[0];
  for (const [what, s] of [['segment offset', seg?.offset], ['segment size', seg?.size], ['config.json_size', j.config?.json_size], ['config.keyslots_size', j.config?.keyslots_size]] as const) {
    if (typeof s !== 'string' || !/^(0|[1-9][0-9]*)$/.test(s)) return { invalid: 'LUKS2 u64 members are decimal strings', why: `${what} is ${JSON.stringify(s)}` };
    if (BigInt(s) > U64_MAX) return { invalid: 'LUKS2 u64 members are at most 2^64-1', why: `${what} ${s}` };
    if (!Number.isSafeInteger(Number(s))) return { invalid: 'LUKS2 offsets and sizes are safe integers', why: `${what} ${s}` };
  }
  const hdrSize = jsonSize + LUKS2_BIN_HDR_SIZE;
  const keyslotsEnd = 2 * hdrSize + Number(j.config.keyslots_size);
  if (v.dataOffset < keyslotsEnd) {
    return { invalid: 'LUKS2 data segment does not overlap the headers or keyslots area', why: `offset ${v.dataOffset} < 2 x ${hdrSize} + keyslots_size ${j.config.keyslots_size}` };
  }
  const d = j.digests[v.digestId];
  if (!(d.iterations >= 1000 && d.iterations <= 10_000_000)) return { invalid: 'LUKS2 digest iterations in [1000, 10^7]', why: `iterations ${d.iterations}` };
  if (!DIGEST_HASHES.has(d.hash)) return { invalid: 'LUKS2 digest hash supported', why: `hash ${JSON.stringify(d.hash)}` };
  if (!isStrictBase64(d.salt) || d.salt === '') return { invalid: 'LUKS2 digest salt is base64', why: `salt ${JSON.stringify(d.salt).slice(0, 80)}` };
  if (!isStrictBase64(d.digest) || d.digest === '') return { invalid: 'LUKS2 digest is base64', why: `digest ${JSON.stringify(d.digest).slice(0, 80)}` };
  const t = j.tokens[v.tokenId];
  if (!isStrictBase64(t.ciphertext_blob) || t.ciphertext_blob === '') return { invalid: 'LUKS2 token ciphertext_blob is base64', why: `ciphertext_blob ${JSON.stringify(t.ciphertext_blob).slice(0, 80)}` };
  const req = j.config.requirements;
  if (req !== undefined && !(req?.mandatory === undefined || (Array.isArray(req.mandatory) && req.mandatory.length === 0))) {
    return { invalid: 'LUKS2 config.requirements.mandatory refused', why: `requirements ${JSON.stringify(req).slice(0, 80)}` };
  }
  return undefined;
}

export const isLuks2Error = (e: unknown): boolean => e instanceof Luks2Error && typeof e.code === 'string';

/** The JSON area's text as parseLuks2Json reads it: up to the first NUL, UTF-8. */
export function areaText(area: Uint8Array): string {
  const nul = area.indexOf(0);
  return Buffer.from(area.buffer, area.byteOffset, nul < 0 ? area.length : nul).toString('utf8');
}

/** SHA-x checksum of a copy (binary header with csum zeroed, then the JSON area), spec §2.1. */
export function checksum(copy: Buffer, alg: string): Buffer {
  const c = Buffer.from(copy);
  c.fill(0, 448, 512);
  return createHash(alg).update(c).digest();
}
