import { describe, expect, it } from 'vitest';
import { SignatureV4 } from '@smithy/signature-v4';
import { deriveSigningKey } from '../../src/kms/sigv4/signing-key.js';
import { SigV4Verifier } from '../../src/kms/sigv4/verifier.js';
import { Sha256 } from './smithy-sha256.js';

// The verifier keeps each signing key (kSigning) as a copy of its own and wipes key material it is
// done with: the buffer the HSM handed over at once, the cached copies on forget() (an access key
// deleted or deactivated) and when a new day evicts keys older than yesterday's.


const secret = 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY';
const body = '{"CiphertextBlob":"AAAA"}';

async function signedAt(ms: number): Promise<{ method: string; target: string; headers: { raw: string[] }; body: Buffer }> {
  const signer = new SignatureV4({ credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: secret }, region: 'us-east-1', service: 'kms', sha256: Sha256 });
  const signed = await signer.sign({ method: 'POST', protocol: 'https:', hostname: '127.0.0.1', port: 4443, path: '/', query: {},
    headers: { host: '127.0.0.1:4443', 'x-amz-target': 'TrentService.Decrypt', 'content-type': 'application/x-amz-json-1.1' }, body }, { signingDate: new Date(ms) });
  return { method: 'POST', target: '/', headers: { raw: Object.entries(signed.headers as Record<string, string>).flat() }, body: Buffer.from(body) };
}

describe('SigV4 verifier: the signing-key cache wipes what it is done with', () => {
  it('the HSM\'s buffer at once, the cached copies on forget() and on a day change; answers stay right', async () => {
    let now = Date.UTC(2026, 10, 28, 12, 0, 0);
    const handedOver: Buffer[] = [];
    const v = new SigV4Verifier({ region: 'us-east-1', services: ['kms'], now: () => now,
      credentials: () => ({ principal: 'alice', cacheId: 'AKIDEXAMPLE', signingKey: async (d, r, s) => { const k = deriveSigningKey(Buffer.from(secret), d, r, s); handedOver.push(k); return k; } }) });
    // The cache is private; this test reads it to see the wiping, nothing else does.
    const cached = (): Buffer[] => [...(v as unknown as { keys: Map<string, Buffer> }).keys.values()];

    const day1 = await signedAt(now);
    expect((await v.verify(day1)).principal).toBe('alice');
    expect(handedOver).toHaveLength(1);
    expect(handedOver[0]!.every((b) => b === 0)).toBe(true);
    const first = cached();
    expect(first).toHaveLength(1);
    expect(first[0]!.equals(deriveSigningKey(Buffer.from(secret), '20261128', 'us-east-1', 'kms'))).toBe(true);

    v.forget();
    expect(first[0]!.every((b) => b === 0)).toBe(true);
    expect(cached()).toHaveLength(0);
    expect((await v.verify(day1)).principal).toBe('alice'); // derived again, not the wiped copy
    expect(handedOver).toHaveLength(2);

    // Two days later: the 28th's key is older than yesterday once the 30th has been seen.
    const old = cached()[0]!;
    now = Date.UTC(2026, 10, 29, 12, 0, 0);
    expect((await v.verify(await signedAt(now))).principal).toBe('alice');
    expect(old.every((b) => b === 0)).toBe(false); // yesterday's key is kept around midnight
    now = Date.UTC(2026, 10, 30, 12, 0, 0);
    expect((await v.verify(await signedAt(now))).principal).toBe('alice');
    expect(old.every((b) => b === 0)).toBe(true);
    expect(cached()).toHaveLength(2);
    await expect(v.verify({ ...(await signedAt(now)), body: Buffer.from(body.replace('AAAA', 'AAAB')) })).rejects.toMatchObject({ awsName: 'InvalidSignatureException' });
  });
});
