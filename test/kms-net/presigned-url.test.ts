/**
 * Query-string authentication (a presigned URL, X-Amz-Signature in the query) over the real
 * listener: refused as IncompleteSignature with a message that says so, on STS and on KMS,
 * audited with the access key id the URL names; never "Missing Authentication Token", and the
 * operation never runs (docs/architecture.md §5.2). The URLs come from @smithy/signature-v4's
 * presign, as the SDK's presigners make them. A request signed in the Authorization header
 * with `Expect: 100-continue` (the aws CLI sends it for large bodies) is answered as any other.
 */
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SignatureV4 } from '@smithy/signature-v4';
import { Sha256, auditEvents, makeAccessKey, startKmsDaemon, KMS_ADMIN_POLICY, REGION, type AccessKey } from './helpers.js';
import { Env, ensureBuilt } from '../e2e/helpers.js';

function send(u: URL, method: string, path: string, headers: Record<string, string>, body = ''): Promise<{ status: number; body: string; requestId: string }> {
  return new Promise((resolve, reject) => {
    const r = request({ host: u.hostname, port: u.port, method, path, headers }, (res) => {
      let b = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (b += c));
      res.on('end', () => resolve({ status: res.statusCode!, body: b, requestId: String(res.headers['x-amzn-requestid']) }));
    });
    r.on('error', reject);
    r.end(body);
  });
}

const queryString = (q: Record<string, unknown>): string => Object.entries(q).map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`).join('&');

describe('presigned URLs (query-string SigV4) over the listener', () => {
  const env = new Env('presign');
  let url: URL;
  let alice: AccessKey;
  let accountId = '';
  const signer = (service: string) => new SignatureV4({ service, region: REGION, credentials: { accessKeyId: alice.AccessKeyId, secretAccessKey: alice.SecretAccessKey }, sha256: Sha256 });

  beforeAll(async () => {
    ensureBuilt();
    url = new URL((await startKmsDaemon(env)).url);
    ({ key: alice, accountId } = await makeAccessKey(env, 'alice', KMS_ADMIN_POLICY));
  });
  afterAll(async () => {
    await env.cleanup();
  });

  it('a presigned STS GetCallerIdentity and a presigned KMS CreateKey are IncompleteSignature, saying why, audited with the URL\'s key id; no key is made', async () => {
    const base = { protocol: 'http:', hostname: url.hostname, port: Number(url.port), path: '/' };
    const sts = await signer('sts').presign({ ...base, method: 'GET', query: { Action: 'GetCallerIdentity', Version: '2011-06-15' }, headers: { host: url.host } }, { expiresIn: 300 });
    expect(sts.query['X-Amz-Signature']).toMatch(/^[0-9a-f]{64}$/);
    const body = JSON.stringify({ Description: 'by a presigned URL' });
    const kms = await signer('kms').presign({
      ...base, method: 'POST', query: {}, body,
      headers: { host: url.host, 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': 'TrentService.CreateKey' },
    }, { expiresIn: 300, unhoistableHeaders: new Set(['x-amz-target']) });
    const why = 'Query-string authentication (a presigned URL: X-Amz-Signature, X-Amz-Credential in the query string) is not accepted by this endpoint; sign the request in the Authorization header.';

    const s = await send(url, 'GET', `/?${queryString(sts.query)}`, { host: url.host });
    expect(s.status).toBe(400);
    expect(s.body).toBe(`<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>IncompleteSignature</Code><Message>${why}</Message></Error><RequestId>${s.requestId}</RequestId></ErrorResponse>`);

    const k = await send(url, 'POST', `/?${queryString(kms.query)}`, kms.headers as Record<string, string>, body);
    expect({ status: k.status, body: JSON.parse(k.body) }).toEqual({ status: 400, body: { __type: 'IncompleteSignatureException', message: why } });

    for (const [r, source] of [[s, 'sts.amazonaws.com'], [k, 'kms.amazonaws.com']] as const) {
      expect(auditEvents(env).filter((e) => e.requestID === r.requestId)).toMatchObject([
        { eventSource: source, errorCode: 'IncompleteSignatureException', userIdentity: { type: 'Unknown', accessKeyId: alice.AccessKeyId }, sourceIPAddress: '127.0.0.1' },
      ]);
    }
    expect(auditEvents(env).some((e) => e.eventName === 'CreateKey' && !e.errorCode)).toBe(false);
    // Without any signature it is still Missing Authentication Token.
    const none = await send(url, 'GET', '/?Action=GetCallerIdentity&Version=2011-06-15', { host: url.host });
    expect([none.status, none.body]).toEqual([403, expect.stringContaining('<Code>MissingAuthenticationToken</Code><Message>Missing Authentication Token</Message>')]);
  });

  it('a header-signed request with Expect: 100-continue is answered', async () => {
    const body = 'Action=GetCallerIdentity&Version=2011-06-15';
    const signed = await signer('sts').sign({
      protocol: 'http:', hostname: url.hostname, port: Number(url.port), path: '/', method: 'POST', query: {}, body,
      headers: { host: url.host, 'content-type': 'application/x-www-form-urlencoded; charset=utf-8' },
    });
    const r = await send(url, 'POST', '/', { ...(signed.headers as Record<string, string>), expect: '100-continue' }, body);
    expect([r.status, r.body]).toEqual([200, expect.stringContaining(`<Arn>arn:aws:iam::${accountId}:user/alice</Arn>`)]);
  });
});
