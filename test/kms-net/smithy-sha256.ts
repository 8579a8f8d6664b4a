import { createHash, createHmac, type Hash, type Hmac } from 'node:crypto';

/** node:crypto as @smithy/signature-v4's hash (its Checksum interface), for the reference signer. */
export class Sha256 {
  private h: Hash | Hmac;
  constructor(secret?: Uint8Array | string) { this.h = secret === undefined ? createHash('sha256') : createHmac('sha256', secret); }
  update(d: Uint8Array | string): void { this.h.update(d); }
  async digest(): Promise<Uint8Array> { return this.h.digest(); }
  reset(): void {}
}
