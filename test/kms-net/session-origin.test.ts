/**
 * The identity behind a session (Caller.origin, src/kms/caller-party.ts): the sessions one user
 * mints take that user's turns in the KMS core (fair-gate.ts) and share its refusal budget
 * (refusal-aggregator.ts), so minting sessions multiplies neither; a session minted by a session
 * keeps the first one's origin; tokens issued before the origin was sealed into them stand for
 * their role. Real components: the core as the daemon opens it (src/kms/open-kms.ts: HSM, key
 * policies, identity policies, audit log) and STS wired on its HSM and identities as the daemon
 * wires its listener's (sts-harness.ts), session callers from real session credentials.
 * Time is an input (`t0`) for STS; the core's refusal window is longer than the test.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SignatureV4 } from '@smithy/signature-v4';
import { openKms, type Kms } from '../../src/kms/open-kms.js';
import { FairGate } from '../../src/kms/fair-gate.js';
import { callerParty } from '../../src/kms/caller-party.js';
import { SigV4Verifier } from '../../src/kms/sigv4/verifier.js';
import type { Caller } from '../../src/kms/types.js';
import { tempDir, TEST_SCRYPT } from '../kms/helpers.js';
import { KMS_ADMIN_POLICY, Sha256 } from './helpers.js';
import { openStsHarness, type StsHarness } from './sts-harness.js';

const ACCOUNT = '111122223333';
const REGION = 'us-east-1';
const t0 = Date.UTC(2026, 10, 30, 6, 0, 0);

let t: ReturnType<typeof tempDir>;
let kms: Kms;
let h: StsHarness;
let root: Caller;
let fleet: Caller;
let other: Caller;
let minter: Caller;
let carol: Caller;
let bob: Caller;
let blob: Uint8Array;
let keyId: string;

const events = (): Record<string, any>[] => readFileSync(join(t.dir, 'kms', 'audit', 'events.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));

/** AssumeRole of `role` by `by` as session `name`: its credentials, and its caller as the verifier hands it over. */
async function mint(role: string, by: Caller, name: string): Promise<{ creds: { accessKeyId: string; secretAccessKey: string; sessionToken: string }; caller: Caller }> {
  const r = await h.sts.assumeRole(by, { RoleArn: h.ids.roleArn(role), RoleSessionName: name }, t0) as any;
  const creds = { accessKeyId: r.Credentials.AccessKeyId, secretAccessKey: r.Credentials.SecretAccessKey, sessionToken: r.Credentials.SessionToken };
  return { creds, caller: h.sts.credentials(creds.accessKeyId, creds.sessionToken, t0 + 1000).principal };
}

/** A KMS ListKeys signed with `c` at `at`, verified as the listener verifies it: the principal it hands over. */
async function verified(c: { accessKeyId: string; secretAccessKey: string; sessionToken?: string }, at = t0 + 60_000): Promise<Caller> {
  const signed = await new SignatureV4({ credentials: c, region: REGION, service: 'kms', sha256: Sha256 }).sign({
    method: 'POST', protocol: 'https:', hostname: 'kms.local', path: '/', query: {},
    headers: { host: 'kms.local', 'x-amz-target': 'TrentService.ListKeys' }, body: '{}',
  }, { signingDate: new Date(at) });
  const v = new SigV4Verifier<Caller>({ region: REGION, services: ['kms'], credentials: h.sts.credentials, now: () => at });
  return (await v.verify({ method: 'POST', target: '/', headers: Object.entries(signed.headers as Record<string, string>), body: Buffer.from('{}') })).principal;
}

/** A session token's parts (docs/kms-format.md, "STS session token"). */
function tokenParts(token: string): { version: number; clear: Record<string, unknown>; sealed: Buffer } {
  const raw = Buffer.from(token, 'base64');
  const n = raw.readUInt16BE(1);
  return { version: raw[0]!, clear: JSON.parse(raw.subarray(3, 3 + n).toString('utf8')), sealed: raw.subarray(3 + n) };
}

