import { promises as fsp, constants as fsc } from 'node:fs';
import { VolumeError } from './errors.js';
import { LUKS2_DATA_OFFSET, SECTOR_SIZE } from './luks2-json.js';
import { parseStrictJson } from '../util/strict-json.js';

/**
 * Image of a measurement-only plaintext volume (`--cipher none`, docs/format.md
 * "Measurement-only plaintext volumes"). Deliberately NOT LUKS2: a LUKS2
 * header with `cipher_null` would make blkid, `cryptsetup isLuks` and anyone
 * glancing at the image believe the data is encrypted. Instead the first 4 KiB
 * say in plain ASCII what the file is:
 *
 *   0     "EBSD-UNENCRYPTED-VOLUME\n"           magic line, 24 bytes
 *   24    one JSON line, then NUL padding to 4096
 *   16 MiB  data, plaintext, sector for sector what the user wrote
 *
 * The data offset is the LUKS2 one, so an encrypted and a plaintext volume
 * of the same size put every sector at the same file offset (benchmarks
 * compare like with like). No key, no KMS blob, no token.
 */
export const PLAIN_MAGIC = 'EBSD-UNENCRYPTED-VOLUME\n';
export const PLAIN_HEADER_SIZE = 4096;
export const PLAIN_DATA_OFFSET = LUKS2_DATA_OFFSET;

export interface PlainImageHeader {
  format: 'ebsd-plaintext';
  version: 1;
  volume_id: string;
  /** Data size in bytes, decimal string (as LUKS2 writes sizes). */
  size: string;
  data_offset: string;
  warning: string;
}

export interface PlainImage {
  volumeId: string;
  size: number;
  dataOffset: number;
}

const WARNING = 'measurement only: volume data is stored in PLAINTEXT, unencrypted';

function encode(volumeId: string, size: number): Buffer {
  const h: PlainImageHeader = { format: 'ebsd-plaintext', version: 1, volume_id: volumeId, size: String(size), data_offset: String(PLAIN_DATA_OFFSET), warning: WARNING };
  const text = `${PLAIN_MAGIC}${JSON.stringify(h)}\n`;
  const buf = Buffer.alloc(PLAIN_HEADER_SIZE);
  if (buf.write(text, 'utf8') !== Buffer.byteLength(text)) {
    throw new VolumeError('VOLUME_INVALID_PARAMETER', `plaintext image header of ${volumeId} is over ${PLAIN_HEADER_SIZE} bytes`, { awsName: 'InvalidParameterValue' });
  }
  return buf;
}

/** The 4 KiB header of a plaintext image of `volumeId`, `size` data bytes. */
export function encodePlainHeader(volumeId: string, size: number): Buffer {
  return encode(volumeId, size);
}

/** Create a new image (must not exist): header, sparse data area, fsync. */
export async function createPlainImage(path: string, o: { volumeId: string; size: number }): Promise<void> {
  const fh = await fsp.open(path, 'wx', 0o600);
  try {
    await fh.write(encode(o.volumeId, o.size), 0, PLAIN_HEADER_SIZE, 0);
    await fh.truncate(PLAIN_DATA_OFFSET + o.size);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** A refusal of an image file: EC2's IncorrectState, with the file and what was wrong named. */
function corrupt(path: string, why: string, cause?: unknown): VolumeError {
  return new VolumeError('VOLUME_IMAGE_CORRUPT', `${path}: not an ebsd plaintext image (${why})`, { awsName: 'IncorrectState', ...(cause !== undefined ? { cause } : {}) });
}

/**
 * Open an existing image without following a symlink (O_NOFOLLOW) and check
 * on the descriptor that it is a regular file, before anything is read or
 * written through it.
 */
async function openImage(path: string, mode: 'read' | 'write'): Promise<fsp.FileHandle> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(path, (mode === 'read' ? fsc.O_RDONLY : fsc.O_RDWR) | fsc.O_NOFOLLOW);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ELOOP') throw corrupt(path, 'the image path is a symlink', e);
    throw e;
  }
  try {
    if (!(await fh.stat()).isFile()) throw corrupt(path, 'not a regular file');
  } catch (e) {
    await fh.close();
    throw e;
  }
  return fh;
}

