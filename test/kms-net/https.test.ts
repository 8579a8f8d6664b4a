/**
 * HTTPS with a CA the test makes with openssl: the Debian `awscli` (trusting
 * the CA through AWS_CA_BUNDLE) and the SDK in a child process (through
 * NODE_EXTRA_CA_CERTS), both configured only by environment variables.
 */
import { writeFileSync, readFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AWS_CLI as AWS, auditEvents, awsCliEnv, makeAccessKey, startKmsDaemon } from './helpers.js';
import { Env, ensureBuilt, run, ROOT } from '../e2e/helpers.js';

describe('KMS over HTTPS: awscli and the SDK', () => {
  const env = new Env('kmshttps');
  let url = '';
  let awsEnv: Record<string, string> = {};

  const aws = async (args: string[]) => {
    const r = await run(AWS, [...args, '--endpoint-url', url, '--output', 'json'], { env: awsEnv, timeoutMs: 60_000 });
    return { ...r, json: () => JSON.parse(r.stdout) };
  };

  beforeAll(async () => {
    ensureBuilt();
    const started = await startKmsDaemon(env, { tls: true });
    url = started.url;
    expect(url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const { key: k } = await makeAccessKey(env, 'ops', JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'kms:*', Resource: '*' }] }));
    awsEnv = awsCliEnv(env.dir, k, { ca: started.ca! });
  });
  afterAll(() => env.cleanup());

  it('awscli: create-key, encrypt/decrypt with context, grants, sign, and an error exit code', async () => {
    const key = (await aws(['kms', 'create-key', '--description', 'from awscli'])).json().KeyMetadata;
    expect(key.Arn).toMatch(/^arn:aws:kms:us-east-1:\d{12}:key\//);
    writeFileSync(join(env.dir, 'pt'), 'over https');
    const enc = await aws(['kms', 'encrypt', '--key-id', key.KeyId, '--plaintext', `fileb://${join(env.dir, 'pt')}`, '--encryption-context', 'app=kmsnet']);
    expect(enc.code).toBe(0);
    writeFileSync(join(env.dir, 'ct'), Buffer.from(enc.json().CiphertextBlob, 'base64'));
    const dec = await aws(['kms', 'decrypt', '--ciphertext-blob', `fileb://${join(env.dir, 'ct')}`, '--encryption-context', 'app=kmsnet']);
    expect(Buffer.from(dec.json().Plaintext, 'base64').toString()).toBe('over https');
    const wrong = await aws(['kms', 'decrypt', '--ciphertext-blob', `fileb://${join(env.dir, 'ct')}`, '--encryption-context', 'app=other']);
    expect(wrong.code).not.toBe(0);
    expect(wrong.stderr).toContain('InvalidCiphertextException');
    const me = (await env.ok(['iam', 'list-users'])).Users.find((u: any) => u.UserName === 'ops').Arn;
    const g = await aws(['kms', 'create-grant', '--key-id', key.KeyId, '--grantee-principal', me, '--operations', 'Decrypt']);
    expect(g.json().GrantId).toMatch(/^[0-9a-f]{64}$/);
    expect((await aws(['kms', 'list-grants', '--key-id', key.KeyId])).json().Grants).toHaveLength(1);
    const signer = (await aws(['kms', 'create-key', '--key-spec', 'ECC_NIST_P256', '--key-usage', 'SIGN_VERIFY'])).json().KeyMetadata;
    const sig = await aws(['kms', 'sign', '--key-id', signer.KeyId, '--message', `fileb://${join(env.dir, 'pt')}`, '--signing-algorithm', 'ECDSA_SHA_256']);
    writeFileSync(join(env.dir, 'sig'), Buffer.from(sig.json().Signature, 'base64'));
    const ver = await aws(['kms', 'verify', '--key-id', signer.KeyId, '--message', `fileb://${join(env.dir, 'pt')}`, '--signature', `fileb://${join(env.dir, 'sig')}`, '--signing-algorithm', 'ECDSA_SHA_256']);
    expect(ver.json().SignatureValid).toBe(true);
    const nf = await aws(['kms', 'describe-key', '--key-id', 'alias/missing']);
    expect(nf.code).toBe(254); // awscli: the service answered with an error
    expect(nf.stderr).toContain('(NotFoundException)');
  });

  it('a trust policy with Bool aws:SecureTransport true: AssumeRole over HTTPS is allowed (aws sts assume-role)', async () => {
    const me = (await env.ok(['iam', 'list-users'])).Users.find((u: any) => u.UserName === 'ops').Arn;
    await env.ok(['iam', 'create-role', 'tlsonly']);
    await env.ok(['iam', 'update-assume-role-policy', '--role-name', 'tlsonly', '--policy-document',
      JSON.stringify({ Statement: [{ Effect: 'Allow', Principal: { AWS: me }, Action: 'sts:AssumeRole', Condition: { Bool: { 'aws:SecureTransport': 'true' } } }] })]);
    const r = await aws(['sts', 'assume-role', '--role-arn', me.replace(/:user\/ops$/, ':role/tlsonly'), '--role-session-name', 'tls']);
    expect([r.code, r.stderr]).toEqual([0, '']);
    expect(r.json().AssumedRoleUser.Arn).toMatch(/:assumed-role\/tlsonly\/tls$/);
  });

  it('the SDK in a child process trusts the CA through NODE_EXTRA_CA_CERTS; an unsigned request is refused and audited with tlsDetails', async () => {
    const script = `const { KMSClient, ListKeysCommand } = require('module').createRequire(${JSON.stringify(join(ROOT, 'package.json'))})('@aws-sdk/client-kms');
      new KMSClient({}).send(new ListKeysCommand({})).then((r) => console.log(JSON.stringify({ n: r.Keys.length })), (e) => { console.error('Error', e.name, e.message); process.exit(1); });`;
    const r = await run(process.execPath, ['-e', script], { env: { ...awsEnv, AWS_ENDPOINT_URL: url }, timeoutMs: 60_000 });
    expect(r.stderr).not.toMatch(/Error/);
    expect(JSON.parse(r.stdout.trim().split('\n').at(-1)!).n).toBeGreaterThanOrEqual(0);
    const u = new URL(url);
    const answer = await new Promise<{ status: number; id: string; body: any }>((resolve, reject) => {
      const req = request({ host: u.hostname, port: u.port, method: 'POST', path: '/', ca: readFileSync(join(env.dir, 'ca.pem')), servername: 'localhost',
        headers: { 'X-Amz-Target': 'TrentService.ListKeys', 'Content-Type': 'application/x-amz-json-1.1' } }, (res) => {
        let t = '';
        res.on('data', (c) => (t += c));
        res.on('end', () => resolve({ status: res.statusCode!, id: String(res.headers['x-amzn-requestid']), body: JSON.parse(t) }));
      });
      req.on('error', reject);
      req.end('{}');
    });
    expect(answer).toMatchObject({ status: 400, body: { __type: 'MissingAuthenticationTokenException' } });
    const ev = auditEvents(env).find((e) => e.requestID === answer.id);
    expect(ev).toMatchObject({ eventName: 'ListKeys', errorCode: 'MissingAuthenticationTokenException', sourceIPAddress: '127.0.0.1', tlsDetails: { tlsVersion: expect.stringMatching(/^TLSv1\.[23]$/) } });
  });
});
