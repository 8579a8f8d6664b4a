import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createPublicKey, verify, publicEncrypt, constants, createHash, createHmac, createPrivateKey, generateKeyPairSync, privateDecrypt, randomBytes } from 'node:crypto';
import { openDomain } from '../../src/kms/hsm/domain.js';
import { HsmEngine } from '../../src/kms/hsm/engine.js';
import { KmsService } from '../../src/kms/kms-core.js';
import { openKms, admin, tempDir, awsError } from './helpers.js';

const u8 = (v: unknown) => v as Uint8Array;

describe('asymmetric and HMAC keys (checked with node:crypto)', () => {
  const t = tempDir();
  let kms: KmsService;
  const mk = async (KeySpec: string, KeyUsage: string) => ((await kms.call('CreateKey', { KeySpec, KeyUsage }, admin)).KeyMetadata as { KeyId: string; Arn: string });
  beforeAll(async () => { kms = await openKms(t.dir); });
  afterAll(async () => { await kms.close(); t.cleanup(); });

  const ecCases: [string, string, string][] = [
    ['ECC_NIST_P256', 'ECDSA_SHA_256', 'sha256'], ['ECC_NIST_P384', 'ECDSA_SHA_384', 'sha384'],
    ['ECC_NIST_P521', 'ECDSA_SHA_512', 'sha512'], ['ECC_SECG_P256K1', 'ECDSA_SHA_256', 'sha256'],
  ];
  for (const [spec, alg, hash] of ecCases) {
    it(`${spec}: Sign RAW and DIGEST verify with node:crypto; GetPublicKey is DER SPKI`, async () => {
      const k = await mk(spec, 'SIGN_VERIFY');
      const pk = await kms.call('GetPublicKey', { KeyId: k.KeyId }, admin);
      expect(pk).toMatchObject({ KeySpec: spec, KeyUsage: 'SIGN_VERIFY', SigningAlgorithms: [alg] });
      const pub = createPublicKey({ key: Buffer.from(u8(pk.PublicKey)), format: 'der', type: 'spki' });
      expect(pub.asymmetricKeyDetails?.namedCurve).toBeDefined();
      const msg = Buffer.from('message to sign');
      const s = await kms.call('Sign', { KeyId: k.KeyId, Message: msg, SigningAlgorithm: alg }, admin);
      expect(verify(hash, msg, { key: pub, dsaEncoding: 'der' }, u8(s.Signature))).toBe(true);
      const dg = createHash(hash).update(msg).digest();
      const s2 = await kms.call('Sign', { KeyId: k.KeyId, Message: dg, MessageType: 'DIGEST', SigningAlgorithm: alg }, admin);
      expect(verify(hash, msg, { key: pub, dsaEncoding: 'der' }, u8(s2.Signature))).toBe(true);
      expect((await kms.call('Verify', { KeyId: k.KeyId, Message: msg, Signature: s2.Signature, SigningAlgorithm: alg }, admin)).SignatureValid).toBe(true);
      expect((await kms.call('Verify', { KeyId: k.KeyId, Message: dg, MessageType: 'DIGEST', Signature: s.Signature, SigningAlgorithm: alg }, admin)).SignatureValid).toBe(true);
      expect(await awsError(kms.call('Verify', { KeyId: k.KeyId, Message: Buffer.from('other'), Signature: s.Signature, SigningAlgorithm: alg }, admin))).toBe('KMSInvalidSignatureException');
      expect(await awsError(kms.call('Sign', { KeyId: k.KeyId, Message: msg, SigningAlgorithm: 'RSASSA_PSS_SHA_256' }, admin))).toBe('InvalidKeyUsageException');
      expect(await awsError(kms.call('Encrypt', { KeyId: k.KeyId, Plaintext: msg }, admin))).toBe('InvalidKeyUsageException');
    }, 30_000);
  }

  it('RSA_2048 SIGN_VERIFY: PSS and PKCS1, RAW and DIGEST, verified by node:crypto', async () => {
    const k = await mk('RSA_2048', 'SIGN_VERIFY');
    const pub = createPublicKey({ key: Buffer.from(u8((await kms.call('GetPublicKey', { KeyId: k.KeyId }, admin)).PublicKey)), format: 'der', type: 'spki' });
    const msg = Buffer.from('rsa message');
    for (const h of ['256', '384', '512']) {
      const dg = createHash(`sha${h}`).update(msg).digest();
      for (const [alg, padding] of [[`RSASSA_PSS_SHA_${h}`, constants.RSA_PKCS1_PSS_PADDING], [`RSASSA_PKCS1_V1_5_SHA_${h}`, constants.RSA_PKCS1_PADDING]] as const) {
        for (const [m, MessageType] of [[msg, 'RAW'], [dg, 'DIGEST']] as const) {
          const s = await kms.call('Sign', { KeyId: k.KeyId, Message: m, MessageType, SigningAlgorithm: alg }, admin);
          expect(verify(`sha${h}`, msg, { key: pub, padding, saltLength: Number(h) / 8 }, u8(s.Signature)), `${alg} ${MessageType}`).toBe(true);
          expect((await kms.call('Verify', { KeyId: k.KeyId, Message: m, MessageType, Signature: s.Signature, SigningAlgorithm: alg }, admin)).SignatureValid).toBe(true);
        }
      }
    }
    expect(await awsError(kms.call('Sign', { KeyId: k.KeyId, Message: Buffer.alloc(31), MessageType: 'DIGEST', SigningAlgorithm: 'RSASSA_PSS_SHA_256' }, admin))).toBe('ValidationException');
  }, 60_000);

  it('RSA_3072 ENCRYPT_DECRYPT: OAEP both ways, limits, node:crypto encrypts to it', async () => {
    const k = await mk('RSA_3072', 'ENCRYPT_DECRYPT');
    const pk = await kms.call('GetPublicKey', { KeyId: k.KeyId }, admin);
    expect(pk.EncryptionAlgorithms).toEqual(['RSAES_OAEP_SHA_1', 'RSAES_OAEP_SHA_256']);
    const pub = createPublicKey({ key: Buffer.from(u8(pk.PublicKey)), format: 'der', type: 'spki' });
    const ct = publicEncrypt({ key: pub, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, Buffer.from('secret'));
    const d = await kms.call('Decrypt', { KeyId: k.KeyId, CiphertextBlob: ct, EncryptionAlgorithm: 'RSAES_OAEP_SHA_256' }, admin);
    expect(Buffer.from(u8(d.Plaintext)).toString()).toBe('secret');
    const e = await kms.call('Encrypt', { KeyId: k.KeyId, Plaintext: Buffer.from('x'), EncryptionAlgorithm: 'RSAES_OAEP_SHA_1' }, admin);
    expect(Buffer.from(u8((await kms.call('Decrypt', { KeyId: k.KeyId, CiphertextBlob: e.CiphertextBlob, EncryptionAlgorithm: 'RSAES_OAEP_SHA_1' }, admin)).Plaintext)).toString()).toBe('x');
    // RSA_3072 + OAEP SHA-256: 384 - 66 = 318 bytes max
    expect(await awsError(kms.call('Encrypt', { KeyId: k.KeyId, Plaintext: new Uint8Array(319), EncryptionAlgorithm: 'RSAES_OAEP_SHA_256' }, admin))).toBe('ValidationException');
    await kms.call('Encrypt', { KeyId: k.KeyId, Plaintext: new Uint8Array(318), EncryptionAlgorithm: 'RSAES_OAEP_SHA_256' }, admin);
    expect(await awsError(kms.call('Encrypt', { KeyId: k.KeyId, Plaintext: Buffer.from('x') }, admin))).toBe('InvalidKeyUsageException');
    expect(await awsError(kms.call('Decrypt', { CiphertextBlob: ct, EncryptionAlgorithm: 'RSAES_OAEP_SHA_256' }, admin))).toBe('ValidationException');
    expect(await awsError(kms.call('GenerateDataKey', { KeyId: k.KeyId, NumberOfBytes: 32 }, admin))).toBe('InvalidKeyUsageException');
  }, 60_000);

  it('ReEncrypt to an RSA key: a plaintext over the OAEP limit is ValidationException (as Encrypt), not KMSInternalException', async () => {
    // Review finding 4: ReEncrypt never checked the destination's limit; publicEncrypt threw inside the HSM (HTTP 500, retried by SDKs).
    const sym = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
    const rsa = await mk('RSA_2048', 'ENCRYPT_DECRYPT');
    const re = async (n: number, alg: string) => {
      const c = await kms.call('Encrypt', { KeyId: sym.KeyId, Plaintext: Buffer.alloc(n, 7) }, admin);
      return kms.call('ReEncrypt', { CiphertextBlob: c.CiphertextBlob, DestinationKeyId: rsa.KeyId, DestinationEncryptionAlgorithm: alg }, admin);
    };
    // RSA_2048: 256 - 66 = 190 bytes with SHA-256, 256 - 42 = 214 with SHA-1 (RFC 8017 §7.1.1; AWS lists the same)
    for (const [n, alg] of [[300, 'RSAES_OAEP_SHA_256'], [191, 'RSAES_OAEP_SHA_256'], [215, 'RSAES_OAEP_SHA_1']] as const) {
      const err = await re(n, alg).then(() => undefined, (e: unknown) => e as { awsName?: string; message?: string });
      expect(err?.awsName, err?.message).toBe('ValidationException');
      expect(err?.message).toMatch(/at most (190|214) bytes for RSA_2048/);
    }
    for (const [n, alg] of [[190, 'RSAES_OAEP_SHA_256'], [214, 'RSAES_OAEP_SHA_1']] as const) {
      const out = await re(n, alg);
      const d = await kms.call('Decrypt', { KeyId: rsa.KeyId, CiphertextBlob: out.CiphertextBlob, EncryptionAlgorithm: alg }, admin);
      expect(Buffer.from(u8(d.Plaintext)).equals(Buffer.alloc(n, 7))).toBe(true);
    }
  }, 60_000);

  it('GenerateDataKeyPair(+WithoutPlaintext): private key decrypts to a PKCS#8 matching the public key', async () => {
    const sym = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
    const p = await kms.call('GenerateDataKeyPair', { KeyId: sym.KeyId, KeyPairSpec: 'ECC_NIST_P256', EncryptionContext: { p: '1' } }, admin);
    const priv = createPrivateKey({ key: Buffer.from(u8(p.PrivateKeyPlaintext)), format: 'der', type: 'pkcs8' });
    expect(createPublicKey(priv).export({ format: 'der', type: 'spki' }).equals(Buffer.from(u8(p.PublicKey)))).toBe(true);
    const d = await kms.call('Decrypt', { CiphertextBlob: p.PrivateKeyCiphertextBlob, EncryptionContext: { p: '1' } }, admin);
    expect(Buffer.from(u8(d.Plaintext)).equals(Buffer.from(u8(p.PrivateKeyPlaintext)))).toBe(true);
    const w = await kms.call('GenerateDataKeyPairWithoutPlaintext', { KeyId: sym.KeyId, KeyPairSpec: 'RSA_2048' }, admin);
    expect(w.PrivateKeyPlaintext).toBeUndefined();
    expect(w.KeyPairSpec).toBe('RSA_2048');
    expect(await awsError(kms.call('GenerateDataKeyPair', { KeyId: sym.KeyId, KeyPairSpec: 'RSA_1024' }, admin))).toBe('ValidationException');
  }, 60_000);

  it('HMAC keys: GenerateMac matches node:crypto HMAC over the same key? (key never leaves) — VerifyMac accepts own, rejects other', async () => {
    for (const [spec, alg] of [['HMAC_224', 'HMAC_SHA_224'], ['HMAC_256', 'HMAC_SHA_256'], ['HMAC_384', 'HMAC_SHA_384'], ['HMAC_512', 'HMAC_SHA_512']]) {
      const k = await mk(spec!, 'GENERATE_VERIFY_MAC');
      const m = await kms.call('GenerateMac', { KeyId: k.KeyId, Message: Buffer.from('m'), MacAlgorithm: alg }, admin);
      expect(u8(m.Mac).length).toBe(createHmac(`sha${alg!.slice(9)}`, 'k').update('m').digest().length);
      expect((await kms.call('VerifyMac', { KeyId: k.KeyId, Message: Buffer.from('m'), Mac: m.Mac, MacAlgorithm: alg }, admin)).MacValid).toBe(true);
      expect(await awsError(kms.call('VerifyMac', { KeyId: k.KeyId, Message: Buffer.from('n'), Mac: m.Mac, MacAlgorithm: alg }, admin))).toBe('KMSInvalidMacException');
      expect(await awsError(kms.call('GetPublicKey', { KeyId: k.KeyId }, admin))).toBe('UnsupportedOperationException');
    }
    const k = await mk('HMAC_256', 'GENERATE_VERIFY_MAC');
    expect(await awsError(kms.call('GenerateMac', { KeyId: k.KeyId, Message: Buffer.from('m'), MacAlgorithm: 'HMAC_SHA_512' }, admin))).toBe('InvalidKeyUsageException');
    const sym = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
    expect(await awsError(kms.call('GenerateMac', { KeyId: sym.KeyId, Message: Buffer.from('m'), MacAlgorithm: 'HMAC_SHA_256' }, admin))).toBe('InvalidKeyUsageException');
    expect(await awsError(kms.call('GetPublicKey', { KeyId: sym.KeyId }, admin))).toBe('UnsupportedOperationException');
  }, 30_000);

  it('KeyUsage is required for ECC and HMAC keys (the default ENCRYPT_DECRYPT does not fit); RSA takes the default', async () => {
    const before = ((await kms.call('ListKeys', {}, admin)).Keys as unknown[]).length;
    for (const spec of ['ECC_NIST_P256', 'ECC_SECG_P256K1', 'HMAC_256', 'HMAC_512']) {
      for (const req of [{ KeySpec: spec }, { CustomerMasterKeySpec: spec }]) {
        const e = await kms.call('CreateKey', req, admin).then(() => undefined, (x: { awsName?: string; message: string }) => x);
        expect(e?.awsName, spec).toBe('ValidationException');
        expect(e?.message).toMatch(/KeyUsage/);
      }
    }
    expect(((await kms.call('ListKeys', {}, admin)).Keys as unknown[]).length).toBe(before);
    expect((await kms.call('CreateKey', { KeySpec: 'RSA_2048' }, admin)).KeyMetadata).toMatchObject({ KeySpec: 'RSA_2048', KeyUsage: 'ENCRYPT_DECRYPT' });
  }, 30_000);

  it('KEY_AGREEMENT: valid for the NIST curves but unsupported here (no DeriveSharedSecret); invalid for other specs', async () => {
    const before = ((await kms.call('ListKeys', {}, admin)).Keys as unknown[]).length;
    for (const KeySpec of ['ECC_NIST_P256', 'ECC_NIST_P384', 'ECC_NIST_P521']) {
      const e = await kms.call('CreateKey', { KeySpec, KeyUsage: 'KEY_AGREEMENT' }, admin).then(() => undefined, (x: { awsName?: string; message: string }) => x);
      expect(e?.awsName, KeySpec).toBe('UnsupportedOperationException');
      expect(e?.message).toMatch(/KEY_AGREEMENT/);
    }
    for (const KeySpec of ['ECC_SECG_P256K1', 'RSA_2048', 'HMAC_256', 'SYMMETRIC_DEFAULT']) {
      expect(await awsError(kms.call('CreateKey', { KeySpec, KeyUsage: 'KEY_AGREEMENT' }, admin)), KeySpec).toBe('ValidationException');
    }
    expect(((await kms.call('ListKeys', {}, admin)).Keys as unknown[]).length).toBe(before);
  });
});

describe('EMSA-PSS-VERIFY of a DIGEST signature (the HSM engine on a real domain)', () => {
  // Review finding 6: RFC 8017 §9.1.2 step 6, the leftmost 8·emLen − emBits bits of maskedDB must be zero.
  const mgf1 = (seed: Buffer, len: number): Buffer => {
    const out: Buffer[] = [];
    for (let c = 0; out.length * 32 < len; c++) out.push(createHash('sha256').update(seed).update(Buffer.of(c >>> 24, (c >>> 16) & 255, (c >>> 8) & 255, c & 255)).digest());
    return Buffer.concat(out).subarray(0, len);
  };
  /** EMSA-PSS-ENCODE (RFC 8017 §9.1.1), SHA-256, sLen = 32, emBits = 2047 (emLen = 256), the top bit of maskedDB forced to `top`. */
  const encode = (mHash: Buffer, top: 0 | 1): Buffer => {
    const salt = randomBytes(32);
    const h = createHash('sha256').update(Buffer.alloc(8)).update(mHash).update(salt).digest();
    const db = Buffer.alloc(256 - 32 - 1);
    db[db.length - 33] = 1;
    salt.copy(db, db.length - 32);
    const mask = mgf1(h, db.length);
    for (let i = 0; i < db.length; i++) db[i]! ^= mask[i]!;
    db[0] = top ? db[0]! | 0x80 : db[0]! & 0x7f;
    return Buffer.concat([db, h, Buffer.of(0xbc)]);
  };

  it('a signature whose EM has the top bit of maskedDB set is refused; the same EM with it clear verifies', () => {
    const t = tempDir();
    try {
      const engine = new HsmEngine(openDomain(t.dir));
      const arn = 'arn:aws:kms:us-east-1:111122223333:key/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0';
      const hbkId = randomBytes(32);
      const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048, publicExponent: 65537 });
      const n = Buffer.from(privateKey.export({ format: 'jwk' }).n!, 'base64url');
      const bind = { arn, hbkId, spec: 'RSA_2048', usage: 'SIGN_VERIFY' };
      const key = { ...bind, ekt: engine.wrap(bind, privateKey.export({ format: 'der', type: 'pkcs8' })) };
      const mHash = createHash('sha256').update('message').digest();
      const sigOf = (em: Buffer) => privateDecrypt({ key: privateKey, padding: constants.RSA_NO_PADDING }, em); // RSASP1: em^d mod n
      const verifyIt = (signature: Buffer) => () => engine.handle({ op: 'verify', key, algorithm: 'RSASSA_PSS_SHA_256', message: mHash, messageType: 'DIGEST', signature });

      expect(verifyIt(sigOf(encode(mHash, 0)))).not.toThrow();
      // EM with the top bit set must still be below n to be a signature at all: draw salts until it is.
      let em = encode(mHash, 1);
      for (let i = 0; i < 200 && Buffer.compare(em, n) >= 0; i++) em = encode(mHash, 1);
      expect(Buffer.compare(em, n)).toBeLessThan(0);
      expect(verifyIt(sigOf(em))).toThrow(expect.objectContaining({ awsName: 'KMSInvalidSignatureException' }));
    } finally {
      t.cleanup();
    }
  });
});
