import { describe, it } from 'vitest';
import { expectClean, fuzzAndReport } from './fuzz-config.js';

describe('fuzz: IAM wildcard matching', () => {
  it('agrees with a DP reference matcher, never throws, never hangs (`*?` runs, long patterns)', async () => {
    expectClean(await fuzzAndReport('wildcard', 2000));
  });
});
