/**
 * A key token or sealed secret that fails authentication leaves nothing in the
 * clear (docs/architecture.md §5.6): AES-GCM decrypts before it checks the tag,
 * so a token presented under another key ARN or id (its AAD), or a session
 * token whose clear part was altered, still decrypts to the real backing key
 * or secret; the HSM refuses it and must wipe what it decrypted. Observed in
 * this process's memory (/proc/self/mem, freed memory included;
 * test/helpers/own-memory.ts). Real HSM engine on a real domain; the test
 * makes the key token and the seal with engine.wrap and with the format
 * engine.ts documents, from bytes it wipes before it looks.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCipheriv, randomBytes, randomFillSync } from 'node:crypto';
import { openDomain, type Domain } from '../../src/kms/hsm/domain.js';
import { HsmEngine } from '../../src/kms/hsm/engine.js';
import type { HsmRequest, KeyHandle } from '../../src/kms/hsm/protocol.js';
import { countInOwnMemory, invert } from '../helpers/own-memory.js';
import { tempDir, type TempDir } from '../helpers/temp-dir.js';

const ARN = 'arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab';
const OTHER = 'arn:aws:kms:us-east-1:111122223333:key/9234abcd-12ab-34cd-56ef-1234567890ab';
let t: TempDir;
let domain: Domain;
let engine: HsmEngine;

beforeAll(() => {
  t = tempDir('ebsd-hsm-unwrap-');
  domain = openDomain(t.dir, undefined);
  engine = new HsmEngine(domain);
});
afterAll(() => {
  domain.domainKey.fill(0);
  t.cleanup();
});

/** Fresh random bytes in a buffer of their own, and their inverse for the search. */
function secretBytes(n: number): { bytes: Buffer; inverse: Buffer } {
  const bytes = Buffer.allocUnsafeSlow(n);
  randomFillSync(bytes);
  return { bytes, inverse: invert(bytes) };
}

describe('a token that fails authentication leaves its plaintext nowhere', () => {
  it('a key token presented under another key ARN: the backing key it decrypts to is wiped', () => {
    const { bytes, inverse } = secretBytes(32);
    const hbkId = randomBytes(32);
    const ekt = engine.wrap({ arn: ARN, hbkId, spec: 'SYMMETRIC_DEFAULT', usage: 'ENCRYPT_DECRYPT' }, bytes);
    bytes.fill(0);
    const key: KeyHandle = { arn: OTHER, hbkId, ekt, spec: 'SYMMETRIC_DEFAULT', usage: 'ENCRYPT_DECRYPT' };
    expect(() => engine.handle({ op: 'encrypt', key, plaintext: new Uint8Array(16), ctx: new Uint8Array(4) } as HsmRequest)).toThrow(/failed authentication/);
    expect(countInOwnMemory(inverse)).toBe(0);
  }, 60_000);

  it('a sealed secret presented with another context (a session token\'s altered clear part): the secret is wiped', () => {
    // engine.ts, newSecret: version 1 ‖ iv(12) ‖ AES-256-GCM(domainKey, secret, AAD = "ebsd/secret/v1\0" ‖ kind ‖ \0 ‖ id ‖ \0 ‖ context) ‖ tag(16).
    const { bytes, inverse } = secretBytes(40);
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', domain.domainKey, iv);
    c.setAAD(Buffer.concat([Buffer.from('ebsd/secret/v1\0session\0ASIAEXAMPLE\0'), Buffer.from('{"exp":1}')]));
    const sealed = Buffer.concat([Buffer.of(1), iv, c.update(bytes), c.final(), c.getAuthTag()]);
    bytes.fill(0);
    const req = { op: 'sigv4Key', kind: 'session', id: 'ASIAEXAMPLE', context: Buffer.from('{"exp":2}'), sealed, date: '20261201', region: 'us-east-1', service: 'kms' };
    expect(() => engine.handle(req as HsmRequest)).toThrow(/failed authentication/);
    expect(countInOwnMemory(inverse)).toBe(0);
  }, 60_000);
});

describe('a new access-key or session secret', () => {
  it('leaves the random bytes it is the base64 of nowhere: only its text leaves the HSM (a string, not wipeable)', () => {
    const made = engine.handle({ op: 'newSecret', kind: 'access-key', id: 'AKIAEXAMPLE', context: new Uint8Array(0) } as HsmRequest) as { secret: string; sealed: Uint8Array };
    expect(made.secret).toMatch(/^[A-Za-z0-9+/]{40}$/);
    const raw = Buffer.from(made.secret, 'base64');
    const inverse = invert(raw);
    raw.fill(0);
    expect(countInOwnMemory(inverse)).toBe(0);
  }, 60_000);
});
