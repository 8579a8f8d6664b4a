import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { promises as fsp, constants as fsc } from 'node:fs';
import { Luks2Error, type Luks2ErrorCode } from './errors.js';
import {
  LUKS2_BIN_HDR_SIZE,
  LUKS2_HDR_SIZE,
  parseLuks2Json,
  serializeLuks2Json,
  type Luks2Json,
  type Luks2Volume,
} from './luks2-json.js';

/**
 * LUKS2 binary header codec and the two-copy update protocol
 * (LUKS2 on-disk format specification §2, §3.1; cryptsetup lib/luks2/luks2.h).
 *
 * Layout of one 4096-byte binary header, all integers big-endian:
 *   0 magic[6]  6 version u16  8 hdr_size u64  16 seqid u64  24 label[48]
 *   72 checksum_alg[32]  104 salt[64]  168 uuid[40]  208 subsystem[48]
 *   256 hdr_offset u64  264 padding[184]  448 csum[64]  512 padding to 4096
 * The JSON area (hdr_size - 4096 bytes) follows each binary header. The
 * checksum covers the binary header with csum zeroed, then the JSON area.
 */
const MAGIC_PRIMARY = Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]); // "LUKS\xba\xbe"
const MAGIC_SECONDARY = Buffer.from([0x53, 0x4b, 0x55, 0x4c, 0xba, 0xbe]); // "SKUL\xba\xbe"
const OFF = { version: 6, hdrSize: 8, seqid: 16, label: 24, csumAlg: 72, salt: 104, uuid: 168, subsystem: 208, hdrOffset: 256, csum: 448 } as const;
const LEN = { label: 48, csumAlg: 32, salt: 64, uuid: 40, subsystem: 48, csum: 64 } as const;
/** Spec §2: valid hdr_size values, which are also where a secondary header may sit. */
const HDR_SIZES = [0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000];
const CSUM_ALGS = new Set(['sha1', 'sha256', 'sha512']);

export interface Luks2Image {
  uuid: string;
  label: string;
  subsystem: string;
  seqid: number;
  hdrSize: number;
  volume: Luks2Volume;
  /** Which copy was rewritten from the other while reading, if any. */
  repaired: 'primary' | 'secondary' | null;
}

interface CopyFields {
  seqid: number;
  hdrSize: number;
  label: string;
  uuid: string;
  subsystem: string;
}

type CopyResult =
  | { ok: true; fields: CopyFields; volume: Luks2Volume; jsonArea: Buffer }
  | { ok: false; code: Luks2ErrorCode; why: string; field?: string; intactSeqid?: bigint };

function cstr(b: Buffer, off: number, len: number): string {
  const s = b.subarray(off, off + len);
  const nul = s.indexOf(0);
  return s.subarray(0, nul < 0 ? len : nul).toString('latin1');
}

/** Spec §2: label, checksum_alg, uuid and subsystem are NUL-terminated byte strings in fixed fields. */
function putStr(b: Buffer, off: number, len: number, s: string, name: string): void {
  if (typeof s !== 'string' || /[^\u0001-\u00ff]/.test(s)) {
    throw new Luks2Error('LUKS2_BAD_FIELD', `LUKS2 ${name} must be a string of characters U+0001..U+00FF`, { field: name });
  }
  const v = Buffer.from(s, 'latin1');
  if (v.length >= len) throw new Luks2Error('LUKS2_BAD_FIELD', `LUKS2 ${name} is ${v.length} bytes; the field holds at most ${len - 1}`, { field: name });
  v.copy(b, off);
}

/** Encode one full copy (binary header + JSON area) with its checksum. */
export function encodeCopy(which: 'primary' | 'secondary', f: CopyFields, json: Luks2Json): Buffer {
  const out = Buffer.alloc(f.hdrSize);
  (which === 'primary' ? MAGIC_PRIMARY : MAGIC_SECONDARY).copy(out, 0);
  out.writeUInt16BE(2, OFF.version);
  out.writeBigUInt64BE(BigInt(f.hdrSize), OFF.hdrSize);
  out.writeBigUInt64BE(BigInt(f.seqid), OFF.seqid);
  putStr(out, OFF.label, LEN.label, f.label, 'label');
  putStr(out, OFF.csumAlg, LEN.csumAlg, 'sha256', 'checksum_alg');
  randomBytes(LEN.salt).copy(out, OFF.salt); // spec: salt unique for every header
  putStr(out, OFF.uuid, LEN.uuid, f.uuid, 'uuid');
  putStr(out, OFF.subsystem, LEN.subsystem, f.subsystem, 'subsystem');
  out.writeBigUInt64BE(BigInt(which === 'primary' ? 0 : f.hdrSize), OFF.hdrOffset);
  serializeLuks2Json(json, f.hdrSize - LUKS2_BIN_HDR_SIZE).copy(out, LUKS2_BIN_HDR_SIZE);
  createHash('sha256').update(out).digest().copy(out, OFF.csum); // csum field still zero here
  return out;
}

