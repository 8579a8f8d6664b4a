/** Encrypt, Decrypt, ReEncrypt, GenerateDataKey(+WithoutPlaintext), GenerateRandom. */
import type { CallContext, Dispatcher, OperationContext } from '../dispatcher.js';
import { CustomKeyStoreNotFoundException, IncorrectKeyException, InvalidCiphertextException, InvalidKeyUsageException, NotFoundException, ValidationException } from '../errors.js';
import { canonicalContext, parseBlob, MAX_BLOB, type BlobParts } from '../blob.js';
import { encryptionAlgorithms, rsaOaepMaxPlaintext } from '../key-spec.js';
import type { KeyRecord } from '../key-record.js';
import type { CipherEndpoint } from '../hsm/protocol.js';
import { optBytes, optContext, optEnum, optEnumList, optInt, optStr, optStrList, reqBytes, reqInt, reqStr } from '../validate.js';

const ENC_ALGS = ['SYMMETRIC_DEFAULT', 'RSAES_OAEP_SHA_1', 'RSAES_OAEP_SHA_256', 'SM2PKE'] as const;
const DRY_RUN_MODIFIERS = ['IGNORE_CIPHERTEXT'] as const;

/**
 * Decrypt and ReEncrypt: DryRunModifiers checked (a list of the enum), and whether this call is a dry
 * run that skips the ciphertext ("IGNORE_CIPHERTEXT": authorization only, no ciphertext needed or
 * read; docs/architecture.md §5.4). Without a dry run the modifiers change nothing.
 */
function ignoresCiphertext(call: CallContext): boolean {
  const mods = optEnumList(call.request, 'DryRunModifiers', DRY_RUN_MODIFIERS);
  return call.dryRun && mods !== undefined && mods.includes('IGNORE_CIPHERTEXT');
}

/** The key a dry run with IGNORE_CIPHERTEXT names: no ciphertext is read, so the request must name it. */
async function namedKey(ctx: OperationContext, keyIdParam: string | undefined, member: string): Promise<{ key: KeyRecord; requestAlias?: string; symmetric: boolean; parts?: BlobParts }> {
  if (keyIdParam === undefined) {
    throw new ValidationException(`${member} is required when DryRun is true and DryRunModifiers is IGNORE_CIPHERTEXT: no ciphertext is read to find the KMS key`);
  }
  const r = await ctx.resolveKey(keyIdParam);
  return { ...r, symmetric: r.key.keySpec === 'SYMMETRIC_DEFAULT' };
}

export function requireUsage(key: KeyRecord, usage: string): void {
  if (key.keyUsage !== usage) {
    throw new InvalidKeyUsageException(`${key.arn} key usage is ${key.keyUsage} which is not valid for this operation.`);
  }
}

function checkEncAlg(key: KeyRecord, alg: string): void {
  requireUsage(key, 'ENCRYPT_DECRYPT');
  if (!encryptionAlgorithms(key.keySpec, key.keyUsage)!.includes(alg)) {
    throw new InvalidKeyUsageException(`Algorithm ${alg} is incompatible with key spec ${key.keySpec}.`);
  }
}

