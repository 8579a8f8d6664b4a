import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Kms } from '../../src/kms/open-kms.js';
import type { Caller } from '../../src/kms/types.js';
import { ACCT, awsName, openTestKms, tempDir } from './helpers.js';

/**
 * List markers name the last item returned over a stable order
 * (docs/kms-format.md, "List markers"), so the list may change between two
 * pages: removing the item after the marker neither breaks the next call nor
 * skips an item. Through the real core, wired as the daemon wires it.
 */
let t: ReturnType<typeof tempDir>;
let kms: Kms;
let root: Caller;
let keyId = '';
const HOST = `arn:aws:iam::${ACCT}:role/EbsdHost`;

const call = (op: string, req: Record<string, unknown>): Promise<Record<string, any>> => kms.core.call(op, req, root);

/** Every page of `op`, `limit` at a time, with `between(pageIndex)` run after each page but the last. */
async function pages(op: string, req: Record<string, unknown>, member: string, limit: number, between: (i: number) => Promise<void> = async () => {}): Promise<any[][]> {
  const out: any[][] = [];
  let marker: string | undefined;
  for (;;) {
    const r = await call(op, { ...req, Limit: limit, ...(marker ? { Marker: marker } : {}) });
    out.push(r[member]);
    if (!r.Truncated) return out;
    marker = r.NextMarker;
    await between(out.length - 1);
  }
}

beforeAll(async () => {
  t = tempDir('ebsd-list-markers-');
  kms = await openTestKms(t.dir);
  root = kms.identities.callerForUid(0);
  await kms.identities.createRole('EbsdHost');
  keyId = (await call('CreateKey', {})).KeyMetadata.KeyId;
}, 60_000);

afterAll(async () => {
  await kms?.close();
  t?.cleanup();
});

describe('ListGrants and ListRetirableGrants: the marker survives a grant retired between pages', () => {
  const grantIds = async (): Promise<string[]> => (await pages('ListGrants', { KeyId: keyId }, 'Grants', 100)).flat().map((g) => g.GrantId);

  it('the grant after the marker is retired between two pages: the next page is the one after it', async () => {
    for (let i = 0; i < 4; i++) await call('CreateGrant', { KeyId: keyId, GranteePrincipal: HOST, RetiringPrincipal: HOST, Operations: ['Decrypt'] });
    const all = await grantIds();
    expect(all).toHaveLength(4);
    const got = await pages('ListGrants', { KeyId: keyId }, 'Grants', 1, async (i) => {
      if (i === 0) await call('RetireGrant', { KeyId: keyId, GrantId: all[1] });
    });
    expect(got.flat().map((g) => g.GrantId)).toEqual([all[0], all[2], all[3]]);
  });

  it('ListRetirableGrants: the same, across a revoke', async () => {
    const all = (await pages('ListRetirableGrants', { RetiringPrincipal: HOST }, 'Grants', 100)).flat().map((g) => g.GrantId);
    expect(all).toHaveLength(3);
    const got = await pages('ListRetirableGrants', { RetiringPrincipal: HOST }, 'Grants', 1, async (i) => {
      if (i === 0) await call('RevokeGrant', { KeyId: keyId, GrantId: all[1] });
    });
    expect(got.flat().map((g) => g.GrantId)).toEqual([all[0], all[2]]);
  });

  it('a marker that is not one is InvalidMarkerException', async () => {
    expect(await awsName(call('ListGrants', { KeyId: keyId, Marker: 'bm90IGEgbWFya2Vy' }))).toBe('InvalidMarkerException');
    expect(await awsName(call('ListRetirableGrants', { RetiringPrincipal: HOST, Marker: 'x' }))).toBe('InvalidMarkerException');
  });
});

describe('ListResourceTags: tags by TagKey, the marker naming the last one returned', () => {
  it('the tag before the marker is untagged between two pages: the next page still starts after the marker', async () => {
    const k = (await call('CreateKey', {})).KeyMetadata.KeyId as string;
    await call('TagResource', { KeyId: k, Tags: ['d', 'b', 'a', 'c'].map((TagKey) => ({ TagKey, TagValue: TagKey.toUpperCase() })) });
    const got = await pages('ListResourceTags', { KeyId: k }, 'Tags', 2, async (i) => {
      if (i === 0) await call('UntagResource', { KeyId: k, TagKeys: ['a'] });
    });
    expect(got.flat()).toEqual(['a', 'b', 'c', 'd'].map((TagKey) => ({ TagKey, TagValue: TagKey.toUpperCase() })));
    expect(await awsName(call('ListResourceTags', { KeyId: k, Marker: 'bm90IGEgbWFya2Vy' }))).toBe('InvalidMarkerException');
  });
});
