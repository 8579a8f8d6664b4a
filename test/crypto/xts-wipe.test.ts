/**
 * Wiping (docs/architecture.md §11.7). Best effort by nature: these tests prove that the buffers
 * an engine copied key material into are zero after destroy(); they cannot
 * prove the GC never copied them. The native engine keeps no JS-side copy;
 * its native key copy is checked through the addon's keyWiped(), and
 * libgcrypt wipes its handles (key schedules) as it closes them.
 */
import { describe, expect, it } from 'vitest';
import { nodeXtsEngine } from '../../src/crypto/xts-node.js';
import { referenceXtsEngine } from '../../src/crypto/xts-reference.js';
import { nativeXtsEngine } from '../../src/crypto/xts-native.js';
import { requireNative } from '../../src/native/addon.js';
import { randomKey } from './xts-suite.js';
import { printSeedOnFailure } from './seeded.js';

type WithKeyBuffers = { _keyBuffers(): ArrayBufferView[] };
const allZero = (v: ArrayBufferView) => new Uint8Array(v.buffer, v.byteOffset, v.byteLength).every((b) => b === 0);

describe('XTS key wiping', () => {
  printSeedOnFailure();
  for (const engine of [nodeXtsEngine, referenceXtsEngine]) {
    it(`${engine.name}: key copies are non-zero while live and zero after destroy()`, () => {
      const c = engine.createContext(randomKey());
      const bufs = (c as unknown as WithKeyBuffers)._keyBuffers();
      expect(bufs.length).toBeGreaterThan(0);
      for (const b of bufs) expect(allZero(b)).toBe(false);
      c.destroy();
      for (const b of bufs) expect(allZero(b)).toBe(true);
      expect((c as unknown as WithKeyBuffers)._keyBuffers()).toEqual([]);
    });
  }

  it('reference: the expanded schedules hold the key (so wiping them matters)', () => {
    const key = randomKey();
    const c = referenceXtsEngine.createContext(key);
    const [k1e] = (c as unknown as WithKeyBuffers)._keyBuffers();
    // AES-256 key expansion starts with the key itself (FIPS 197 §5.2)
    expect(Buffer.from(new Uint8Array(k1e!.buffer, k1e!.byteOffset, 32)).equals(key.subarray(0, 32))).toBe(true);
    c.destroy();
  });

  it('native: keeps no JS-side key copy (its schedules are in native memory)', () => {
    const c = nativeXtsEngine.createContext(randomKey());
    expect((c as unknown as Partial<WithKeyBuffers>)._keyBuffers).toBeUndefined();
    c.destroy();
  });

  it("native: the addon's key copy is wiped and its handles closed by destroyContext", async () => {
    const n = requireNative();
    const ctx = n.createContext(randomKey());
    expect(n.keyWiped(ctx)).toBe(false);
    // Lend handles to async runs, then destroy while they are queued: the runs
    // still finish, and the copy is gone at once.
    const runs = [0, 1, 2].map((i) => n.encrypt(ctx, Buffer.alloc(65536, i), BigInt(i * 128), 4096, 8));
    n.destroyContext(ctx);
    expect(n.keyWiped(ctx)).toBe(true);
    await Promise.all(runs);
    expect(n.keyWiped(ctx)).toBe(true);
    expect(() => n.encryptSync(ctx, Buffer.alloc(4096), 0n, 4096, 8)).toThrow(expect.objectContaining({ code: 'XTS_DESTROYED' }));
  });
});