/** Decode and fully validate the copy that starts at `at` in `buf` (which holds the file head). */
function decodeCopy(buf: Buffer, at: number, which: 'primary' | 'secondary'): CopyResult {
  if (buf.length < at + LUKS2_BIN_HDR_SIZE) return { ok: false, code: 'LUKS2_TRUNCATED', why: `no ${which} header at ${at}` };
  const h = buf.subarray(at, at + LUKS2_BIN_HDR_SIZE);
  if (!h.subarray(0, 6).equals(which === 'primary' ? MAGIC_PRIMARY : MAGIC_SECONDARY)) {
    return { ok: false, code: 'LUKS2_BAD_MAGIC', why: `${which} header magic wrong` };
  }
  const version = h.readUInt16BE(OFF.version);
  const fail = (code: Luks2ErrorCode, field: string, why: string): CopyResult => ({ ok: false, code, field, why: `${which} ${field}: ${why}` });
  if (version !== 2) return fail('LUKS2_BAD_VERSION', 'version', `${version}, not 2`);
  const hdrSize = Number(h.readBigUInt64BE(OFF.hdrSize));
  if (!HDR_SIZES.includes(hdrSize)) return fail('LUKS2_BAD_CHECKSUM', 'hdr_size', `${hdrSize} invalid`);
  if (h.readBigUInt64BE(OFF.hdrOffset) !== BigInt(at)) return fail('LUKS2_BAD_CHECKSUM', 'hdr_offset', `not ${at}`);
  if (buf.length < at + hdrSize) return { ok: false, code: 'LUKS2_TRUNCATED', why: `${which} JSON area truncated` };
  const alg = cstr(h, OFF.csumAlg, LEN.csumAlg);
  if (!CSUM_ALGS.has(alg)) return fail('LUKS2_BAD_CHECKSUM', 'checksum_alg', `${JSON.stringify(alg)} unsupported`);
  const copy = Buffer.from(buf.subarray(at, at + hdrSize));
  const stored = Buffer.from(copy.subarray(OFF.csum, OFF.csum + LEN.csum));
  copy.fill(0, OFF.csum, OFF.csum + LEN.csum);
  const want = createHash(alg).update(copy).digest();
  if (!stored.subarray(0, want.length).equals(want)) return fail('LUKS2_BAD_CHECKSUM', 'csum', 'checksum mismatch');
  // seqid is a u64 on disk; ebsd counts it in a JS number, so past 2^53-1 increments would be lost.
  // From here on the copy is intact (magic, checksum, whole area present): a refusal is
  // "ebsd cannot use it", not "it is damaged", and carries the seqid so pickCopy never
  // repairs an older copy over it (cryptsetup would take it as the current metadata).
  const seqid = h.readBigUInt64BE(OFF.seqid);
  if (seqid > BigInt(Number.MAX_SAFE_INTEGER)) return { ...fail('LUKS2_BAD_JSON', 'seqid', `${seqid} is past 2^53-1`), intactSeqid: seqid } as CopyResult;
  const jsonArea = copy.subarray(LUKS2_BIN_HDR_SIZE);
  let volume: Luks2Volume;
  try {
    volume = parseLuks2Json(jsonArea, hdrSize - LUKS2_BIN_HDR_SIZE);
  } catch (e) {
    if (e instanceof Luks2Error) return { ok: false, code: e.code, why: `${which}: ${e.message}`, intactSeqid: seqid, ...(e.field !== undefined ? { field: e.field } : {}) };
    throw e;
  }
  return {
    ok: true,
    jsonArea,
    volume,
    fields: {
      seqid: Number(seqid),
      hdrSize,
      label: cstr(h, OFF.label, LEN.label),
      uuid: cstr(h, OFF.uuid, LEN.uuid),
      subsystem: cstr(h, OFF.subsystem, LEN.subsystem),
    },
  };
}

