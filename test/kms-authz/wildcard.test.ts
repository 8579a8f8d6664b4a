import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { globMatch, globMatcher, type MatchStats } from '../../src/kms/authz/wildcard.js';
import { parsePolicy } from '../../src/kms/authz/policy-document.js';
import { doc } from './helpers.js';

/**
 * IAM wildcard matching is linear-time in the sense that matters: at most
 * (|subject| + 1) · (|pattern| + 1) steps whatever the pattern, where a
 * backtracking RegExp takes exponential time on `*?*?…`.
 * Answers are checked against a reference dynamic-programming matcher.
 */

/** Reference: the textbook DP over prefixes (IAM semantics: `*` any run, `?` one character). */
function reference(p: string, s: string): boolean {
  let prev: boolean[] = new Array<boolean>(s.length + 1).fill(false);
  prev[0] = true;
  for (let i = 1; i <= p.length; i++) {
    const cur = new Array<boolean>(s.length + 1).fill(false);
    const c = p[i - 1];
    cur[0] = c === '*' && prev[0]!;
    for (let j = 1; j <= s.length; j++) {
      if (c === '*') cur[j] = prev[j]! || cur[j - 1]!;
      else cur[j] = prev[j - 1]! && (c === '?' || c === s[j - 1]);
    }
    prev = cur;
  }
  return prev[s.length]!;
}

describe('IAM wildcard matching', () => {
  it('"us*?*?…*?-east-1" (40 pairs) against a near miss: bounded steps, correct answer', () => {
    const pattern = `arn:aws:kms:us${'*?'.repeat(40)}-east-1:111122223333:key/*`;
    const subject = 'arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab';
    const stats: MatchStats = { steps: 0 };
    expect(globMatch(pattern, subject, stats)).toBe(false);
    expect(stats.steps).toBeLessThanOrEqual((subject.length + 1) * (pattern.length + 1));
    expect(reference(pattern, subject)).toBe(false);
    const longer = `arn:aws:kms:us${'x'.repeat(40)}-east-1:111122223333:key/k`;
    expect(globMatch(pattern, longer, stats)).toBe(true);
    expect(stats.steps).toBeLessThanOrEqual((longer.length + 1) * (pattern.length + 1));
  });

  it('a 10,000-character pattern compiles and matches without a RegExp SyntaxError', () => {
    const pattern = 'arn:' + '*?'.repeat(4998);
    const m = globMatcher([pattern, `arn:aws:kms:*:${'a'.repeat(10_000)}`], false);
    expect(m('arn:short')).toBe(false);
    expect(m('arn:' + 'z'.repeat(5000))).toBe(true);
    expect(() => parsePolicy(doc({ Effect: 'Allow', Action: 'kms:*', Resource: 'arn:' + '*'.repeat(9_996) }), { kind: 'identity', maxBytes: 1 << 20 })).not.toThrow();
  });

  it('agrees with the reference on 5,000 random pattern/subject pairs (seed 1313), within the step bound', () => {
    const alpha = fc.constantFrom('a', 'b', '*', '?', ':');
    const text = fc.constantFrom('a', 'b', ':');
    fc.assert(fc.property(fc.string({ unit: alpha, maxLength: 12 }), fc.string({ unit: text, maxLength: 14 }), (p, s) => {
      const stats: MatchStats = { steps: 0 };
      expect(globMatch(p, s, stats)).toBe(reference(p, s));
      expect(stats.steps).toBeLessThanOrEqual((s.length + 1) * (p.length + 1));
    }), { seed: 1313, numRuns: 5_000 });
  });

  it('matcher lists: exact, wildcard, case-insensitive (actions)', () => {
    const m = globMatcher(['kms:Decrypt', 'kms:Generate*', 'kms:?escribeKey'], true);
    expect(['kms:decrypt', 'KMS:GenerateDataKey', 'kms:DescribeKey'].map(m)).toEqual([true, true, true]);
    expect(['kms:Encrypt', 'kms:Generat', 'kms:XXescribeKey'].map(m)).toEqual([false, false, false]);
    expect(globMatcher(['*'], false)('anything')).toBe(true);
  });
});
