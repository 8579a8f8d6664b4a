import { describe, it } from 'vitest';
import { expectClean, fuzzAndReport } from './fuzz-config.js';

describe('fuzz: KMS ciphertext blobs', () => {
  it('parseBlob: InvalidCiphertextException or an exact parse', async () => {
    expectClean(await fuzzAndReport('kms-blob', 1500));
  });
  it('through the core: a changed byte or a different context (incl. __proto__, lone surrogates) fails with InvalidCiphertextException', async () => {
    expectClean(await fuzzAndReport('kms-blob-context', 300));
  });
});