/** Most telling error when no copy is valid: structural problems before checksum ones. */
const SEVERITY: Luks2ErrorCode[] = ['LUKS2_BAD_JSON', 'LUKS2_NO_TOKEN', 'LUKS2_UNSUPPORTED', 'LUKS2_BAD_VERSION', 'LUKS2_BAD_CHECKSUM', 'LUKS2_TRUNCATED', 'LUKS2_BAD_MAGIC'];

/**
 * Open an existing image without following a symlink (O_NOFOLLOW) and check,
 * on the opened descriptor, that it is a regular file: an image path replaced
 * by a symlink to another volume's image, or by a device, is refused before
 * anything is read or written through it.
 */
async function openImage(path: string, mode: 'read' | 'write'): Promise<fsp.FileHandle> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(path, (mode === 'read' ? fsc.O_RDONLY : fsc.O_RDWR) | fsc.O_NOFOLLOW);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ELOOP') throw new Luks2Error('LUKS2_NOT_A_FILE', `${path}: is a symlink, not an image file`, { field: '(file)', cause: e });
    throw e;
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new Luks2Error('LUKS2_NOT_A_FILE', `${path}: not a regular file`, { field: '(file)' });
  } catch (e) {
    await fh.close();
    throw e;
  }
  return fh;
}

async function writeAt(fh: fsp.FileHandle, data: Buffer, pos: number): Promise<void> {
  let off = 0;
  while (off < data.length) {
    const { bytesWritten } = await fh.write(data, off, data.length - off, pos + off);
    off += bytesWritten;
  }
}

/** Validate both copies in `head` (the first bytes of an image) and pick the valid one with the higher seqid (spec §2.2). */
function pickCopy(head: Buffer, path: string): { best: Extract<CopyResult, { ok: true }>; which: 'primary' | 'secondary'; other: CopyResult } {
  if (head.length < LUKS2_BIN_HDR_SIZE) throw new Luks2Error('LUKS2_TRUNCATED', `${path}: ${head.length} bytes, shorter than a LUKS2 header`);

  const primary = decodeCopy(head, 0, 'primary');
  const offsets = primary.ok ? [primary.fields.hdrSize] : [];
  if (!primary.ok && head.subarray(0, 6).equals(MAGIC_PRIMARY) && head.length >= 16) {
    const hs = Number(head.readBigUInt64BE(OFF.hdrSize));
    if (HDR_SIZES.includes(hs)) offsets.push(hs);
  }
  for (const o of HDR_SIZES) if (!offsets.includes(o)) offsets.push(o);
  let secondary: CopyResult = { ok: false, code: 'LUKS2_TRUNCATED', why: 'no secondary header' };
  for (const o of offsets) {
    const r = decodeCopy(head, o, 'secondary');
    if (r.ok || (r.code !== 'LUKS2_BAD_MAGIC' && r.code !== 'LUKS2_TRUNCATED')) {
      secondary = r;
      break;
    }
    if (o === offsets[0]) secondary = r;
  }

  if (!primary.ok && !secondary.ok) {
    const codes = [primary.code, secondary.code];
    const code = SEVERITY.find((c) => codes.includes(c))!;
    const field = (primary.code === code ? primary.field : undefined) ?? (secondary.code === code ? secondary.field : undefined);
    throw new Luks2Error(code, `${path}: no valid LUKS2 header (${primary.why}; ${secondary.why})`, field !== undefined ? { field } : {});
  }
  // Precondition: at least one copy validated completely.
  let best: Extract<CopyResult, { ok: true }>;
  let which: 'primary' | 'secondary';
  if (primary.ok && (!secondary.ok || primary.fields.seqid >= secondary.fields.seqid)) {
    best = primary;
    which = 'primary';
  } else {
    best = secondary as Extract<CopyResult, { ok: true }>;
    which = 'secondary';
  }
  const other = which === 'primary' ? secondary : primary;
  // Only a damaged copy (bad magic, checksum, truncation) may lose to the other. An intact copy
  // ebsd cannot use (a mandatory requirement such as online-reencrypt-v2, more segments, another
  // cipher) at the same or a higher seqid is what cryptsetup reads as the current metadata (a
  // reencryption in progress, luksAddKey, a crash between cryptsetup's two writes): opening with
  // the older copy, and repairing over the newer one, would destroy it. Refuse, write nothing.
  if (!other.ok && other.intactSeqid !== undefined && other.intactSeqid >= BigInt(best.fields.seqid)) {
    const otherWhich = which === 'primary' ? 'secondary' : 'primary';
    const rel = other.intactSeqid > BigInt(best.fields.seqid) ? 'newer than' : 'as new as';
    throw new Luks2Error(
      other.code,
      `${path}: the ${otherWhich} header copy (seqid ${other.intactSeqid}) is intact and ${rel} the ${which} copy (seqid ${best.fields.seqid}), but ebsd cannot use it (${other.why}); refusing to open with the older metadata or to repair over it; nothing was written`,
      other.field !== undefined ? { field: other.field } : {},
    );
  }
  return { best, which, other };
}

