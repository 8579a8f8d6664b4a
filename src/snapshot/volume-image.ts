import { constants } from 'node:fs';
import { createHash } from 'node:crypto';
import { fileSize, openBackingFile, type BackingFile, type FdBackingFile } from '../volume/backing-file.js';
import { BackingIo } from '../volume/backing-io.js';
import { silentLogger } from '../util/logger.js';
import { checkDataSegmentFits, parseLuks2Header } from '../volume/luks2-header.js';
import { readPlainImage } from '../volume/plain-image.js';
import { LUKS2_DATA_OFFSET, type Luks2Volume } from '../volume/luks2-json.js';
import type { VolumeForSnapshot } from '../volume/volume-manager.js';
import type { SnapshotManifest } from './types.js';
import { SnapshotError } from './errors.js';

/** What a snapshot records of the image besides its data blocks. */
export interface ImageHeaderInfo {
  /** Bytes [0, dataOffset): the LUKS2 header (both copies, keyslot area) or the plaintext marker. */
  header: Buffer;
  dataOffset: number;
  /** Data bytes the header records. */
  size: number;
  wrappedKey?: NonNullable<SnapshotManifest['wrappedKey']>;
  dataEncryptionKeyId?: string;
}

/**
 * DataEncryptionKeyId (docs/architecture.md §12.5): a UUID-shaped digest
 * of the LUKS2 key digest (hash, iterations, salt, digest). That digest is
 * public (cryptsetup luksDump prints it), fixed when the data key is made,
 * and copied with the header to every volume and snapshot that shares the
 * data key, so the id is equal along one key lineage and differs after a
 * re-encryption under a new data key. It reveals nothing of the key beyond
 * the digest itself.
 */
export function dataEncryptionKeyId(v: Luks2Volume): string {
  const d = v.json.digests[v.digestId]!;
  const h = createHash('sha256').update(`ebsd-data-encryption-key-id\0${d.hash}\0${d.iterations}\0${d.salt}\0${d.digest}`).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

/**
 * Reads the header area and what the manifest records of it; a header that
 * does not name this volume is refused. One open and one read for ebsd's
 * LUKS2 layout (data at 16 MiB; a larger offset takes a second read of the
 * rest): the LUKS2 header is parsed from the area read,
 * so what is parsed and what is stored are the same bytes. `buffer(len)`
 * supplies the buffer to read into (SnapshotManager keeps a spare, so an
 * incremental does not allocate 16 MiB each time; docs/benchmarks.md,
 * "Snapshots").
 */
export async function readImageHeader(v: VolumeForSnapshot, buffer: (len: number) => Buffer = (n) => Buffer.allocUnsafeSlow(n)): Promise<ImageHeaderInfo> {
  if (!v.encrypted) {
    const p = await readPlainImage(v.imagePath);
    if (p.volumeId !== v.volumeId) throw new SnapshotError('SNAPSHOT_CORRUPT', `the image of ${v.volumeId} carries the header of ${p.volumeId}`);
    return { dataOffset: p.dataOffset, size: p.size, header: await readArea(v.imagePath, buffer(p.dataOffset)) };
  }
  const f = await openImageForRead(v.imagePath);
  try {
    const fileBytes = await fileSize(f, v.imagePath);
    // Not zeroed first: readFully fills every byte (zeros past the end of the file).
    let area = buffer(LUKS2_DATA_OFFSET);
    await readFully(f, area, 0);
    // Never repaired here: a snapshot never writes to the image.
    const h = parseLuks2Header(area.subarray(0, Math.min(fileBytes, area.length)), v.imagePath).volume;
    checkDataSegmentFits(h, fileBytes, v.imagePath);
    if (h.token.volume_id !== v.volumeId) {
      throw new SnapshotError('SNAPSHOT_CORRUPT', `the image of ${v.volumeId} carries the token of ${h.token.volume_id}`);
    }
    if (h.dataOffset > area.length) {
      const whole = Buffer.allocUnsafeSlow(h.dataOffset);
      area.copy(whole);
      await readFully(f, whole.subarray(area.length), area.length);
      area = whole;
    }
    return {
      // A header area shorter than the read (a data offset below 16 MiB) gets a buffer of its own size, so
      // nothing that keeps it (SnapshotManager's cache) keeps the whole read.
      header: area.length === h.dataOffset ? area : Buffer.from(area.subarray(0, h.dataOffset)),
      dataOffset: h.dataOffset,
      size: h.size,
      wrappedKey: { ciphertextBlob: h.token.ciphertext_blob, keyArn: h.token.key_arn, encryptionContext: { ...h.token.encryption_context } },
      dataEncryptionKeyId: dataEncryptionKeyId(h),
    };
  } finally {
    await f.close();
  }
}

async function readArea(path: string, into: Buffer): Promise<Buffer> {
  const f = await openImageForRead(path);
  try {
    await readFully(f, into, 0);
    return into;
  } finally {
    await f.close();
  }
}

function openImageForRead(path: string): Promise<FdBackingFile> {
  return openBackingFile(path, constants.O_RDONLY);
}

/** pread until `buf` is full; bytes past the end of the file read as zeros. */
export async function readFully(f: BackingFile, buf: Buffer, pos: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const n = await f.read(buf, done, buf.length - done, pos + done);
    if (n === 0) {
      buf.fill(0, done);
      return;
    }
    done += n;
  }
}

/**
 * A snapshot's own read-only handle on an image's data segment
 * (docs/architecture.md §12.1): the copy and its copy-on-write captures read
 * through it, so they go on whatever happens to the volume meanwhile. An open
 * fd keeps the file's bytes after DeleteVolume unlinks it, and a detach
 * closing the device's fd does not touch this one.
 */
export interface ImageDataReader {
  /** The on-disk bytes of the data segment [pos, pos + len) into `into`; past the end of the file, zeros. */
  read(pos: number, len: number, into: Buffer): Promise<void>;
  /** Waits for the reads under way, then closes the fd: never closed under a read, whose fd number could be reused meanwhile. */
  close(): Promise<void>;
}

/**
 * Opens an ImageDataReader. `direct`: O_DIRECT, as the device writing the
 * image opened it, so the reads and that device's writes meet on the disk,
 * never through a page-cache page one side does not see; buffered otherwise,
 * the mode every attachment of ebsd's opens its image in
 * (src/volume/image-format.ts), so buffered reads and writes share the page cache.
 */
export async function openImageDataReader(path: string, dataOffset: number, volumeId: string, o: { direct?: boolean } = {}): Promise<ImageDataReader> {
  const io = new BackingIo(await openBackingFile(path, constants.O_RDONLY, { direct: o.direct === true }), { volumeId, dataOffset, logger: silentLogger });
  const reads = new Set<Promise<void>>();
  let closing: Promise<void> | undefined;
  return {
    read(pos, len, into) {
      if (closing) return Promise.reject(new SnapshotError('SNAPSHOT_INCORRECT_STATE', `the snapshot's read handle on ${volumeId} is closed`));
      const r = io.readRaw(into, pos, len);
      const done: Promise<void> = r.then(() => {}, () => {}).finally(() => reads.delete(done));
      reads.add(done);
      return r;
    },
    close() {
      closing ??= (async () => {
        while (reads.size) await Promise.allSettled([...reads]);
        await io.close();
      })();
      return closing;
    },
  };
}
