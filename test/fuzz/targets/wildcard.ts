import fc from 'fast-check';
import { globMatcher } from '../../../src/kms/authz/wildcard.js';
import { refWildcard } from '../harness/oracles.js';
import type { FuzzTarget } from '../harness/target.js';

/**
 * IAM wildcard matching (src/kms/authz/wildcard.ts) against the dynamic
 * programming matcher of harness/oracles.ts. Patterns: small alphabets rich
 * in `*`, `?` and regex metacharacters; ARN-like patterns with many `*?`
 * (the shape that backtracked for ever); very long patterns. Case-insensitive
 * cases stay ASCII, where IAM's folding is not in doubt.
 */
interface Input { patterns: string[]; subject: string; ignoreCase: boolean }

const sensitive = fc.constantFrom('a', 'b', '*', '?', '.', '\\', '(', ')', '[', ']', '$', '^', '|', '/', '+', '{', '}', 'A', 'é', '\n', '\ud83d', '\ude00', ':');
const ascii = fc.constantFrom('a', 'b', 'A', 'B', '*', '?', '.', '\\', '(', '$', '|', ':', '-');

const small = fc.boolean().chain((ignoreCase) => {
  const unit = ignoreCase ? ascii : sensitive;
  return fc.record({
    patterns: fc.array(fc.string({ unit, maxLength: 16 }), { minLength: 1, maxLength: 3 }),
    subject: fc.string({ unit: ignoreCase ? ascii : sensitive, maxLength: 24 }),
    ignoreCase: fc.constant(ignoreCase),
  });
});

const starQ = fc.record({
  prefix: fc.constantFrom('arn:aws:kms:us', 'a', ''),
  k: fc.integer({ min: 2, max: 40 }),
  unit: fc.constantFrom('*?', '*', '?*', '*a'),
  suffix: fc.constantFrom('-east-1:111122223333:key/x', 'b', ''),
  n: fc.integer({ min: 0, max: 64 }),
  tail: fc.constantFrom('', 'c', '-east-1'),
}).map(({ prefix, k, unit, suffix, n, tail }): Input => ({
  patterns: [prefix + unit.repeat(k) + suffix],
  subject: prefix + 'a'.repeat(n) + tail,
  ignoreCase: false,
}));

const long = fc.record({
  unit: fc.constantFrom('a*', 'a', '?', 'ab*?'),
  n: fc.integer({ min: 1000, max: 20_000 }),
  subject: fc.constantFrom('a', 'b', 'aaaa'),
}).map(({ unit, n, subject }): Input => ({ patterns: [unit.repeat(n)], subject, ignoreCase: false }));

const target: FuzzTarget<Input, null> = {
  name: 'wildcard',
  about: 'globMatcher(patterns, ignoreCase)(subject) vs a DP reference matcher',
  arbitrary: () => fc.oneof({ arbitrary: small, weight: 6 }, { arbitrary: starQ, weight: 2 }, { arbitrary: long, weight: 1 }),
  open: async () => null,
  close: async () => {},
  run(x) {
    const got = globMatcher(x.patterns, x.ignoreCase)(x.subject);
    const want = x.patterns.some((p) => refWildcard(p, x.subject, x.ignoreCase));
    if (got !== want) return { invalid: 'wildcard agrees with the reference matcher', why: `globMatcher said ${got}, reference ${want}` };
    return got ? 'accepted' : 'refused';
  },
  // A matcher has no typed refusal: every throw is a defect.
  isTyped: () => false,
};
export default target;
