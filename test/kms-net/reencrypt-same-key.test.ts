/**
 * kms:ReEncryptOnSameKey is whether ReEncrypt's destination key is the key the ciphertext was
 * encrypted under (docs/architecture.md §5.4), judged on the keys the request resolves to, not on
 * how it spells them: SourceKeyId is optional for a symmetric ciphertext, and an alias and the
 * key's ARN name the same key. A key policy that keeps its ciphertexts on the key ("Deny
 * kms:ReEncrypt* where kms:ReEncryptOnSameKey is false") must hold against a request that leaves
 * SourceKeyId out, and must let through a same-key re-encryption named by alias. Real daemon
 * (`--kms-only --kms-listen 127.0.0.1:0`), real @aws-sdk/client-kms.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateAliasCommand, CreateKeyCommand, DecryptCommand, EncryptCommand, KMSClient, ReEncryptCommand } from '@aws-sdk/client-kms';
import { KMS_ADMIN_POLICY, REGION, makeAccessKey, startKmsDaemon, type AccessKey } from './helpers.js';
import { Env, ensureBuilt } from '../e2e/helpers.js';

describe('kms:ReEncryptOnSameKey is judged on the resolved source and destination keys', () => {
  const env = new Env('reencsame');
  let kms: KMSClient;
  let keyA = '';
  let keyB = '';

  beforeAll(async () => {
    ensureBuilt();
    const { url } = await startKmsDaemon(env);
    const { key, accountId }: { key: AccessKey; accountId: string } = await makeAccessKey(env, 'rotator', KMS_ADMIN_POLICY, 'admin');
    kms = new KMSClient({ endpoint: url, region: REGION, credentials: { accessKeyId: key.AccessKeyId, secretAccessKey: key.SecretAccessKey } });
    // Key A keeps its ciphertexts on itself: every principal is refused ReEncrypt* unless the destination is A.
    const keepOnKey = JSON.stringify({
      Version: '2012-10-17',
      Statement: [
        { Sid: 'Enable IAM User Permissions', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${accountId}:root` }, Action: 'kms:*', Resource: '*' },
        { Sid: 'KeepOnKey', Effect: 'Deny', Principal: { AWS: '*' }, Action: 'kms:ReEncrypt*', Resource: '*', Condition: { Bool: { 'kms:ReEncryptOnSameKey': 'false' } } },
      ],
    });
    keyA = (await kms.send(new CreateKeyCommand({ Policy: keepOnKey }))).KeyMetadata!.Arn!;
    keyB = (await kms.send(new CreateKeyCommand({}))).KeyMetadata!.Arn!;
    await kms.send(new CreateAliasCommand({ AliasName: 'alias/keep-on-key', TargetKeyId: keyA }));
  });
  afterAll(async () => {
    kms?.destroy();
    await env.cleanup();
  });

  const outcome = (p: Promise<unknown>): Promise<string> => p.then(() => 'ok', (e: Error) => e.name);

  it('ReEncrypt to another key without SourceKeyId is refused by the Deny; the ciphertext stays readable only under A', async () => {
    const blob = (await kms.send(new EncryptCommand({ KeyId: keyA, Plaintext: Buffer.from('secret') }))).CiphertextBlob!;
    // SourceKeyId left out (optional for a symmetric ciphertext): the source is still A, the destination B.
    expect(await outcome(kms.send(new ReEncryptCommand({ CiphertextBlob: blob, DestinationKeyId: keyB })))).toBe('AccessDeniedException');
    // Named, it is refused as well.
    expect(await outcome(kms.send(new ReEncryptCommand({ CiphertextBlob: blob, SourceKeyId: keyA, DestinationKeyId: keyB })))).toBe('AccessDeniedException');
    // And so when both are named by the same string that is not the source key.
    expect(await outcome(kms.send(new ReEncryptCommand({ CiphertextBlob: blob, SourceKeyId: keyB, DestinationKeyId: keyB })))).toBe('IncorrectKeyException');
  });

  it('ReEncrypt on A itself is allowed however the request names it: without SourceKeyId, by alias against the ARN', async () => {
    const blob = (await kms.send(new EncryptCommand({ KeyId: keyA, Plaintext: Buffer.from('secret'), EncryptionContext: { v: '1' } }))).CiphertextBlob!;
    const again = await kms.send(new ReEncryptCommand({ CiphertextBlob: blob, SourceEncryptionContext: { v: '1' }, DestinationKeyId: keyA, DestinationEncryptionContext: { v: '2' } }));
    expect(again.KeyId).toBe(keyA);
    const byAlias = await kms.send(new ReEncryptCommand({
      CiphertextBlob: again.CiphertextBlob!, SourceKeyId: 'alias/keep-on-key', SourceEncryptionContext: { v: '2' }, DestinationKeyId: keyA, DestinationEncryptionContext: { v: '3' },
    }));
    expect(byAlias.SourceKeyId).toBe(keyA);
    const out = await kms.send(new DecryptCommand({ CiphertextBlob: byAlias.CiphertextBlob!, EncryptionContext: { v: '3' } }));
    expect(Buffer.from(out.Plaintext!).toString()).toBe('secret');
  });
});