/**
 * Read a LUKS2 header held in memory (a snapshot's header area, bytes
 * [0, dataOffset) of the image it was taken from), validated as readLuks2
 * validates a file; nothing is repaired. `what` names it in errors.
 */
export function parseLuks2Header(head: Buffer, what: string): Luks2Image {
  const { best } = pickCopy(head, what);
  return { ...best.fields, volume: best.volume, repaired: null };
}

/** An image file of `fileSize` bytes must hold the whole data segment its header records. */
export function checkDataSegmentFits(v: Luks2Volume, fileSize: number, path: string): void {
  if (fileSize < v.dataOffset + v.size) {
    throw new Luks2Error('LUKS2_TRUNCATED', `${path}: ${fileSize} bytes, data segment needs ${v.dataOffset + v.size}`, { field: `segments.${Object.keys(v.json.segments)[0]}.size` });
  }
}

export interface ReadOptions {
  /** Rewrite a bad or older copy from the good one (default true). */
  repair?: boolean;
}

/**
 * Read an image header: validate both copies, take the valid one with the
 * higher seqid (spec §2.2), and (unless `repair: false`) rewrite the other.
 * Throws Luks2Error without writing anything when no copy is usable, or when
 * the other copy is intact but unusable and at least as new (pickCopy).
 */
