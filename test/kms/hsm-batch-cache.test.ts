/**
 * The HSM engine's per-batch cache of unwrapped key materials must not let a
 * request skip the token's authentication: the token (EKT) authenticates the
 * ARN, the hbkId, the key spec and usage (its AAD), so a cached unwrap may only
 * serve a request naming the same token and all four. Review finding 5.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { constants, createPublicKey, publicEncrypt, randomBytes } from 'node:crypto';
import { openDomain } from '../../src/kms/hsm/domain.js';
import { HsmEngine } from '../../src/kms/hsm/engine.js';
import type { KeyHandle } from '../../src/kms/hsm/protocol.js';
import { tempDir } from './helpers.js';
import type { TempDir } from '../helpers/temp-dir.js';

const ARN = 'arn:aws:kms:us-east-1:111122223333:key/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0';

describe('HSM batch material cache', () => {
  let t: TempDir;
  let engine: HsmEngine;
  let key: KeyHandle;
  beforeAll(() => {
    t = tempDir('ebsd-hsm-batch-cache-');
    engine = new HsmEngine(openDomain(t.dir));
    const hbkId = randomBytes(32);
    const { ekt } = engine.handle({ op: 'generateKey', arn: ARN, hbkId, spec: 'SYMMETRIC_DEFAULT', usage: 'ENCRYPT_DECRYPT' }) as { ekt: Uint8Array };
    key = { arn: ARN, hbkId, ekt, spec: 'SYMMETRIC_DEFAULT', usage: 'ENCRYPT_DECRYPT' };
  });
  afterAll(() => {
    engine.endBatch();
    t.cleanup();
  });

  const encrypt = (k: KeyHandle) => () => engine.handle({ op: 'encrypt', key: k, plaintext: Buffer.from('p'), ctx: new Uint8Array(4) });
  const corrupt = { awsName: 'KMSInternalException', code: 'KMS_KEY_MATERIAL_CORRUPT' };

  it('outside a batch, the same token under another hbkId fails authentication', () => {
    expect(encrypt(key)).not.toThrow();
    expect(encrypt({ ...key, hbkId: randomBytes(32) })).toThrow(expect.objectContaining(corrupt));
  });

  it('inside a batch, after the genuine request cached the material, the same token and ARN under another hbkId still fails', () => {
    engine.beginBatch();
    try {
      expect(encrypt(key)).not.toThrow();
      expect(encrypt({ ...key, hbkId: randomBytes(32) })).toThrow(expect.objectContaining(corrupt));
      expect(encrypt(key)).not.toThrow(); // the genuine handle still hits
    } finally {
      engine.endBatch();
    }
  });

  it('inside a batch, the same token under another key spec or usage still fails', () => {
    engine.beginBatch();
    try {
      expect(encrypt(key)).not.toThrow();
      expect(encrypt({ ...key, spec: 'HMAC_256' })).toThrow(expect.objectContaining(corrupt));
      expect(() => engine.handle({ op: 'generateMac', key: { ...key, spec: 'HMAC_256', usage: 'GENERATE_VERIFY_MAC' }, algorithm: 'HMAC_SHA_256', message: Buffer.from('m') }))
        .toThrow(expect.objectContaining(corrupt));
    } finally {
      engine.endBatch();
    }
  });

  it('inside a batch, the same token and spec under another usage still fails (an RSA key for ENCRYPT_DECRYPT used to sign)', () => {
    // RSA_2048 allows both usages, so only the usage in the cache key (and the token's AAD) tells
    // them apart: with the usage dropped from the cache key, the Sign below is served the material
    // the decryption cached and succeeds.
    const hbkId = randomBytes(32);
    const { ekt, publicKey } = engine.handle({ op: 'generateKey', arn: ARN, hbkId, spec: 'RSA_2048', usage: 'ENCRYPT_DECRYPT' }) as { ekt: Uint8Array; publicKey: Uint8Array };
    const rsa: KeyHandle = { arn: ARN, hbkId, ekt, spec: 'RSA_2048', usage: 'ENCRYPT_DECRYPT' };
    const blob = publicEncrypt({ key: createPublicKey({ key: Buffer.from(publicKey), format: 'der', type: 'spki' }), padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, Buffer.from('p'));
    const sign = (k: KeyHandle) => () => engine.handle({ op: 'sign', key: k, algorithm: 'RSASSA_PSS_SHA_256', message: Buffer.from('m'), messageType: 'RAW' });
    engine.beginBatch();
    try {
      const { plaintext } = engine.handle({ op: 'rsaDecrypt', key: rsa, algorithm: 'RSAES_OAEP_SHA_256', blob }) as { plaintext: Uint8Array };
      expect(Buffer.from(plaintext).toString()).toBe('p');
      expect(sign({ ...rsa, usage: 'SIGN_VERIFY' })).toThrow(expect.objectContaining(corrupt));
    } finally {
      engine.endBatch();
    }
    expect(sign({ ...rsa, usage: 'SIGN_VERIFY' })).toThrow(expect.objectContaining(corrupt)); // and outside a batch
  });
});
