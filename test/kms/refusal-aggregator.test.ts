import { describe, expect, it } from 'vitest';
import { DEFAULT_REFUSAL_KEYS_PER_GROUP, RefusalAggregator } from '../../src/kms/audit/refusal-aggregator.js';

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

  it('one source flooding refusals under ever new keys (a new access key id each time) takes at most its share of the keys: another source\'s refusal and a principal\'s AccessDenied are still written as their own', async () => {
    const written: Record<string, any>[] = [];
    const agg = new RefusalAggregator({ burst: 1, write: async (ev) => { written.push(ev); } });
    const attacker = { group: 'addr:192.0.2.7', authenticated: false };
    for (let i = 0; i < 1000; i++) {
      await agg.add(`kms-listener\u0000192.0.2.7\0AKIAFAKE${i}\0IncompleteSignature`, () => ({ eventName: 'Decrypt', sourceIPAddress: '192.0.2.7', userIdentity: { accessKeyId: `AKIAFAKE${i}` } }), attacker);
    }
    await agg.add('kms-listener\u0000198.51.100.9\0AKIAOTHER\0SignatureDoesNotMatch', () => ({ eventName: 'Decrypt', sourceIPAddress: '198.51.100.9' }), { group: 'addr:198.51.100.9', authenticated: false });
    await agg.add('kms\0arn:aws:iam::111122223333:user/insider\0Decrypt\0denied', () => ({ eventName: 'Decrypt', userIdentity: { arn: 'arn:aws:iam::111122223333:user/insider' }, errorCode: 'AccessDeniedException' }), { group: 'arn:aws:iam::111122223333:user/insider', authenticated: true });
    expect(written.filter((e) => e.sourceIPAddress === '198.51.100.9')).toHaveLength(1);
    expect(written.filter((e) => e.userIdentity?.arn === 'arn:aws:iam::111122223333:user/insider')).toHaveLength(1);
    // The attacker's own: a few written one by one, the rest counted in one overflow row that still names its source.
    const own = written.filter((e) => e.sourceIPAddress === '192.0.2.7');
    expect(own.length).toBeLessThanOrEqual(DEFAULT_REFUSAL_KEYS_PER_GROUP);
    await agg.flush();
    const rows = written.filter((e) => e.sourceIPAddress === '192.0.2.7');
    expect(rows.at(-1)).toMatchObject({ eventName: 'RefusalsOverflow', additionalEventData: { aggregated: { count: 1000 - own.length } } });
    expect(written.filter((e) => e.eventName === 'RefusalsOverflow' && e.sourceIPAddress !== '192.0.2.7')).toHaveLength(0);
  });

  it('many unauthenticated sources together take at most half the keys: a principal\'s refusal is still written as its own; events per window stay bounded', async () => {
    const written: Record<string, any>[] = [];
    const maxKeys = 64;
    const agg = new RefusalAggregator({ burst: 1, maxKeys, write: async (ev) => { written.push(ev); } });
    for (let a = 0; a < 200; a++) {
      for (let i = 0; i < 20; i++) await agg.add(`kms-listener\u0000203.0.113.${a}\0AKIA${i}`, () => ({ eventName: 'Decrypt', sourceIPAddress: `203.0.113.${a}` }), { group: `addr:203.0.113.${a}`, authenticated: false });
    }
    for (let p = 0; p < 3; p++) {
      await agg.add(`kms\0user/p${p}\0Decrypt`, () => ({ eventName: 'Decrypt', userIdentity: { arn: `user/p${p}` } }), { group: `arn:user/p${p}`, authenticated: true });
    }
    for (let p = 0; p < 3; p++) expect(written.filter((e) => e.userIdentity?.arn === `user/p${p}`)).toHaveLength(1);
    await agg.flush();
    // (burst + 1) x maxKeys + 2, whatever the senders do.
    expect(written.length).toBeLessThanOrEqual(2 * maxKeys + 2);
    const total = written.reduce((s, e) => s + (e.additionalEventData?.aggregated?.count ?? 1), 0);
    expect(total).toBe(200 * 20 + 3); // every refusal accounted for
  });
});
