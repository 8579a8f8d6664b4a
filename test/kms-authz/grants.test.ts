import { afterEach, describe, expect, it } from 'vitest';
import { mkdirSync, readFileSync, rmSync, statSync, watch, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { dirname, join } from 'node:path';
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

  it('changes made while a write is under way share the next write (one rewrite per change put every host behind every other\'s), each durable when it resolves', async () => {
    const { file, store } = await open();
    await store.create(facts, { GranteePrincipal: HOST, Operations: ['Decrypt'] });
    const writes: string[] = [];
    const watcher = watch(dirname(file), (event, name) => { if (event === 'rename' && name === 'grants.json') writes.push(name); });
    try {
      const made = await Promise.all(Array.from({ length: 64 }, (_, i) => store.create(facts, { GranteePrincipal: HOST, Operations: ['Decrypt'], Name: `g-${i}` })));
      expect(new Set(made.map((g) => g.GrantId)).size).toBe(64);
      await until(() => writes.length > 0);
    } finally {
      watcher.close();
    }
    // The first change's write, then one for the 63 made while it ran: not 64 rewrites of the whole file.
    expect(writes.length).toBeLessThanOrEqual(2);
    expect((await GrantStore.open(file)).list(KEY_ARN, { Limit: 100 }).Grants).toHaveLength(65);
  });

  it('a write that fails undoes every change it held, and each of their callers gets the error', async () => {
    const { file, store } = await open();
    const kept = await store.create(facts, { GranteePrincipal: HOST, Operations: ['Decrypt'] });
    const saved = readFileSync(file);
    // The directory gone, the write's temp file cannot be made (ENOENT): the write fails.
    rmSync(dirname(file), { recursive: true });
    try {
      const results = await Promise.allSettled([
        ...Array.from({ length: 8 }, (_, i) => store.create(facts, { GranteePrincipal: HOST, Operations: ['Decrypt'], Name: `n-${i}` })),
        store.remove(KEY_ARN, kept.GrantId),
      ]);
      expect(results.map((r) => r.status)).toEqual(Array(9).fill('rejected'));
    } finally {
      mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
      writeFileSync(file, saved, { mode: 0o600 });
    }
    expect(store.list(KEY_ARN).Grants.map((g) => g.GrantId)).toEqual([kept.GrantId]);
    expect(store.byGrantToken(kept.GrantToken)?.GrantId).toBe(kept.GrantId);
    // The store writes on: the next change's write holds the kept grant and only the new one.
    await store.create(facts, { GranteePrincipal: HOST, Operations: ['Encrypt'] });
    expect((await GrantStore.open(file)).list(KEY_ARN).Grants).toHaveLength(2);
  });
});

/** Poll (the watcher's events come from the event loop), bounded as a safety net. */
async function until(ok: () => boolean): Promise<void> {
  for (let i = 0; i < 100 && !ok(); i++) await new Promise((r) => setTimeout(r, 20));
}

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

describe('grant list paging over many grants', () => {
  const OTHER_KEY = KEY_ARN.replace(/key\/.*$/, 'key/0000aaaa-00aa-00aa-00aa-0000aaaaaaaa');
  const OTHER_ROLE = `arn:aws:iam::${ACCT}:role/Other`;
  /** Every page, `limit` at a time, with `between(pageIndex)` after each page but the last. */
  async function allPages(list: (marker?: string) => { Grants: { GrantId: string }[]; NextMarker?: string; Truncated: boolean }, between: (i: number) => Promise<void> = async () => {}): Promise<string[]> {
    const out: string[] = [];
    let marker: string | undefined;
    for (let i = 0; ; i++) {
      const p = list(marker);
      out.push(...p.Grants.map((g) => g.GrantId));
      if (!p.Truncated) return out;
      marker = p.NextMarker;
      await between(i);
    }
  }

  it('5,000 grants page in order, once each; the order is built once per list, not per page, and rebuilt after a change', async () => {
    t = tempDir();
    const file = join(t.dir, 'grants.json');
    // Written as the store writes it: 5,000 CreateGrant calls would rewrite the file 5,000 times.
    const grants = Array.from({ length: 5_000 }, (_, i) => ({
      KeyId: i % 5 === 4 ? OTHER_KEY : KEY_ARN,
      GrantId: createHash('sha256').update(`g${i}`).digest('hex'),
      CreationDate: 1_700_000_000 + Math.floor((i * 7919) % 5_000 / 3), // out of file order, three to a second
      GranteePrincipal: HOST,
      RetiringPrincipal: i % 10 === 9 ? OTHER_ROLE : HOST,
      IssuingAccount: `arn:aws:iam::${ACCT}:root`,
      Operations: ['Decrypt'],
      tokenHashes: [],
    }));
    writeFileSync(file, JSON.stringify({ version: 1, grants }) + '\n');
    const store = await GrantStore.open(file);
    const order = (gs: typeof grants): string[] => [...gs].sort((a, b) => a.CreationDate - b.CreationDate || (a.GrantId < b.GrantId ? -1 : 1)).map((g) => g.GrantId);

    const builds0 = store.orderBuilds;
    const byKey = await allPages((Marker) => store.list(KEY_ARN, { Limit: 100, ...(Marker ? { Marker } : {}) }));
    expect(byKey).toEqual(order(grants.filter((g) => g.KeyId === KEY_ARN)));
    expect(byKey).toHaveLength(4_000);
    const retirable = await allPages((Marker) => store.listRetirable(HOST, { Limit: 100, ...(Marker ? { Marker } : {}) }));
    expect(retirable).toEqual(order(grants.filter((g) => g.RetiringPrincipal === HOST)));
    expect(store.orderBuilds - builds0).toBe(2); // 40 + 45 pages, one sort each list

    // Changes between pages: the marker still names the last grant returned.
    const expected = order(grants.filter((g) => g.RetiringPrincipal === HOST));
    const gone = expected[1_050]!;
    let added = '';
    const got = await allPages((Marker) => store.listRetirable(HOST, { Limit: 100, ...(Marker ? { Marker } : {}) }), async (i) => {
      if (i === 9) await store.remove(KEY_ARN, gone);
      if (i === 20) added = (await store.create(facts, { GranteePrincipal: HOST, RetiringPrincipal: HOST, Operations: ['Decrypt'] }, 1_800_000_000_000)).GrantId;
    });
    expect(got).toEqual([...expected.filter((id) => id !== gone), added]);
    expect(store.orderBuilds - builds0).toBe(4); // kept from the pass above, then rebuilt once after each change
    // Another principal's order is not dropped by this one's changes.
    const before = store.orderBuilds;
    expect(store.listRetirable(OTHER_ROLE, { Limit: 100 }).Grants).toHaveLength(100);
    expect(store.listRetirable(OTHER_ROLE, { Limit: 100 }).Grants).toHaveLength(100);
    expect(store.orderBuilds - before).toBe(1);
  });
});
