/**
 * What the HSM seals leaves no copy of itself behind (docs/architecture.md §6.5): every
 * AES-256-GCM it encrypts goes through gcmSeal (src/kms/hsm/gcm-seal.ts), in place on the
 * addon's libgcrypt, or node's Cipher without it. Observed in this process's memory
 * (/proc/self/mem, freed memory included; test/helpers/own-memory.ts) after the engine
 * returns and the test wipes what it holds: a backing key sealed into its token, and an
 * Encrypt's plaintext, its one-time key and the backing key it was derived from. Each is
 * searched whole and from its 17th / 33rd byte (malloc writes over the head of a chunk it
 * frees). Real HSM engine on a real domain; the test makes the token with engine.wrap from
 * bytes it wipes, and derives the one-time key as engine.ts does (kdf.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes, randomFillSync } from 'node:crypto';
import { openDomain, type Domain } from '../../src/kms/hsm/domain.js';
import { HsmEngine } from '../../src/kms/hsm/engine.js';
import { deriveOneTimeKey } from '../../src/kms/hsm/kdf.js';
import { parseBlob } from '../../src/kms/blob.js';
import type { HsmRequest, KeyHandle } from '../../src/kms/hsm/protocol.js';
import { secretBuffer } from '../../src/util/wipe.js';
import { countInOwnMemory, invert } from '../helpers/own-memory.js';
import { tempDir, type TempDir } from '../helpers/temp-dir.js';

const ARN = 'arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab';
let t: TempDir;
let domain: Domain;
let engine: HsmEngine;

beforeAll(() => {
  t = tempDir('ebsd-hsm-seal-');
  domain = openDomain(t.dir, undefined);
  engine = new HsmEngine(domain);
});
afterAll(() => {
  domain.domainKey.fill(0);
  t.cleanup();
});

/** Fresh random bytes off V8's heap (a small typed array there moves, src/util/wipe.ts). */
function secretBytes(n: number): Buffer {
  const b = secretBuffer(n);
  randomFillSync(b);
  return b;
}

/** How many copies of each inverted secret, whole and without its head. */
function found(...inverses: Buffer[]): number[] {
  return inverses.flatMap((inv) => [countInOwnMemory(inv), countInOwnMemory(inv.subarray(inv.length > 32 ? 32 : 16))]);
}

describe('sealing leaves no copy of what it sealed, nor of the key it sealed under', () => {
  it('a backing key sealed into its token (engine.wrap under the domain key)', () => {
    const hbk = secretBytes(32);
    const inverse = invert(hbk);
    const ekt = engine.wrap({ arn: ARN, hbkId: randomBytes(32), spec: 'SYMMETRIC_DEFAULT', usage: 'ENCRYPT_DECRYPT' }, hbk);
    hbk.fill(0);
    expect(ekt.length).toBe(1 + 12 + 32 + 16);
    expect(found(inverse)).toEqual([0, 0]);
  }, 60_000);

  it.each([48, 4096])('Encrypt (%i bytes): the plaintext, the one-time key and the backing key', (n) => {
    const hbk = secretBytes(32), hbkId = randomBytes(32);
    const ekt = engine.wrap({ arn: ARN, hbkId, spec: 'SYMMETRIC_DEFAULT', usage: 'ENCRYPT_DECRYPT' }, hbk);
    const key: KeyHandle = { arn: ARN, hbkId, ekt, spec: 'SYMMETRIC_DEFAULT', usage: 'ENCRYPT_DECRYPT' };
    const plain = secretBytes(n);
    const invPlain = invert(plain);
    const { blob } = engine.handle({ op: 'encrypt', key, plaintext: plain, ctx: new Uint8Array(4) } as HsmRequest) as { blob: Uint8Array };
    plain.fill(0); // the request's, which the worker wipes after its batch (serve-batch.ts)
    const otk = deriveOneTimeKey(hbk, hbkId, parseBlob(blob).nonce);
    const invOtk = invert(otk), invHbk = invert(hbk);
    otk.fill(0);
    hbk.fill(0);
    expect(found(invPlain, invOtk, invHbk)).toEqual([0, 0, 0, 0, 0, 0]);
  }, 60_000);
});
