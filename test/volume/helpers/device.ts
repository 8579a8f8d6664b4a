import { closeSync, openSync, readSync } from 'node:fs';
import { EncryptedBlockDevice } from '../../../src/volume/encrypted-block-device.js';
import { openBackingFile, type BackingFile } from '../../../src/volume/backing-file.js';
import { LUKS2_DATA_OFFSET, SECTOR_SIZE } from '../../../src/volume/luks2-json.js';
import { VOL } from './image.js';
import { testEngine } from './engine.js';

/** An EncryptedBlockDevice over the LUKS2 image `img` (on its own backing fd unless `backing` is given). */
export async function openEncrypted(img: string, key: Buffer, size: number, backing?: BackingFile): Promise<EncryptedBlockDevice> {
  return new EncryptedBlockDevice({
    volumeId: VOL, size, dataOffset: LUKS2_DATA_OFFSET,
    backing: backing ?? (await openBackingFile(img)), xts: (await testEngine()).createContext(key),
  });
}

/** Data sector `s` of the image as it is on disk (ciphertext, or zeros for a hole). */
export function diskSector(img: string, s: number): Buffer {
  const fd = openSync(img, 'r');
  try {
    const b = Buffer.alloc(SECTOR_SIZE);
    readSync(fd, b, 0, SECTOR_SIZE, LUKS2_DATA_OFFSET + s * SECTOR_SIZE);
    return b;
  } finally {
    closeSync(fd);
  }
}
