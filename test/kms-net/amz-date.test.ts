import { describe, expect, it } from 'vitest';
import { parseAmzDate } from '../../src/kms/sigv4/verifier.js';

describe('parseAmzDate (memoized per distinct X-Amz-Date)', () => {
  it('gives the same answer for a repeated date as for a fresh one, valid or not', () => {
    const rows: [string, number | undefined][] = [
      ['20150830T123600Z', Date.UTC(2015, 7, 30, 12, 36, 0)],
      ['20150230T123600Z', undefined], // 30 February: the regex matches, the calendar does not
      ['20150830T123600', undefined],
      ['20151231T235959Z', Date.UTC(2015, 11, 31, 23, 59, 59)],
    ];
    for (const [s, want] of rows) {
      expect(parseAmzDate(s)).toBe(want);
      expect(parseAmzDate(s)).toBe(want); // the memoized path
    }
    expect(parseAmzDate('20150830T123600Z')).toBe(Date.UTC(2015, 7, 30, 12, 36, 0));
  });
});
