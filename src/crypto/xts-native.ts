import type { XtsContext, XtsEngine, XtsRunOptions } from './xts.js';
import { _checkKey, _checkRun } from './xts-check.js';
import { XtsError } from './xts-errors.js';
import { isNativeAvailable, nativeAddon, nativeLoadError, type NativeAddon, type NativeXtsHandle } from '../native/addon.js';

export { isNativeAvailable, nativeLoadError } from '../native/addon.js';

/**
 * AES-256-XTS on libgcrypt through the native addon (native/src/xts.c says
 * why libgcrypt): a whole run of data units per call, and an async form on the
 * libuv thread pool so large runs proceed on several cores (docs/architecture.md §3.6).
 *
 * Key material: the addon keeps one copy of the key (to key the handles async
 * runs take) beside libgcrypt's key schedules; destroy() wipes the copy and
 * closes the handles, which libgcrypt wipes as it frees them. The addon's
 * keyWiped() lets a test check the copy. This class keeps no JS copy. The
 * caller's key buffer is the caller's to wipe.
 */
class NativeXtsContext implements XtsContext {
  readonly engine = 'native' as const;
  #addon: NativeAddon;
  #handle: NativeXtsHandle | null;

  constructor(addon: NativeAddon, key: Uint8Array) {
    this.#addon = addon;
    this.#handle = addon.createContext(key);
  }

  #live(): NativeXtsHandle {
    if (this.#handle === null) throw new XtsError('XTS_DESTROYED', 'context was destroyed');
    return this.#handle;
  }

  encryptSync(data: Uint8Array, firstTweak: bigint | number, opts?: XtsRunOptions): void {
    const r = _checkRun(data, firstTweak, opts);
    this.#addon.encryptSync(this.#live(), data, r.firstTweak, r.unitSize, r.tweakStep);
  }

  decryptSync(data: Uint8Array, firstTweak: bigint | number, opts?: XtsRunOptions): void {
    const r = _checkRun(data, firstTweak, opts);
    this.#addon.decryptSync(this.#live(), data, r.firstTweak, r.unitSize, r.tweakStep);
  }

  encrypt(data: Uint8Array, firstTweak: bigint | number, opts?: XtsRunOptions): Promise<void> {
    // Not an async function: hand back the addon's promise itself (one promise
    // and microtask less per call); argument errors still arrive as rejections.
    try {
      const r = _checkRun(data, firstTweak, opts);
      return this.#addon.encrypt(this.#live(), data, r.firstTweak, r.unitSize, r.tweakStep);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  decrypt(data: Uint8Array, firstTweak: bigint | number, opts?: XtsRunOptions): Promise<void> {
    // Not an async function: hand back the addon's promise itself (one promise
    // and microtask less per call); argument errors still arrive as rejections.
    try {
      const r = _checkRun(data, firstTweak, opts);
      return this.#addon.decrypt(this.#live(), data, r.firstTweak, r.unitSize, r.tweakStep);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** Wipes the native key copy and closes (so wipes) the handles; runs already queued finish first. */
  destroy(): void {
    if (this.#handle === null) return;
    this.#addon.destroyContext(this.#handle);
    this.#handle = null;
  }
}

export const nativeXtsEngine: XtsEngine = {
  name: 'native',
  library: nativeAddon?.cipherLibrary ?? 'native addon not loaded',
  createContext(key: Uint8Array): XtsContext {
    _checkKey(key);
    if (!isNativeAvailable() || nativeAddon === null) {
      throw new XtsError('XTS_ENGINE_UNAVAILABLE', 'native addon not loaded', { cause: nativeLoadError });
    }
    return new NativeXtsContext(nativeAddon, key);
  },
};
