import { request } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from './helpers.js';
import { decodeKmsRequest, encodeResponse } from '../../src/daemon/aws-json.js';

/**
 * A `__proto__` key is an ordinary key on the wire (AWS accepts any UTF-8
 * key): carried into the KMS core and back out in responses, through the
 * real daemon's control socket (src/daemon/aws-json.ts).
 */

type Answer = { status: number; text: string; body: any };

function call(env: Env, target: string, body: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      { socketPath: join(env.state, 'ebsd.sock'), method: 'POST', path: '/', headers: { 'X-Amz-Target': target, 'Content-Type': 'application/x-amz-json-1.1' } },
      (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text, body: JSON.parse(text || '{}') }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

describe('__proto__ keys through the control socket', () => {
  const env = new Env('proto');

  beforeAll(async () => {
    ensureBuilt();
    await env.start(['--kms-only', '--kms-listen', '127.0.0.1:0']);
  }, 60_000);
  afterAll(() => env.cleanup());

  it('an encryption context key __proto__ binds the ciphertext; a grant constraint __proto__ is listed back', async () => {
    const created = await call(env, 'TrentService.CreateKey', '{}');
    expect(created.status).toBe(200);
    const keyId = created.body.KeyMetadata.KeyId as string;
    const account = (created.body.KeyMetadata.Arn as string).split(':')[4];

    const enc = await call(env, 'TrentService.Encrypt', JSON.stringify({ KeyId: keyId, Plaintext: Buffer.from('data').toString('base64' ) }).replace(/}$/, ',"EncryptionContext":{"__proto__":"d"}}'));
    expect(enc.status, enc.text).toBe(200);
    const blob = enc.body.CiphertextBlob as string;
    const same = await call(env, 'TrentService.Decrypt', `{"CiphertextBlob":"${blob}","EncryptionContext":{"__proto__":"d"}}`);
    expect(same.status, same.text).toBe(200);
    expect(Buffer.from(same.body.Plaintext, 'base64').toString()).toBe('data');
    for (const ctx of ['{}', '{"__proto__":"e"}', '{"__proto__":" "}']) {
      const other = await call(env, 'TrentService.Decrypt', `{"CiphertextBlob":"${blob}","EncryptionContext":${ctx}}`);
      expect(other.body.__type, ctx).toBe('InvalidCiphertextException');
    }

    const grant = await call(env, 'TrentService.CreateGrant', JSON.stringify({
      KeyId: keyId, GranteePrincipal: `arn:aws:iam::${account}:root`, Operations: ['Decrypt'],
    }).replace(/}$/, ',"Constraints":{"EncryptionContextEquals":{"__proto__":"vol-1","k":"v"}}}'));
    expect(grant.status, grant.text).toBe(200);
    const listed = await call(env, 'TrentService.ListGrants', JSON.stringify({ KeyId: keyId }));
    expect(listed.status, listed.text).toBe(200);
    // The raw text and the parsed object both hold the key (JSON.parse defines "__proto__" as an own member).
    expect(listed.text).toContain('"__proto__":"vol-1"');
    const eq = listed.body.Grants[0].Constraints.EncryptionContextEquals;
    expect(Object.keys(eq).sort()).toEqual(['__proto__', 'k']);
    expect(Object.getOwnPropertyDescriptor(eq, '__proto__')?.value).toBe('vol-1');
  }, 60_000);

  it('decodeKmsRequest and encodeResponse keep a "__proto__" member as a member, whatever its value', () => {
    const body = JSON.parse('{"KeyId":"k","__proto__":"x","Nested":{"__proto__":{"a":1}}}') as Record<string, unknown>;
    const req = decodeKmsRequest(body);
    expect(Object.getPrototypeOf(req)).toBe(Object.prototype);
    expect(Object.keys(req).sort()).toEqual(['KeyId', 'Nested', '__proto__']);
    expect(Object.getOwnPropertyDescriptor(req, '__proto__')?.value).toBe('x');
    const withObject = decodeKmsRequest(JSON.parse('{"__proto__":{"KeyId":"inherited"}}'));
    expect(withObject.KeyId).toBeUndefined();
    expect(JSON.stringify(encodeResponse(body))).toBe('{"KeyId":"k","__proto__":"x","Nested":{"__proto__":{"a":1}}}');
  });
});
