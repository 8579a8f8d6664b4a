import { describe, expect, it } from 'vitest';
import { DEFAULT_REFUSAL_KEYS_PER_ACCESS_KEY, RefusalAggregator } from '../../src/kms/audit/refusal-aggregator.js';

describe('RefusalAggregator', () => {
  it('writes the first refusals of a key at once, counts the rest, and accounts for every refusal', async () => {
    let t = Date.UTC(2026, 0, 1);
    const written: Record<string, any>[] = [];
    const agg = new RefusalAggregator({ clock: () => t, burst: 3, maxKeys: 4, write: async (ev) => { written.push(ev); } });
    const ev = (name: string) => () => ({ eventName: name, eventID: 'x', additionalEventData: { localUid: 65534 } });
    for (let i = 0; i < 1000; i++) { t += 1; await agg.add('65534/DescribeVolumes', ev('DescribeVolumes')); }
    expect(written).toHaveLength(3);
    expect(agg.pending()).toBe(997);
    await agg.flush();
    expect(written).toHaveLength(4);
    const summary = written[3]!;
    expect(summary.additionalEventData).toMatchObject({ localUid: 65534, aggregated: { count: 997, windowSeconds: 10 } });
    expect(summary.eventID).not.toBe('x');
    const total = written.reduce((s, e) => s + (e.additionalEventData.aggregated?.count ?? 1), 0);
    expect(total).toBe(1000);
  });

  it('folds keys past maxKeys into one overflow row, so distinct operation names cannot multiply the events', async () => {
    const written: Record<string, any>[] = [];
    const agg = new RefusalAggregator({ burst: 1, maxKeys: 4, write: async (ev) => { written.push(ev); } });
    for (let i = 0; i < 500; i++) await agg.add(`op${i}`, () => ({ eventName: `Op${i}` }));
    await agg.flush();
    // 4 keys written once each, then one overflow summary for the other 496.
    expect(written).toHaveLength(5);
    expect(written[4]).toMatchObject({ eventName: 'RefusalsOverflow', additionalEventData: { aggregated: { count: 496 } } });
  });

  // The flood: a client without credentials signs each request with a new made-up access key id, so each
  // refusal is a new key. Refusals nobody can vouch for share one budget; a held key and a principal have their own.
  const fake = (i: number) => ({
    key: `kms-listener\u0000192.0.2.7\u0000AKIAFAKE${i}\u0000kms.amazonaws.com\u0000Decrypt\u0000unrecognized`,
    event: () => ({ eventName: 'Decrypt', sourceIPAddress: '192.0.2.7', errorCode: 'UnrecognizedClientException', userIdentity: { type: 'Unknown', accessKeyId: `AKIAFAKE${i}` } }),
  });
  const held = (id: string, op: string) => ({
    key: `kms-listener\u0000198.51.100.9\u0000${id}\u0000kms.amazonaws.com\u0000${op}\u0000signature`,
    event: () => ({ eventName: op, errorCode: 'InvalidSignatureException', userIdentity: { type: 'Unknown', accessKeyId: id } }),
    party: { kind: 'access-key' as const, id },
  });
  const sum = (evs: Record<string, any>[]) => evs.reduce((n, e) => n + (e.additionalEventData?.aggregated?.count ?? 1), 0);

  it('1,000 refusals under made-up access key ids: a held key\'s refusal and a principal\'s denial in the same window are each still their own event', async () => {
    const written: Record<string, any>[] = [];
    const agg = new RefusalAggregator({ burst: 1, write: async (ev) => { written.push(ev); } });
    for (let i = 0; i < 1000; i++) { const f = fake(i); await agg.add(f.key, f.event); }
    const real = held('AKIAREALKEY000000001', 'Decrypt');
    await agg.add(real.key, real.event, real.party);
    const arn = 'arn:aws:iam::111122223333:user/insider';
    await agg.add(`kms\u0000${arn}\u0000Decrypt\u0000denied`, () => ({ eventName: 'Decrypt', errorCode: 'AccessDeniedException', userIdentity: { arn } }), { kind: 'principal', id: arn });
    expect(written.filter((e) => e.userIdentity?.accessKeyId === 'AKIAREALKEY000000001')).toMatchObject([{ eventName: 'Decrypt', errorCode: 'InvalidSignatureException' }]);
    expect(written.filter((e) => e.userIdentity?.arn === arn)).toMatchObject([{ eventName: 'Decrypt', errorCode: 'AccessDeniedException' }]);
    await agg.flush();
    // The flood's: 64 keys written once each, the other 936 in one overflow row; every refusal accounted for.
    const flood = written.filter((e) => e.sourceIPAddress === '192.0.2.7');
    expect(flood).toHaveLength(65);
    expect(flood.at(-1)).toMatchObject({ eventName: 'RefusalsOverflow', additionalEventData: { aggregated: { count: 936 } } });
    expect(sum(written)).toBe(1002);
  });

  it('a held key flooded under ever new keys takes only its own budget: its further refusals are counted in an overflow row naming it, another held key\'s refusal is its own event', async () => {
    const written: Record<string, any>[] = [];
    const agg = new RefusalAggregator({ burst: 1, write: async (ev) => { written.push(ev); } });
    for (let i = 0; i < 500; i++) { const r = held('AKIATARGETED00000001', `Op${i}`); await agg.add(r.key, r.event, r.party); }
    const other = held('AKIAOTHERKEY00000002', 'Decrypt');
    await agg.add(other.key, other.event, other.party);
    expect(written.filter((e) => e.userIdentity?.accessKeyId === 'AKIAOTHERKEY00000002')).toHaveLength(1);
    await agg.flush();
    const targeted = written.filter((e) => e.userIdentity?.accessKeyId === 'AKIATARGETED00000001');
    expect(targeted).toHaveLength(DEFAULT_REFUSAL_KEYS_PER_ACCESS_KEY + 1);
    expect(targeted.at(-1)).toMatchObject({ eventName: 'RefusalsOverflow', additionalEventData: { aggregated: { count: 500 - DEFAULT_REFUSAL_KEYS_PER_ACCESS_KEY } } });
    expect(sum(written)).toBe(501);
  });

  it('a principal\'s distinct denials each keep their own event, beyond what a held key may have', async () => {
    const written: Record<string, any>[] = [];
    const agg = new RefusalAggregator({ burst: 1, write: async (ev) => { written.push(ev); } });
    for (let i = 0; i < 1000; i++) { const f = fake(i); await agg.add(f.key, f.event); }
    const arn = 'arn:aws:iam::111122223333:user/alice';
    for (let i = 0; i < 20; i++) await agg.add(`kms\u0000${arn}\u0000Op${i}\u0000denied`, () => ({ eventName: `Op${i}`, errorCode: 'AccessDeniedException', userIdentity: { arn } }), { kind: 'principal', id: arn });
    expect(written.filter((e) => e.userIdentity?.arn === arn).map((e) => e.eventName)).toEqual(Array.from({ length: 20 }, (_, i) => `Op${i}`));
  });

  it('events per window stay bounded under any mix: (burst + 1) x (maxKeys + 2 x maxPartyRows) + 3, every refusal accounted for', async () => {
    const written: Record<string, any>[] = [];
    const burst = 2;
    const maxKeys = 16;
    const maxPartyRows = 40;
    const agg = new RefusalAggregator({ burst, maxKeys, maxPartyRows, maxKeysPerAccessKey: 4, maxKeysPerPrincipal: 8, write: async (ev) => { written.push(ev); } });
    let n = 0;
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 300; i++) { const f = fake(i); await agg.add(f.key, f.event); n++; }
      for (let k = 0; k < 20; k++) {
        for (let i = 0; i < 30; i++) { const r = held(`AKIAHELD${k}`, `Op${i}`); await agg.add(r.key, r.event, r.party); n++; }
      }
      for (let p = 0; p < 20; p++) {
        for (let i = 0; i < 30; i++) { await agg.add(`kms\u0000user/p${p}\u0000Op${i}`, () => ({ eventName: `Op${i}`, userIdentity: { arn: `user/p${p}` } }), { kind: 'principal', id: `user/p${p}` }); n++; }
      }
    }
    await agg.flush();
    expect(written.length).toBeLessThanOrEqual((burst + 1) * (maxKeys + 2 * maxPartyRows) + 3);
    expect(sum(written)).toBe(n);
  });

  it('forged signatures under many known access key ids fill only the access keys\' backstop: a principal\'s denial keeps its own event, and the next window starts afresh', async () => {
    const written: Record<string, any>[] = [];
    const maxPartyRows = 30;
    const agg = new RefusalAggregator({ burst: 1, maxKeys: 8, maxPartyRows, maxKeysPerAccessKey: 4, write: async (ev) => { written.push(ev); } });
    let n = 0;
    // 50 known ids x 8 operations: far past the 30 rows access keys may hold together.
    for (let k = 0; k < 50; k++) for (let i = 0; i < 8; i++) { const r = held(`AKIAKNOWN${k}`, `Op${i}`); await agg.add(r.key, r.event, r.party); n++; }
    const denial = (): Promise<void> => agg.add('kms\u0000user/alice\u0000Decrypt', () => ({ eventName: 'Decrypt', errorCode: 'AccessDeniedException', userIdentity: { arn: 'user/alice' } }), { kind: 'principal', id: 'user/alice' });
    await denial(); n++;
    expect(written.filter((e) => e.eventName === 'Decrypt' && e.userIdentity?.arn === 'user/alice')).toHaveLength(1);
    await agg.flush();
    expect(sum(written)).toBe(n);
    // flush() resets every budget: the access keys' rows as the shared keys; a new key of the first id is its own event again.
    const before = written.length;
    const r = held('AKIAKNOWN0', 'OpNew'); await agg.add(r.key, r.event, r.party);
    expect(written.length).toBe(before + 1);
    expect(written.at(-1)!.eventName).not.toBe('RefusalsOverflow');
  });
});
