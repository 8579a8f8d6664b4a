import fc from 'fast-check';
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { readLuks2, updateLuks2 } from '../../../src/volume/luks2-header.js';
import { LUKS2_BIN_HDR_SIZE, LUKS2_DATA_OFFSET } from '../../../src/volume/luks2-json.js';
import { mutatedJson } from '../harness/json-mutate.js';
import { scratchRoot, type FuzzTarget, type Verdict } from '../harness/target.js';
import { areaText, BASES, checksum, isLuks2Error, LUKS_PATHS, LUKS_VALUES, luksInvalid } from './luks2-common.js';

/**
 * Whole LUKS2 images through readLuks2 (src/volume/luks2-header.ts): both
 * binary headers built here from fields (seqid up to 2^64-1, hdr_size,
 * hdr_offset, label/uuid/subsystem up to their full width without NUL,
 * checksum algorithm) with a correct checksum over a mutated JSON area, then
 * optionally bytes flipped, the file cut or extended; and raw bytes. An
 * accepted image must pass the JSON oracle, carry its seqid exactly, and
 * survive a metadata update (updateLuks2, the ModifyVolume path) with a
 * typed error at worst.
 */
interface Copy { seqid: bigint; hdrSize: number; hdrOffset: number | undefined; version: number; csumAlg: string; label: string; uuid: string; subsystem: string; json: string; magicOk: boolean }
interface Input {
  kind: 'built' | 'raw';
  primary?: Copy;
  secondary?: Copy | 'same' | 'none';
  flips: { at: number; xor: number }[];
  length: 'data' | 'headers' | 'short' | number;
  raw?: Uint8Array;
}

const SIZES = [0x4000, 0x4000, 0x4000, 0x8000, 0x10000, 0x1000, 0x5000];
const latin = (max: number) => fc.oneof(fc.string({ maxLength: 8 }), fc.string({ unit: fc.integer({ min: 1, max: 255 }).map((c) => String.fromCharCode(c)), minLength: max - 2, maxLength: max + 2 }));

const copy = fc.record({
  seqid: fc.oneof({ arbitrary: fc.bigInt({ min: 0n, max: 10n }), weight: 4 }, { arbitrary: fc.constantFrom(2n ** 53n - 1n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 63n, 2n ** 64n - 1n), weight: 1 }),
  hdrSize: fc.constantFrom(...SIZES),
  hdrOffset: fc.oneof({ arbitrary: fc.constant(undefined), weight: 6 }, { arbitrary: fc.constantFrom(0, 0x4000, 4096, 1), weight: 1 }),
  version: fc.constantFrom(2, 2, 2, 2, 1, 3),
  csumAlg: fc.constantFrom('sha256', 'sha256', 'sha256', 'sha1', 'sha512', 'md5', ''),
  label: latin(48),
  uuid: latin(40),
  subsystem: latin(48),
  json: mutatedJson(fc.constantFrom(...BASES), { paths: LUKS_PATHS, pathValue: LUKS_VALUES, maxMutations: 2 }),
  magicOk: fc.constantFrom(true, true, true, true, false),
});

/** A copy whose binary fields are right, so the JSON area is what gets tested. */
const clean = fc.record({
  seqid: fc.oneof({ arbitrary: fc.bigInt({ min: 1n, max: 10n }), weight: 6 }, { arbitrary: fc.constantFrom(2n ** 53n - 1n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 64n - 1n), weight: 1 }),
  hdrSize: fc.constant(0x4000),
  hdrOffset: fc.constant(undefined),
  version: fc.constant(2),
  csumAlg: fc.constant('sha256'),
  label: fc.oneof({ arbitrary: fc.constantFrom('', 'vol-0123456789abcdef0'), weight: 4 }, { arbitrary: latin(48), weight: 1 }),
  uuid: fc.oneof({ arbitrary: fc.constant('0b9f8a4e-1d1c-4c55-9d55-2f1f1a2b3c4d'), weight: 4 }, { arbitrary: latin(40), weight: 1 }),
  subsystem: fc.oneof({ arbitrary: fc.constant('ebsd'), weight: 4 }, { arbitrary: latin(48), weight: 1 }),
  json: fc.oneof({ arbitrary: fc.constantFrom(...BASES).map((b) => JSON.stringify(b)), weight: 1 }, { arbitrary: mutatedJson(fc.constantFrom(...BASES), { paths: LUKS_PATHS, pathValue: LUKS_VALUES, maxMutations: 2 }), weight: 3 }),
  magicOk: fc.constant(true),
});
const anyCopy = fc.oneof({ arbitrary: clean, weight: 3 }, { arbitrary: copy, weight: 1 });

const built: fc.Arbitrary<Input> = fc.record({
  kind: fc.constant('built' as const),
  primary: anyCopy,
  secondary: fc.oneof({ arbitrary: fc.constant('same' as const), weight: 4 }, { arbitrary: fc.constant('none' as const), weight: 1 }, { arbitrary: anyCopy, weight: 1 }),
  flips: fc.oneof({ arbitrary: fc.constant([] as { at: number; xor: number }[]), weight: 3 }, { arbitrary: fc.array(fc.record({ at: fc.nat({ max: 0x8000 }), xor: fc.integer({ min: 1, max: 255 }) }), { minLength: 1, maxLength: 3 }), weight: 1 }),
  length: fc.oneof({ arbitrary: fc.constant('data' as const), weight: 6 }, fc.constantFrom('headers' as const, 'short' as const), fc.nat({ max: 0x9000 })),
});

