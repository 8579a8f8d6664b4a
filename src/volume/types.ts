/** What the FUSE adapter needs from an attached volume. Offsets are byte offsets inside the volume. */
export interface BlockDevice {
  readonly volumeId: string;
  /** Volume size in bytes. */
  readonly size: number;
  /** Human-readable; `true` only for the measurement-only plaintext passthrough (`--cipher none`). */
  readonly unencrypted: boolean;
  /** Read `length` bytes at `offset` into `into` (from `intoOffset`), returns bytes read. */
  read(offset: number, length: number, into: Buffer, intoOffset?: number): Promise<number>;
  /** Write `data` at `offset`; resolves once the ciphertext reached the backing file (page cache). */
  write(offset: number, data: Buffer): Promise<number>;
  /** fdatasync of the backing file. */
  flush(): Promise<void>;
}
