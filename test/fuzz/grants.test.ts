import { describe, it } from 'vitest';
import { expectClean, fuzzAndReport } from './fuzz-config.js';

describe('fuzz: grant constraints and tokens', () => {
  it('parseConstraints / checkGrantTokens: typed refusals, every pair carried (`__proto__`)', async () => {
    expectClean(await fuzzAndReport('grants', 1500));
  });
});
