/**
 * STS Query requests through the listener's transport-free entry (KmsListener.handleWire) with a
 * real HSM (inline engine), identities, trust store and STS, signed by @smithy/signature-v4: an
 * STS request's members are read from one place, a POST's body or a GET's query string, and a
 * request that also carries members in the other place is refused, never half read (a session
 * Policy in a POST's URL would otherwise be signed and ignored: a session broader than asked).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SignatureV4 } from '@smithy/signature-v4';
import { startHsm, type Hsm } from '../../src/kms/hsm/hsm-client.js';
import { Identities } from '../../src/kms/authz/identities.js';
import { AccessKeyStore } from '../../src/kms/sts/access-keys.js';
import { TrustPolicies } from '../../src/kms/sts/trust-policies.js';
import { StsService } from '../../src/kms/sts/sts-service.js';
import { KmsListener } from '../../src/daemon/kms-listener.js';
import { silentLogger } from '../../src/util/logger.js';
import { tempDir, TEST_SCRYPT } from '../kms/helpers.js';
import { Sha256 } from './smithy-sha256.js';

describe('STS Query members: a POST reads its body, a GET its query string, and members elsewhere refuse the request', () => {
  const t = tempDir('ebsd-sts-query-');
  const t0 = Date.UTC(2026, 10, 30, 6, 0, 33, 250);
  let hsm: Hsm;
  let listener: KmsListener;
  let key: { AccessKeyId: string; SecretAccessKey: string };
  let roleArn: string;
  const audit: Record<string, any>[] = [];
  const denyAll = JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Deny', Action: '*', Resource: '*' }] });

  beforeAll(async () => {
    hsm = await startHsm({ stateDir: t.dir, passphrase: 'test', scryptCost: TEST_SCRYPT }, 'inline');
    const ids = await Identities.open(t.dir, { region: 'us-east-1' });
    const alice = await ids.createUser('alice');
    roleArn = await ids.createRole('app');
    const keys = await AccessKeyStore.open(t.dir, hsm, ids);
    key = await keys.create('alice');
    const trust = await TrustPolicies.open(t.dir, ids);
    await trust.put('app', JSON.stringify({ Statement: [{ Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole' }] }));
    listener = new KmsListener({
      host: '127.0.0.1', port: 0, region: 'us-east-1', accountId: ids.accountId, sts: new StsService(ids, keys, trust, hsm),
      kms: async () => ({}), audit: async (e) => { audit.push(e); }, log: silentLogger, now: () => t0,
    });
  });
  afterAll(async () => {
    await hsm?.close();
    t.cleanup();
  });

  /** A request signed as alice for service `sts`: `query` in the URL (and signed), `body` as given. */
  const send = async (method: 'GET' | 'POST', query: Record<string, string>, body: string) => {
    const signer = new SignatureV4({ credentials: { accessKeyId: key.AccessKeyId, secretAccessKey: key.SecretAccessKey }, region: 'us-east-1', service: 'sts', sha256: Sha256 });
    const s = await signer.sign({
      method, protocol: 'https:', hostname: 'sts.local', path: '/', query,
      headers: { host: 'sts.local', ...(body ? { 'content-type': 'application/x-www-form-urlencoded' } : {}) }, body,
    }, { signingDate: new Date(t0) });
    const qs = new URLSearchParams(query).toString().replace(/\+/g, '%20');
    const w = await listener.handleWire({
      method, url: `/${qs ? `?${qs}` : ''}`, rawHeaders: Object.entries(s.headers as Record<string, string>).flat(), body: Buffer.from(body), conn: { sourceIp: '127.0.0.1' },
    });
    return { status: w.status, body: String(w.body) };
  };
  const form = (m: Record<string, string>): string => new URLSearchParams(m).toString();
  const assume = (session: string): Record<string, string> => ({ Action: 'AssumeRole', Version: '2011-06-15', RoleArn: roleArn, RoleSessionName: session });
  const code = (xml: string): string | undefined => /<Code>([^<]*)<\/Code>/.exec(xml)?.[1];

  it('POST with the members in the body: a session; with a session Policy in the body: a session with PackedPolicySize, the policy audited', async () => {
    const ok = await send('POST', {}, form(assume('body-only')));
    expect(ok.status).toBe(200);
    expect(ok.body).toContain('<AccessKeyId>ASIA');
    expect(ok.body).not.toContain('PackedPolicySize');
    const scoped = await send('POST', {}, form({ ...assume('body-policy'), Policy: denyAll }));
    expect(scoped.status).toBe(200);
    // After AssumedRoleUser, as STS orders AssumeRoleResult.
    expect(scoped.body).toMatch(/<\/AssumedRoleUser><PackedPolicySize>\d{1,3}<\/PackedPolicySize><\/AssumeRoleResult>/);
    const ev = audit.filter((e) => e.eventName === 'AssumeRole' && e.requestParameters?.roleSessionName === 'body-policy');
    expect(ev).toHaveLength(1);
    expect(ev[0]!.requestParameters.policy).toBe(denyAll);
  });

  it('a session Policy that is no policy, too long, or of characters outside the set: MalformedPolicyDocument or ValidationError, no session', async () => {
    const bad = await send('POST', {}, form({ ...assume('bad-json'), Policy: '{"Statement": [' }));
    expect({ status: bad.status, code: code(bad.body) }).toEqual({ status: 400, code: 'MalformedPolicyDocument' });
    const long = await send('POST', {}, form({ ...assume('long-policy'), Policy: denyAll + ' '.repeat(2049 - denyAll.length) }));
    expect({ status: long.status, code: code(long.body) }).toEqual({ status: 400, code: 'ValidationError' });
    expect(long.body).toContain('at &apos;policy&apos; failed to satisfy constraint: Member must have length less than or equal to 2048');
    const chars = await send('POST', {}, form({ ...assume('wide-chars'), Policy: denyAll.replace('*', '\u0100') }));
    expect({ status: chars.status, code: code(chars.body) }).toEqual({ status: 400, code: 'ValidationError' });
    // The refusal is audited with the policy as sent, bounded.
    const ev = audit.filter((e) => e.eventName === 'AssumeRole' && e.requestParameters?.roleSessionName === 'long-policy');
    expect(ev).toHaveLength(1);
    expect(ev[0]!.requestParameters.policy.startsWith(denyAll)).toBe(true);
    expect(ev[0]!.requestParameters.policy.length).toBeLessThan(2100); // cut at 2048, a marker after
    for (const r of [bad, long, chars]) expect(r.body).not.toContain('<Credentials>');
  });

  it('POST with a session Policy in the URL query string and AssumeRole in the body: refused, no session, the refusal audited', async () => {
    const r = await send('POST', { Policy: denyAll }, form(assume('url-policy')));
    expect({ status: r.status, code: code(r.body) }).toEqual({ status: 400, code: 'ValidationError' });
    expect(r.body).toContain('query string');
    expect(r.body).not.toContain('<Credentials>');
    const ev = audit.filter((e) => e.eventName === 'AssumeRole' && e.requestParameters?.roleSessionName === 'url-policy');
    expect(ev).toHaveLength(1);
    expect(ev[0]).toMatchObject({ errorCode: 'ValidationError', eventSource: 'sts.amazonaws.com' });
  });

  it('POST with any member in the URL is refused, whatever the action; an empty query string is no member', async () => {
    const gci = await send('POST', { Action: 'GetCallerIdentity' }, form({ Action: 'GetCallerIdentity', Version: '2011-06-15' }));
    expect({ status: gci.status, code: code(gci.body) }).toEqual({ status: 400, code: 'ValidationError' });
    const split = await send('POST', { RoleSessionName: 'split' }, form({ Action: 'AssumeRole', Version: '2011-06-15', RoleArn: roleArn }));
    expect({ status: split.status, code: code(split.body) }).toEqual({ status: 400, code: 'ValidationError' });
    const plain = await send('POST', {}, form({ Action: 'GetCallerIdentity', Version: '2011-06-15' }));
    expect(plain.status).toBe(200);
    expect(plain.body).toContain('<Arn>arn:aws:iam::');
  });

  it('GET with the members in the query string: a session; with a body besides (Policy in it): refused', async () => {
    const ok = await send('GET', assume('get-only'), '');
    expect(ok.status).toBe(200);
    expect(ok.body).toContain('<AccessKeyId>ASIA');
    const r = await send('GET', assume('get-body'), form({ Policy: denyAll }));
    expect({ status: r.status, code: code(r.body) }).toEqual({ status: 400, code: 'ValidationError' });
    expect(r.body).not.toContain('<Credentials>');
  });
});