/** Resolve the key a symmetric blob names, and check a KeyId in the request against it. */
async function sourceKey(ctx: OperationContext, blob: Uint8Array, keyIdParam: string | undefined, alg: string): Promise<{ key: KeyRecord; requestAlias?: string; symmetric: boolean; parts?: BlobParts }> {
  if (alg !== 'SYMMETRIC_DEFAULT') {
    if (keyIdParam === undefined) throw new ValidationException('KeyId is required when decrypting with an asymmetric KMS key');
    const r = await ctx.resolveKey(keyIdParam);
    return { ...r, symmetric: false };
  }
  let p: BlobParts;
  try {
    p = parseBlob(blob);
  } catch (e) {
    // Not a symmetric blob, and the request names an asymmetric key: the caller left out the
    // EncryptionAlgorithm that key needs (KMS API reference, Decrypt: required for asymmetric keys).
    // Answered by the key (authorized, then InvalidKeyUsageException for SYMMETRIC_DEFAULT on its
    // key spec), not as a bad ciphertext.
    // AWS managed keys (alias/aws/…) are symmetric: never resolved here, so a bad blob does not create one.
    if (!(e instanceof InvalidCiphertextException) || keyIdParam === undefined || /(^|:)alias\/aws\//.test(keyIdParam)) throw e;
    const named = await ctx.resolveKey(keyIdParam).catch(() => undefined);
    if (!named || named.key.keySpec === 'SYMMETRIC_DEFAULT') throw e;
    return { ...named, symmetric: false };
  }
  const m = /^arn:aws:kms:([^:]+):(\d{12}):key\/([0-9a-f-]{36})$/.exec(p.arn);
  if (!m || m[1] !== ctx.region || m[2] !== ctx.accountId) throw new InvalidCiphertextException('The ciphertext refers to a KMS key this KMS does not hold.');
  const key = ctx.keystore.get(m[3]!);
  if (!key) throw new NotFoundException(`Key '${p.arn}' does not exist`);
  let requestAlias: string | undefined;
  if (keyIdParam !== undefined) {
    let named: { key: KeyRecord; requestAlias?: string };
    try {
      named = await ctx.resolveKey(keyIdParam);
    } catch (e) {
      if (e instanceof NotFoundException) throw new IncorrectKeyException('The key ID in the request does not identify a KMS key that can perform this operation.');
      throw e;
    }
    if (named.key.keyId !== key.keyId) throw new IncorrectKeyException('The key ID in the request does not identify a KMS key that can perform this operation.');
    requestAlias = named.requestAlias;
  }
  return requestAlias ? { key, requestAlias, symmetric: true, parts: p } : { key, symmetric: true, parts: p };
}

/**
 * An encryption context is for symmetric encryption keys only (KMS API reference, Encrypt,
 * Decrypt, ReEncrypt): given with an asymmetric key, where it would bind nothing, it is refused
 * rather than ignored, on the way in (Encrypt) and on the way out (Decrypt, ReEncrypt) alike.
 */
function noContextWithAsymmetric(key: KeyRecord, ec: Record<string, string> | undefined, member = 'EncryptionContext'): void {
  if (key.keySpec !== 'SYMMETRIC_DEFAULT' && ec && Object.keys(ec).length) {
    throw new ValidationException(`${member} is not supported with asymmetric KMS keys (${key.arn} is ${key.keySpec})`);
  }
}

/**
 * The material an encryption under `key` uses now: its newest, the one `ctx.handle(key)` hands the
 * HSM (kms-core.ts) and DescribeKey names CurrentKeyMaterialId.
 */
export function currentMaterial(key: KeyRecord): string {
  return key.materials[key.materials.length - 1]!.id;
}

function materialOf(key: KeyRecord, blob: Uint8Array | BlobParts): string {
  const parts = blob instanceof Uint8Array ? parseBlob(blob) : blob;
  const h = parts.hbkId;
  const id = Buffer.from(h.buffer, h.byteOffset, h.byteLength).toString('hex');
  if (!key.materials.some((m) => m.id === id)) throw new InvalidCiphertextException('The ciphertext refers to key material this KMS key does not have.');
  return id;
}

function grantTokens(call: CallContext): string[] {
  return optStrList(call.request, 'GrantTokens', 10) ?? [];
}

export function registerCryptoOperations(d: Dispatcher): void {
  d.registerOperation('Encrypt', async (ctx, call) => {
    const r = call.request;
    const { key, requestAlias } = await ctx.resolveKey(reqStr(r, 'KeyId'));
    const plaintext = reqBytes(r, 'Plaintext', 1, 4096);
    const ec = optContext(r);
    const alg = optEnum(r, 'EncryptionAlgorithm', ENC_ALGS) ?? 'SYMMETRIC_DEFAULT';
    await call.authorize({ key, ...(requestAlias ? { requestAlias } : {}), ...(ec ? { encryptionContext: ec } : {}), grantTokens: grantTokens(call), encryptionAlgorithm: alg });
    checkEncAlg(key, alg);
    if (alg === 'SYMMETRIC_DEFAULT') {
      call.stopIfDryRun();
      const { blob } = await ctx.hsm.call({ op: 'encrypt', key: ctx.handle(key), plaintext, ctx: canonicalContext(ec) });
      return { CiphertextBlob: blob, KeyId: key.arn, EncryptionAlgorithm: alg };
    }
    noContextWithAsymmetric(key, ec);
    const max = rsaOaepMaxPlaintext(key.keySpec, alg);
    if (plaintext.length > max) throw new ValidationException(`Plaintext must be at most ${max} bytes for ${key.keySpec} with ${alg}`);
    call.stopIfDryRun();
    const { blob } = await ctx.hsm.call({ op: 'rsaEncrypt', key: ctx.handle(key), algorithm: alg, plaintext });
    return { CiphertextBlob: blob, KeyId: key.arn, EncryptionAlgorithm: alg };
  });

  d.registerOperation('Decrypt', async (ctx, call) => {
    const r = call.request;
    const ignoreCiphertext = ignoresCiphertext(call);
    const blob = ignoreCiphertext ? optBytes(r, 'CiphertextBlob', 1, MAX_BLOB) : reqBytes(r, 'CiphertextBlob', 1, MAX_BLOB);
    const ec = optContext(r);
    const alg = optEnum(r, 'EncryptionAlgorithm', ENC_ALGS) ?? 'SYMMETRIC_DEFAULT';
    const src = ignoreCiphertext ? await namedKey(ctx, optStr(r, 'KeyId'), 'KeyId') : await sourceKey(ctx, blob!, optStr(r, 'KeyId'), alg);
    const key = src.key;
    await call.authorize({ key, ...(src.requestAlias ? { requestAlias: src.requestAlias } : {}), ...(ec ? { encryptionContext: ec } : {}), grantTokens: grantTokens(call), encryptionAlgorithm: alg });
    checkEncAlg(key, alg);
    noContextWithAsymmetric(key, ec);
    if (ignoreCiphertext) call.stopIfDryRun();
    // A dry run decrypts too: it fails where the real call would (wrong context, tampered blob).
    const material = src.symmetric ? materialOf(key, src.parts!) : undefined;
    const { plaintext } = material !== undefined
      ? await ctx.hsm.call({ op: 'decrypt', key: ctx.handle(key, material), blob: blob!, ctx: canonicalContext(ec) })
      : await ctx.hsm.call({ op: 'rsaDecrypt', key: ctx.handle(key), algorithm: alg, blob: blob! });
    if (call.dryRun) {
      plaintext.fill(0); // a dry run's plaintext is wiped and dropped (best effort in JS: the GC may have copied it)
      call.stopIfDryRun();
    }
    // KeyMaterialId: the material that decrypted (symmetric keys only), as the KMS API reference's Decrypt response has it.
    return { KeyId: key.arn, Plaintext: plaintext, EncryptionAlgorithm: alg, ...(material !== undefined ? { KeyMaterialId: material } : {}) };
  });

  d.registerOperation('ReEncrypt', async (ctx, call) => {
    const r = call.request;
    const ignoreCiphertext = ignoresCiphertext(call);
    const blob = ignoreCiphertext ? optBytes(r, 'CiphertextBlob', 1, MAX_BLOB) : reqBytes(r, 'CiphertextBlob', 1, MAX_BLOB);
    const sctx = optContext(r, 'SourceEncryptionContext');
    const dctx = optContext(r, 'DestinationEncryptionContext');
    const salg = optEnum(r, 'SourceEncryptionAlgorithm', ENC_ALGS) ?? 'SYMMETRIC_DEFAULT';
    const dalg = optEnum(r, 'DestinationEncryptionAlgorithm', ENC_ALGS) ?? 'SYMMETRIC_DEFAULT';
    const src = ignoreCiphertext ? await namedKey(ctx, optStr(r, 'SourceKeyId'), 'SourceKeyId') : await sourceKey(ctx, blob!, optStr(r, 'SourceKeyId'), salg);
    const dst = await ctx.resolveKey(reqStr(r, 'DestinationKeyId'));
    const gt = grantTokens(call);
    // kms:ReEncryptOnSameKey: the keys as resolved (the source from the ciphertext when SourceKeyId is left out).
    const same = src.key.keyId === dst.key.keyId;
    await call.authorize({ action: 'kms:ReEncryptFrom', key: src.key, ...(src.requestAlias ? { requestAlias: src.requestAlias } : {}), ...(sctx ? { encryptionContext: sctx } : {}), grantTokens: gt, reEncryptOnSameKey: same, encryptionAlgorithm: salg });
    await call.authorize({ action: 'kms:ReEncryptTo', key: dst.key, ...(dst.requestAlias ? { requestAlias: dst.requestAlias } : {}), ...(dctx ? { encryptionContext: dctx } : {}), grantTokens: gt, reEncryptOnSameKey: same, encryptionAlgorithm: dalg });
    checkEncAlg(src.key, salg);
    checkEncAlg(dst.key, dalg);
    noContextWithAsymmetric(src.key, sctx, 'SourceEncryptionContext');
    noContextWithAsymmetric(dst.key, dctx, 'DestinationEncryptionContext');
    if (ignoreCiphertext) call.stopIfDryRun();
    const srcMaterial = src.symmetric ? materialOf(src.key, blob!) : undefined;
    const s: CipherEndpoint = srcMaterial !== undefined
      ? { key: ctx.handle(src.key, srcMaterial), algorithm: salg, ctx: canonicalContext(sctx) }
      : { key: ctx.handle(src.key), algorithm: salg };
    const t: CipherEndpoint = { key: ctx.handle(dst.key), algorithm: dalg, ...(dalg === 'SYMMETRIC_DEFAULT' ? { ctx: canonicalContext(dctx) } : {}) };
    // A dry run re-encrypts too, inside the HSM (the plaintext never leaves it), and drops the new ciphertext.
    const out = await ctx.hsm.call({ op: 'reEncrypt', src: s, blob: blob!, dst: t });
    call.stopIfDryRun();
    return {
      CiphertextBlob: out.blob, SourceKeyId: src.key.arn, KeyId: dst.key.arn,
      SourceEncryptionAlgorithm: salg, DestinationEncryptionAlgorithm: dalg,
      // The materials each side used, for symmetric keys only (KMS API reference, ReEncrypt response).
      ...(srcMaterial !== undefined ? { SourceKeyMaterialId: srcMaterial } : {}),
      ...(dalg === 'SYMMETRIC_DEFAULT' ? { DestinationKeyMaterialId: currentMaterial(dst.key) } : {}),
    };
  });

  for (const op of ['GenerateDataKey', 'GenerateDataKeyWithoutPlaintext'] as const) {
    d.registerOperation(op, async (ctx, call) => {
      const r = call.request;
      const { key, requestAlias } = await ctx.resolveKey(reqStr(r, 'KeyId'));
      const ec = optContext(r);
      const spec = optEnum(r, 'KeySpec', ['AES_256', 'AES_128'] as const);
      const n = optInt(r, 'NumberOfBytes', 1, 1024);
      if ((spec === undefined) === (n === undefined)) throw new ValidationException('Please specify either number of bytes or key spec.');
      const bytes = n ?? (spec === 'AES_128' ? 16 : 32);
      // kms:EncryptionAlgorithm: the data key is encrypted under the symmetric key (docs/architecture.md §5.4).
      await call.authorize({ key, ...(requestAlias ? { requestAlias } : {}), ...(ec ? { encryptionContext: ec } : {}), grantTokens: grantTokens(call), encryptionAlgorithm: 'SYMMETRIC_DEFAULT' });
      if (key.keySpec !== 'SYMMETRIC_DEFAULT') throw new InvalidKeyUsageException(`${key.arn} is not a symmetric encryption KMS key.`);
      call.stopIfDryRun();
      const want = op === 'GenerateDataKey';
      const out = await ctx.hsm.call({ op: 'generateDataKey', key: ctx.handle(key), bytes, ctx: canonicalContext(ec), wantPlaintext: want });
      const KeyMaterialId = currentMaterial(key);
      return want ? { CiphertextBlob: out.blob, Plaintext: out.plaintext!, KeyId: key.arn, KeyMaterialId } : { CiphertextBlob: out.blob, KeyId: key.arn, KeyMaterialId };
    });
  }

  d.registerOperation('GenerateRandom', async (ctx, call) => {
    const n = reqInt(call.request, 'NumberOfBytes', 1, 1024);
    const store = optStr(call.request, 'CustomKeyStoreId', 1, 64);
    if (store !== undefined) throw new CustomKeyStoreNotFoundException(`Custom key store ${store} does not exist: this KMS has no custom key stores.`);
    await call.authorize({});
    const { bytes } = await ctx.hsm.call({ op: 'random', bytes: n });
    return { Plaintext: bytes };
  });
}
