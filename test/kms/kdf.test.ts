import { describe, it, expect } from 'vitest';
import { randomBytes } from 'node:crypto';
import { hmac } from '@noble/hashes/hmac.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { deriveOneTimeKey, kdfInput } from '../../src/kms/hsm/kdf.js';

describe('SP 800-108 counter-mode KDF', () => {
  it('OpenSSL HMAC and @noble/hashes HMAC give the same one-time key', () => {
    for (let i = 0; i < 20; i++) {
      const hbk = randomBytes(32), id = randomBytes(32), nonce = randomBytes(32);
      expect(Buffer.from(deriveOneTimeKey(hbk, id, nonce)).toString('hex')).toBe(Buffer.from(hmac(sha256, hbk, kdfInput(id, nonce))).toString('hex'));
    }
  });
  it('input block is [1]_32 ‖ label ‖ 0x00 ‖ id ‖ nonce ‖ [256]_32', () => {
    const b = kdfInput(Buffer.alloc(32, 1), Buffer.alloc(32, 2));
    expect(b.readUInt32BE(0)).toBe(1);
    expect(b.readUInt32BE(b.length - 4)).toBe(256);
  });
});
