/** Sign, Verify, GetPublicKey, GenerateDataKeyPair(+WithoutPlaintext), GenerateMac, VerifyMac. */
import type { Dispatcher } from '../dispatcher.js';
import { InvalidKeyUsageException, KMSInvalidMacException, UnsupportedOperationException, ValidationException } from '../errors.js';
import { canonicalContext } from '../blob.js';
import { DATA_KEY_PAIR_SPECS, UNSUPPORTED_DATA_KEY_PAIR_SPECS, encryptionAlgorithms, macAlgorithms, signingAlgorithms, unsupportedSpecReason } from '../key-spec.js';
import { optContext, optEnum, optStrList, reqBytes, reqEnum, reqStr } from '../validate.js';
import { currentMaterial, requireUsage } from './crypto.js';

const SIGN_ALGS = [
  'RSASSA_PSS_SHA_256', 'RSASSA_PSS_SHA_384', 'RSASSA_PSS_SHA_512', 'RSASSA_PKCS1_V1_5_SHA_256', 'RSASSA_PKCS1_V1_5_SHA_384',
  'RSASSA_PKCS1_V1_5_SHA_512', 'ECDSA_SHA_256', 'ECDSA_SHA_384', 'ECDSA_SHA_512', 'SM2DSA',
  // API values for key specs ebsd cannot create (key-spec.ts, UNSUPPORTED_KEY_SPECS): no key here
  // allows them, so they are InvalidKeyUsageException ("incompatible with key spec"), as SM2DSA is.
  'ED25519_SHA_512', 'ED25519_PH_SHA_512', 'ML_DSA_SHAKE_256',
] as const;
const MAC_ALGS = ['HMAC_SHA_224', 'HMAC_SHA_256', 'HMAC_SHA_384', 'HMAC_SHA_512'] as const;