function token(version: number, clear: Record<string, unknown>, sealed: Uint8Array): string {
  const c = Buffer.from(JSON.stringify(clear), 'utf8');
  const len = Buffer.alloc(2);
  len.writeUInt16BE(c.length);
  return Buffer.concat([Buffer.of(version), len, c, sealed]).toString('base64');
}

beforeAll(async () => {
  t = tempDir('ebsd-session-origin-');
  kms = await openKms({
    stateDir: t.dir, accountId: ACCOUNT, region: REGION, hsmMode: 'inline', passphrase: 'test-passphrase', scryptCost: TEST_SCRYPT,
    maxActiveCalls: 4, auditRefusalWindowMs: 600_000,
  });
  h = await openStsHarness(t.dir, t0, { hsm: kms.core.hsm, ids: kms.identities });
  const ids = kms.identities;
  root = ids.callerFor(ids.rootArn)!;
  [fleet, other, minter, carol, bob] = await Promise.all(['fleet', 'other', 'minter', 'carol', 'bob'].map((n) => ids.createUser(n)));
  // worker: may use every key (its sessions' calls are allowed); denied: no policy (its sessions' are refused);
  // hop: assumed by worker's sessions (role chaining).
  await ids.createRole('worker');
  await ids.createRole('denied');
  await ids.createRole('hop');
  await ids.attachPolicy(ids.roleArn('worker'), 'kms', KMS_ADMIN_POLICY);
  await h.put('worker', { Effect: 'Allow', Principal: { AWS: [fleet.arn, other.arn] }, Action: 'sts:AssumeRole' });
  await h.put('denied', { Effect: 'Allow', Principal: { AWS: [minter.arn, carol.arn] }, Action: 'sts:AssumeRole' });
  await h.put('hop', { Effect: 'Allow', Principal: { AWS: [ids.roleArn('worker'), ids.roleArn('hop')] }, Action: 'sts:AssumeRole' });
  const { KeyMetadata } = await kms.core.call('CreateKey', {}, root) as { KeyMetadata: { KeyId: string } };
  keyId = KeyMetadata.KeyId;
  blob = (await kms.core.call('Encrypt', { KeyId: keyId, Plaintext: new Uint8Array(64).fill(7) }, root) as { CiphertextBlob: Uint8Array }).CiphertextBlob;
}, 60_000);

afterAll(async () => {
  await h?.close();
  await kms?.close().catch(() => {});
  t?.cleanup();
});

