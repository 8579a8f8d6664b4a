import { SectorDevice } from './sector-device.js';

/**
 * Measurement-only plaintext passthrough (`--cipher none`): the same sector
 * path, locks and pwrite runs as EncryptedBlockDevice, minus the cipher, so
 * benchmarks isolate the cost of encryption. Never for real data.
 */
export class PlainBlockDevice extends SectorDevice {
  readonly unencrypted = true;
  protected readonly transforms = false;
  protected seal(): void {}
  protected unseal(): void {}
}
