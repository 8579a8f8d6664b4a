import type { AttachLock } from './attach-lock.js';
import type { EncryptedBlockDevice } from './encrypted-block-device.js';
import type { PlainBlockDevice } from './plain-block-device.js';
import type { KeyCache } from './key-cache.js';

/** A live attachment on this host: the device the FUSE layer serves, its key cache and image lock. */
export interface Attachment {
  volumeId: string;
  device: EncryptedBlockDevice | PlainBlockDevice;
  keyCache: KeyCache | null;
  lock: AttachLock;
  keyArn: string;
  grantId: string;
}
