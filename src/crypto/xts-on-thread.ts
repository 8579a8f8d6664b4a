import type { XtsContext, XtsEngineName, XtsRunOptions } from './xts.js';
import { _checkRun, type CheckedRun } from './xts-check.js';

/**
 * The part of an XtsContext shared by the engines that run on the calling
 * thread (node, reference): every entry point validates the run with
 * _checkRun and hands it to the engine's `_run`; the async forms are the sync
 * ones after a microtask (no thread pool), so errors arrive as rejections.
 */
export abstract class _OnThreadXtsContext implements XtsContext {
  abstract readonly engine: XtsEngineName;

  /** Encrypts or decrypts `data` in place; `r` is already validated. */
  protected abstract _run(data: Uint8Array, r: CheckedRun, encrypt: boolean): void;

  abstract destroy(): void;

  encryptSync(data: Uint8Array, firstTweak: bigint | number, opts?: XtsRunOptions): void {
    this._run(data, _checkRun(data, firstTweak, opts), true);
  }

  decryptSync(data: Uint8Array, firstTweak: bigint | number, opts?: XtsRunOptions): void {
    this._run(data, _checkRun(data, firstTweak, opts), false);
  }

  async encrypt(data: Uint8Array, firstTweak: bigint | number, opts?: XtsRunOptions): Promise<void> {
    this.encryptSync(data, firstTweak, opts);
  }

  async decrypt(data: Uint8Array, firstTweak: bigint | number, opts?: XtsRunOptions): Promise<void> {
    this.decryptSync(data, firstTweak, opts);
  }
}
