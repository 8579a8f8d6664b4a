/**
 * The audit log's answer to a full disk: a zero-filled `reserve` file beside
 * the log that only the log may give up, and the state that follows.
 *
 *   ok              the reserve is held
 *   reserve-in-use  a write hit ENOSPC, the reserve was deleted and the log
 *                   writes on in the space it freed; refused callers' events
 *                   are dropped (counted) so audited calls keep the space
 *   failing         ENOSPC with the reserve gone too: audited calls fail
 *
 * Each transition is logged once. While not ok, the reserve is re-created
 * (at most every 5 s, and only when statfs shows room for twice its size, so
 * the attempt never eats the last free blocks); success means ok again.
 *
 * Why a reserve and not a free-space threshold: free space is shared with
 * volume images and other processes and changes between a check and the
 * write; a reserve the log owns is space nobody else can take.
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../../util/logger.js';

export const RESERVE_FILE = 'reserve';
export const DEFAULT_RESERVE_BYTES = 4 << 20;
const RETRY_MS = 5_000;

export type DiskState = 'ok' | 'reserve-in-use' | 'failing';

export { isNoSpace } from '../../util/errors.js';

export class DiskReserve {
  state: DiskState = 'ok';
  since = 0;
  lastError: string | undefined;
  /** Refused callers' events dropped while short of disk. */
  dropped = 0;
  held = 0;
  private lastTry = 0;
  private readonly path: string;

  constructor(private readonly o: { dir: string; bytes: number; log: Logger; clock: () => number }) {
    this.path = join(o.dir, RESERVE_FILE);
  }

  /**
   * At open: hold the reserve. On a disk with no room for it (a start while the disk is full,
   * e.g. a restart by the watchdog) the log has no reserve to fall back on: that is
   * `reserve-in-use`, not `ok`, so status, metrics and alerts say so and the reserve is
   * re-created once there is room (maybeRecover), as after a release.
   */
  async open(): Promise<void> {
    if (await this.ensure()) return;
    this.lastTry = this.o.clock();
    this.set('reserve-in-use', this.ensureError ?? new Error('no room for the audit reserve'), 'at start');
  }

  private ensureError: unknown;

  /** Zero-fill the reserve up to its size (zeros, so the blocks are really allocated). False if the disk has no room. */
  async ensure(): Promise<boolean> {
    if (this.o.bytes === 0) return true;
    let fh: fsp.FileHandle | undefined;
    try {
      fh = await fsp.open(this.path, 'a', 0o600);
      let size = (await fh.stat()).size;
      const zeros = Buffer.alloc(Math.min(this.o.bytes, 1 << 20));
      while (size < this.o.bytes) size += (await fh.write(zeros, 0, Math.min(zeros.length, this.o.bytes - size))).bytesWritten;
      await fh.datasync();
      this.held = size;
      return true;
    } catch (e) {
      this.ensureError = e;
      await fh?.close().catch(() => {});
      fh = undefined;
      await fsp.rm(this.path, { force: true }).catch(() => {}); // a partial reserve would only take space from the log
      this.held = 0;
      if (this.state === 'ok') this.o.log.error({ err: e, file: this.path }, 'audit log: cannot allocate the full-disk reserve');
      return false;
    } finally {
      await fh?.close().catch(() => {});
    }
  }

  /** A write hit ENOSPC: free the reserve so it can go on. False if there was none left. */
  async release(err: unknown): Promise<boolean> {
    if (this.held === 0) return false;
    await fsp.rm(this.path, { force: true });
    this.held = 0;
    this.lastTry = this.o.clock();
    this.set('reserve-in-use', err);
    return true;
  }

  /** ENOSPC with nothing left to release. */
  failed(err: unknown): void {
    this.set('failing', err);
  }

  /** A write went through: failing -> reserve-in-use (some space is back, not yet the reserve). */
  wrote(): void {
    if (this.state === 'failing') this.set('reserve-in-use');
  }

  /** While short of disk, try to re-create the reserve (rate-limited, only with room to spare). */
  async maybeRecover(): Promise<void> {
    const now = this.o.clock();
    if (this.state === 'ok' || now - this.lastTry < RETRY_MS) return;
    this.lastTry = now;
    try {
      const fs = await fsp.statfs(this.o.dir);
      if (fs.bavail * fs.bsize < 2 * this.o.bytes) return;
    } catch { return; }
    if (await this.ensure()) this.set('ok');
  }

  private set(state: DiskState, err?: unknown, atStart?: 'at start'): void {
    if (err) this.lastError = String((err as Error).message ?? err);
    if (state === this.state) return;
    const was = this.state;
    this.state = state;
    this.since = this.o.clock();
    // The error that took the space is history once it is back: `ebsd status` shows LastError only while short.
    if (state === 'ok') this.lastError = undefined;
    const { dir } = this.o;
    if (state === 'ok') {
      this.o.log.warn({ dir, was, droppedRefusalEvents: this.dropped }, 'audit log: disk space is back; reserve restored');
    } else if (state === 'reserve-in-use' && was === 'failing') {
      this.o.log.warn({ dir }, 'audit log: writing again; the reserve is not restored yet (disk still nearly full)');
    } else if (state === 'reserve-in-use' && atStart) {
      this.o.log.error({ dir, reserveBytes: this.o.bytes, err },
        'audit log: DISK FULL at start: no room for the audit reserve; refused callers\' events are dropped until space returns');
    } else if (state === 'reserve-in-use') {
      this.o.log.error({ dir, reserveBytes: this.o.bytes },
        'audit log: DISK FULL; released the audit reserve, refused callers\' events are dropped until space returns');
    } else {
      this.o.log.error({ dir, droppedRefusalEvents: this.dropped }, 'audit log: DISK FULL and the reserve is used up; KMS calls fail until space is freed');
    }
  }
}
