import { randomBytes } from 'node:crypto';
import { rngAesCtrDrbg256 } from '@noble/ciphers/aes.js';
/**
 * AES-256 CTR_DRBG (NIST SP 800-90A Rev.1 §10.2) seeded with 384 bits from
 * the OS, and given fresh OS entropy before every draw, so a compromise of
 * the DRBG state does not predict the next call's output.
 */
export class Drbg {
    drbg = rngAesCtrDrbg256(randomBytes(48));
    /** Reseed with 384 fresh bits, then draw `len` bytes. */
    bytes(len) {
        const fresh = randomBytes(48);
        try {
            this.drbg.addEntropy(fresh);
        }
        finally {
            fresh.fill(0);
        }
        const out = this.drbg.randomBytes(len);
        return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
    }
}
//# sourceMappingURL=drbg.js.map