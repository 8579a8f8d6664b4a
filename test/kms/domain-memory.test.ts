/**
 * The HSM domain key is in memory once, in the buffer openDomain returns
 * (docs/architecture.md §5.6, §6.5): opening or creating a domain leaves no
 * other whole copy of it in the clear. Observed from outside the code: after
 * the caller wipes the key it was given, this process's own memory
 * (/proc/self/mem, test/helpers/own-memory.ts) holds the key nowhere, freed
 * memory included. Not ours to wipe, so not claimed (§6.5): the buffer node's
 * Decipher.update frees after copying its output, of which malloc overwrites
 * the first bytes (the key's head) when it frees it. Real domain files, under
 * a KEK file and under a passphrase.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { openDomain } from '../../src/kms/hsm/domain.js';
import { countInOwnMemory, invert } from '../helpers/own-memory.js';
import { tempDir, type TempDir } from '../helpers/temp-dir.js';

const CHEAP = { N: 2 ** 10, r: 8, p: 1 };
let t: TempDir | undefined;
afterEach(() => {
  t?.cleanup();
  t = undefined;
});

/** The domain key's inverse; the key itself wiped, as the HSM wipes it at close. */
function takeKey(d: { domainKey: Buffer }): Buffer {
  const inv = invert(d.domainKey);
  d.domainKey.fill(0);
  return inv;
}

describe('openDomain leaves no copy of the domain key behind', () => {
  for (const kek of ['file', 'passphrase'] as const) {
    it(`${kek}: not after the domain is created, nor after it is opened again`, () => {
      t = tempDir('ebsd-domain-mem-');
      const pass = kek === 'passphrase' ? 'domain-memory-test' : undefined;
      const created = takeKey(openDomain(t.dir, pass, { scryptCost: CHEAP }));
      expect(countInOwnMemory(created)).toBe(0);
      const opened = takeKey(openDomain(t.dir, pass));
      expect(opened.equals(created)).toBe(true); // the same domain
      expect(countInOwnMemory(opened)).toBe(0);
    }, 60_000);
  }
});