describe('a session is its origin\'s party', () => {
  it('a session\'s token seals its origin; the session ARN stays the principal (GetCallerIdentity, sessionContext)', async () => {
    const s = await mint('worker', fleet, 'host-1');
    expect(tokenParts(s.creds.sessionToken)).toMatchObject({ version: 3, clear: { v: 3, role: 'worker', session: 'host-1', org: fleet.arn } });
    const c = await verified(s.creds);
    expect(c).toMatchObject({ arn: `arn:aws:sts::${ACCOUNT}:assumed-role/worker/host-1`, type: 'AssumedRole', origin: fleet.arn });
    expect(callerParty(c)).toBe(fleet.arn);
    expect(h.sts.getCallerIdentity(c).Arn).toBe(c.arn);
    expect(c.sessionContext?.sessionIssuer.arn).toBe(h.ids.roleArn('worker')); // the role, as CloudTrail has it
    // A long-term principal is its own party.
    expect(callerParty(fleet)).toBe(fleet.arn);
    expect(callerParty(root)).toBe(root.arn);
  });

  it('the origin is not the caller\'s to set: no AssumeRole member names it, and a token with another origin written in is unrecognized', async () => {
    await expect(h.sts.assumeRole(fleet, { RoleArn: h.ids.roleArn('worker'), RoleSessionName: 'x1', Origin: other.arn } as any, t0)).rejects.toMatchObject({ awsName: 'ValidationError' });
    const s = await mint('worker', fleet, 'host-forged');
    const p = tokenParts(s.creds.sessionToken);
    const forged = token(3, { ...p.clear, org: other.arn }, p.sealed);
    await expect(verified({ ...s.creds, sessionToken: forged })).rejects.toMatchObject({ awsName: 'UnrecognizedClientException' });
    const none = { ...p.clear };
    delete none.org;
    await expect(verified({ ...s.creds, sessionToken: token(3, none, p.sealed) })).rejects.toMatchObject({ awsName: 'UnrecognizedClientException' });
  });

  it('role chaining: a session minted by a session keeps the first one\'s origin, the user', async () => {
    const first = await mint('worker', fleet, 'hop-source');
    const second = await mint('hop', first.caller, 'hop-1');
    expect(tokenParts(second.creds.sessionToken).clear.org).toBe(fleet.arn);
    const c = await verified(second.creds);
    expect(c).toMatchObject({ arn: `arn:aws:sts::${ACCOUNT}:assumed-role/hop/hop-1`, origin: fleet.arn });
    // And once more down the chain.
    const third = await mint('hop', c, 'hop-2');
    expect((await verified(third.creds)).origin).toBe(fleet.arn);
    // The audit sees the session, never the origin: hop has no policy, so this is a refused call on record.
    await expect(kms.core.call('DescribeKey', { KeyId: keyId }, c)).rejects.toMatchObject({ awsName: 'AccessDeniedException' });
    const e = events().reverse().find((x) => x.eventName === 'DescribeKey' && x.userIdentity?.arn === c.arn)!;
    expect(e.userIdentity.sessionContext.sessionIssuer.arn).toBe(h.ids.roleArn('hop'));
    expect(JSON.stringify(e)).not.toContain(fleet.arn);
  });

  it('tokens of versions 1 and 2 (no origin), sealed by the same HSM, still verify: their origin is their role', async () => {
    const rid = h.ids.roleId('worker')!;
    for (const [v, extra] of [[1, {}], [2, { rid }]] as const) {
      const id = 'ASIA' + (v === 1 ? 'Q' : 'R').repeat(16);
      const clear = { v, id, role: 'worker', ...extra, session: `legacy-${v}`, exp: t0 + 3600_000, iat: t0 };
      const { secret, sealed } = await kms.core.hsm.call({ op: 'newSecret', kind: 'session', id, context: Buffer.from(JSON.stringify(clear), 'utf8') });
      const c = await verified({ accessKeyId: id, secretAccessKey: secret, sessionToken: token(v, clear, sealed) });
      expect(c).toMatchObject({ arn: `arn:aws:sts::${ACCOUNT}:assumed-role/worker/legacy-${v}`, origin: h.ids.roleArn('worker') });
      expect(callerParty(c)).toBe(`arn:aws:iam::${ACCOUNT}:role/worker`);
    }
  });
});

describe('turns in the KMS core belong to the origin', () => {
  const deferred = (): { promise: Promise<void>; resolve: () => void } => {
    let resolve!: () => void;
    const promise = new Promise<void>((r) => { resolve = r; });
    return { promise, resolve };
  };

  it('FairGate keyed by callerParty: 8 sessions of one user x 3 calls against one session of another user take turns per user', async () => {
    const sessions = await Promise.all(Array.from({ length: 8 }, (_, i) => mint('worker', fleet, `gate-${i}`).then((s) => s.caller)));
    const lone = (await mint('worker', other, 'gate-other')).caller;
    const gate = new FairGate(1);
    const started: string[] = [];
    const finish: (() => void)[] = [];
    const call = (c: Caller, label: string): Promise<void> => gate.run(callerParty(c), async () => {
      started.push(label);
      const d = deferred();
      finish.push(d.resolve);
      await d.promise;
    });
    const runs = [call(sessions[0]!, 'F')]; // in the core
    for (let round = 0; round < 3; round++) for (const s of sessions) runs.push(call(s, 'F'));
    for (let i = 0; i < 3; i++) runs.push(call(lone, 'O'));
    expect(gate.load).toEqual({ active: 1, waiting: 27, callers: 2 });
    for (let i = 0; i < 28; i++) {
      finish[i]!();
      await new Promise((r) => setImmediate(r));
    }
    await Promise.all(runs);
    // Per origin: the other user's calls alternate with the fleet's. Per session the first would be 10th.
    expect(started.slice(0, 8).join('')).toBe('FFOFOFOF');
    expect(started.filter((x) => x === 'F')).toHaveLength(25);
  });

  it('the core: 8 sessions of one user with 200 Decrypts queued against one session of another with 25: the other\'s are answered in alternation', async () => {
    const sessions = await Promise.all(Array.from({ length: 8 }, (_, i) => mint('worker', fleet, `core-${i}`).then((s) => s.caller)));
    const lone = (await mint('worker', other, 'core-other')).caller;
    const done: string[] = [];
    const calls: Promise<unknown>[] = [];
    for (let i = 0; i < 25; i++) for (const [j, s] of sessions.entries()) calls.push(kms.core.call('Decrypt', { CiphertextBlob: blob }, s).then(() => { done.push(`f${j}`); }));
    for (let i = 0; i < 25; i++) calls.push(kms.core.call('Decrypt', { CiphertextBlob: blob }, lone).then(() => { done.push('other'); }));
    // Two parties wait, not nine: the fleet's eight sessions are one.
    expect(kms.core.callLoad).toEqual({ active: 4, waiting: 221, callers: 2 });
    await Promise.all(calls);
    expect(done).toHaveLength(225);
    // Four in the core, then one turn each: the other's 25th call by about the 54th answer. Per session, about the 225th.
    expect(done.lastIndexOf('other')).toBeLessThanOrEqual(60);
    expect(kms.core.callLoad).toEqual({ active: 0, waiting: 0, callers: 0 });
  }, 60_000);
});

