/**
 * The AWS Encryption SDK for JavaScript as a client of ebsd's KMS: a
 * KmsKeyringNode whose clientProvider hands out the SDK's own `KMS` client
 * pointed at the daemon (`--kms-only --kms-listen 127.0.0.1:0`, a child
 * process), credentials from the standard chain (environment variables),
 * commitment policy REQUIRE_ENCRYPT_REQUIRE_DECRYPT. Envelope encryption of a
 * 10 MiB stream round-trips; a changed encryption context and a revoked grant
 * fail the way the ESDK reports a KMS refusal.
 */
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildClient, CommitmentPolicy, KmsKeyringNode, KMS, type MessageHeader } from '@aws-crypto/client-node';
import { KMS_ADMIN_POLICY, StandardChain, auditEvents, keyVars, makeAccessKey, startKmsDaemon } from './helpers.js';
import { Env, ensureBuilt } from '../e2e/helpers.js';
const MiB = 1 << 20;

/** `n` bytes of AES-256-CTR keystream under sha256(seed): reproducible from the printed seed. */
function bytesFromSeed(seed: string, n: number): Buffer {
  const c = createCipheriv('aes-256-ctr', createHash('sha256').update(seed).digest(), Buffer.alloc(16));
  return Buffer.concat([c.update(Buffer.alloc(n)), c.final()]);
}

async function collect(source: Readable, through: NodeJS.ReadWriteStream): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(source, through, async (chunks: AsyncIterable<Buffer>) => { for await (const c of chunks) out.push(c); });
  return Buffer.concat(out);
}

/** 64 KiB chunks, as a file read stream would deliver them. */
function chunked(b: Buffer): Readable {
  return Readable.from((function* () { for (let o = 0; o < b.length; o += 64 * 1024) yield b.subarray(o, o + 64 * 1024); })());
}

