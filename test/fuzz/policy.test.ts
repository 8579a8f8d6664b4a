import { describe, it } from 'vitest';
import { expectClean, fuzzAndReport } from './fuzz-config.js';

describe('fuzz: key policies and conditions', () => {
  it('parsePolicy: MalformedPolicyDocumentException only, no duplicates or loose CIDRs accepted, evaluation bounded', async () => {
    expectClean(await fuzzAndReport('policy', 1200));
  });
  it('compileConditions: typed refusals only (`__proto__` operators), StringLike agrees with the reference matcher', async () => {
    expectClean(await fuzzAndReport('conditions', 1200));
  });
});
