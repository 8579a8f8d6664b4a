/**
 * Key specs, usages and the algorithms each allows (AWS KMS Developer Guide,
 * "Key spec reference"), plus the plaintext limits of RSA encryption.
 */
export type KeySpec =
  | 'SYMMETRIC_DEFAULT'
  | 'RSA_2048' | 'RSA_3072' | 'RSA_4096'
  | 'ECC_NIST_P256' | 'ECC_NIST_P384' | 'ECC_NIST_P521' | 'ECC_SECG_P256K1'
  | 'HMAC_224' | 'HMAC_256' | 'HMAC_384' | 'HMAC_512';

export type KeyUsage = 'ENCRYPT_DECRYPT' | 'SIGN_VERIFY' | 'GENERATE_VERIFY_MAC';

export const KEY_SPECS: readonly KeySpec[] = [
  'SYMMETRIC_DEFAULT', 'RSA_2048', 'RSA_3072', 'RSA_4096',
  'ECC_NIST_P256', 'ECC_NIST_P384', 'ECC_NIST_P521', 'ECC_SECG_P256K1',
  'HMAC_224', 'HMAC_256', 'HMAC_384', 'HMAC_512',
];

/**
 * KeySpec values of the KMS API (@aws-sdk/client-kms `KeySpec`) this KMS cannot create: valid
 * requests it refuses with UnsupportedOperationException, never "not in the enum value set".
 * `CustomerMasterKeySpec`, the deprecated name, has only SM2 of these.
 */
export const UNSUPPORTED_KEY_SPECS: readonly string[] = [
  'ECC_NIST_EDWARDS25519', 'ML_DSA_44', 'ML_DSA_65', 'ML_DSA_87', 'ML_KEM_512', 'ML_KEM_768', 'ML_KEM_1024', 'SM2',
];

/** Why a spec of UNSUPPORTED_KEY_SPECS (or data key pair spec) is refused. */
export function unsupportedSpecReason(spec: string): string {
  // AWS KMS: SM2 keys and data key pairs exist only in the China Regions.
  if (spec === 'SM2') return 'SM2 is available only in China Regions';
  if (spec.startsWith('ML_DSA_')) return 'ebsd has no ML-DSA keys';
  if (spec.startsWith('ML_KEM_')) return 'ebsd has no ML-KEM keys';
  return 'ebsd has no Ed25519 keys';
}

export const isRsa = (s: string): boolean => s.startsWith('RSA_');
export const isEcc = (s: string): boolean => s.startsWith('ECC_');
export const isHmac = (s: string): boolean => s.startsWith('HMAC_');

/** Usages AWS accepts for each spec (CreateKey's default, ENCRYPT_DECRYPT, only where listed; KEY_AGREEMENT is not supported here). */
export function allowedUsages(spec: KeySpec): KeyUsage[] {
  if (spec === 'SYMMETRIC_DEFAULT') return ['ENCRYPT_DECRYPT'];
  if (isRsa(spec)) return ['ENCRYPT_DECRYPT', 'SIGN_VERIFY'];
  if (isEcc(spec)) return ['SIGN_VERIFY'];
  return ['GENERATE_VERIFY_MAC'];
}

export const RSA_BITS: Record<string, number> = { RSA_2048: 2048, RSA_3072: 3072, RSA_4096: 4096 };
export const EC_CURVE: Record<string, string> = {
  ECC_NIST_P256: 'prime256v1', ECC_NIST_P384: 'secp384r1', ECC_NIST_P521: 'secp521r1', ECC_SECG_P256K1: 'secp256k1',
};
/** HMAC key length in bytes equals the digest length (AWS "HMAC key specs"). */
export const HMAC_KEY_BYTES: Record<string, number> = { HMAC_224: 28, HMAC_256: 32, HMAC_384: 48, HMAC_512: 64 };
export const HMAC_ALG: Record<string, string> = {
  HMAC_224: 'HMAC_SHA_224', HMAC_256: 'HMAC_SHA_256', HMAC_384: 'HMAC_SHA_384', HMAC_512: 'HMAC_SHA_512',
};

export function encryptionAlgorithms(spec: KeySpec, usage: KeyUsage): string[] | undefined {
  if (usage !== 'ENCRYPT_DECRYPT') return undefined;
  if (spec === 'SYMMETRIC_DEFAULT') return ['SYMMETRIC_DEFAULT'];
  return ['RSAES_OAEP_SHA_1', 'RSAES_OAEP_SHA_256'];
}

export function signingAlgorithms(spec: KeySpec, usage: KeyUsage): string[] | undefined {
  if (usage !== 'SIGN_VERIFY') return undefined;
  if (isRsa(spec)) {
    return ['RSASSA_PSS_SHA_256', 'RSASSA_PSS_SHA_384', 'RSASSA_PSS_SHA_512',
      'RSASSA_PKCS1_V1_5_SHA_256', 'RSASSA_PKCS1_V1_5_SHA_384', 'RSASSA_PKCS1_V1_5_SHA_512'];
  }
  switch (spec) {
    case 'ECC_NIST_P256': case 'ECC_SECG_P256K1': return ['ECDSA_SHA_256'];
    case 'ECC_NIST_P384': return ['ECDSA_SHA_384'];
    case 'ECC_NIST_P521': return ['ECDSA_SHA_512'];
    default: return undefined;
  }
}

export function macAlgorithms(spec: KeySpec): string[] | undefined {
  return isHmac(spec) ? [HMAC_ALG[spec]!] : undefined;
}

/** Hash named by a signing algorithm: `RSASSA_PSS_SHA_256` -> `sha256`. */
export function signingHash(alg: string): 'sha256' | 'sha384' | 'sha512' {
  const m = /SHA_(256|384|512)$/.exec(alg);
  return `sha${m![1]}` as 'sha256' | 'sha384' | 'sha512';
}
export const HASH_LEN: Record<string, number> = { sha256: 32, sha384: 48, sha512: 64 };

/**
 * Largest plaintext RSA-OAEP takes: k - 2·hLen - 2 (RFC 8017 §7.1.1).
 * AWS lists the same figures (e.g. RSA_2048 + OAEP_SHA_256: 190 bytes).
 */
export function rsaOaepMaxPlaintext(spec: string, alg: string): number {
  const k = RSA_BITS[spec]! / 8;
  const h = alg === 'RSAES_OAEP_SHA_1' ? 20 : 32;
  return k - 2 * h - 2;
}

/** Data key pair specs accepted by GenerateDataKeyPair (no HMAC; SM2, Ed25519 and ML-KEM: UNSUPPORTED_DATA_KEY_PAIR_SPECS). */
export const DATA_KEY_PAIR_SPECS: readonly string[] = [
  'RSA_2048', 'RSA_3072', 'RSA_4096', 'ECC_NIST_P256', 'ECC_NIST_P384', 'ECC_NIST_P521', 'ECC_SECG_P256K1',
];

/** DataKeyPairSpec values of the KMS API this KMS refuses with UnsupportedOperationException. */
export const UNSUPPORTED_DATA_KEY_PAIR_SPECS: readonly string[] = ['ECC_NIST_EDWARDS25519', 'ML_KEM_512', 'ML_KEM_768', 'ML_KEM_1024', 'SM2'];
