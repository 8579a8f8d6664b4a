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

async function signedAt(ms: number, accessKeyId = 'AKIDEXAMPLE'): Promise<{ method: string; target: string; headers: { raw: string[] }; body: Buffer }> {
  const signer = new SignatureV4({ credentials: { accessKeyId, secretAccessKey: secret }, region: 'us-east-1', service: 'kms', sha256: Sha256 });
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
    const cached = (): Buffer[] => [...(v as unknown as { keys: Map<string, { key: Buffer }> }).keys.values()].map((c) => c.key);

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

  // The cache holds a key per (credential, day, region, service) and must let go of every key older than
  // yesterday, whatever its credential's cache id holds (a session's holds its token, \0 included) and
  // whether or not the days between were quiet.
  it('a day change evicts and wipes every key older than yesterday: session keys too, and after a quiet day', async () => {
    let now = Date.UTC(2026, 10, 28, 12, 0, 0);
    const v = new SigV4Verifier({ region: 'us-east-1', services: ['kms'], now: () => now,
      credentials: (id) => ({ principal: id, cacheId: id === 'ASIASESSION' ? 'ASIASESSION\0dG9rZW4=' : id,
        signingKey: async (d, r, s) => deriveSigningKey(Buffer.from(secret), d, r, s) }) });
    // The cache is private; read here only to see what it keeps and what it wipes.
    const cache = (): Map<string, unknown> => (v as unknown as { keys: Map<string, unknown> }).keys;
    const keyOf = (c: unknown): Buffer => (Buffer.isBuffer(c) ? c : (c as { key: Buffer }).key);
    const cachedFor = (day: string): Buffer[] => [...cache()].filter(([id]) => id.includes(`\0${day}\0`)).map(([, c]) => keyOf(c));
    const wiped = (b: Buffer): boolean => b.every((x) => x === 0);

    await v.verify(await signedAt(now, 'ASIASESSION'));
    await v.verify(await signedAt(now, 'AKIDEXAMPLE'));
    const day28 = cachedFor('20261128');
    expect(day28).toHaveLength(2);
    // Nothing on the 29th; on the 30th the 28th is two days old: both keys go, both wiped.
    now = Date.UTC(2026, 10, 30, 0, 5, 0);
    await v.verify(await signedAt(now, 'AKIDEXAMPLE'));
    expect(day28.map(wiped)).toEqual([true, true]);
    expect(cache().size).toBe(1);

    // A key for yesterday (a request signed at 23:58 on the 29th, within the skew) stays past midnight,
    // and goes the day after.
    await v.verify(await signedAt(now - 7 * 60_000, 'ASIASESSION'));
    const day29 = cachedFor('20261129');
    expect(day29).toHaveLength(1);
    now = Date.UTC(2026, 11, 1, 0, 1, 0);
    await v.verify(await signedAt(now, 'ASIASESSION'));
    expect(wiped(day29[0]!)).toBe(true);
    expect(cachedFor('20261130')).toHaveLength(1);
    expect(cachedFor('20261201')).toHaveLength(1);
    expect(cache().size).toBe(2);
  });
});
