import { closeSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { seededBytes } from '../../crypto/seeded.js';
import { tempDir, type TempDir } from '../../helpers/temp-dir.js';
import { buildLuks2Json, LUKS2_DATA_OFFSET } from '../../../src/volume/luks2-json.js';
import { createLuks2 } from '../../../src/volume/luks2-header.js';
/** Random payloads replay under EBSD_TEST_SEED (test/crypto/seeded.ts). */
const randomBytes = seededBytes('volume/helpers/image');

export function tmpDir(prefix = 'ebsd-vol-'): TempDir {
  return tempDir(prefix);
}

export const VOL = 'vol-0123456789abcdef0';

export function testToken(volumeId = VOL) {
  return {
    key_arn: 'arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab',
    ciphertext_blob: Buffer.from('not a real blob').toString('base64'),
    encryption_context: { 'aws:ebs:id': volumeId },
    volume_id: volumeId,
  };
}

/** A key with K1 != K2. */
export function volumeKey(): Buffer {
  return randomBytes(64);
}

export async function makeImage(path: string, size: number, key: Buffer, volumeId = VOL): Promise<void> {
  const json = buildLuks2Json({ size, volumeKey: key, token: testToken(volumeId) });
  await createLuks2(path, { json, size, dataOffset: LUKS2_DATA_OFFSET, label: volumeId });
}

/** A fresh temp dir holding `v.img`: a LUKS2 image of `size` bytes under a new random volume key. */
export async function freshImage(size: number): Promise<{ t: ReturnType<typeof tmpDir>; img: string; key: Buffer }> {
  const t = tmpDir();
  const img = join(t.dir, 'v.img');
  const key = volumeKey();
  await makeImage(img, size, key);
  return { t, img, key };
}

/** Data-segment bytes [pos, pos + len) of the image file `img` as they are on disk now (past its LUKS2 header area). */
export function dataSegmentBytes(img: string, pos: number, len: number): Buffer {
  const fd = openSync(img, 'r');
  try {
    const b = Buffer.alloc(len);
    readSync(fd, b, 0, len, LUKS2_DATA_OFFSET + pos);
    return b;
  } finally {
    closeSync(fd);
  }
}
