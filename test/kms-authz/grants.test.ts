import { afterEach, describe, expect, it } from 'vitest';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { GrantStore, checkGrantTokens, parseConstraints, LIMITS } from '../../src/kms/authz/grants.js';
import { constraintsHold } from '../../src/kms/authz/evaluate.js';
import { ACCT, KEY_ARN, tempDir } from './helpers.js';

let t: ReturnType<typeof tempDir>;
afterEach(() => t?.cleanup());
const facts = { arn: KEY_ARN, accountId: ACCT, keySpec: 'SYMMETRIC_DEFAULT', keyUsage: 'ENCRYPT_DECRYPT' };
const HOST = `arn:aws:iam::${ACCT}:role/EbsdHost`;

async function open() {
  t = tempDir();
  const file = join(t.dir, 'grants.json');
  return { file, store: await GrantStore.open(file) };
}

describe('grant store', () => {
  it('create, list (AWS shape, paging), durable across reopen, 0600', async () => {
    const { file, store } = await open();
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      // One creation second each: grants of the same second are listed by GrantId (docs/kms-format.md, "List markers").
      const g = await store.create(facts, { GranteePrincipal: HOST, RetiringPrincipal: HOST, Operations: ['Decrypt', 'RetireGrant'], Constraints: { EncryptionContextSubset: { 'aws:ebs:id': `vol-${i}` } } }, 1_700_000_000_000 + i * 1000);
      expect(g.GrantId).toMatch(/^[0-9a-f]{64}$/);
      expect(g.GrantToken.length).toBeGreaterThan(40);
      ids.push(g.GrantId);
    }
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const p1 = store.list(KEY_ARN, { Limit: 2 });
    expect(p1.Grants).toHaveLength(2);
    expect(p1.Truncated).toBe(true);
    expect(p1.Grants[0]).toMatchObject({ KeyId: KEY_ARN, GrantId: ids[0], CreationDate: 1_700_000_000, GranteePrincipal: HOST, IssuingAccount: `arn:aws:iam::${ACCT}:root`, Operations: ['Decrypt', 'RetireGrant'], Constraints: { EncryptionContextSubset: { 'aws:ebs:id': 'vol-0' } } });
    const p2 = store.list(KEY_ARN, { Limit: 2, Marker: p1.NextMarker });
    expect(p2.Grants.map((g) => g.GrantId)).toEqual([ids[2]]);
    expect(p2.Truncated).toBe(false);
    expect(() => store.list(KEY_ARN, { Marker: 'nope' })).toThrow(expect.objectContaining({ awsName: 'InvalidMarkerException' }));
    expect(() => store.list(KEY_ARN, { Limit: 101 })).toThrow(expect.objectContaining({ awsName: 'ValidationException' }));
    const again = await GrantStore.open(file);
    expect(again.list(KEY_ARN).Grants).toHaveLength(3);
    expect(again.listRetirable(HOST).Grants).toHaveLength(3);
    expect(again.listRetirable('arn:aws:iam::111122223333:user/x').Grants).toHaveLength(0);
  });

  it('tokens find their grant at once; retired grants take their tokens with them', async () => {
    const { file, store } = await open();
    const g = await store.create(facts, { GranteePrincipal: HOST, Operations: ['Decrypt'] });
    expect(store.byGrantToken(g.GrantToken)?.GrantId).toBe(g.GrantId);
    await store.remove(KEY_ARN, g.GrantId);
    expect(store.byGrantToken(g.GrantToken)).toBeUndefined();
    expect((await GrantStore.open(file)).list(KEY_ARN).Grants).toHaveLength(0);
    await expect(store.remove(KEY_ARN, g.GrantId)).rejects.toMatchObject({ awsName: 'NotFoundException' });
  });

  it('Name makes CreateGrant idempotent for identical grants only', async () => {
    const { store } = await open();
    const req = { GranteePrincipal: HOST, Operations: ['Decrypt'], Name: 'attach-vol-1' };
    const a = await store.create(facts, req);
    const b = await store.create(facts, { ...req, Operations: ['Decrypt'] });
    expect(b.GrantId).toBe(a.GrantId);
    expect(b.created).toBe(false);
    expect(b.GrantToken).not.toBe(a.GrantToken);
    expect(store.byGrantToken(b.GrantToken)?.GrantId).toBe(a.GrantId);
    const c = await store.create(facts, { ...req, Operations: ['Decrypt', 'Encrypt'] });
    expect(c.GrantId).not.toBe(a.GrantId);
    expect(store.countForKey(KEY_ARN)).toBe(2);
  });

  it('validation per the KMS API reference', async () => {
    const { store } = await open();
    const bad = async (input: Record<string, unknown>, re: RegExp, awsName = 'ValidationException') => {
      await expect(store.create(facts, { GranteePrincipal: HOST, Operations: ['Decrypt'], ...input })).rejects.toSatisfy(
        (e: { awsName?: string; message: string }) => e.awsName === awsName && re.test(e.message),
      );
    };
    await bad({ Operations: [] }, /non-empty list/);
    await bad({ Operations: ['Decrypt', 'Launch'] }, /enum value set/);
    await bad({ Operations: ['Sign'] }, /not valid for a key with KeySpec SYMMETRIC_DEFAULT/);
    await bad({ GranteePrincipal: 'alice' }, /not a valid principal ARN/);
    await bad({ GranteePrincipal: undefined }, /GranteePrincipal is required/);
    await bad({ Name: 'has space' }, /Name must be/);
    await bad({ Constraints: { EncryptionContextEquals: { a: '1' }, EncryptionContextSubset: { b: '2' } } }, /only one of/);
    await bad({ Constraints: { Other: {} } }, /unknown member/);
    await bad({ Constraints: { EncryptionContextSubset: Object.fromEntries(Array.from({ length: 9 }, (_, i) => [`k${i}`, 'v'])) } }, /at most 8/);
    await expect(store.create({ ...facts, keySpec: 'RSA_2048', keyUsage: 'SIGN_VERIFY' }, { GranteePrincipal: HOST, Operations: ['Sign'], Constraints: { EncryptionContextSubset: { a: '1' } } }))
      .rejects.toThrow(/not supported for asymmetric or HMAC/);
    await expect(store.create({ ...facts, keySpec: 'HMAC_256', keyUsage: 'GENERATE_VERIFY_MAC' }, { GranteePrincipal: HOST, Operations: ['GenerateMac'] })).resolves.toBeTruthy();
    expect(() => checkGrantTokens(Array.from({ length: LIMITS.grantTokensPerRequest + 1 }, () => 'x'))).toThrow(/less than or equal to 10/);
    expect(() => checkGrantTokens(['not-a-token'])).toThrow(expect.objectContaining({ awsName: 'InvalidGrantTokenException' }));
  });

  it('principalExists rejects grantees that are not identities of the account', async () => {
    t = tempDir();
    const store = await GrantStore.open(join(t.dir, 'g.json'), { principalExists: (a) => a === HOST });
    await expect(store.create(facts, { GranteePrincipal: `arn:aws:iam::${ACCT}:role/Nope`, Operations: ['Decrypt'] })).rejects.toThrow(/no such identity/);
    await expect(store.create(facts, { GranteePrincipal: HOST, Operations: ['Decrypt'] })).resolves.toBeTruthy();
  });

  it('removeKey drops every grant of a deleted key (by ARN or key id)', async () => {
    const { store } = await open();
    await store.create(facts, { GranteePrincipal: HOST, Operations: ['Decrypt'] });
    await store.create(facts, { GranteePrincipal: HOST, Operations: ['Encrypt'] });
    expect(await store.removeKey('1234abcd-12ab-34cd-56ef-1234567890ab')).toBe(2);
    expect(store.countForKey(KEY_ARN)).toBe(0);
  });
});

describe('grant constraints with a "__proto__" key', () => {
  it('are kept as a pair, survive a reopen, and match only contexts that hold the pair', async () => {
    const { file, store } = await open();
    const pair = JSON.parse('{"__proto__":"vol-1"}') as Record<string, string>;
    const g = await store.create(facts, { GranteePrincipal: HOST, Operations: ['Decrypt'], Constraints: { EncryptionContextEquals: pair } });
    for (const s of [store, await GrantStore.open(file)]) {
      const c = s.get(KEY_ARN, g.GrantId)!.Constraints!;
      expect(Object.keys(c.EncryptionContextEquals!)).toEqual(['__proto__']);
      expect(constraintsHold(c, { 'aws:ebs:id': 'vol-2' })).toBe(false);
      expect(constraintsHold(c, undefined)).toBe(false);
      expect(constraintsHold(c, JSON.parse('{"__proto__":"vol-1"}') as Record<string, string>)).toBe(true);
    }
    const sub = parseConstraints({ EncryptionContextSubset: JSON.parse('{"__proto__":"x"}') });
    expect(constraintsHold(sub, {})).toBe(false);
  });
});
