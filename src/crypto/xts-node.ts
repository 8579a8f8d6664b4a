import { createCipheriv, createDecipheriv, getCiphers } from 'node:crypto';
import type { XtsContext, XtsEngine } from './xts.js';
import { _checkKey, _tweakBlock, type CheckedRun } from './xts-check.js';
import { XtsError } from './xts-errors.js';
import { _OnThreadXtsContext } from './xts-on-thread.js';
import { secretBuffer, wipe } from '../util/wipe.js';

/**
 * AES-256-XTS on node:crypto, one Cipheriv per data unit. The fallback when
 * the addon did not build: correct, but each unit pays for a cipher object
 * and a key schedule, so it is far slower than the native engine.
 */
export function isNodeXtsAvailable(): boolean {
  return getCiphers().includes('aes-256-xts');
}

class NodeXtsContext extends _OnThreadXtsContext {
  readonly engine = 'node' as const;
  /** Our copy of K1 ‖ K2, outside Buffer's pool so wiping it clears only it. */
  #key: Buffer | null;
  #iv = Buffer.alloc(16);

  constructor(key: Uint8Array) {
    super();
    this.#key = secretBuffer(64); // off V8's heap (wipe.ts)
    this.#key.set(key);
  }

  protected override _run(data: Uint8Array, r: CheckedRun, encrypt: boolean): void {
    const key = this.#key;
    if (key === null) throw new XtsError('XTS_DESTROYED', 'context was destroyed');
    const step = BigInt(r.tweakStep);
    let tweak = r.firstTweak;
    for (let off = 0; off < data.length; off += r.unitSize, tweak += step) {
      const iv = _tweakBlock(this.#iv, tweak);
      const c = encrypt ? createCipheriv('aes-256-xts', key, iv) : createDecipheriv('aes-256-xts', key, iv);
      const unit = data.subarray(off, off + r.unitSize);
      const out = c.update(unit);
      c.final();
      unit.set(out);
      wipe(out);
    }
  }

  /**
   * Zeroes our key copy. Best effort: OpenSSL's per-cipher schedules are freed
   * by node when each Cipheriv is collected, and the GC may have moved bytes.
   */
  override destroy(): void {
    wipe(this.#key);
    this.#key = null;
  }

  /** Test hook: the buffers this context copied key material into. */
  _keyBuffers(): Uint8Array[] {
    return this.#key ? [this.#key] : [];
  }
}

export const nodeXtsEngine: XtsEngine = {
  name: 'node',
  library: `OpenSSL ${process.versions.openssl} (node:crypto)`,
  createContext(key: Uint8Array): XtsContext {
    _checkKey(key);
    if (!isNodeXtsAvailable()) throw new XtsError('XTS_ENGINE_UNAVAILABLE', 'node:crypto lacks aes-256-xts');
    return new NodeXtsContext(key);
  },
};
