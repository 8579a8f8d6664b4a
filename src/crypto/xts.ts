/**
 * AES-256-XTS (IEEE 1619-2018) engine contract. One interface, three
 * implementations (native | node | reference), one selected at start-up.
 *
 * A run is `data.length / unitSize` consecutive data units processed in place;
 * unit i uses tweak `firstTweak + i * tweakStep`, encoded as a little-endian
 * u64 in a 16-byte block (dm-crypt `plain64`). Volumes use unitSize 4096 with
 * tweakStep 8 (LUKS2 aes-xts-plain64, sector_size 4096); the IEEE vectors use
 * 512 with step 1.
 */
export type XtsEngineName = 'native' | 'node' | 'reference';
export type XtsUnitSize = 512 | 4096;

export interface XtsRunOptions {
  /** Data-unit size in bytes; default 4096. */
  unitSize?: XtsUnitSize;
  /** Tweak increment between consecutive units; default 8 for 4096-byte units, 1 for 512. */
  tweakStep?: number;
}

/** A key schedule bound to one 64-byte key (K1 ‖ K2). Wipe with destroy(). */
export interface XtsContext {
  readonly engine: XtsEngineName;
  encryptSync(data: Uint8Array, firstTweak: bigint | number, opts?: XtsRunOptions): void;
  decryptSync(data: Uint8Array, firstTweak: bigint | number, opts?: XtsRunOptions): void;
  /**
   * Same as the sync form; the native engine runs it on the libuv thread pool
   * (the node and reference engines run it on the calling thread after a
   * microtask). Do not read, write or transfer `data` until the promise
   * settles. Each call costs a thread hand-off (a few µs), so pass whole runs.
   */
  encrypt(data: Uint8Array, firstTweak: bigint | number, opts?: XtsRunOptions): Promise<void>;
  decrypt(data: Uint8Array, firstTweak: bigint | number, opts?: XtsRunOptions): Promise<void>;
  /** Zeroize every copy of the key this context made (best effort in JS). Idempotent. */
  destroy(): void;
}

export interface XtsEngine {
  readonly name: XtsEngineName;
  /** What computes the cipher, for people reading `ebsd speed`: e.g. "libgcrypt 1.10.1". */
  readonly library: string;
  /**
   * Throws XtsError (src/crypto/xts-errors.ts) code XTS_BAD_KEY_LENGTH (length != 64) /
   * XTS_WEAK_KEY (K1 = K2). Runs throw XTS_BAD_UNIT_SIZE, XTS_BAD_TWEAK_STEP,
   * XTS_PARTIAL_UNIT, XTS_TWEAK_OVERFLOW, XTS_DESTROYED; wrong types ArgTypeError.
   * The async forms reject with the same errors instead of throwing.
   */
  createContext(key: Uint8Array): XtsContext;
}
