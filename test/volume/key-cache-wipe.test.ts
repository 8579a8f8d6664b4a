import { afterEach, beforeEach, describe, expect, test, vi } from 'vitest';
import { join } from 'node:path';
import { KeyCache, type KeyedDevice } from '../../src/volume/key-cache.js';
import { VolumeError } from '../../src/volume/errors.js';
import { tmpDir, VOL } from './helpers/image.js';
import { kmsHarness, type KmsHarness } from './helpers/kms.js';

/**
 * Key copies (README, Security model): every plaintext volume key a refresh
 * unwraps through the real KMS core is wiped once checked, also when the
 * refresh gave up waiting for it and the key arrives afterwards.
 */
let t: ReturnType<typeof tmpDir>;
let kms: KmsHarness;
let blob: Uint8Array;
let expected: Buffer;
const ctx = { 'aws:ebs:id': VOL };

/** The device side of the cache: records whether the cache withdrew the key. */
function device(): KeyedDevice & { failed: VolumeError[] } {
  const failed: VolumeError[] = [];
  return {
    failed,
    async fail(err, after) {
      failed.push(err);
      await after?.();
    },
    wipeKey() {},
  };
}

const isZero = (b: Uint8Array): boolean => b.every((x) => x === 0);

beforeEach(async () => {
  t = tmpDir();
  kms = await kmsHarness(join(t.dir, 'kms'));
  const arn = await kms.createKey();
  const gen = (await kms.core.call('GenerateDataKey', { KeyId: arn, NumberOfBytes: 64, EncryptionContext: ctx }, kms.root)) as { CiphertextBlob: Uint8Array; Plaintext: Uint8Array };
  blob = gen.CiphertextBlob;
  expected = Buffer.from(gen.Plaintext);
  gen.Plaintext.fill(0);
});
afterEach(async () => {
  await kms.close();
  t.cleanup();
});

describe('KeyCache wipes every key it unwraps', () => {
  test('each refreshed key is checked against the volume key, then wiped', async () => {
    const seen: Uint8Array[] = [];
    const dev = device();
    const kc = new KeyCache(dev, {
      volumeId: VOL,
      ttlMs: 60_000,
      refresh: async () => {
        const k = (await kms.keyService.decrypt({ CiphertextBlob: blob, EncryptionContext: ctx }, kms.root)).Plaintext;
        seen.push(k);
        return k;
      },
      verify: (k) => {
        if (!Buffer.from(k).equals(expected)) throw new Error('not the volume key');
      },
    });
    kc.start();
    for (let i = 0; i < 10; i++) await kc.refreshNow();
    await kc.stop();
    expect(seen).toHaveLength(10);
    expect(dev.failed).toEqual([]); // every key verified before the wipe
    for (const k of seen) expect(isZero(k)).toBe(true);
  });

  test('a refresh that timed out wipes the key when it arrives late', async () => {
    const seen: Uint8Array[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const kc = new KeyCache(device(), {
      volumeId: VOL,
      ttlMs: 60_000,
      refreshTimeoutMs: 20,
      refresh: async () => {
        const k = (await kms.keyService.decrypt({ CiphertextBlob: blob, EncryptionContext: ctx }, kms.root)).Plaintext;
        seen.push(k);
        await gate; // KMS answers only after the cache stopped waiting
        return k;
      },
      verify: () => {},
    });
    kc.start();
    await kc.refreshNow();
    expect(kc.state().state).toBe('stale');
    expect(kc.state().lastError?.message).toMatch(/did not answer in time/);
    await vi.waitFor(() => expect(seen).toHaveLength(1), { timeout: 10_000, interval: 5 });
    expect(isZero(seen[0]!)).toBe(false);
    release();
    await vi.waitFor(() => expect(isZero(seen[0]!)).toBe(true), { timeout: 10_000, interval: 5 });
    await kc.stop();
  });
});
