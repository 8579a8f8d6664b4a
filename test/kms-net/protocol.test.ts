/**
 * Wire-protocol fixes that apply to the Unix socket as well as the network
 * listener: error bodies, strict blobs, Recipient, DryRun, request ids.
 * Real daemon, real control socket, raw HTTP (no client library to paper over
 * what is on the wire).
 */
import { request } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SignatureV4 } from '@smithy/signature-v4';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { KMS_ADMIN_POLICY, Sha256, auditEvents, makeAccessKey, startKmsDaemon, type AccessKey } from './helpers.js';

interface Answer { status: number; requestId: string; body: Record<string, any> }

describe('AWS JSON 1.1 on the control socket', () => {
  const env = new Env('kmsproto');
  const kms = (op: string, body: unknown): Promise<Answer> => new Promise((resolve, reject) => {
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    const req = request({ socketPath: join(env.state, 'ebsd.sock'), method: 'POST', path: '/', headers: { 'X-Amz-Target': `TrentService.${op}`, 'Content-Type': 'application/x-amz-json-1.1', 'Content-Length': Buffer.byteLength(text) } }, (res) => {
      let data = '';
      res.on('data', (c) => (data += c));
      res.on('end', () => resolve({ status: res.statusCode!, requestId: String(res.headers['x-amzn-requestid']), body: data ? JSON.parse(data) : {} }));
    });
    req.on('error', reject);
    req.end(text);
  });
  const events = (): Record<string, any>[] => auditEvents(env);
  const eventsOf = (requestId: string): Record<string, any>[] => events().filter((e) => e.requestID === requestId);
  let keyId = '';
  let url = '';
  let alice: { key: AccessKey; arn: string } = { key: {} as AccessKey, arn: '' };

  /** The same request, SigV4-signed by alice, to the network listener. */
  const net = async (op: string, text: string): Promise<Answer> => {
    const u = new URL(url);
    const signer = new SignatureV4({ credentials: { accessKeyId: alice.key.AccessKeyId, secretAccessKey: alice.key.SecretAccessKey }, region: 'us-east-1', service: 'kms', sha256: Sha256 });
    const r = await signer.sign({
      method: 'POST', protocol: 'http:', hostname: u.hostname, port: Number(u.port), path: '/', query: {},
      headers: { host: u.host, 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': `TrentService.${op}` }, body: text,
    });
    const headers = { ...r.headers as Record<string, string> };
    delete headers.host;
    const res = await fetch(url, { method: 'POST', headers, body: text });
    return { status: res.status, requestId: res.headers.get('x-amzn-requestid')!, body: await res.json() as Record<string, any> };
  };

  beforeAll(async () => {
    ensureBuilt();
    ({ url } = await startKmsDaemon(env));
    keyId = (await kms('CreateKey', {})).body.KeyMetadata.KeyId;
    alice = await makeAccessKey(env, 'alice', KMS_ADMIN_POLICY, 'admin');
  });
  afterAll(() => env.cleanup());

  it('an error body is {"__type","message"} and nothing else; its x-amzn-RequestId is the audit requestID', async () => {
    const r = await kms('DescribeKey', { KeyId: 'alias/nothing-here' });
    expect(r.status).toBe(400);
    expect(Object.keys(r.body).sort()).toEqual(['__type', 'message']);
    expect(r.body.__type).toBe('NotFoundException');
    expect(events().filter((e) => e.requestID === r.requestId)).toMatchObject([{ eventName: 'DescribeKey', errorCode: 'NotFoundException' }]);
    const ok = await kms('DescribeKey', { KeyId: keyId });
    expect(events().filter((e) => e.requestID === ok.requestId)).toMatchObject([{ eventName: 'DescribeKey' }]);
  });

  it('a blob that is not strict base64 is a SerializationException naming the member, and nothing is encrypted', async () => {
    for (const bad of ['not base64!!', 'aGk', 'aGk=\n', 12]) {
      const r = await kms('Encrypt', { KeyId: keyId, Plaintext: bad });
      expect(r.status).toBe(400);
      expect(r.body).toEqual({ __type: 'SerializationException', message: expect.stringContaining('Plaintext') });
      expect(r.body.CiphertextBlob).toBeUndefined();
      // Refused before the core, still audited: the caller, the answer, the response's request id.
      expect(eventsOf(r.requestId)).toMatchObject([{
        eventName: 'Encrypt', errorCode: 'SerializationException', errorMessage: r.body.message, requestParameters: null, userIdentity: { type: 'Root' },
      }]);
    }
    expect((await kms('Encrypt', { KeyId: keyId, Plaintext: 'aGk=' })).status).toBe(200);
  });

  it('Decrypt with a Recipient is refused (UnsupportedOperationException), never answered in the clear', async () => {
    const blob = (await kms('Encrypt', { KeyId: keyId, Plaintext: Buffer.from('enclave only').toString('base64') })).body.CiphertextBlob;
    const r = await kms('Decrypt', { CiphertextBlob: blob, Recipient: { KeyEncryptionAlgorithm: 'RSAES_OAEP_SHA_256', AttestationDocument: 'AAAA' } });
    expect(r.body).toEqual({ __type: 'UnsupportedOperationException', message: expect.any(String) });
    expect(JSON.stringify(r.body)).not.toContain(Buffer.from('enclave only').toString('base64'));
    expect(eventsOf(r.requestId)).toMatchObject([{ eventName: 'Decrypt', errorCode: 'UnsupportedOperationException', userIdentity: { type: 'Root' } }]);
  });

  it('a body that is not a JSON object is refused before the core, and audited with the caller and the request id', async () => {
    for (const text of ['{"KeyId": ', '[1]']) {
      const r = await kms('Encrypt', text);
      expect(r).toMatchObject({ status: 400, body: { __type: 'SerializationException' } });
      expect(eventsOf(r.requestId)).toMatchObject([{ eventName: 'Encrypt', errorCode: 'SerializationException', userIdentity: { type: 'Root' } }]);
    }
  });

  it('on the network listener, a request refused after SigV4 but before the core is audited with the signer as caller', async () => {
    const cases: [string, string, string][] = [
      ['Encrypt', JSON.stringify({ KeyId: keyId, Plaintext: 'not base64!!' }), 'SerializationException'],
      ['Decrypt', JSON.stringify({ CiphertextBlob: 'AAAA', Recipient: { KeyEncryptionAlgorithm: 'RSAES_OAEP_SHA_256', AttestationDocument: 'AAAA' } }), 'UnsupportedOperationException'],
      ['Encrypt', '{"KeyId": ', 'SerializationException'],
    ];
    for (const [op, text, type] of cases) {
      const r = await net(op, text);
      expect(r).toMatchObject({ status: 400, body: { __type: type } });
      expect(eventsOf(r.requestId)).toMatchObject([{
        eventName: op, errorCode: type, errorMessage: r.body.message, sourceIPAddress: '127.0.0.1',
        userIdentity: { type: 'IAMUser', arn: alice.arn, accessKeyId: alice.key.AccessKeyId },
      }]);
    }
    // The same listener's decodable requests are audited by the core, as before.
    const ok = await net('DescribeKey', JSON.stringify({ KeyId: keyId }));
    expect(ok.status).toBe(200);
    expect(eventsOf(ok.requestId)).toMatchObject([{ eventName: 'DescribeKey', userIdentity: { arn: alice.arn } }]);
  });

  it('DryRun: authorized requests answer DryRunOperationException (412) and have no effect', async () => {
    const grantee = `arn:aws:iam::${(await kms('DescribeKey', { KeyId: keyId })).body.KeyMetadata.AWSAccountId}:role/ebsd-host`;
    const dry = await kms('CreateGrant', { KeyId: keyId, GranteePrincipal: grantee, Operations: ['Decrypt'], DryRun: true });
    expect(dry).toMatchObject({ status: 412, body: { __type: 'DryRunOperationException' } });
    expect((await kms('ListGrants', { KeyId: keyId })).body.Grants).toEqual([]);
    const real = await kms('CreateGrant', { KeyId: keyId, GranteePrincipal: grantee, Operations: ['Decrypt'] });
    expect(real.status).toBe(200);
    const revoke = await kms('RevokeGrant', { KeyId: keyId, GrantId: real.body.GrantId, DryRun: true });
    expect(revoke).toMatchObject({ status: 412, body: { __type: 'DryRunOperationException' } });
    expect((await kms('ListGrants', { KeyId: keyId })).body.Grants.map((g: any) => g.GrantId)).toEqual([real.body.GrantId]);
    const enc = await kms('Encrypt', { KeyId: keyId, Plaintext: 'aGk=', DryRun: true });
    expect(enc).toMatchObject({ status: 412, body: { __type: 'DryRunOperationException' } });
    expect(enc.body.CiphertextBlob).toBeUndefined();
    // Authorization still comes first: a key that does not exist is NotFound, not a dry-run success.
    expect((await kms('Encrypt', { KeyId: 'alias/nope', Plaintext: 'aGk=', DryRun: true })).body.__type).toBe('NotFoundException');
  });

  it('ListAliases markers stay correct while the list changes: an alias created between two pages does not repeat one', async () => {
    for (const n of ['a', 'c', 'e']) expect((await kms('CreateAlias', { AliasName: `alias/page-${n}`, TargetKeyId: keyId })).status).toBe(200);
    const first = await kms('ListAliases', { KeyId: keyId, Limit: 2 });
    expect(first.body).toMatchObject({ Truncated: true, NextMarker: expect.any(String) });
    expect((await kms('CreateAlias', { AliasName: 'alias/page-b', TargetKeyId: keyId })).status).toBe(200);
    const second = await kms('ListAliases', { KeyId: keyId, Limit: 2, Marker: first.body.NextMarker });
    const names = [...first.body.Aliases, ...second.body.Aliases].map((a: any) => a.AliasName);
    expect(names).toEqual(['alias/page-a', 'alias/page-c', 'alias/page-e']);
    expect(second.body.Truncated).toBe(false);
    expect((await kms('ListAliases', { KeyId: keyId, Marker: 'bm90IGEgbWFya2Vy' })).body.__type).toBe('InvalidMarkerException');
  });
});
