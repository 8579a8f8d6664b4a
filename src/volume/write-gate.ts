/** Fills `into` with the on-disk bytes of the data segment at `pos` without leaving the event loop (page cache), or answers false (`into` then means nothing). */
export type SyncRawReader = (into: Buffer, pos: number) => boolean;

/**
 * What a snapshot needs from an attached volume's data path (src/snapshot):
 * every write of the data segment passes a WriteGate before its bytes reach
 * the backing file, whichever way the device writes them (cached, sync, pool,
 * write-behind). Positions are data-segment byte offsets (0 = first data
 * byte), lengths in bytes; one call may span several 512 KiB snapshot blocks.
 */
export interface WriteGate {
  /**
   * Synchronous check for the device's fast paths: true when a write of
   * [pos, pos + len) may go to the disk now. A true answer has recorded the
   * write (changed-block tracking); false means "call pass() and wait".
   * `readNow`, when the device has a page-cache path, lets the gate read the
   * bytes about to be overwritten without leaving the event loop (a
   * snapshot's copy-on-write capture).
   */
  tryPass(pos: number, len: number, readNow?: SyncRawReader): boolean;
  /**
   * Resolves once the write may go ahead (e.g. the blocks it touches were
   * copied for a snapshot under way), having recorded it. Rejects only if the
   * write must fail (the error is the write's).
   */
  pass(pos: number, len: number): Promise<void>;
  /**
   * True while pass() might reject (not yet armed, or refusing writes): a
   * write must then not be acknowledged before it passes (write-behind),
   * or its failure would reach no one. Absent: never rejects.
   */
  readonly mayRefuse?: boolean;
}

/** The device-side surface a snapshot uses on an attached volume. */
export interface SnapshotSource {
  /** Installs (or with undefined removes) the gate every later write passes. */
  setWriteGate(gate: WriteGate | undefined): void;
  /**
   * Holds new writes back, waits until every write already accepted —
   * including write-behind completions acknowledged to FUSE but not yet on
   * disk — has reached the backing file, runs `fn`, then lets writes go
   * again. Reads continue throughout. The snapshot's point in time is taken
   * inside `fn`.
   */
  withWritesPaused<T>(fn: () => Promise<T> | T): Promise<T>;
  /**
   * True when the device's backing file is open O_DIRECT: a snapshot's own
   * read handle on the image is then opened so too (page-cache coherence,
   * src/snapshot/volume-image.ts openImageDataReader). Absent: buffered.
   */
  readonly backingDirect?: boolean;
}
