import { createCipheriv, createDecipheriv } from 'node:crypto';
import type { XtsContext, XtsEngine, XtsRunOptions } from '../../../src/crypto/xts.js';

/**
 * Independent per-sector AES-256-XTS over node:crypto, for cross-checking
 * what the block device wrote (dm-crypt plain64 tweak: LE u64 in 16 bytes).
 */
export function plain64Iv(n: bigint): Buffer {
  const iv = Buffer.alloc(16);
  iv.writeBigUInt64LE(n, 0);
  return iv;
}

export function xtsSector(key: Uint8Array, dir: 'enc' | 'dec', data: Uint8Array, tweak: bigint): Buffer {
  const c = dir === 'enc' ? createCipheriv('aes-256-xts', key, plain64Iv(tweak)) : createDecipheriv('aes-256-xts', key, plain64Iv(tweak));
  c.setAutoPadding(false);
  return Buffer.concat([c.update(data), c.final()]);
}

function run(key: Buffer, dir: 'enc' | 'dec', data: Uint8Array, first: bigint | number, o?: XtsRunOptions): void {
  const unit = o?.unitSize ?? 4096;
  const step = BigInt(o?.tweakStep ?? (unit === 4096 ? 8 : 1));
  for (let i = 0; i * unit < data.length; i++) {
    const s = data.subarray(i * unit, (i + 1) * unit);
    s.set(xtsSector(key, dir, s, BigInt(first) + BigInt(i) * step));
  }
}

/** Test-only engine used until (and beside) the project's XTS engines. */
export const nodeTestEngine: XtsEngine = {
  name: 'node',
  library: 'node:crypto aes-256-xts, one Cipheriv per sector (test helper)',
  createContext(k: Uint8Array): XtsContext {
    const key = Buffer.from(k);
    let dead = false;
    const live = (): Buffer => {
      if (dead) throw new Error('context destroyed');
      return key;
    };
    return {
      engine: 'node',
      encryptSync: (d, t, o) => run(live(), 'enc', d, t, o),
      decryptSync: (d, t, o) => run(live(), 'dec', d, t, o),
      encrypt: async (d, t, o) => run(live(), 'enc', d, t, o),
      decrypt: async (d, t, o) => run(live(), 'dec', d, t, o),
      destroy: () => {
        dead = true;
        key.fill(0);
      },
    };
  },
};