/** True when the file starts with the plaintext-volume magic line. */
export async function isPlainImage(path: string): Promise<boolean> {
  const fh = await openImage(path, 'read');
  try {
    const b = Buffer.alloc(PLAIN_MAGIC.length);
    const { bytesRead } = await fh.read(b, 0, b.length, 0);
    return bytesRead === b.length && b.toString('latin1') === PLAIN_MAGIC;
  } finally {
    await fh.close();
  }
}

export async function readPlainImage(path: string): Promise<PlainImage> {
  const fh = await openImage(path, 'read');
  let head: Buffer;
  let fileSize: number;
  try {
    fileSize = (await fh.stat()).size;
    head = Buffer.alloc(PLAIN_HEADER_SIZE);
    const { bytesRead } = await fh.read(head, 0, PLAIN_HEADER_SIZE, 0);
    head = head.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
  const p = parsePlainHeader(head, path);
  if (fileSize < p.dataOffset + p.size) throw corrupt(path, `${fileSize} bytes, data needs ${p.dataOffset + p.size}`);
  return p;
}

/** Parse and check a plaintext image header held in memory (a snapshot's header area); `what` names it in errors. */
export function parsePlainHeader(head: Buffer, what: string): PlainImage {
  const bad = (why: string, cause?: unknown): VolumeError => corrupt(what, why, cause);
  if (head.subarray(0, PLAIN_MAGIC.length).toString('latin1') !== PLAIN_MAGIC) throw bad('no magic line');
  const nl = head.indexOf(0x0a, PLAIN_MAGIC.length);
  if (nl < 0) throw bad('no header line');
  let parsed: unknown;
  try {
    const line = new TextDecoder('utf-8', { fatal: true }).decode(head.subarray(PLAIN_MAGIC.length, nl));
    parsed = parseStrictJson(line, { what: 'plaintext image header', maxDepth: 4 });
  } catch (e) {
    throw bad(`header line: ${(e as Error).message}`, e);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw bad('header line is not an object');
  const h = parsed as Record<string, unknown>;
  if (h.format !== 'ebsd-plaintext') throw bad('format is not "ebsd-plaintext"');
  if (h.version !== 1) throw bad('version is not 1');
  if (typeof h.volume_id !== 'string' || h.volume_id.length === 0) throw bad('volume_id is not a non-empty string');
  const size = typeof h.size === 'string' && /^[1-9][0-9]{0,15}$/.test(h.size) ? Number(h.size) : NaN;
  if (!Number.isSafeInteger(size) || size % SECTOR_SIZE !== 0) throw bad(`size ${JSON.stringify(h.size)} is not a positive multiple of ${SECTOR_SIZE} as a decimal string`);
  if (h.data_offset !== String(PLAIN_DATA_OFFSET)) throw bad(`data_offset ${JSON.stringify(h.data_offset)} is not "${PLAIN_DATA_OFFSET}"`);
  const dataOffset = PLAIN_DATA_OFFSET;
  if (!Number.isSafeInteger(dataOffset + size)) throw bad(`size ${size} is past what a file can hold`);
  return { volumeId: h.volume_id, size, dataOffset };
}

/** ModifyVolume: the caller grows the file first; then one 4 KiB header rewrite, fdatasync. */
export async function resizePlainImage(path: string, size: number): Promise<void> {
  const cur = await readPlainImage(path);
  const fh = await openImage(path, 'write');
  try {
    await fh.write(encode(cur.volumeId, size), 0, PLAIN_HEADER_SIZE, 0);
    await fh.datasync();
  } finally {
    await fh.close();
  }
}
