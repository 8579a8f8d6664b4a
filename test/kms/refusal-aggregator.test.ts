import { describe, expect, it } from 'vitest';
import { RefusalAggregator } from '../../src/kms/audit/refusal-aggregator.js';

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
});
