/**
 * The HSM domain key is in memory once, in the buffer openDomain returns
 * (docs/architecture.md §5.6, §6.5): opening or creating a domain leaves no
 * other whole copy of it in the clear. Observed from outside the code: after
 * the caller wipes the key it was given, this process's own memory
 * (/proc/self/mem, test/helpers/own-memory.ts) holds the key nowhere, freed
 * memory included. The domain is opened in place on the addon's AES-GCM
 * (§6.5), so with the addon the key's tail is searched as well: node's
 * Decipher.update, the fallback, frees a copy of its output of which malloc
 * overwrites only the first bytes (the key's head). Real domain files, under
 * a KEK file and under a passphrase.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterEach, describe, expect, it } from 'vitest';
import { openDomain } from '../../src/kms/hsm/domain.js';
import { nativeAesGcmDecrypt } from '../../src/kms/hsm/gcm-open.js';
import { countInOwnMemory, invert } from '../helpers/own-memory.js';
import { tempDir, type TempDir } from '../helpers/temp-dir.js';

const CHEAP = { N: 2 ** 10, r: 8, p: 1 };
let t: TempDir | undefined;
afterEach(() => {
  t?.cleanup();
  t = undefined;
});

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as (o?: { type: 'minor' | 'major' }) => void;

/**
 * The domain key's inverse; the key itself wiped, as the HSM wipes it at close. Between the
 * open and the wipe, a scavenge and a full collection: a key V8 keeps on its own heap (a
 * typed array of up to 64 bytes) is moved by them and leaves its old bytes behind, which
 * otherwise happened only when a collection fell there by chance (one run in ~50 before
 * secretBuffer, src/util/wipe.ts). Now every run moves it.
 */
function takeKey(d: { domainKey: Buffer }): Buffer {
  gc({ type: 'minor' });
  gc({ type: 'major' });
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
      // The part node's Decipher leaves behind (§6.5); 16 random bytes are found only where they were copied.
      if (nativeAesGcmDecrypt !== null) expect(countInOwnMemory(opened.subarray(16))).toBe(0);
    }, 60_000);
  }
});