describe('AWS Encryption SDK (client-node) with a KMS keyring against ebsd', () => {
  const env = new Env('esdk');
  const chain = new StandardChain();
  const clients: KMS[] = [];
  const esdk = buildClient(CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT);
  let url = '';
  let accountId = '';
  let keyArn = '';
  let alice = { AccessKeyId: '', SecretAccessKey: '' };
  let bob = { AccessKeyId: '', SecretAccessKey: '' };
  let aliceKms: KMS;
  let bobKms: KMS;

  const events = (): Record<string, any>[] => auditEvents(env);
  /** The SDK's KMS client with credentials resolved once from the environment (the standard chain), then memoized. */
  const kmsFor = async (k: { AccessKeyId: string; SecretAccessKey: string }): Promise<KMS> => {
    chain.use(keyVars(k, url));
    const c = new KMS({});
    clients.push(c);
    expect((await c.config.credentials()).accessKeyId).toBe(k.AccessKeyId);
    return c;
  };
  const keyring = (c: KMS): KmsKeyringNode => new KmsKeyringNode({ generatorKeyId: keyArn, clientProvider: () => c });
  const poll = async <T>(what: string, f: () => T | undefined): Promise<T> => {
    for (let i = 0; i < 400; i++) {
      const v = f();
      if (v !== undefined) return v;
      await new Promise((r) => setTimeout(r, 25));
    }
    throw new Error(`${what}: not in the audit log`);
  };

  beforeAll(async () => {
    ensureBuilt();
    ({ url } = await startKmsDaemon(env));
    ({ key: alice, accountId } = await makeAccessKey(env, 'alice', KMS_ADMIN_POLICY, 'admin'));
    // bob has no policy of his own: whatever he may do with the key comes from a grant.
    ({ key: bob } = await makeAccessKey(env, 'bob'));
    aliceKms = await kmsFor(alice);
    bobKms = await kmsFor(bob);
    keyArn = (await aliceKms.createKey({ Description: 'esdk envelope key' })).KeyMetadata!.Arn!;
  });
  afterAll(async () => {
    for (const c of clients) c.destroy();
    chain.restore();
    await env.cleanup();
  });

  it('encrypts and decrypts a 10 MiB stream through ebsd (GenerateDataKey + Decrypt, audited with the access key id)', async () => {
    const seed = randomBytes(8).toString('hex');
    console.log(`esdk 10 MiB stream seed ${seed}`);
    const plain = bytesFromSeed(seed, 10 * MiB);
    const context = { purpose: 'backup', volume: 'vol-0123456789abcdef0' };
    const ring = keyring(aliceKms);

    const cipher = await collect(chunked(plain), esdk.encryptStream(ring, { encryptionContext: context }));
    expect(cipher.length).toBeGreaterThan(plain.length);
    expect(cipher.indexOf(plain.subarray(0, 4096))).toBe(-1);

    let header: MessageHeader | undefined;
    const dec = esdk.decryptStream(ring).once('MessageHeader', (h: MessageHeader) => { header = h; });
    const back = await collect(chunked(cipher), dec);
    expect(back.equals(plain)).toBe(true);
    // The ESDK's documented check on decrypt: the message's context holds what the caller expects.
    expect(header!.encryptionContext).toMatchObject(context);

    const mine = events().filter((e) => e.userIdentity?.accessKeyId === alice.AccessKeyId && e.resources?.[0]?.ARN === keyArn);
    expect(mine.filter((e) => !e.errorCode).map((e) => e.eventName)).toEqual(expect.arrayContaining(['GenerateDataKey', 'Decrypt']));
    const gdk = mine.find((e) => e.eventName === 'GenerateDataKey')!;
    expect(gdk).toMatchObject({ userIdentity: { type: 'IAMUser', arn: `arn:aws:iam::${accountId}:user/alice` }, sourceIPAddress: '127.0.0.1', requestParameters: { keyId: keyArn, encryptionContext: expect.objectContaining(context) } });
    expect(gdk.userAgent).toMatch(/aws-sdk-js/);
  });

  it('a message whose encryption context was changed fails: KMS refuses the data key (InvalidCiphertextException)', async () => {
    const ring = keyring(aliceKms);
    const { result } = await esdk.encrypt(ring, Buffer.from('small secret'), { encryptionContext: { purpose: 'backup-2026' } });
    // Same length, so the header still parses; the ESDK hands the changed context to KMS Decrypt.
    const at = result.indexOf(Buffer.from('backup-2026'));
    expect(at).toBeGreaterThan(0);
    const tampered = Buffer.from(result);
    tampered.write('backup-2027', at);
    const err = await esdk.decrypt(ring, tampered).then(() => undefined, (e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect(err!.message).toMatch(/Unable to decrypt data key/);
    expect(err!.message).toMatch(/InvalidCiphertextException/);
    expect((await esdk.decrypt(ring, result)).plaintext.toString()).toBe('small secret');
    await poll('the refused Decrypt', () => events().find((e) => e.eventName === 'Decrypt' && e.errorCode === 'InvalidCiphertextException' && e.userIdentity?.accessKeyId === alice.AccessKeyId));
  });

  it('access through a grant only: decrypt works, a context outside the grant constraint and a revoked grant fail with AccessDeniedException', async () => {
    const { result: inScope } = await esdk.encrypt(keyring(aliceKms), Buffer.from('for bob'), { encryptionContext: { purpose: 'shared' } });
    const { result: outOfScope } = await esdk.encrypt(keyring(aliceKms), Buffer.from('not for bob'), { encryptionContext: { purpose: 'private' } });
    const bobRing = keyring(bobKms);
    // Without a grant bob is refused.
    await expect(esdk.decrypt(bobRing, inScope)).rejects.toThrow(/AccessDeniedException/);

    const { GrantId } = await aliceKms.createGrant({
      KeyId: keyArn, GranteePrincipal: `arn:aws:iam::${accountId}:user/bob`, Operations: ['Decrypt'],
      Constraints: { EncryptionContextSubset: { purpose: 'shared' } },
    });
    expect((await esdk.decrypt(bobRing, inScope)).plaintext.toString()).toBe('for bob');
    await poll('bob\'s Decrypt through the grant', () => events().find((e) => e.eventName === 'Decrypt' && !e.errorCode && e.userIdentity?.accessKeyId === bob.AccessKeyId));
    // A KMS-side context mismatch: the grant's constraint does not cover this message's context.
    const outside = await esdk.decrypt(bobRing, outOfScope).then(() => undefined, (e: Error) => e);
    expect(outside?.message).toMatch(/Unable to decrypt data key[\s\S]*AccessDeniedException/);

    await aliceKms.revokeGrant({ KeyId: keyArn, GrantId: GrantId! });
    const revoked = await esdk.decrypt(bobRing, inScope).then(() => undefined, (e: Error) => e);
    expect(revoked).toBeInstanceOf(Error);
    expect(revoked!.message).toMatch(/Unable to decrypt data key[\s\S]*AccessDeniedException/);
    expect(revoked!.message).not.toContain('for bob');
    await poll('bob\'s refused Decrypt', () => events().find((e) => e.eventName === 'Decrypt' && e.errorCode === 'AccessDeniedException' && e.userIdentity?.accessKeyId === bob.AccessKeyId));
    // Alice's own access is untouched by the revocation.
    expect((await esdk.decrypt(keyring(aliceKms), inScope)).plaintext.toString()).toBe('for bob');
  });
});
