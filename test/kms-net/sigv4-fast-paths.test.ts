import { describe, expect, it } from 'vitest';
import { SignatureV4 } from '@smithy/signature-v4';
import { headerMap } from '../../src/kms/sigv4/canonical.js';
import { deriveSigningKey } from '../../src/kms/sigv4/signing-key.js';
import { SigV4Verifier, parseAuthorization } from '../../src/kms/sigv4/verifier.js';
import { SigV4Error } from '../../src/kms/sigv4/errors.js';
import { Sha256 } from './smithy-sha256.js';

// The verifier's shortcuts for what SDKs send (one regular expression for the Authorization header,
// canonical header values kept as they are, node's flat rawHeaders) must read every request exactly as
// the general code does.


const SIG = 'a'.repeat(64);

describe('SigV4 fast paths', () => {
  it('parseAuthorization: the SDK form and its spaced, reordered variants give the same fields', () => {
    const want = { accessKeyId: 'AKIDEXAMPLE', date: '20261130', region: 'us-east-1', service: 'kms', terminator: 'aws4_request', signedHeaders: ['content-type', 'host', 'x-amz-date'], signature: SIG };
    for (const h of [
      `AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261130/us-east-1/kms/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=${SIG}`,
      `AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261130/us-east-1/kms/aws4_request,SignedHeaders=content-type;host;x-amz-date,Signature=${SIG}`,
      `AWS4-HMAC-SHA256 Signature=${SIG}, Credential=AKIDEXAMPLE/20261130/us-east-1/kms/aws4_request , SignedHeaders=content-type;host;x-amz-date`,
      `AWS4-HMAC-SHA256  Credential=AKIDEXAMPLE/20261130/us-east-1/kms/aws4_request,  SignedHeaders=content-type;host;x-amz-date, Signature=${SIG}`,
    ]) expect(parseAuthorization(h), h).toEqual(want);
  });

  it('parseAuthorization: what the SDK form does not cover still gets the general refusals', () => {
    const refusal = (h: string): string => { try { parseAuthorization(h); return 'accepted'; } catch (e) { return (e as SigV4Error).awsName!; } };
    expect(refusal(`AWS4-HMAC-SHA256 Credential=AKID/20261130/us-east-1/kms/aws4_request, SignedHeaders=Host;x-amz-date, Signature=${SIG}`)).toBe('IncompleteSignatureException');
    expect(refusal(`AWS4-HMAC-SHA256 Credential=AKID/20261130/us-east-1/kms/aws4_request, SignedHeaders=host;;x-amz-date, Signature=${SIG}`)).toBe('IncompleteSignatureException');
    expect(refusal(`AWS4-HMAC-SHA256 Credential=AKID/20261130/us-east-1/kms, SignedHeaders=host, Signature=${SIG}`)).toBe('IncompleteSignatureException');
    expect(refusal(`AWS4-HMAC-SHA256 Credential=AKID/20261130/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=${SIG.toUpperCase()}`)).toBe('IncompleteSignatureException');
    expect(refusal(`AWS4-HMAC-SHA1 Credential=AKID/20261130/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=${SIG}`)).toBe('IncompleteSignatureException');
  });

  it('headerMap: node-style flat rawHeaders and pairs give the same map, odd whitespace canonicalized', () => {
    const raw = ['Host', 'h', 'X-Odd', '  a \t b  ', 'x-odd', 'c\u00a0 d', 'User-Agent', 'aws-sdk-js/3 os/linux', 'Empty', '', 'X-Trail', 'v '];
    const pairs: [string, string][] = [];
    for (let i = 0; i < raw.length; i += 2) pairs.push([raw[i]!, raw[i + 1]!]);
    const m = headerMap({ raw });
    expect(m).toEqual(headerMap(pairs));
    expect([...m]).toEqual([['host', 'h'], ['x-odd', 'a b,c d'], ['user-agent', 'aws-sdk-js/3 os/linux'], ['empty', ''], ['x-trail', 'v']]);
  });

  it('verify: an SDK-signed request given as node rawHeaders is accepted, a tampered body refused', async () => {
    const secret = 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY';
    const now = Date.UTC(2026, 10, 30, 12, 0, 0);
    const signer = new SignatureV4({ credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: secret }, region: 'us-east-1', service: 'kms', sha256: Sha256 });
    const body = '{"CiphertextBlob":"AAAA","EncryptionContext":{"purpose":"test"}}';
    const signed = await signer.sign({ method: 'POST', protocol: 'https:', hostname: '127.0.0.1', port: 4443, path: '/', query: {},
      headers: { host: '127.0.0.1:4443', 'x-amz-target': 'TrentService.Decrypt', 'content-type': 'application/x-amz-json-1.1', 'content-length': String(body.length) }, body }, { signingDate: new Date(now) });
    const raw = Object.entries(signed.headers as Record<string, string>).flat();
    let derivations = 0;
    const v = new SigV4Verifier({ region: 'us-east-1', services: ['kms'], now: () => now,
      credentials: () => ({ principal: 'alice', cacheId: 'AKIDEXAMPLE', signingKey: async (d, r, s) => { derivations++; return deriveSigningKey(Buffer.from(secret), d, r, s); } }) });
    for (let i = 0; i < 3; i++) expect((await v.verify({ method: 'POST', target: '/', headers: { raw }, body: Buffer.from(body) })).principal).toBe('alice');
    expect(derivations).toBe(1); // cached, and still right after the first use wiped what the HSM handed over
    await expect(v.verify({ method: 'POST', target: '/', headers: { raw }, body: Buffer.from(body.replace('test', 'tset')) })).rejects.toMatchObject({ awsName: 'InvalidSignatureException' });
    v.forget();
    expect((await v.verify({ method: 'POST', target: '/', headers: { raw }, body: Buffer.from(body) })).principal).toBe('alice');
    expect(derivations).toBe(2);
    // Several requests deriving the same key at once: the copies that lose are wiped, never the cached one.
    v.forget();
    const all = await Promise.all(Array.from({ length: 5 }, () => v.verify({ method: 'POST', target: '/', headers: { raw }, body: Buffer.from(body) })));
    expect(all.map((x) => x.principal)).toEqual(Array(5).fill('alice'));
    expect(derivations).toBe(7);
    expect((await v.verify({ method: 'POST', target: '/', headers: { raw }, body: Buffer.from(body) })).principal).toBe('alice');
    expect(derivations).toBe(7);
  });
});
