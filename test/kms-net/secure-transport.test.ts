/**
 * aws:SecureTransport as the request arrived (docs/architecture.md §5.4): a key policy with the
 * usual guardrail, Deny kms:Decrypt when `"Bool": {"aws:SecureTransport": "false"}`, refuses a
 * Decrypt from a real SDK client over the plain-HTTP loopback listener and allows it over HTTPS,
 * on both front ends. The control socket counts as secure: `ebsd kms decrypt` is allowed.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { Agent } from 'node:https';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KMSClient, CreateKeyCommand, DecryptCommand, EncryptCommand, PutKeyPolicyCommand } from '@aws-sdk/client-kms';
import { FRONT_THREADS, KMS_ADMIN_POLICY, REGION, auditEvents, makeAccessKey, startKmsDaemon } from './helpers.js';
import { Env, ensureBuilt } from '../e2e/helpers.js';

/** The account's keys as IAM allows them, and no Decrypt over a channel that is not TLS. */
const guardrail = (accountId: string): string => JSON.stringify({
  Version: '2012-10-17',
  Statement: [
    { Sid: 'Account', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${accountId}:root` }, Action: 'kms:*', Resource: '*' },
    { Sid: 'TlsOnly', Effect: 'Deny', Principal: '*', Action: 'kms:Decrypt', Resource: '*', Condition: { Bool: { 'aws:SecureTransport': 'false' } } },
  ],
});

describe.each(FRONT_THREADS)('aws:SecureTransport on the KMS listener (--kms-front-threads %i)', (front) => {
  const plain = new Env('securetransport-http');
  const tls = new Env('securetransport-https');
  const clients: KMSClient[] = [];

  /** A key under the guardrail policy and a ciphertext under it, made over the listener by `kms` (Encrypt is not denied). */
  async function keyAndCiphertext(kms: KMSClient, accountId: string): Promise<{ keyId: string; blob: Uint8Array }> {
    const keyId = (await kms.send(new CreateKeyCommand({ Description: 'tls only' }))).KeyMetadata!.KeyId!;
    await kms.send(new PutKeyPolicyCommand({ KeyId: keyId, PolicyName: 'default', Policy: guardrail(accountId) }));
    const blob = (await kms.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('secure transport') }))).CiphertextBlob!;
    return { keyId, blob };
  }

  async function client(env: Env, o: { tls: boolean }): Promise<{ kms: KMSClient; accountId: string }> {
    const started = await startKmsDaemon(env, { tls: o.tls, frontThreads: front });
    expect(started.url).toMatch(o.tls ? /^https:/ : /^http:/);
    const { key, accountId } = await makeAccessKey(env, 'ops', KMS_ADMIN_POLICY, 'admin');
    const kms = new KMSClient({
      region: REGION, endpoint: started.url,
      credentials: { accessKeyId: key.AccessKeyId, secretAccessKey: key.SecretAccessKey },
      ...(started.ca ? { requestHandler: { httpsAgent: new Agent({ ca: readFileSync(started.ca) }) } } : {}),
    });
    clients.push(kms);
    return { kms, accountId };
  }

  beforeAll(() => ensureBuilt());
  afterAll(async () => {
    for (const c of clients) c.destroy();
    await plain.cleanup();
    await tls.cleanup();
  }, 60_000);

  it('plain HTTP: the Deny on aws:SecureTransport false refuses Decrypt with AccessDeniedException; the control socket is allowed', async () => {
    const { kms, accountId } = await client(plain, { tls: false });
    const { keyId, blob } = await keyAndCiphertext(kms, accountId);
    const refused = await kms.send(new DecryptCommand({ CiphertextBlob: blob })).then(() => undefined, (e: unknown) => e as Error & { $metadata?: { httpStatusCode?: number } });
    // The SDK has no class for it (KMS models no AccessDeniedException): the wire name and status say it.
    expect(refused?.name).toBe('AccessDeniedException');
    expect(refused?.$metadata?.httpStatusCode).toBe(400);
    expect(refused?.message).toContain('kms:Decrypt');
    const ev = auditEvents(plain).filter((e) => e.eventName === 'Decrypt').at(-1);
    expect(ev).toMatchObject({ errorCode: 'AccessDeniedException', sourceIPAddress: '127.0.0.1' });
    expect(ev!.tlsDetails).toBeUndefined();

    // The same Decrypt by the account root over the control socket: a local channel, counted as secure.
    const ct = join(plain.dir, 'ct.bin');
    writeFileSync(ct, blob);
    const dec = await plain.ok(['kms', 'decrypt', '--key-id', keyId, '--ciphertext-blob', `fileb://${ct}`]);
    expect(Buffer.from(dec.Plaintext, 'base64').toString()).toBe('secure transport');
  }, 90_000);

  it('HTTPS: the same policy allows Decrypt', async () => {
    const { kms, accountId } = await client(tls, { tls: true });
    const { keyId, blob } = await keyAndCiphertext(kms, accountId);
    const out = await kms.send(new DecryptCommand({ CiphertextBlob: blob }));
    expect(out.KeyId).toMatch(new RegExp(`${keyId}$`));
    expect(Buffer.from(out.Plaintext!).toString()).toBe('secure transport');
  }, 90_000);
});
