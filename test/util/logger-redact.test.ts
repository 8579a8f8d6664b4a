import { describe, expect, test } from 'vitest';
import { Writable } from 'node:stream';
import { createLogger, redact, REDACT_FIELDS } from '../../src/util/logger.js';

/** A logger writing into an array, one parsed object per line. */
function capture(): { log: ReturnType<typeof createLogger>; lines: () => Record<string, unknown>[]; text: () => string } {
  const out: string[] = [];
  const sink = new Writable({ write(chunk, _enc, cb) { out.push(String(chunk)); cb(); } });
  const log = createLogger({ destination: sink, level: 'info' });
  return { log, lines: () => out.map((l) => JSON.parse(l) as Record<string, unknown>), text: () => out.join('') };
}

const SECRET = 'deadbeefcafebabe00112233445566778899';

describe('logger redaction (the factory owns the list)', () => {
  test('every listed field is censored at the top level and three levels down, in arrays too', () => {
    const { log, text } = capture();
    for (const f of REDACT_FIELDS) {
      log.info({ [f]: SECRET, a: { [f]: SECRET, b: { [f]: SECRET, c: { [f]: SECRET } } }, list: [{ [f]: SECRET }] }, 'x');
    }
    expect(text()).not.toContain(SECRET);
    expect(text().split('[redacted]').length - 1).toBe(REDACT_FIELDS.length * 5);
  });

  test('child bindings (top level) and a logged error\'s own members are censored; other members pass', () => {
    const { log, lines, text } = capture();
    const err = Object.assign(new Error('boom'), { token: SECRET, volumeId: 'vol-1' });
    log.child({ component: 'kms', secret: SECRET }).error({ err, requestId: 'r-1' }, 'failed');
    expect(text()).not.toContain(SECRET);
    const l = lines()[0]!;
    expect(l.component).toBe('kms');
    expect(l.requestId).toBe('r-1');
    expect((l.err as Record<string, unknown>).volumeId).toBe('vol-1');
    expect((l.err as Record<string, unknown>).message).toBe('boom');
  });

  test('STS and access-key secrets: an AssumeRole answer, an SDK credentials object, the session token header', () => {
    const { log, text } = capture();
    log.info({ Credentials: { AccessKeyId: 'ASIAEXAMPLE', SecretAccessKey: SECRET, SessionToken: SECRET, Expiration: 'x' } }, 'assumed');
    log.info({ credentials: { accessKeyId: 'AKIAEXAMPLE', secretAccessKey: SECRET, sessionToken: SECRET } }, 'client');
    log.info({ headers: { 'x-amz-security-token': SECRET }, cred: { signingKey: SECRET } }, 'request');
    expect(text()).not.toContain(SECRET);
    expect(text()).toContain('ASIAEXAMPLE'); // the key id is not a secret
  });

  test('what the state and the wire name otherwise: a catalog record\'s grant token, the SigV4 header, an EBS direct block', () => {
    const { log, text } = capture();
    // volumes/catalog.json (src/volume/catalog.ts): the attachment's and a pending retirement's token, camelCase.
    log.info({ rec: { volumeId: 'vol-1', attachment: { grantId: 'g-1', grantToken: SECRET }, pendingGrantRetirements: [{ grantId: 'g-2', grantToken: SECRET }] } }, 'record');
    // A request's headers: the Authorization header is a signature any replay within the skew could use.
    log.info({ headers: { authorization: `AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20261201/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=${SECRET}` } }, 'request');
    log.info({ raw: { Authorization: SECRET } }, 'request');
    // EBS direct GetSnapshotBlock / PutSnapshotBlock: the block, in the clear for an encrypted snapshot.
    log.info({ out: { BlockData: SECRET, Checksum: 'c' } }, 'block');
    expect(text()).not.toContain(SECRET);
    expect(text()).toContain('vol-1');
    expect(text()).toContain('g-2');
  });

  test('the caller\'s object is never changed, and is returned as is when nothing is censored', () => {
    const o = { req: { Plaintext: SECRET }, n: 1 };
    const r = redact(o) as typeof o;
    expect(r.req.Plaintext).toBe('[redacted]');
    expect(o.req.Plaintext).toBe(SECRET);
    const clean = { a: { b: [1, 2] }, bytes: new Uint8Array(4) };
    expect(redact(clean)).toBe(clean);
  });
});
