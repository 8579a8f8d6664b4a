/**
 * STS sessions with a real HSM (inline engine, real sealed domain in a temp
 * dir) and real identities: the session token's expiry and integrity, the
 * trust policy, the duration bounds. Time is an input here: the verifier and
 * AssumeRole take the clock, so "an hour later" needs no waiting.
 */
import { Sha256 } from './helpers.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SignatureV4 } from '@smithy/signature-v4';
import { startHsm, type Hsm } from '../../src/kms/hsm/hsm-client.js';
import { Identities } from '../../src/kms/authz/identities.js';
import { AccessKeyStore } from '../../src/kms/sts/access-keys.js';
import { TrustPolicies } from '../../src/kms/sts/trust-policies.js';
import { StsService } from '../../src/kms/sts/sts-service.js';
import { SigV4Verifier } from '../../src/kms/sigv4/verifier.js';
import type { Caller } from '../../src/kms/types.js';
import { tempDir, TEST_SCRYPT } from '../kms/helpers.js';
import { PolicyEvaluator } from '../../src/kms/authz/evaluate.js';
import { RequestContext } from '../../src/kms/authz/request-context.js';

describe('STS session credentials', () => {
  const t = tempDir('ebsd-sts-');
  let hsm: Hsm;
  let ids: Identities;
  let keys: AccessKeyStore;
  let sts: StsService;
  let alice: Caller;
  let bob: Caller;
  const t0 = Date.UTC(2026, 10, 30, 6, 0, 0);

  const request = async (c: { accessKeyId: string; secretAccessKey: string; sessionToken?: string }, at: number) => {
    const signed = await new SignatureV4({ credentials: c, region: 'us-east-1', service: 'kms', sha256: Sha256 }).sign({
      method: 'POST', protocol: 'https:', hostname: 'kms.local', path: '/', query: {},
      headers: { host: 'kms.local', 'x-amz-target': 'TrentService.ListKeys' }, body: '{}',
    }, { signingDate: new Date(at) });
    return { method: 'POST', target: '/', headers: Object.entries(signed.headers as Record<string, string>), body: Buffer.from('{}') };
  };
  const verifyAt = (at: number) => new SigV4Verifier<Caller>({ region: 'us-east-1', services: ['kms'], credentials: sts.credentials, now: () => at });

  beforeAll(async () => {
    hsm = await startHsm({ stateDir: t.dir, passphrase: 'test', scryptCost: TEST_SCRYPT }, 'inline');
    ids = await Identities.open(t.dir, { region: 'us-east-1' });
    alice = await ids.createUser('alice');
    bob = await ids.createUser('bob');
    await ids.createRole('app', { maxSessionDuration: 43_200 }); // 12 h sessions below
    keys = await AccessKeyStore.open(t.dir, hsm, ids);
    const trust = await TrustPolicies.open(t.dir, ids);
    await trust.put('app', JSON.stringify({ Statement: [{ Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole' }] }));
    sts = new StsService(ids, keys, trust, hsm);
  });
  afterAll(async () => {
    await hsm?.close();
    t.cleanup();
  });

  it('a session signs as arn:aws:sts::ACCT:assumed-role/ROLE/SESSION until its Expiration, then ExpiredTokenException', async () => {
    const r = await sts.assumeRole(alice, { RoleArn: ids.roleArn('app'), RoleSessionName: 'job-1' }, t0) as any;
    expect(r.Credentials).toMatchObject({ AccessKeyId: expect.stringMatching(/^ASIA[A-Z2-7]{16}$/), Expiration: new Date(t0 + 3600_000).toISOString() });
    const c = { accessKeyId: r.Credentials.AccessKeyId, secretAccessKey: r.Credentials.SecretAccessKey, sessionToken: r.Credentials.SessionToken };
    const ok = await verifyAt(t0 + 59 * 60_000).verify(await request(c, t0 + 59 * 60_000));
    expect(ok.principal).toMatchObject({ arn: `arn:aws:sts::${ids.accountId}:assumed-role/app/job-1`, type: 'AssumedRole' });
    const late = t0 + 3600_000;
    await expect(verifyAt(late).verify(await request(c, late))).rejects.toMatchObject({ awsName: 'ExpiredTokenException', accessKeyId: c.accessKeyId });
    // The token is the whole proof: without it, or with its clear part altered (a later expiry), it is invalid.
    await expect(verifyAt(t0).verify(await request({ accessKeyId: c.accessKeyId, secretAccessKey: c.secretAccessKey }, t0))).rejects.toMatchObject({ awsName: 'UnrecognizedClientException' });
    const raw = Buffer.from(c.sessionToken, 'base64');
    const forged = Buffer.from(raw.toString('latin1').replace(/"exp":(\d)/, (_, d: string) => `"exp":${(Number(d) + 1) % 10}`), 'latin1').toString('base64');
    expect(forged).not.toBe(c.sessionToken);
    await expect(verifyAt(t0).verify(await request({ ...c, sessionToken: forged }, t0))).rejects.toMatchObject({ awsName: 'UnrecognizedClientException' });
  });

  it('a refusal says whether its access key id names a key the service holds (SigV4Error.keyHeld): a long-term key in the store, or a session whose token authenticated; never a made-up id, nor an expired or forged token', async () => {
    const at = t0 + 60_000;
    const v = new SigV4Verifier<Caller>({ region: 'us-east-1', services: ['kms'], credentials: sts.credentials, holdsKey: sts.holdsAccessKey, now: () => at });
    const refusal = async (c: { accessKeyId: string; secretAccessKey: string; sessionToken?: string }, signedAt = at) => {
      const e = await v.verify(await request(c, signedAt)).then(() => undefined, (x: unknown) => x as { awsName: string; keyHeld: boolean });
      expect(e, 'refused').toBeDefined();
      return { awsName: e!.awsName, keyHeld: e!.keyHeld };
    };
    const k = await keys.create('bob');
    expect(await refusal({ accessKeyId: k.AccessKeyId, secretAccessKey: 'not-the-secret' })).toEqual({ awsName: 'InvalidSignatureException', keyHeld: true });
    expect(await refusal({ accessKeyId: k.AccessKeyId, secretAccessKey: k.SecretAccessKey }, at - 20 * 60_000)).toEqual({ awsName: 'InvalidSignatureException', keyHeld: true }); // refused before the lookup (skew)
    expect(await refusal({ accessKeyId: 'AKIAMADEUP0000000001', secretAccessKey: 'x' })).toEqual({ awsName: 'UnrecognizedClientException', keyHeld: false });
    expect(await refusal({ accessKeyId: 'AKIAMADEUP0000000001', secretAccessKey: 'x' }, at - 20 * 60_000)).toEqual({ awsName: 'InvalidSignatureException', keyHeld: false });
    await keys.update(k.AccessKeyId, 'Inactive');
    expect(await refusal({ accessKeyId: k.AccessKeyId, secretAccessKey: k.SecretAccessKey })).toEqual({ awsName: 'UnrecognizedClientException', keyHeld: true });

    const r = await sts.assumeRole(alice, { RoleArn: ids.roleArn('app'), RoleSessionName: 'held' }, t0) as any;
    const c = { accessKeyId: r.Credentials.AccessKeyId as string, secretAccessKey: r.Credentials.SecretAccessKey as string, sessionToken: r.Credentials.SessionToken as string };
    expect((await v.verify(await request(c, at))).principal.arn).toMatch(/assumed-role\/app\/held$/);
    expect(await refusal({ ...c, secretAccessKey: 'not-the-secret' })).toEqual({ awsName: 'InvalidSignatureException', keyHeld: true });
    // Before the HSM has authenticated the token, a session id proves nothing: anyone can write one, and its expiry.
    expect(await refusal({ ...c, secretAccessKey: 'not-the-secret' }, at - 20 * 60_000)).toEqual({ awsName: 'InvalidSignatureException', keyHeld: false });
    // Expiry is read before the HSM authenticates the token (a forged one would say the same).
    const late = t0 + 2 * 3600_000;
    const e = await new SigV4Verifier<Caller>({ region: 'us-east-1', services: ['kms'], credentials: sts.credentials, holdsKey: sts.holdsAccessKey, now: () => late })
      .verify(await request(c, late)).then(() => undefined, (x: unknown) => x as { awsName: string; keyHeld: boolean });
    expect({ awsName: e?.awsName, keyHeld: e?.keyHeld }).toEqual({ awsName: 'ExpiredTokenException', keyHeld: false });
    const raw = Buffer.from(c.sessionToken, 'base64');
    const forged = Buffer.from(raw.toString('latin1').replace(/"exp":(\d)/, (_, d: string) => `"exp":${(Number(d) + 1) % 10}`), 'latin1').toString('base64');
    expect(await refusal({ ...c, sessionToken: forged })).toEqual({ awsName: 'UnrecognizedClientException', keyHeld: false });
  });

  it('a session token is accepted only as issued: another base64 spelling of the same bytes is unrecognized and adds no signing-key cache entry', async () => {
    const r = await sts.assumeRole(alice, { RoleArn: ids.roleArn('app'), RoleSessionName: 'b64' }, t0) as any;
    const c = { accessKeyId: r.Credentials.AccessKeyId, secretAccessKey: r.Credentials.SecretAccessKey, sessionToken: r.Credentials.SessionToken as string };
    const at = t0 + 60_000;
    const v = verifyAt(at);
    // The verifier's cache is private; read here only to count its entries.
    const cached = (): number => (v as unknown as { keys: Map<string, unknown> }).keys.size;
    expect((await v.verify(await request(c, at))).principal.arn).toBe(`arn:aws:sts::${ids.accountId}:assumed-role/app/b64`);
    expect((await v.verify(await request(c, at))).principal.arn).toBe(`arn:aws:sts::${ids.accountId}:assumed-role/app/b64`);
    expect(cached()).toBe(1);
    const tok = c.sessionToken;
    const raw = Buffer.from(tok, 'base64');
    expect(raw.toString('base64')).toBe(tok);
    // Spellings node's decoder reads as the same bytes: padding added or dropped, a stray character, the URL-safe alphabet.
    const urlSafe = tok.replace(/\+/g, '-').replace(/\//g, '_');
    const variants = [tok + '=', tok + '==', tok + 'A', tok + '.', tok + '!', tok.replace(/=+$/, ''), urlSafe, `${tok.slice(0, 8)}*${tok.slice(8)}`]
      .filter((x) => x !== tok);
    expect(variants.length).toBeGreaterThanOrEqual(6);
    for (const x of variants) {
      expect(Buffer.from(x, 'base64').equals(raw)).toBe(true);
      await expect(v.verify(await request({ ...c, sessionToken: x }, at))).rejects.toMatchObject({ awsName: 'UnrecognizedClientException' });
    }
    expect(cached()).toBe(1);
  });

  it('a session belongs to the role it was issued for: once the role is deleted and created again under its name, the old token is unrecognized', async () => {
    const trust = await TrustPolicies.open(t.dir, ids);
    const s2 = new StsService(ids, keys, trust, hsm);
    const at = t0 + 60_000;
    const verify = async (c: { accessKeyId: string; secretAccessKey: string; sessionToken?: string }) =>
      new SigV4Verifier<Caller>({ region: 'us-east-1', services: ['kms'], credentials: s2.credentials, now: () => at }).verify(await request(c, at));
    const session = async () => {
      const r = await s2.assumeRole(alice, { RoleArn: ids.roleArn('ephemeral'), RoleSessionName: 'gone' }, t0) as any;
      return { accessKeyId: r.Credentials.AccessKeyId as string, secretAccessKey: r.Credentials.SecretAccessKey as string, sessionToken: r.Credentials.SessionToken as string };
    };
    const trustAlice = JSON.stringify({ Statement: [{ Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole' }] });
    await ids.createRole('ephemeral');
    await trust.put('ephemeral', trustAlice);
    const old = await session();
    expect((await verify(old)).principal.arn).toBe(`arn:aws:sts::${ids.accountId}:assumed-role/ephemeral/gone`);
    await ids.deleteRole('ephemeral');
    await trust.delete('ephemeral');
    await expect(verify(old)).rejects.toMatchObject({ awsName: 'UnrecognizedClientException' });
    // The same name, a new role (a new RoleId, its own policies): the old session is not one of its sessions.
    await ids.createRole('ephemeral');
    await trust.put('ephemeral', trustAlice);
    await expect(verify(old)).rejects.toMatchObject({ awsName: 'UnrecognizedClientException' });
    const fresh = await session();
    expect((await verify(fresh)).principal.principalId).toBe(`${ids.listRoles().find((r) => r.RoleName === 'ephemeral')!.RoleId}:gone`);
  });

  /** A version 1 session token (first byte 0x01) of this clear part: `clear` and a seal, as a daemon before the role id issued it. */
  const tokenOf = (clear: Buffer, sealed: Uint8Array): string => {
    const len = Buffer.alloc(2);
    len.writeUInt16BE(clear.length);
    return Buffer.concat([Buffer.of(1), len, clear, sealed]).toString('base64');
  };
  const v1Token = async (meta: Record<string, unknown>): Promise<{ secret: string; sealed: Uint8Array; token: string }> => {
    const clear = Buffer.from(JSON.stringify(meta), 'utf8');
    const { secret, sealed } = await hsm.call({ op: 'newSecret', kind: 'session', id: meta.id as string, context: clear });
    return { secret, sealed, token: tokenOf(clear, sealed) };
  };

  it('a token of the format before the role id (version 1, sealed by the same HSM) works until it expires, then is expired; a forged one is unrecognized', async () => {
    const id = 'ASIA' + 'Q'.repeat(16);
    const iat = t0;
    const { secret, sealed, token } = await v1Token({ v: 1, id, role: 'app', session: 'legacy', exp: iat + 3600_000, iat });
    // Issued before an upgrade: a fleet host's SDK holds it until it expires, and a refusal would impair its volumes.
    const at = t0 + 60_000;
    const v = await verifyAt(at).verify(await request({ accessKeyId: id, secretAccessKey: secret, sessionToken: token }, at));
    expect(v.principal.arn).toBe(`arn:aws:sts::${ids.accountId}:assumed-role/app/legacy`);
    const late = iat + 3600_000;
    await expect(verifyAt(late).verify(await request({ accessKeyId: id, secretAccessKey: secret, sessionToken: token }, late))).rejects.toMatchObject({ awsName: 'ExpiredTokenException' });
    // Its clear part is still authenticated by the HSM: a later expiry written in is refused.
    const forged = tokenOf(Buffer.from(JSON.stringify({ v: 1, id, role: 'app', session: 'legacy', exp: iat + 7200_000, iat }), 'utf8'), sealed);
    await expect(verifyAt(at).verify(await request({ accessKeyId: id, secretAccessKey: secret, sessionToken: forged }, at))).rejects.toMatchObject({ awsName: 'UnrecognizedClientException' });
  });

  it('a version 1 token without an issue time (before iat was recorded) is taken as issued at the epoch, so a revoke-older-sessions Deny reaches it', async () => {
    const id = 'ASIA' + 'R'.repeat(16);
    const { secret, token } = await v1Token({ v: 1, id, role: 'app', session: 'older', exp: t0 + 3600_000 });
    const at = t0 + 60_000;
    const v = await verifyAt(at).verify(await request({ accessKeyId: id, secretAccessKey: secret, sessionToken: token }, at));
    // Keys are looked up lower-cased (conditions.ts folds them).
    const ctx = new RequestContext({ action: 'kms:ListKeys', caller: v.principal });
    expect(ctx.get('aws:tokenissuetime')).toBe('1970-01-01T00:00:00Z');
    expect(ctx.get('aws:multifactorauthpresent')).toBe('false');
    // A long-term principal carries neither key.
    const user = new RequestContext({ action: 'kms:ListKeys', caller: alice });
    expect([user.get('aws:tokenissuetime'), user.get('aws:multifactorauthpresent')]).toEqual([undefined, undefined]);
  });

  it('the trust policy decides who may assume the role; DurationSeconds is bounded to 15 min .. 12 h (the role\'s MaxSessionDuration)', async () => {
    await expect(sts.assumeRole(bob, { RoleArn: ids.roleArn('app'), RoleSessionName: 's' + 'x' }, t0)).rejects.toMatchObject({ awsName: 'AccessDenied', status: 403 });
    await expect(sts.assumeRole(alice, { RoleArn: ids.roleArn('app'), RoleSessionName: 'long', DurationSeconds: '43201' }, t0)).rejects.toMatchObject({ awsName: 'ValidationError' });
    const max = await sts.assumeRole(alice, { RoleArn: ids.roleArn('app'), RoleSessionName: 'long', DurationSeconds: '43200' }, t0) as any;
    expect(max.Credentials.Expiration).toBe(new Date(t0 + 12 * 3600_000).toISOString());
  });

  it('a trust policy naming only the account delegates: the caller needs an identity policy allowing sts:AssumeRole too', async () => {
    await ids.createRole('admin');
    const trust = await TrustPolicies.open(t.dir, ids);
    await trust.put('admin', JSON.stringify({ Statement: [{ Effect: 'Allow', Principal: { AWS: ids.rootArn }, Action: 'sts:AssumeRole' }] }));
    const evaluator = new PolicyEvaluator({ identityPolicies: (c) => ids.identityPolicies(c) });
    const judged = new StsService(ids, keys, trust, hsm, (caller, action, resource) => evaluator.evaluate({ action, caller, resource }));
    const assume = (c: Caller) => judged.assumeRole(c, { RoleArn: ids.roleArn('admin'), RoleSessionName: 'esc' }, t0);
    // bob has no policy: the account-wide trust alone does not let him in (IAM would refuse too).
    await expect(assume(bob)).rejects.toMatchObject({ awsName: 'AccessDenied', status: 403 });
    await ids.attachPolicy(bob.arn, 'switch', JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'sts:AssumeRole', Resource: ids.roleArn('admin') }] }));
    await expect(assume(bob)).resolves.toMatchObject({ AssumedRoleUser: { Arn: `arn:aws:sts::${ids.accountId}:assumed-role/admin/esc` } });
    // A trust policy naming the caller itself needs nothing more (alice on app, above).
    // What is not evaluated is refused, never ignored: a NotPrincipal, or a Condition operator the
    // engine does not know, would otherwise trust more than written (trust-conditions.test.ts: Conditions).
    for (const [doc, member] of [
      [{ Statement: [{ Effect: 'Allow', Principal: { AWS: '*' }, Action: 'sts:AssumeRole', Condition: { StringEqualz: { 'sts:ExternalId': 'x' } } }] }, 'StringEqualz'],
      [{ Statement: [{ Effect: 'Deny', NotPrincipal: { AWS: alice.arn }, Action: 'sts:AssumeRole' }] }, 'NotPrincipal'],
    ] as const) {
      await expect(trust.put('admin', JSON.stringify(doc))).rejects.toMatchObject({ awsName: 'MalformedPolicyDocumentException', message: expect.stringContaining(member) });
    }
    await expect(trust.put('admin', '{"Statement":[{"Effect":"Deny","Effect":"Allow","Principal":"*","Action":"sts:AssumeRole"}]}'))
      .rejects.toMatchObject({ awsName: 'MalformedPolicyDocumentException', message: expect.stringContaining('duplicate member name "Effect"') });
  });

  it('an inactive or deleted access key is unrecognized; the secret is on disk only sealed', async () => {
    const k = await keys.create('bob');
    const c = { accessKeyId: k.AccessKeyId, secretAccessKey: k.SecretAccessKey };
    expect((await verifyAt(t0).verify(await request(c, t0))).principal.arn).toBe(bob.arn);
    await keys.update(k.AccessKeyId, 'Inactive');
    await expect(verifyAt(t0).verify(await request(c, t0))).rejects.toMatchObject({ awsName: 'UnrecognizedClientException' });
    await keys.update(k.AccessKeyId, 'Active');
    const { readFileSync } = await import('node:fs');
    expect(readFileSync(`${t.dir}/access-keys.json`, 'utf8')).not.toContain(k.SecretAccessKey);
    await keys.delete(k.AccessKeyId);
    await expect(verifyAt(t0).verify(await request(c, t0))).rejects.toMatchObject({ awsName: 'UnrecognizedClientException' });
  });
});
