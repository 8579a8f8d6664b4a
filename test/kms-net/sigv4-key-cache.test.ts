import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { SignatureV4 } from '@smithy/signature-v4';
import { deriveSigningKey } from '../../src/kms/sigv4/signing-key.js';
import { SigV4Verifier, toAmzDate } from '../../src/kms/sigv4/verifier.js';
import { canonicalRequest, sha256Hex, stringToSign, type WireRequest } from '../../src/kms/sigv4/canonical.js';
import { Sha256 } from './smithy-sha256.js';
import { ManualClock } from '../volume/helpers/manual-clock.js';

// The verifier keeps each signing key (kSigning) as a copy of its own and wipes key material it is
// done with: the buffer the HSM handed over at once, the cached copies on forget() (an access key
// deleted or deactivated) and once no request can use them (their scope day and the 15 minutes of
// skew past it are over), by the next request or by a timer on an idle endpoint.


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

    // The 28th's key verifies a request signed at 23:59 on the 28th until 00:14 on the 29th; a request
    // after that wipes it.
    const old = cached()[0]!;
    now = Date.UTC(2026, 10, 29, 0, 10, 0);
    expect((await v.verify(await signedAt(now))).principal).toBe('alice');
    expect(old.every((b) => b === 0)).toBe(false); // yesterday's key is kept around midnight
    now = Date.UTC(2026, 10, 29, 12, 0, 0);
    expect((await v.verify(await signedAt(now))).principal).toBe('alice');
    expect(old.every((b) => b === 0)).toBe(true);
    expect(cached()).toHaveLength(1);
    await expect(v.verify({ ...(await signedAt(now)), body: Buffer.from(body.replace('AAAA', 'AAAB')) })).rejects.toMatchObject({ awsName: 'InvalidSignatureException' });
  });

  it('on an idle endpoint a timer wipes each key once its day and the skew past it are over', async () => {
    const clock = new ManualClock(Date.UTC(2026, 10, 28, 23, 50, 0));
    const v = new SigV4Verifier({ region: 'us-east-1', services: ['kms'], clock,
      credentials: (id) => ({ principal: id, cacheId: id, signingKey: async (d, r, s) => deriveSigningKey(Buffer.from(secret), d, r, s) }) });
    // The cache is private; read here only to see what it keeps and what it wipes.
    const cached = (): Buffer[] => [...(v as unknown as { keys: Map<string, { key: Buffer }> }).keys.values()].map((c) => c.key);
    const wiped = (b: Buffer): boolean => b.every((x) => x === 0);

    await v.verify(await signedAt(clock.now())); // the 28th's key
    await v.verify(await signedAt(clock.now() + 12 * 60_000)); // the 29th's, signed by a clock 12 minutes ahead
    const [k28, k29] = cached();
    expect(clock.pending).toBe(1);
    // No request from here on. Until 00:15 on the 29th a request signed at 23:59:59 on the 28th is still good.
    await clock.advance(Date.UTC(2026, 10, 29, 0, 15, 0) - clock.now());
    expect([wiped(k28!), wiped(k29!)]).toEqual([false, false]);
    await clock.advance(1_000);
    expect([wiped(k28!), wiped(k29!)]).toEqual([true, false]);
    expect(cached()).toHaveLength(1);
    await clock.advance(Date.UTC(2026, 10, 30, 0, 15, 1) - clock.now());
    expect(wiped(k29!)).toBe(true);
    expect(cached()).toHaveLength(0);
    expect(clock.pending).toBe(0); // nothing armed once the cache is empty
    // forget() disarms the timer too.
    await v.verify(await signedAt(clock.now()));
    expect(clock.pending).toBe(1);
    v.forget();
    expect(clock.pending).toBe(0);
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

/**
 * A request for `accessKeyId` signed with the raw signing key `kSigning` (not a secret): what a
 * caller who knows no secret can send with an all-zero key. The canonical form is the verifier's own
 * (canonical.ts, pinned by AWS's suite in sigv4-vectors.test.ts).
 */
function signedWithKey(accessKeyId: string, kSigning: Buffer, ms: number): WireRequest {
  const amz = toAmzDate(ms);
  const day = amz.slice(0, 8);
  const headers: [string, string][] = [['host', '127.0.0.1:4443'], ['x-amz-date', amz], ['x-amz-target', 'TrentService.Decrypt'], ['content-type', 'application/x-amz-json-1.1']];
  const signedHeaders = ['content-type', 'host', 'x-amz-date', 'x-amz-target'];
  const req: WireRequest = { method: 'POST', target: '/', headers: { raw: headers.flat() }, body: Buffer.from(body) };
  const sts = stringToSign(amz, `${day}/us-east-1/kms/aws4_request`, canonicalRequest(req, signedHeaders, sha256Hex(req.body)));
  const sig = createHmac('sha256', kSigning).update(sts, 'utf8').digest('hex');
  return { ...req, headers: { raw: [...headers.flat(), 'authorization', `AWS4-HMAC-SHA256 Credential=${accessKeyId}/${day}/us-east-1/kms/aws4_request, SignedHeaders=${signedHeaders.join(';')}, Signature=${sig}`] } };
}

describe('SigV4 verifier: a signing key wiped by forget() or a flush is never used', () => {
  const now = Date.UTC(2026, 10, 28, 12, 0, 0);
  const day = toAmzDate(now).slice(0, 8);
  const secretOf = (id: string): Buffer => Buffer.from(id === 'AKIAVICTIM' ? secret : `secret-of-${id}`);
  const keyOf = (id: string): Buffer => deriveSigningKey(secretOf(id), day, 'us-east-1', 'kms');
  const zero = Buffer.alloc(32);
  const verifier = () => new SigV4Verifier({ region: 'us-east-1', services: ['kms'], now: () => now,
    credentials: (id) => ({ principal: id, cacheId: id, signingKey: async (d, r, s) => deriveSigningKey(secretOf(id), d, r, s) }) });
  const outcome = (p: Promise<{ principal: unknown }>): Promise<string> => p.then((r) => `accepted as ${String(r.principal)}`, (e: { awsName?: string }) => e.awsName ?? String(e));

  it('forget() called while a verification is under way: a zero-key signature is refused, the cached key still wiped', async () => {
    const v = verifier();
    // The cache is private; read here only to see that forget() still wipes it.
    const cached = (): Buffer[] => [...(v as unknown as { keys: Map<string, { key: Buffer }> }).keys.values()].map((c) => c.key);
    expect(await outcome(v.verify(signedWithKey('AKIAVICTIM', keyOf('AKIAVICTIM'), now)))).toBe('accepted as AKIAVICTIM');
    const held = cached();
    expect(held).toHaveLength(1);
    const forged = v.verify(signedWithKey('AKIAVICTIM', zero, now));
    v.forget(); // an access key deleted (an IAM call) in the same turn
    expect(await outcome(forged)).toBe('InvalidSignatureException');
    expect(held[0]!.every((b) => b === 0)).toBe(true);
    // And while the key is being derived (the HSM's await): the key it derives is the one used.
    const pending = v.verify(signedWithKey('AKIAVICTIM', zero, now));
    v.forget();
    expect(await outcome(pending)).toBe('InvalidSignatureException');
    const real = v.verify(signedWithKey('AKIAVICTIM', keyOf('AKIAVICTIM'), now));
    v.forget();
    expect(await outcome(real)).toBe('accepted as AKIAVICTIM');
  });

  it('a cache flush at its cap, started by another request of the same turn: a zero-key signature is refused', async () => {
    const v = verifier();
    const size = (): number => (v as unknown as { keys: Map<string, unknown> }).keys.size;
    // Fill the cache to its cap (4096 entries, src/kms/sigv4/verifier.ts CACHE_MAX): the victim's key last.
    for (let i = 0; size() < 4095; i++) await v.verify(signedWithKey(`ASIA${i}`, keyOf(`ASIA${i}`), now));
    expect(await outcome(v.verify(signedWithKey('AKIAVICTIM', zero, now)))).toBe('InvalidSignatureException'); // caches the victim's key
    expect(size()).toBe(4096);
    // Two requests in one turn (one front-worker batch): the victim's with a zero-key signature, then any
    // other, whose lookup flushes (and wipes) the full cache.
    const forged = v.verify(signedWithKey('AKIAVICTIM', zero, now));
    const other = v.verify(signedWithKey('ASIA0', keyOf('ASIA0'), now));
    expect(await outcome(forged)).toBe('InvalidSignatureException');
    expect(await outcome(other)).toBe('accepted as ASIA0');
  });
});
