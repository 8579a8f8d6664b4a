/**
 * AssumeRole session policies (IAM User Guide, "Session policies"; docs/architecture.md §5.9) with
 * real components in process: the KMS core as the daemon opens it (openKms: HSM inline, keystore,
 * policy authorizer, grants), the STS judged by the core's own evaluator as the daemon wires it, and
 * session callers from real session credentials (StsService.credentials, through the SigV4 verifier
 * where the token's integrity is the point). Time is an input (`t0`); the oversize policy's random
 * part comes from a printed seed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SignatureV4 } from '@smithy/signature-v4';
import { deflateRawSync } from 'node:zlib';
import { openKms, type Kms } from '../../src/kms/open-kms.js';
import { AccessKeyStore } from '../../src/kms/sts/access-keys.js';
import { TrustPolicies } from '../../src/kms/sts/trust-policies.js';
import { StsService } from '../../src/kms/sts/sts-service.js';
import { SigV4Verifier } from '../../src/kms/sigv4/verifier.js';
import type { AssumeRoleParams } from '../../src/kms/sts/assume-role-context.js';
import type { Caller } from '../../src/kms/types.js';
import { KmsListener } from '../../src/daemon/kms-listener.js';
import { RefusalAggregator, DEFAULT_REFUSAL_KEYS_PER_PRINCIPAL } from '../../src/kms/audit/refusal-aggregator.js';
import { silentLogger } from '../../src/util/logger.js';
import { tempDir, TEST_SCRYPT } from '../kms/helpers.js';
import { Sha256 } from './helpers.js';

type Creds = { AccessKeyId: string; SecretAccessKey: string; SessionToken: string };

describe('AssumeRole session policies: the session may do what both its role and its session policy allow', () => {
  const t = tempDir('ebsd-sesspol-');
  const t0 = Date.UTC(2026, 10, 30, 9, 0, 0);
  let kms: Kms;
  let sts: StsService;
  let trust: TrustPolicies;
  let keys: AccessKeyStore;
  let root: Caller;
  let alice: Caller;
  let keyA: string;
  let keyB: string;
  let ctA: Uint8Array;
  let ctB: Uint8Array;
  const stmt = (...Statement: Record<string, unknown>[]): string => JSON.stringify({ Version: '2012-10-17', Statement });
  const decryptOnlyA = (): string => stmt({ Effect: 'Allow', Action: 'kms:Decrypt', Resource: keyA });
  const sessionArn = (role: string, session: string): string => `arn:aws:sts::${kms.accountId}:assumed-role/${role}/${session}`;

  const assume = async (by: Caller, role: string, session: string, p: Partial<AssumeRoleParams> = {}) =>
    sts.assumeRole(by, { RoleArn: kms.identities.roleArn(role), RoleSessionName: session, ...p }, t0) as Promise<{ Credentials: Creds; PackedPolicySize?: number }>;
  /** A session as the SigV4 verifier hands it over. */
  const sessionOf = async (role: string, session: string, policy?: string, by: Caller = alice): Promise<Caller> => {
    const r = await assume(by, role, session, policy === undefined ? {} : { Policy: policy });
    return { ...sts.credentials(r.Credentials.AccessKeyId, r.Credentials.SessionToken, t0 + 1000).principal, sourceIp: '127.0.0.1' };
  };
  /** 'ok' or `<exception>: <message>`. */
  const call = (op: string, req: Record<string, unknown>, c: Caller): Promise<string> =>
    kms.core.call(op, req, c).then(() => 'ok', (e: { awsName?: string; message: string }) => `${e.awsName}: ${e.message}`);
  const denied = (c: Caller, action: string, key: string, tail: string): string =>
    `AccessDeniedException: User: ${c.arn} is not authorized to perform: ${action} on resource: ${key} ${tail}`;
  const newKey = async (policy?: string): Promise<string> =>
    ((await kms.core.call('CreateKey', policy ? { Policy: policy } : {}, root)) as { KeyMetadata: { Arn: string } }).KeyMetadata.Arn;
  const encrypt = async (key: string): Promise<Uint8Array> =>
    ((await kms.core.call('Encrypt', { KeyId: key, Plaintext: Buffer.from('x') }, root)) as { CiphertextBlob: Uint8Array }).CiphertextBlob;

  beforeAll(async () => {
    kms = await openKms({ stateDir: t.dir, accountId: '111122223333', region: 'us-east-1', hsmMode: 'inline', passphrase: 'test', scryptCost: TEST_SCRYPT });
    const ids = kms.identities;
    root = ids.callerForUid(0);
    alice = { ...(await ids.createUser('alice')), sourceIp: '127.0.0.1' };
    keys = await AccessKeyStore.open(t.dir, kms.core.hsm, ids);
    trust = await TrustPolicies.open(t.dir, ids);
    const ev = kms.authorizer.evaluator;
    sts = new StsService(ids, keys, trust, kms.core.hsm, (caller, action, resource, context) => ev.evaluate({ action, caller, resource, ...(context ? { context } : {}) }));
    // 'worker': kms:* on every key, through the default key policy's delegation to the account.
    await ids.createRole('worker');
    await ids.attachPolicy(ids.roleArn('worker'), 'all-kms', stmt({ Effect: 'Allow', Action: 'kms:*', Resource: '*' }));
    // 'bare': no identity policy; what it may do, key policies and grants give it.
    await ids.createRole('bare');
    for (const role of ['worker', 'bare']) await trust.put(role, stmt({ Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'sts:AssumeRole' }));
    keyA = await newKey();
    keyB = await newKey();
    ctA = await encrypt(keyA);
    ctB = await encrypt(keyB);
  });
  afterAll(async () => {
    await kms?.close();
    t.cleanup();
  });

  it('a role allowed kms:*, a session policy allowing kms:Decrypt on key A: Decrypt A only; the denials name the session policy', async () => {
    const s = await sessionOf('worker', 'decrypt-a', decryptOnlyA());
    expect(await call('Decrypt', { CiphertextBlob: ctA }, s)).toBe('ok');
    expect(await call('Encrypt', { KeyId: keyA, Plaintext: Buffer.from('x') }, s)).toBe(denied(s, 'kms:Encrypt', keyA, 'because no session policy allows the kms:Encrypt action'));
    expect(await call('Decrypt', { CiphertextBlob: ctB }, s)).toBe(denied(s, 'kms:Decrypt', keyB, 'because no session policy allows the kms:Decrypt action'));
    // An account-level action: the session policy limits it as well.
    expect(await call('ListKeys', {}, s)).toBe(`AccessDeniedException: User: ${s.arn} is not authorized to perform: kms:ListKeys on resource: * because no session policy allows the kms:ListKeys action`);
    // The same role without a session policy: everything its role allows.
    const plain = await sessionOf('worker', 'unscoped');
    expect(plain.sessionPolicy).toBeUndefined();
    expect(await call('Encrypt', { KeyId: keyA, Plaintext: Buffer.from('x') }, plain)).toBe('ok');
    expect(await call('Decrypt', { CiphertextBlob: ctB }, plain)).toBe('ok');
  });

  it('an explicit Deny in the session policy wins over the role policy\'s Allow', async () => {
    const s = await sessionOf('worker', 'deny-a', stmt({ Effect: 'Allow', Action: 'kms:*', Resource: '*' }, { Effect: 'Deny', Action: 'kms:Decrypt', Resource: keyA }));
    expect(await call('Decrypt', { CiphertextBlob: ctA }, s)).toBe(denied(s, 'kms:Decrypt', keyA, 'with an explicit deny in a session policy'));
    expect(await call('Decrypt', { CiphertextBlob: ctB }, s)).toBe('ok');
    expect(await call('Encrypt', { KeyId: keyA, Plaintext: Buffer.from('x') }, s)).toBe('ok');
  });

  it('a session policy never adds: allowing what the role is not allowed gives nothing', async () => {
    const s = await sessionOf('bare', 'wishful', stmt({ Effect: 'Allow', Action: 'kms:*', Resource: '*' }));
    expect(await call('Decrypt', { CiphertextBlob: ctA }, s)).toBe(denied(s, 'kms:Decrypt', keyA, 'because no identity-based policy allows the kms:Decrypt action'));
  });

  it('a key policy naming the session ARN allows regardless of the session policy; one naming the role is limited by it', async () => {
    const rootStmt = { Sid: 'root', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${kms.accountId}:root` }, Action: 'kms:*', Resource: '*' };
    const bySession = await newKey(stmt(rootStmt, { Sid: 'session', Effect: 'Allow', Principal: { AWS: sessionArn('bare', 'named') }, Action: 'kms:Encrypt', Resource: '*' }));
    const byRole = await newKey(stmt(rootStmt, { Sid: 'role', Effect: 'Allow', Principal: { AWS: kms.identities.roleArn('bare') }, Action: 'kms:Encrypt', Resource: '*' }));
    const named = await sessionOf('bare', 'named', decryptOnlyA());
    expect(await call('Encrypt', { KeyId: bySession, Plaintext: Buffer.from('x') }, named)).toBe('ok');
    expect(await call('Encrypt', { KeyId: byRole, Plaintext: Buffer.from('x') }, named)).toBe(denied(named, 'kms:Encrypt', byRole, 'because no session policy allows the kms:Encrypt action'));
    // Limited, not refused: a session policy that allows it lets the role's key policy count.
    const allowing = await sessionOf('bare', 'other', stmt({ Effect: 'Allow', Action: 'kms:Encrypt', Resource: byRole }));
    expect(await call('Encrypt', { KeyId: byRole, Plaintext: Buffer.from('x') }, allowing)).toBe('ok');
    expect(await call('Encrypt', { KeyId: bySession, Plaintext: Buffer.from('x') }, allowing)).toMatch(/because no identity-based policy allows the kms:Encrypt action$/); // the account delegated; the role has no identity policy
    // An explicit Deny in the session policy still wins over the key policy naming the session.
    const denying = await sessionOf('bare', 'named', stmt({ Effect: 'Deny', Action: 'kms:Encrypt', Resource: '*' }));
    expect(await call('Encrypt', { KeyId: bySession, Plaintext: Buffer.from('x') }, denying)).toBe(denied(denying, 'kms:Encrypt', bySession, 'with an explicit deny in a session policy'));
  });

  it('every grant is limited by the session policy, to the role or to the session ARN alike; a session without one uses both', async () => {
    const key = await newKey();
    const enc = (c: Caller) => call('Encrypt', { KeyId: key, Plaintext: Buffer.from('x') }, c);
    await kms.core.call('CreateGrant', { KeyId: key, GranteePrincipal: kms.identities.roleArn('bare'), Operations: ['Encrypt'] }, root);
    const s = await sessionOf('bare', 'granted', decryptOnlyA());
    expect(await enc(s)).toBe(denied(s, 'kms:Encrypt', key, 'because no session policy allows the kms:Encrypt action'));
    const plain = await sessionOf('bare', 'no-policy');
    expect(await enc(plain)).toBe('ok');
    // A grant naming the session's own ARN, made by another principal: limited all the same.
    const other = await newKey();
    await kms.core.call('CreateGrant', { KeyId: other, GranteePrincipal: sessionArn('bare', 'granted'), Operations: ['Encrypt'] }, root);
    expect(await call('Encrypt', { KeyId: other, Plaintext: Buffer.from('x') }, s)).toBe(denied(s, 'kms:Encrypt', other, 'because no session policy allows the kms:Encrypt action'));
    const allowing = await sessionOf('bare', 'granted', stmt({ Effect: 'Allow', Action: 'kms:Encrypt', Resource: other }));
    expect(await call('Encrypt', { KeyId: other, Plaintext: Buffer.from('x') }, allowing)).toBe('ok');
    expect(await call('Encrypt', { KeyId: other, Plaintext: Buffer.from('x') }, await sessionOf('bare', 'granted'))).toBe('ok');
  });

  it('a session allowed only kms:CreateGrant grants its own ARN Decrypt: the grant is made, but serves only a later session of that name without a session policy', async () => {
    // The role may create grants on the key (its key policy); Decrypt only a grant could give it.
    const rootStmt = { Sid: 'root', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${kms.accountId}:root` }, Action: 'kms:*', Resource: '*' };
    const key = await newKey(stmt(rootStmt, { Sid: 'grants', Effect: 'Allow', Principal: { AWS: kms.identities.roleArn('bare') }, Action: 'kms:CreateGrant', Resource: '*' }));
    const ct = await encrypt(key);
    const s = await sessionOf('bare', 'self-grant', stmt({ Effect: 'Allow', Action: 'kms:CreateGrant', Resource: key }));
    expect(await call('CreateGrant', { KeyId: key, GranteePrincipal: s.arn, Operations: ['Decrypt', 'Encrypt', 'CreateGrant', 'RetireGrant'] }, s)).toBe('ok');
    expect(await call('Decrypt', { CiphertextBlob: ct }, s)).toBe(denied(s, 'kms:Decrypt', key, 'because no session policy allows the kms:Decrypt action'));
    expect(await call('Encrypt', { KeyId: key, Plaintext: Buffer.from('x') }, s)).toBe(denied(s, 'kms:Encrypt', key, 'because no session policy allows the kms:Encrypt action'));
    // A later session of the same name with another session policy: limited by its own.
    const later = await sessionOf('bare', 'self-grant', stmt({ Effect: 'Allow', Action: 'kms:DescribeKey', Resource: '*' }));
    expect(await call('Decrypt', { CiphertextBlob: ct }, later)).toBe(denied(later, 'kms:Decrypt', key, 'because no session policy allows the kms:Decrypt action'));
    // Without a session policy, the grant applies as on AWS.
    const plain = await sessionOf('bare', 'self-grant');
    expect(await call('Decrypt', { CiphertextBlob: ct }, plain)).toBe('ok');
  });

  it('RetireGrant through a grant is limited by the session policy: as retiring principal (its role) or as grantee with RetireGrant alike', async () => {
    const key = await newKey();
    const grant = async (g: Record<string, unknown>): Promise<string> =>
      ((await kms.core.call('CreateGrant', { KeyId: key, Operations: ['Encrypt'], ...g }, root)) as { GrantId: string }).GrantId;
    const describeOnly = stmt({ Effect: 'Allow', Action: 'kms:DescribeKey', Resource: '*' });
    const retire = (id: string, c: Caller) => call('RetireGrant', { KeyId: key, GrantId: id }, c);
    // Grantee the session, retiring principal its role, RetireGrant not among the operations: the right is the role's.
    const byRole = await grant({ GranteePrincipal: sessionArn('bare', 'retirer'), RetiringPrincipal: kms.identities.roleArn('bare') });
    const s = await sessionOf('bare', 'retirer', describeOnly);
    expect(await retire(byRole, s)).toBe(denied(s, 'kms:RetireGrant', key, 'because no session policy allows the kms:RetireGrant action'));
    // The grantee with RetireGrant among the grant's operations: limited too (every grant is).
    const asGrantee = await grant({ GranteePrincipal: sessionArn('bare', 'retirer'), Operations: ['Encrypt', 'RetireGrant'] });
    expect(await retire(asGrantee, s)).toBe(denied(s, 'kms:RetireGrant', key, 'because no session policy allows the kms:RetireGrant action'));
    // A session policy allowing kms:RetireGrant lets the grant's right count; no session policy: as on AWS.
    expect(await retire(byRole, await sessionOf('bare', 'retirer', stmt({ Effect: 'Allow', Action: 'kms:RetireGrant', Resource: key })))).toBe('ok');
    expect(await retire(asGrantee, await sessionOf('bare', 'retirer'))).toBe('ok');
    // An explicit Deny in the session policy refuses either.
    const third = await grant({ GranteePrincipal: sessionArn('bare', 'retirer'), RetiringPrincipal: sessionArn('bare', 'retirer') });
    const denying = await sessionOf('bare', 'retirer', stmt({ Effect: 'Allow', Action: 'kms:*', Resource: '*' }, { Effect: 'Deny', Action: 'kms:RetireGrant', Resource: '*' }));
    expect(await retire(third, denying)).toBe(denied(denying, 'kms:RetireGrant', key, 'with an explicit deny in a session policy'));
  });

  it('role chaining: the session policy limits sts:AssumeRole where the trust names the role, not where it names the session; the next session does not inherit it', async () => {
    await kms.identities.createRole('next');
    await kms.identities.attachPolicy(kms.identities.roleArn('worker'), 'chain', stmt({ Effect: 'Allow', Action: 'sts:AssumeRole', Resource: '*' }));
    await trust.put('next', stmt({ Effect: 'Allow', Principal: { AWS: kms.identities.roleArn('worker') }, Action: 'sts:AssumeRole' }));
    await kms.identities.attachPolicy(kms.identities.roleArn('next'), 'all-kms', stmt({ Effect: 'Allow', Action: 'kms:*', Resource: '*' }));
    const outcome = (by: Caller, p: Partial<AssumeRoleParams> = {}) => assume(by, 'next', 'hop', p).then(() => 'ok', (e: { awsName?: string }) => e.awsName);
    const scoped = await sessionOf('worker', 'scoped', decryptOnlyA());
    expect(await outcome(scoped)).toBe('AccessDenied');
    const mayChain = await sessionOf('worker', 'may-chain', stmt({ Effect: 'Allow', Action: ['kms:Decrypt', 'sts:AssumeRole'], Resource: '*' }));
    expect(await outcome(mayChain)).toBe('ok');
    // The chained session has its role's permissions, not the caller's session policy.
    const r = await assume(mayChain, 'next', 'hop');
    const hop = { ...sts.credentials(r.Credentials.AccessKeyId, r.Credentials.SessionToken, t0 + 1000).principal, sourceIp: '127.0.0.1' };
    expect(hop.sessionPolicy).toBeUndefined();
    expect(await call('Encrypt', { KeyId: keyA, Plaintext: Buffer.from('x') }, hop)).toBe('ok');
    // A trust policy naming the session itself: not limited by its session policy; an explicit Deny still is.
    await trust.put('next', stmt({ Effect: 'Allow', Principal: { AWS: [kms.identities.roleArn('worker'), scoped.arn] }, Action: 'sts:AssumeRole' }));
    expect(await outcome(scoped)).toBe('ok');
    const denying = await sessionOf('worker', 'scoped', stmt({ Effect: 'Deny', Action: 'sts:AssumeRole', Resource: '*' }));
    expect(await outcome(denying)).toBe('AccessDenied');
    // GetCallerIdentity needs no permission, session policy or not.
    expect(sts.getCallerIdentity(scoped).Arn).toBe(scoped.arn);
  });

  it('the Policy member: AWS\'s errors for a malformed, too long or too large one; PackedPolicySize reported', async () => {
    const err = (p: Partial<AssumeRoleParams>) => assume(alice, 'worker', 'checks', p).then(() => 'ok', (e: { awsName?: string; status?: number; message: string }) => `${e.awsName} ${e.status}: ${e.message}`);
    const r = await assume(alice, 'worker', 'checks', { Policy: decryptOnlyA() });
    expect(r.PackedPolicySize).toBeGreaterThan(0);
    expect(r.PackedPolicySize).toBeLessThanOrEqual(100);
    expect((await assume(alice, 'worker', 'checks')).PackedPolicySize).toBeUndefined();
    expect(await err({ Policy: '{"Version":"2012-10-17","Statement":[' })).toMatch(/^MalformedPolicyDocument 400: The policy document is not valid JSON/);
    expect(await err({ Policy: stmt({ Effect: 'Allow', Principal: '*', Action: 'kms:Decrypt', Resource: '*' }) })).toMatch(/^MalformedPolicyDocument 400: .*must not contain Principal/);
    expect(await err({ Policy: stmt({ Effect: 'Permit', Action: 'kms:Decrypt', Resource: '*' }) })).toMatch(/^MalformedPolicyDocument 400: /);
    expect(await err({ Policy: '' })).toBe("ValidationError 400: 1 validation error detected: Value at 'policy' failed to satisfy constraint: Member must have length greater than or equal to 1");
    expect(await err({ Policy: decryptOnlyA().padEnd(2049, ' ') })).toBe("ValidationError 400: 1 validation error detected: Value at 'policy' failed to satisfy constraint: Member must have length less than or equal to 2048");
    expect(await err({ 'PolicyArns.member.1.arn': 'arn:aws:iam::111122223333:policy/scoped' } as Partial<AssumeRoleParams>)).toMatch(/^ValidationError 400: AssumeRole member PolicyArns\.member\.1\.arn names a managed policy, and this STS has none/);
    // Within 2048 characters, but what does not compress takes more than the packed budget (a printed seed).
    const seed = (Date.now() % 2 ** 31) | 1;
    let x = seed;
    const alnum = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
    const sid = Array.from({ length: 1900 }, () => { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; return alnum[(x >>> 0) % 62]; }).join('');
    const big = stmt({ Sid: sid, Effect: 'Allow', Action: 'kms:Decrypt', Resource: '*' });
    expect(big.length, `seed ${seed}`).toBeLessThanOrEqual(2048);
    expect(await err({ Policy: big }), `seed ${seed}`).toMatch(/^PackedPolicyTooLarge 400: Packed policy consumes (1\d\d)% of allotted space, please use smaller policy\.$/);
  });

  it('refused AssumeRole calls on the listener are audited in the caller\'s refusal budget, session policy and all: 100 make 32 records and one overflow row; an accepted one is a full event', async () => {
    const key = await keys.create('alice');
    const full: Record<string, any>[] = [];
    const refusals: Record<string, any>[] = [];
    // As the daemon wires its listener (daemon.ts: audit, and auditRefusal through the audit log's aggregator).
    const agg = new RefusalAggregator({ write: async (e) => { refusals.push(e); }, clock: () => t0, windowMs: 600_000 });
    const listener = new KmsListener({
      host: '127.0.0.1', port: 0, region: 'us-east-1', accountId: kms.accountId, sts,
      kms: (op, req, c, id) => kms.core.call(op, req, c, id), audit: async (e) => { full.push(e); },
      auditRefusal: (k, ev, party) => agg.add(k, ev, party), log: silentLogger, now: () => t0,
    });
    /** A signed STS POST of `members`: status and body. */
    const send = async (c: { accessKeyId: string; secretAccessKey: string; sessionToken?: string }, members: Record<string, string>) => {
      const body = new URLSearchParams({ Action: 'AssumeRole', Version: '2011-06-15', ...members }).toString();
      const signed = await new SignatureV4({ credentials: c, region: 'us-east-1', service: 'sts', sha256: Sha256 }).sign({
        method: 'POST', protocol: 'https:', hostname: 'sts.local', path: '/', query: {},
        headers: { host: 'sts.local', 'content-type': 'application/x-www-form-urlencoded' }, body,
      }, { signingDate: new Date(t0) });
      const w = await listener.handleWire({ method: 'POST', url: '/', rawHeaders: Object.entries(signed.headers as Record<string, string>).flat(), body: Buffer.from(body), conn: { sourceIp: '127.0.0.1' } });
      return { status: w.status, body: String(w.body) };
    };
    const asAlice = { accessKeyId: key.AccessKeyId, secretAccessKey: key.SecretAccessKey };
    const N = 100;
    const policy = decryptOnlyA().padEnd(2048, ' '); // the longest a Policy member may be
    // Each names another role that does not exist: a new message, so a new aggregation key, each time.
    for (let i = 0; i < N; i++) {
      const r = await send(asAlice, { RoleArn: `arn:aws:iam::${kms.accountId}:role/nobody-${i}`, RoleSessionName: 'flood', Policy: policy });
      expect(r.status).toBe(403);
      expect(r.body).toContain('<Code>AccessDenied</Code>');
    }
    // A session alice minted is alice's party: its refusal lands in her budget, already spent.
    const minted = (await assume(alice, 'worker', 'minted')).Credentials;
    const bySession = await send({ accessKeyId: minted.AccessKeyId, secretAccessKey: minted.SecretAccessKey, sessionToken: minted.SessionToken }, { RoleArn: `arn:aws:iam::${kms.accountId}:role/nobody-s`, RoleSessionName: 'flood' });
    expect(bySession.status).toBe(403);
    await agg.flush(); // the window's summaries
    expect(full).toHaveLength(0);
    const one = refusals.filter((e) => e.eventName === 'AssumeRole');
    expect(one).toHaveLength(DEFAULT_REFUSAL_KEYS_PER_PRINCIPAL);
    for (const e of one) {
      expect(e).toMatchObject({ eventSource: 'sts.amazonaws.com', errorCode: 'AccessDenied', userIdentity: { arn: alice.arn } });
      expect(e.requestParameters.policy.startsWith(decryptOnlyA())).toBe(true);
    }
    const overflow = refusals.filter((e) => e.eventName === 'RefusalsOverflow');
    expect(overflow).toHaveLength(1);
    expect(overflow[0]!.additionalEventData.aggregated.count).toBe(N + 1 - DEFAULT_REFUSAL_KEYS_PER_PRINCIPAL);
    expect(refusals).toHaveLength(DEFAULT_REFUSAL_KEYS_PER_PRINCIPAL + 1);
    // Accepted: a full event, its session policy among the request parameters, whatever the budget.
    const ok = await send(asAlice, { RoleArn: kms.identities.roleArn('worker'), RoleSessionName: 'accepted', Policy: decryptOnlyA() });
    expect(ok.status).toBe(200);
    expect(full).toHaveLength(1);
    expect(full[0]).toMatchObject({ eventName: 'AssumeRole', eventSource: 'sts.amazonaws.com', requestParameters: { roleSessionName: 'accepted', policy: decryptOnlyA() } });
    expect(full[0]!.errorCode).toBeUndefined();
    expect(refusals).toHaveLength(DEFAULT_REFUSAL_KEYS_PER_PRINCIPAL + 1);
  });

  it('the session policy travels in the token, authenticated: a token with its policy changed or dropped fails as a tampered token does', async () => {
    const r = await assume(alice, 'worker', 'sealed', { Policy: decryptOnlyA() });
    const c = r.Credentials;
    const request = async (token: string) => {
      const signed = await new SignatureV4({ credentials: { accessKeyId: c.AccessKeyId, secretAccessKey: c.SecretAccessKey, sessionToken: token }, region: 'us-east-1', service: 'kms', sha256: Sha256 }).sign({
        method: 'POST', protocol: 'https:', hostname: 'kms.local', path: '/', query: {},
        headers: { host: 'kms.local', 'x-amz-target': 'TrentService.ListKeys' }, body: '{}',
      }, { signingDate: new Date(t0) });
      return { method: 'POST', target: '/', headers: Object.entries(signed.headers as Record<string, string>), body: Buffer.from('{}') };
    };
    const verifier = new SigV4Verifier<Caller>({ region: 'us-east-1', services: ['kms'], credentials: sts.credentials, now: () => t0 });
    const ok = await verifier.verify(await request(c.SessionToken));
    expect(ok.principal.sessionPolicy).toBe(decryptOnlyA());
    // The clear part rewritten: the policy replaced by a broader one (well formed), or left out.
    const raw = Buffer.from(c.SessionToken, 'base64');
    const n = raw.readUInt16BE(1);
    const meta = JSON.parse(raw.subarray(3, 3 + n).toString('utf8')) as Record<string, unknown>;
    const rebuilt = (m: Record<string, unknown>): string => {
      const clear = Buffer.from(JSON.stringify(m), 'utf8');
      const len = Buffer.alloc(2);
      len.writeUInt16BE(clear.length);
      return Buffer.concat([raw.subarray(0, 1), len, clear, raw.subarray(3 + n)]).toString('base64');
    };
    const broader = deflateRawSync(Buffer.from(stmt({ Effect: 'Allow', Action: 'kms:*', Resource: '*' }), 'latin1')).toString('base64');
    const { sp: _dropped, ...without } = meta;
    for (const forged of [rebuilt({ ...meta, sp: broader }), rebuilt(without), rebuilt({ ...meta, sp: 'not-deflate' })]) {
      expect(forged).not.toBe(c.SessionToken);
      await expect(verifier.verify(await request(forged))).rejects.toMatchObject({ awsName: 'UnrecognizedClientException' });
    }
  });
});
