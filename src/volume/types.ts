/** What the FUSE adapter needs from an attached volume. Offsets are byte offsets inside the volume. */
export interface BlockDevice {
  readonly volumeId: string;
  /**
   * Volume size in bytes. Live: after ModifyVolume grows an attached volume,
   * the same device object reports the new size at once (no re-attach), so
   * the FUSE layer should read it on every getattr rather than cache it. To
   * learn of a change when it happens (e.g. to invalidate the kernel's
   * attribute cache), pass `onResized` to the VolumeManager. Sizes only grow.
   */
  readonly size: number;
  /** Human-readable; `true` only for the measurement-only plaintext passthrough (`--cipher none`). */
  readonly unencrypted: boolean;
  /** Read `length` bytes at `offset` into `into` (from `intoOffset`), returns bytes read. */
  read(offset: number, length: number, into: Buffer, intoOffset?: number): Promise<number>;
  /** Write `data` at `offset`; resolves once the ciphertext reached the backing file (page cache). */
  write(offset: number, data: Buffer): Promise<number>;
  /**
   * Like write(), but the device may use `data` as scratch space (encrypt in
   * place) and leave it modified. Only for callers that drop the buffer after
   * the call, such as the FUSE adapter with libfuse's request memory.
   */
  writeConsuming?(offset: number, data: Buffer): Promise<number>;
  /**
   * Write-behind (see SectorDevice.writeBehind): copy `data` and return the
   * completion to run before any other request of this device, or null when
   * the write must take write()/writeConsuming(). The caller replies first.
   */
  writeBehind?(offset: number, data: Uint8Array): (() => void) | null;
  /**
   * One call per write request for a caller that drops `data` after the
   * reply (the FUSE adapter): the device may encrypt in it, and with
   * `behind` may reply before the bytes are written and complete them before
   * its next request (see SectorDevice.submitWrite). `reply` runs exactly once.
   */
  submitWrite?(offset: number, data: Buffer, behind: boolean, reply: (err: unknown, written: number) => void): void;
  /** fdatasync of the backing file; also reports a write-behind that failed after its reply. */
  flush(): Promise<void>;
}
