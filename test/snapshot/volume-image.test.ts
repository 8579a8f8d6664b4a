import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { closeSync, openSync, readFileSync, symlinkSync, truncateSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { readImageHeader, dataEncryptionKeyId } from '../../src/snapshot/volume-image.js';
import { createLuks2, readLuks2 } from '../../src/volume/luks2-header.js';
import { buildLuks2Json, LUKS2_DATA_OFFSET, LUKS2_HDR_SIZE } from '../../src/volume/luks2-json.js';
import { createPlainImage } from '../../src/volume/plain-image.js';
import type { VolumeForSnapshot } from '../../src/volume/volume-manager.js';
import { freshImage, testToken, volumeKey, VOL } from '../volume/helpers/image.js';

/**
 * readImageHeader parses the LUKS2 header from the same bytes it returns as
 * the snapshot's header area (one read), refuses what readLuks2 refuses, and
 * reads into the buffer its caller supplies (SnapshotManager's spare).
 */
const SIZE = 1 << 20;
let t: Awaited<ReturnType<typeof freshImage>>['t'];
let img: string;
beforeEach(async () => {
  ({ t, img } = await freshImage(SIZE));
});
afterEach(() => t.cleanup());

const volume = (over: Partial<VolumeForSnapshot> = {}): VolumeForSnapshot => ({ volumeId: VOL, size: SIZE, state: 'available', encrypted: true, kmsKeyId: 'k', tags: [], imagePath: img, ...over });
const patch = (pos: number, bytes: Buffer): void => {
  const fd = openSync(img, 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, pos);
  } finally {
    closeSync(fd);
  }
};

describe('readImageHeader', () => {
  test('the header area as on disk, with what readLuks2 reads of it', async () => {
    const h = await readImageHeader(volume());
    const want = (await readLuks2(img, { repair: false })).volume;
    expect(h.header.equals(readFileSync(img).subarray(0, LUKS2_DATA_OFFSET))).toBe(true);
    expect(h.dataOffset).toBe(LUKS2_DATA_OFFSET);
    expect(h.size).toBe(SIZE);
    expect(h.wrappedKey).toEqual({ ciphertextBlob: want.token.ciphertext_blob, keyArn: want.token.key_arn, encryptionContext: { 'aws:ebs:id': VOL } });
    expect(h.dataEncryptionKeyId).toBe(dataEncryptionKeyId(want));
  });

  test('reads into the buffer it is given, every byte overwritten', async () => {
    const spare = Buffer.alloc(LUKS2_DATA_OFFSET, 0xa5);
    const h = await readImageHeader(volume(), (n) => {
      expect(n).toBe(LUKS2_DATA_OFFSET);
      return spare;
    });
    expect(h.header).toBe(spare);
    expect(spare.equals(readFileSync(img).subarray(0, LUKS2_DATA_OFFSET))).toBe(true);
  });

  test('a primary header gone bad is read from the secondary, as readLuks2 reads it, and nothing is repaired', async () => {
    patch(6000, Buffer.from('x'));
    const before = readFileSync(img).subarray(0, LUKS2_DATA_OFFSET);
    const h = await readImageHeader(volume());
    expect(h.dataOffset).toBe(LUKS2_DATA_OFFSET);
    expect(h.header.equals(before)).toBe(true);
    expect(readFileSync(img).subarray(0, LUKS2_HDR_SIZE).equals(before.subarray(0, LUKS2_HDR_SIZE))).toBe(true);
  });

  test('refuses an image carrying another volume token, naming both', async () => {
    await expect(readImageHeader(volume({ volumeId: 'vol-0fedcba9876543210' }))).rejects.toMatchObject({
      code: 'SNAPSHOT_CORRUPT',
      message: expect.stringContaining(`the image of vol-0fedcba9876543210 carries the token of ${VOL}`),
    });
  });

  test('refuses a truncated data segment and a truncated header, as readLuks2 does', async () => {
    truncateSync(img, LUKS2_DATA_OFFSET + SIZE - 4096);
    await expect(readImageHeader(volume())).rejects.toMatchObject({ code: 'LUKS2_TRUNCATED', message: expect.stringContaining('data segment needs') });
    truncateSync(img, 2000);
    await expect(readImageHeader(volume())).rejects.toMatchObject({ code: 'LUKS2_TRUNCATED' });
  });

  test('refuses a symlink in place of the image (EC2 IncorrectState, as the data path refuses it)', async () => {
    const link = join(t.dir, 'link.img');
    symlinkSync(img, link);
    await expect(readImageHeader(volume({ imagePath: link }))).rejects.toMatchObject({ code: 'VOLUME_INCORRECT_STATE', awsName: 'IncorrectState', message: expect.stringContaining('is a symbolic link') });
  });

  // cryptsetup's layouts are not all ebsd's: a header area shorter or longer than the 16 MiB first read.
  for (const [label, dataOffset, keyslots] of [['4 MiB', 4 << 20, (4 << 20) - 2 * LUKS2_HDR_SIZE], ['32 MiB', 32 << 20, (16 << 20) - 2 * LUKS2_HDR_SIZE]] as const) {
    test(`a data offset of ${label}: the header area is exactly [0, offset), in a buffer of its own`, async () => {
      const path = join(t.dir, `o${dataOffset}.img`);
      const json = buildLuks2Json({ size: SIZE, volumeKey: volumeKey(), token: testToken() });
      json.segments['0']!.offset = String(dataOffset);
      json.config.keyslots_size = String(keyslots);
      await createLuks2(path, { json, size: SIZE, dataOffset, label: VOL });
      const fd = openSync(path, 'r+');
      writeSync(fd, Buffer.alloc(4096, 0x5a), 0, 4096, dataOffset); // data right after the header area: not part of it
      closeSync(fd);
      const h = await readImageHeader(volume({ imagePath: path }));
      expect(h.dataOffset).toBe(dataOffset);
      expect(h.header.length).toBe(dataOffset);
      expect(h.header.buffer.byteLength, 'no view into a larger read').toBe(dataOffset);
      expect(h.header.equals(readFileSync(path).subarray(0, dataOffset))).toBe(true);
      expect(h.dataEncryptionKeyId).toBe(dataEncryptionKeyId((await readLuks2(path, { repair: false })).volume));
    });
  }

  test('a plaintext image: its header area, and another volume\'s refused', async () => {
    const path = join(t.dir, 'plain.img');
    await createPlainImage(path, { volumeId: VOL, size: SIZE });
    const h = await readImageHeader(volume({ imagePath: path, encrypted: false }));
    expect(h.header.equals(readFileSync(path).subarray(0, h.dataOffset))).toBe(true);
    expect(h.size).toBe(SIZE);
    expect(h.wrappedKey).toBeUndefined();
    await expect(readImageHeader(volume({ imagePath: path, encrypted: false, volumeId: 'vol-0fedcba9876543210' }))).rejects.toMatchObject({
      code: 'SNAPSHOT_CORRUPT',
      message: expect.stringContaining(`carries the header of ${VOL}`),
    });
  });
});