describe('refusal budgets belong to the origin', () => {
  const SESSIONS = 40;

  it(`a user's ${SESSIONS} sessions refused under ${SESSIONS} keys share its 32: the rest is one overflow row of its own; another principal's refusals stay their own records`, async () => {
    const before = events().length;
    const sessions = await Promise.all(Array.from({ length: SESSIONS }, (_, i) => mint('denied', minter, `r-${i}`).then((s) => s.caller)));
    // Each session its own key (its ARN), and two operations with their own reasons.
    for (const [i, s] of sessions.entries()) {
      const [op, req] = i % 2 === 0 ? ['Decrypt', { CiphertextBlob: blob }] as const : ['DescribeKey', { KeyId: keyId }] as const;
      await expect(kms.core.call(op, req, s)).rejects.toMatchObject({ awsName: 'AccessDeniedException' });
    }
    // Of the same role, but another user's session: another party. And a user calling with its own key.
    const carols = (await mint('denied', carol, 'r-carol')).caller;
    await expect(kms.core.call('Decrypt', { CiphertextBlob: blob }, carols)).rejects.toMatchObject({ awsName: 'AccessDeniedException' });
    await expect(kms.core.call('Decrypt', { CiphertextBlob: blob }, bob)).rejects.toMatchObject({ awsName: 'AccessDeniedException' });
    await kms.close(); // flushes the window's summaries

    const added = events().slice(before);
    const minted = new Set(sessions.map((s) => s.arn));
    const own = added.filter((e) => minted.has(e.userIdentity?.arn));
    const one = own.filter((e) => e.eventName !== 'RefusalsOverflow');
    const overflow = own.filter((e) => e.eventName === 'RefusalsOverflow');
    expect(one).toHaveLength(32);
    expect(one.every((e) => e.errorCode === 'AccessDeniedException' && !e.additionalEventData?.aggregated)).toBe(true);
    // The overflow row is the user's own (one of its sessions, of role denied) and counts the other 8.
    expect(overflow).toHaveLength(1);
    expect(overflow[0]!.additionalEventData.aggregated.count).toBe(SESSIONS - 32);
    expect(overflow[0]!.userIdentity.sessionContext.sessionIssuer.arn).toBe(kms.identities.roleArn('denied'));
    expect(added.filter((e) => e.eventName === 'RefusalsOverflow')).toHaveLength(1);
    for (const c of [carols, bob]) {
      const theirs = added.filter((e) => e.userIdentity?.arn === c.arn);
      expect(theirs).toHaveLength(1);
      expect(theirs[0]).toMatchObject({ eventName: 'Decrypt', errorCode: 'AccessDeniedException' });
      expect(theirs[0]!.additionalEventData?.aggregated).toBeUndefined();
    }
  }, 60_000);
});
