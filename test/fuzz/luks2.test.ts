import { describe, it } from 'vitest';
import { expectClean, fuzzAndReport } from './fuzz-config.js';

describe('fuzz: LUKS2 headers', () => {
  it('JSON area: typed refusals only, no invalid metadata accepted', async () => {
    expectClean(await fuzzAndReport('luks2-json', 1500));
  });
  it('binary headers and whole images: typed refusals only, seqid exact, no invalid metadata accepted, rewrite typed', async () => {
    expectClean(await fuzzAndReport('luks2-header', 300));
  });
});
