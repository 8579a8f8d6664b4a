import { describe, it } from 'vitest';
import { expectClean, fuzzAndReport } from './fuzz-config.js';

describe('fuzz: CLI shorthand', () => {
  it('parseKmsArgs: UsageError or typed errors only, shorthand keys carried (`__proto__`)', async () => {
    expectClean(await fuzzAndReport('cli-args', 1500));
  });
});