export async function readLuks2(path: string, opts: ReadOptions = {}): Promise<Luks2Image> {
  const fh = await openImage(path, 'read');
  let head: Buffer;
  let fileSize: number;
  try {
    fileSize = (await fh.stat()).size;
    const want = Math.min(fileSize, 2 * HDR_SIZES[HDR_SIZES.length - 1]!);
    head = Buffer.alloc(want);
    const { bytesRead } = await fh.read(head, 0, want, 0);
    head = head.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
  const { best, which, other } = pickCopy(head, path);
  const v = best.volume;
  checkDataSegmentFits(v, fileSize, path);

  const stale = !other.ok || other.fields.seqid !== best.fields.seqid;
  let repaired: Luks2Image['repaired'] = null;
  if (stale && opts.repair !== false) {
    const target = which === 'primary' ? 'secondary' : 'primary';
    const fh2 = await openImage(path, 'write');
    try {
      await writeAt(fh2, encodeCopy(target, best.fields, v.json), target === 'primary' ? 0 : best.fields.hdrSize);
      await fh2.datasync();
    } finally {
      await fh2.close();
    }
    repaired = target;
  }
  return { ...best.fields, volume: v, repaired };
}

export interface CreateOptions {
  json: Luks2Json;
  /** Segment size; the file becomes dataOffset + size bytes, sparse. */
  size: number;
  dataOffset: number;
  label?: string;
  uuid?: string;
}

/** Create a new image file (must not exist): both copies at seqid 1, sparse data area, fsync. */
export async function createLuks2(path: string, o: CreateOptions): Promise<void> {
  const fields: CopyFields = { seqid: 1, hdrSize: LUKS2_HDR_SIZE, label: o.label ?? '', uuid: o.uuid ?? randomUUID(), subsystem: 'ebsd' };
  // Encode before creating: a field that does not fit is refused with no file left behind.
  const primary = encodeCopy('primary', fields, o.json);
  const secondary = encodeCopy('secondary', fields, o.json);
  const fh = await fsp.open(path, 'wx', 0o600);
  try {
    await writeAt(fh, primary, 0);
    await writeAt(fh, secondary, LUKS2_HDR_SIZE);
    await fh.truncate(o.dataOffset + o.size);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Change the metadata (token, segment size): read (and repair), apply
 * `mutate` to a copy of the JSON, then write seqid+1 to the secondary copy,
 * fdatasync, then the primary, fdatasync. A crash after the first write
 * leaves a valid newer secondary; a crash during it leaves the old primary
 * valid; readers pick the higher valid seqid either way.
 */
export async function updateLuks2(path: string, mutate: (json: Luks2Json) => void): Promise<Luks2Image> {
  const cur = await readLuks2(path);
  const json = structuredClone(cur.volume.json);
  mutate(json);
  const fields: CopyFields = { seqid: cur.seqid + 1, hdrSize: cur.hdrSize, label: cur.label, uuid: cur.uuid, subsystem: cur.subsystem };
  const secondary = encodeCopy('secondary', fields, json);
  const primary = encodeCopy('primary', fields, json);
  const check = decodeCopy(Buffer.concat([primary, secondary]), 0, 'primary');
  if (!check.ok) throw new Luks2Error(check.code, `${path}: refusing to write invalid metadata: ${check.why}`, check.field !== undefined ? { field: check.field } : {});
  const fh = await openImage(path, 'write');
  try {
    await writeAt(fh, secondary, cur.hdrSize);
    await fh.datasync();
    await writeAt(fh, primary, 0);
    await fh.datasync();
  } finally {
    await fh.close();
  }
  return { ...fields, volume: check.volume, repaired: null };
}

export interface CreateFromOptions {
  /** Data segment size of the new image; the file becomes dataOffset + size bytes, sparse. */
  size: number;
  label: string;
  /** Changes to a copy of the JSON (the token, for a new volume). The segment size is set to `size`. */
  mutate: (json: Luks2Json) => void;
}

/**
 * Create a new image (must not exist) from another image's header area
 * `head` (its bytes [0, dataOffset), e.g. a snapshot's): the keyslots area and
 * the digest are kept, the JSON is changed by `mutate`, the label set and a
 * fresh uuid given (two images must not share one: blkid and udev tell
 * devices apart by it), both copies written at seqid + 1 and checked before
 * anything is written.
 */
export async function createLuks2From(path: string, head: Buffer, o: CreateFromOptions): Promise<Luks2Image> {
  const cur = parseLuks2Header(head, `${path} (source header)`);
  const json = structuredClone(cur.volume.json);
  o.mutate(json);
  for (const s of Object.values(json.segments)) s.size = String(o.size);
  const fields: CopyFields = { seqid: cur.seqid + 1, hdrSize: cur.hdrSize, label: o.label, uuid: randomUUID(), subsystem: cur.subsystem };
  const primary = encodeCopy('primary', fields, json);
  const secondary = encodeCopy('secondary', fields, json);
  const check = decodeCopy(Buffer.concat([primary, secondary]), 0, 'primary');
  if (!check.ok) throw new Luks2Error(check.code, `${path}: refusing to write invalid metadata: ${check.why}`, check.field !== undefined ? { field: check.field } : {});
  const dataOffset = check.volume.dataOffset;
  if (head.length !== dataOffset) throw new Luks2Error('LUKS2_TRUNCATED', `${path}: source header area is ${head.length} bytes, the data segment starts at ${dataOffset}`);
  const fh = await fsp.open(path, 'wx', 0o600);
  try {
    await writeAt(fh, head, 0);
    await writeAt(fh, secondary, cur.hdrSize);
    await writeAt(fh, primary, 0);
    await fh.truncate(dataOffset + o.size);
    await fh.sync();
  } finally {
    await fh.close();
  }
  return { ...fields, volume: check.volume, repaired: null };
}

/**
 * The header area [0, dataOffset) of a new image, in memory: both copies at
 * seqid 1 and an empty keyslots area, as createLuks2 writes them to a file.
 * A copied snapshot under a new data key stores this as its header.
 */
export function encodeLuks2HeaderArea(json: Luks2Json, o: { dataOffset: number; label: string }): Buffer {
  const fields: CopyFields = { seqid: 1, hdrSize: LUKS2_HDR_SIZE, label: o.label, uuid: randomUUID(), subsystem: 'ebsd' };
  const out = Buffer.alloc(o.dataOffset);
  encodeCopy('primary', fields, json).copy(out, 0);
  encodeCopy('secondary', fields, json).copy(out, LUKS2_HDR_SIZE);
  parseLuks2Header(out, '(new header area)'); // Postcondition: it reads back.
  return out;
}