export function registerAsymmetricOperations(d: Dispatcher): void {
  for (const op of ['Sign', 'Verify'] as const) {
    d.registerOperation(op, async (ctx, call) => {
      const r = call.request;
      const { key, requestAlias } = await ctx.resolveKey(reqStr(r, 'KeyId'));
      const message = reqBytes(r, 'Message', 1, 4096);
      const messageType = optEnum(r, 'MessageType', ['RAW', 'DIGEST', 'EXTERNAL_MU'] as const) ?? 'RAW';
      const alg = reqEnum(r, 'SigningAlgorithm', SIGN_ALGS);
      const signature = op === 'Verify' ? reqBytes(r, 'Signature', 1, 6144) : undefined;
      await call.authorize({ key, ...(requestAlias ? { requestAlias } : {}), grantTokens: optStrList(r, 'GrantTokens', 10) ?? [], messageType });
      requireUsage(key, 'SIGN_VERIFY');
      if (!signingAlgorithms(key.keySpec, key.keyUsage)!.includes(alg)) throw new InvalidKeyUsageException(`Algorithm ${alg} is incompatible with key spec ${key.keySpec}.`);
      if (messageType === 'EXTERNAL_MU') throw new ValidationException('MessageType EXTERNAL_MU applies to ML-DSA keys only');
      if (op === 'Sign') {
        call.stopIfDryRun();
        const out = await ctx.hsm.call({ op: 'sign', key: ctx.handle(key), algorithm: alg, message, messageType });
        return { KeyId: key.arn, Signature: out.signature, SigningAlgorithm: alg };
      }
      // A dry run verifies too (it has no effect): a wrong signature fails as the real call would.
      await ctx.hsm.call({ op: 'verify', key: ctx.handle(key), algorithm: alg, message, messageType, signature: signature! });
      call.stopIfDryRun();
      return { KeyId: key.arn, SignatureValid: true, SigningAlgorithm: alg };
    });
  }

  d.registerOperation('GetPublicKey', async (ctx, call) => {
    const { key, requestAlias } = await ctx.resolveKey(reqStr(call.request, 'KeyId'));
    await call.authorize({ key, ...(requestAlias ? { requestAlias } : {}), grantTokens: optStrList(call.request, 'GrantTokens', 10) ?? [] });
    if (!key.publicKey) throw new UnsupportedOperationException(`${key.arn} is not an asymmetric KMS key; it has no public key.`);
    const enc = encryptionAlgorithms(key.keySpec, key.keyUsage);
    const sig = signingAlgorithms(key.keySpec, key.keyUsage);
    return {
      KeyId: key.arn, PublicKey: new Uint8Array(Buffer.from(key.publicKey, 'base64')), CustomerMasterKeySpec: key.keySpec, KeySpec: key.keySpec,
      KeyUsage: key.keyUsage, ...(enc ? { EncryptionAlgorithms: enc } : {}), ...(sig ? { SigningAlgorithms: sig } : {}),
    };
  });

  for (const op of ['GenerateDataKeyPair', 'GenerateDataKeyPairWithoutPlaintext'] as const) {
    d.registerOperation(op, async (ctx, call) => {
      const r = call.request;
      const { key, requestAlias } = await ctx.resolveKey(reqStr(r, 'KeyId'));
      const pairSpec = reqEnum(r, 'KeyPairSpec', [...DATA_KEY_PAIR_SPECS, ...UNSUPPORTED_DATA_KEY_PAIR_SPECS]);
      if (UNSUPPORTED_DATA_KEY_PAIR_SPECS.includes(pairSpec)) {
        throw new UnsupportedOperationException(`KeyPairSpec ${pairSpec} is not supported by this KMS: ${unsupportedSpecReason(pairSpec)}`, { code: 'KMS_KEY_SPEC_UNSUPPORTED' });
      }
      const ec = optContext(r);
      // kms:EncryptionAlgorithm: the pair's private key is encrypted under the symmetric key (docs/architecture.md §5.4).
      await call.authorize({ key, ...(requestAlias ? { requestAlias } : {}), ...(ec ? { encryptionContext: ec } : {}), grantTokens: optStrList(r, 'GrantTokens', 10) ?? [], encryptionAlgorithm: 'SYMMETRIC_DEFAULT' });
      if (key.keySpec !== 'SYMMETRIC_DEFAULT') throw new InvalidKeyUsageException(`${key.arn} is not a symmetric encryption KMS key.`);
      call.stopIfDryRun();
      const want = op === 'GenerateDataKeyPair';
      const out = await ctx.hsm.call({ op: 'generateDataKeyPair', key: ctx.handle(key), ctx: canonicalContext(ec), pairSpec, wantPlaintext: want });
      return {
        PrivateKeyCiphertextBlob: out.privateBlob, ...(want ? { PrivateKeyPlaintext: out.privatePlaintext! } : {}),
        PublicKey: out.publicKey, KeyId: key.arn, KeyPairSpec: pairSpec, KeyMaterialId: currentMaterial(key),
      };
    });
  }

  for (const op of ['GenerateMac', 'VerifyMac'] as const) {
    d.registerOperation(op, async (ctx, call) => {
      const r = call.request;
      const { key, requestAlias } = await ctx.resolveKey(reqStr(r, 'KeyId'));
      const message = reqBytes(r, 'Message', 1, 4096);
      const alg = reqEnum(r, 'MacAlgorithm', MAC_ALGS);
      const mac = op === 'VerifyMac' ? reqBytes(r, 'Mac', 1, 6144) : undefined;
      await call.authorize({ key, ...(requestAlias ? { requestAlias } : {}), grantTokens: optStrList(r, 'GrantTokens', 10) ?? [] });
      requireUsage(key, 'GENERATE_VERIFY_MAC');
      if (!macAlgorithms(key.keySpec)!.includes(alg)) throw new InvalidKeyUsageException(`Algorithm ${alg} is incompatible with key spec ${key.keySpec}.`);
      if (op === 'GenerateMac') {
        call.stopIfDryRun();
        const out = await ctx.hsm.call({ op: 'generateMac', key: ctx.handle(key), algorithm: alg, message });
        return { Mac: out.mac, MacAlgorithm: alg, KeyId: key.arn };
      }
      // A dry run verifies too (it has no effect): a wrong MAC fails as the real call would.
      const out = await ctx.hsm.call({ op: 'verifyMac', key: ctx.handle(key), algorithm: alg, message, mac: mac! });
      if (!out.valid) throw new KMSInvalidMacException('The MAC verification failed.');
      call.stopIfDryRun();
      return { KeyId: key.arn, MacValid: true, MacAlgorithm: alg };
    });
  }
}
