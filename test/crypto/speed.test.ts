import { describe, expect, it } from 'vitest';
import { runSpeed, selfTestXtsEngine } from '../../src/crypto/speed.js';
import type { XtsContext, XtsEngine } from '../../src/crypto/xts.js';
import { nodeXtsEngine } from '../../src/crypto/xts-node.js';

describe('runSpeed', () => {
  it('measures every engine at 512 and 4096 after checking them', async () => {
    const r = await runSpeed({ seconds: 0.02, runBytes: 16384 });
    expect(r.selected).toBe('native');
    expect(r.engines.map((e) => `${e.name}/${e.unitSize}`)).toEqual([
      'native/512', 'native/4096', 'node/512', 'node/4096', 'reference/512', 'reference/4096',
    ]);
    expect(r.engines.find((e) => e.name === 'native')?.library).toMatch(/^libgcrypt \d+\.\d+/);
    expect(r.engines.find((e) => e.name === 'node')?.library).toBe(`OpenSSL ${process.versions.openssl} (node:crypto)`);
    for (const e of r.engines) {
      expect(e.encryptMBps).toBeGreaterThan(0);
      expect(e.decryptMBps).toBeGreaterThan(0);
    }
    expect(JSON.parse(JSON.stringify(r))).toEqual(r);
  });

  it('can be limited to some engines', async () => {
    const r = await runSpeed({ seconds: 0.01, runBytes: 4096, engines: ['node'] });
    expect(r.engines.map((e) => e.name)).toEqual(['node', 'node']);
  });

  it('rejects bad options', async () => {
    await expect(runSpeed({ seconds: 0 })).rejects.toThrow(RangeError);
    await expect(runSpeed({ seconds: 0.01, runBytes: 100 })).rejects.toThrow(RangeError);
  });

  it('refuses to time an engine that gets the known answer wrong', async () => {
    const broken: XtsEngine = {
      name: 'node',
      library: 'a deliberately wrong engine',
      createContext(key: Uint8Array): XtsContext {
        const inner = nodeXtsEngine.createContext(key);
        return {
          ...inner,
          engine: 'node',
          encryptSync: (d, t, o) => {
            inner.encryptSync(d, t, o);
            d[0]! ^= 1;
          },
          decryptSync: inner.decryptSync.bind(inner),
          encrypt: inner.encrypt.bind(inner),
          decrypt: inner.decrypt.bind(inner),
          destroy: inner.destroy.bind(inner),
        };
      },
    };
    expect(() => selfTestXtsEngine(broken)).toThrow(expect.objectContaining({ code: 'XTS_SELF_TEST_FAILED' }));
  });
});
