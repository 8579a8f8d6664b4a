import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { join } from 'node:path';
import type { VolumeManager } from '../../src/volume/volume-manager.js';
import type { KeyService } from '../../src/volume/key-service.js';
import { xtsKeyHalvesEqual } from '../../src/crypto/xts-check.js';
import { kmsHarness, VIA, type KmsHarness } from './helpers/kms.js';
import { openTestManager } from './helpers/manager.js';
import { tmpDir } from './helpers/image.js';

// newDataKey: a data key whose halves are equal (K1 = K2, refused by XTS) is
// wiped and a new one generated; the halves are compared in place, never
// copied (a Buffer.from copy of K1 would sit in Node's shared Buffer pool,
// which nothing wipes).

/** Whether a and b are views over overlapping bytes of one ArrayBuffer. */
function overlaps(a: Uint8Array, b: Uint8Array): boolean {
  return a.buffer === b.buffer && a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;
}

describe('VolumeManager.newDataKey and equal key halves (real KMS core)', () => {
  let t: ReturnType<typeof tmpDir>;
  let kms: KmsHarness;
  let mgr: VolumeManager;
  /** Every Plaintext the KMS handed out, in order; the first is replaced by one with equal halves. */
  let handed: Uint8Array[];
  let generated: number;

  beforeEach(async () => {
    t = tmpDir();
    kms = await kmsHarness(join(t.dir, 'kms'));
    handed = [];
    generated = 0;
    const real = kms.keyService;
    const ks: KeyService = {
      ...real,
      generateDataKeyWithoutPlaintext: async (req, caller) => { generated++; return real.generateDataKeyWithoutPlaintext(req, caller); },
      decrypt: async (req, caller, opts) => {
        const r = await real.decrypt(req, caller, opts);
        if (handed.length === 0) r.Plaintext.copyWithin(32, 0, 32); // K2 := K1
        handed.push(r.Plaintext);
        return r;
      },
    };
    mgr = await openTestManager(t.dir, { ...kms, keyService: ks });
  });
  afterEach(async () => {
    vi.restoreAllMocks();
    await mgr.close();
    await kms.close();
    t.cleanup();
  });

  it('refuses a key with K1 = K2: wipes it, generates another, and copies neither key\'s half', async () => {
    const keyArn = await kms.createKey();
    const from = vi.spyOn(Buffer, 'from');
    const { key } = await mgr.newDataKey(keyArn, 'vol-0123456789abcdef0', { ...kms.user, viaService: VIA });
    const copied = from.mock.calls.filter(([arg]) => arg instanceof Uint8Array && handed.some((k) => overlaps(arg, k)));
    from.mockRestore();

    expect(generated).toBe(2);
    expect(handed).toHaveLength(2);
    expect(handed[0]!.every((b) => b === 0)).toBe(true); // the refused key, wiped
    expect(key).toBe(handed[1]);
    expect(xtsKeyHalvesEqual(key)).toBe(false);
    expect(copied).toEqual([]);
  });

  it('xtsKeyHalvesEqual compares the halves of a 64-byte key', () => {
    const k = new Uint8Array(64);
    for (let i = 0; i < 32; i++) k[i] = k[i + 32] = i * 7;
    expect(xtsKeyHalvesEqual(k)).toBe(true);
    k[63] ^= 1;
    expect(xtsKeyHalvesEqual(k)).toBe(false);
  });
});
