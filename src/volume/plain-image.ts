import { promises as fsp } from 'node:fs';
import { VolumeError } from './errors.js';
import { LUKS2_DATA_OFFSET } from './luks2-json.js';

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
  if (buf.write(text, 'utf8') !== Buffer.byteLength(text)) throw new RangeError('plaintext image header over 4096 bytes');
  return buf;
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

/** True when the file starts with the plaintext-volume magic line. */
export async function isPlainImage(path: string): Promise<boolean> {
  const fh = await fsp.open(path, 'r');
  try {
    const b = Buffer.alloc(PLAIN_MAGIC.length);
    const { bytesRead } = await fh.read(b, 0, b.length, 0);
    return bytesRead === b.length && b.toString('latin1') === PLAIN_MAGIC;
  } finally {
    await fh.close();
  }
}

export async function readPlainImage(path: string): Promise<PlainImage> {
  const fh = await fsp.open(path, 'r');
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
  const bad = (why: string): VolumeError => new VolumeError('VOLUME_IO', `${path}: not an ebsd plaintext image (${why})`);
  if (head.subarray(0, PLAIN_MAGIC.length).toString('latin1') !== PLAIN_MAGIC) throw bad('no magic line');
  const nl = head.indexOf(0x0a, PLAIN_MAGIC.length);
  if (nl < 0) throw bad('no header line');
  let h: PlainImageHeader;
  try {
    h = JSON.parse(head.subarray(PLAIN_MAGIC.length, nl).toString('utf8')) as PlainImageHeader;
  } catch {
    throw bad('header is not JSON');
  }
  const size = Number(h.size);
  const dataOffset = Number(h.data_offset);
  if (h.format !== 'ebsd-plaintext' || h.version !== 1 || typeof h.volume_id !== 'string' || !Number.isSafeInteger(size) || dataOffset !== PLAIN_DATA_OFFSET) {
    throw bad('unknown header fields');
  }
  if (fileSize < dataOffset + size) throw bad(`${fileSize} bytes, data needs ${dataOffset + size}`);
  return { volumeId: h.volume_id, size, dataOffset };
}

/** ModifyVolume: the caller grows the file first; then one 4 KiB header rewrite, fdatasync. */
export async function resizePlainImage(path: string, size: number): Promise<void> {
  const cur = await readPlainImage(path);
  const fh = await fsp.open(path, 'r+');
  try {
    await fh.write(encode(cur.volumeId, size), 0, PLAIN_HEADER_SIZE, 0);
    await fh.datasync();
  } finally {
    await fh.close();
  }
}