const rawImage: fc.Arbitrary<Input> = fc.record({
  kind: fc.constant('raw' as const),
  flips: fc.constant([] as { at: number; xor: number }[]),
  length: fc.constant('data' as const),
  raw: fc.uint8Array({ maxLength: 0x9000 }),
});

function encode(c: Copy, which: 'primary' | 'secondary', at: number): Buffer {
  const b = Buffer.alloc(Math.max(c.hdrSize, LUKS2_BIN_HDR_SIZE));
  Buffer.from(which === 'primary' ? 'LUKS\xba\xbe' : 'SKUL\xba\xbe', 'latin1').copy(b, 0);
  if (!c.magicOk) b[1] ^= 0x20;
  b.writeUInt16BE(c.version, 6);
  b.writeBigUInt64BE(BigInt(c.hdrSize), 8);
  b.writeBigUInt64BE(c.seqid, 16);
  b.write(c.label, 24, 48, 'latin1');
  b.write(c.csumAlg, 72, 32, 'latin1');
  b.write(c.uuid, 168, 40, 'latin1');
  b.write(c.subsystem, 208, 48, 'latin1');
  b.writeBigUInt64BE(BigInt(c.hdrOffset ?? at), 256);
  Buffer.from(c.json, 'utf8').copy(b, LUKS2_BIN_HDR_SIZE, 0, Math.max(0, b.length - LUKS2_BIN_HDR_SIZE - 1));
  const alg = ['sha1', 'sha256', 'sha512'].includes(c.csumAlg) ? c.csumAlg : 'sha256';
  checksum(b, alg).copy(b, 448);
  return b;
}

function sameJson(text: string, readAs: string): boolean {
  try {
    return JSON.stringify(JSON.parse(text)) === readAs;
  } catch {
    return false;
  }
}

function dataEnd(json: string): number {
  try {
    const seg = Object.values((JSON.parse(json) as { segments: Record<string, { offset: string; size: string }> }).segments)[0]!;
    const end = Number(seg.offset) + Number(seg.size);
    return Number.isSafeInteger(end) && end > 0 && end < 2 ** 40 ? end : LUKS2_DATA_OFFSET + 1024 * 1024;
  } catch {
    return LUKS2_DATA_OFFSET + 1024 * 1024;
  }
}

interface Ctx { dir: string; file: string }

const target: FuzzTarget<Input, Ctx> = {
  name: 'luks2-header',
  about: 'readLuks2(image) then updateLuks2 on built binary headers (valid checksums), flipped bytes, raw bytes',
  arbitrary: () => fc.oneof({ arbitrary: built, weight: 9 }, { arbitrary: rawImage, weight: 1 }),
  async open() {
    const dir = mkdtempSync(join(scratchRoot(), 'ebsd-fuzz-luks2-'));
    return { dir, file: join(dir, 'vol.img') };
  },
  async close(ctx) {
    rmSync(ctx.dir, { recursive: true, force: true });
  },
  async run(x, ctx): Promise<Verdict> {
    let head: Buffer;
    let length: number;
    if (x.kind === 'raw') {
      head = Buffer.from(x.raw!);
      length = head.length;
    } else {
      const p = x.primary!;
      const sec = x.secondary === 'same' ? { ...p } : x.secondary === 'none' ? undefined : x.secondary!;
      const a = encode(p, 'primary', 0);
      const b = sec ? encode(sec, 'secondary', p.hdrSize) : Buffer.alloc(0);
      head = Buffer.alloc(Math.max(a.length, p.hdrSize) + b.length);
      a.copy(head, 0);
      b.copy(head, p.hdrSize);
      for (const f of x.flips) if (f.at < head.length) head[f.at]! ^= f.xor;
      length = x.length === 'data' ? Math.max(head.length, dataEnd(p.json)) : x.length === 'headers' ? head.length : x.length === 'short' ? head.length - 1 : x.length;
    }
    rmSync(ctx.file, { force: true });
    const fd = openSync(ctx.file, 'w', 0o600);
    try {
      writeSync(fd, head, 0, Math.min(head.length, length));
      ftruncateSync(fd, length);
    } finally {
      closeSync(fd);
    }
    const img = await readLuks2(ctx.file, { repair: false });
    const jsonSize = img.hdrSize - LUKS2_BIN_HDR_SIZE;
    // The copy the reader took: the one whose JSON area parses to what it returned.
    const copies = x.kind === 'built' ? [x.primary!, x.secondary === 'same' ? x.primary! : x.secondary].filter((c): c is Copy => typeof c === 'object') : [];
    const readAs = JSON.stringify(img.volume.json);
    const texts = copies.map((c) => ({ c, text: areaText(Buffer.from(c.json, 'utf8').subarray(0, Math.max(0, c.hdrSize - LUKS2_BIN_HDR_SIZE - 1))) }));
    const matches = texts.filter(({ c, text }) => c.hdrSize === img.hdrSize && sameJson(text, readAs));
    const chosen = matches.find(({ c }) => BigInt(img.seqid) === c.seqid);
    if (matches.length > 0 && !chosen) {
      return { invalid: 'LUKS2 seqid read exactly (at most 2^53-1)', why: `header seqid ${matches.map(({ c }) => c.seqid).join(' / ')} read as ${img.seqid}` };
    }
    const bad = luksInvalid(img.volume, chosen ? chosen.text : readAs, jsonSize);
    if (bad) return bad;
    await updateLuks2(ctx.file, () => {}); // the metadata rewrite of ModifyVolume: typed error at worst
    return 'accepted';
  },
  isTyped: isLuks2Error,
};
export default target;
