import { fstatSync } from 'node:fs';
import { nativeIo, EAGAIN, EOPNOTSUPP, type NativeIo } from '../native/addon.js';

/*
 * The volume layer's use of the addon's non-blocking I/O (src/native/addon.ts):
 * which files may take a synchronous write on the event loop, the watchdog
 * over those writes, and the stream poller.
 */
export { nativeIo, EAGAIN, EOPNOTSUPP, type NativeIo };

/**
 * Whether a synchronous buffered pwrite on this fd may run on the event loop
 * at all (under the watchdog, see SyncWriteGuard). Only for files on a real
 * block device's filesystem: a file system on a loop device (major 7), nbd
 * (43) or an anonymous device (major 0: FUSE, NFS, tmpfs, overlay...) could
 * be backed, directly or not, by this very process's FUSE mount, and a
 * synchronous write that waits for writeback there would never return.
 */
export function syncWriteSafe(fd: number): boolean {
  try {
    const dev = fstatSync(fd, { bigint: true }).dev;
    // glibc's gnu_dev_major: bits 8-19 and 32-43.
    const major = Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn));
    return major !== 0 && major !== 7 && major !== 43;
  } catch {
    return false;
  }
}

/**
 * Process-wide watchdog for synchronous buffered pwrites on the event loop.
 * Normally such a write is a 4-16 KiB memcpy into the page cache (~5-10 µs,
 * less than a libuv pool round trip). But the kernel may make it wait (dirty
 * page throttling, journal, memory reclaim), and a blocked event loop stalls
 * every volume and the control API. So every sync write is timed; one slower
 * than `slowMs` during which the thread slept in the kernel sends all writes
 * to the pool for `holdMs` (doubling on each trip in a row, up to
 * `maxHoldMs`). A write that was only preempted (no voluntary context switch:
 * the machine is busy, the pool would wait for a CPU just the same) does not
 * count: on a shared 2-vCPU machine that happened several times a minute and
 * sent writes to the pool for no benefit. One volume tripping it moves all of them:
 * the loop is shared, and so, usually, is the backing filesystem.
 */
export class SyncWriteGuard {
  private holdUntil = 0;
  private hold: number;
  /** Slow sync writes that started or extended a hold (the snapshot log reports the count, docs/benchmarks.md). */
  trips = 0;
  /** Writes small enough for the loop that went to the pool because a hold was on (counted by BackingIo.writeCached). */
  held = 0;
  constructor(
    readonly slowMs = 1,
    private readonly holdMs = 1000,
    private readonly maxHoldMs = 30_000,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.hold = holdMs;
  }

  /** Whether a sync write may be tried now. */
  allowed(): boolean {
    return this.holdUntil === 0 || this.now() >= this.holdUntil;
  }

  /** Record how long a sync write took (ms), and whether the thread slept in the kernel meanwhile. */
  record(ms: number, slept = true): void {
    if (ms <= this.slowMs || !slept) {
      if (this.holdUntil !== 0) {
        this.holdUntil = 0;
        this.hold = this.holdMs;
      }
      return;
    }
    this.trips++;
    const again = this.holdUntil !== 0;
    this.holdUntil = this.now() + this.hold;
    if (again) this.hold = Math.min(this.hold * 2, this.maxHoldMs);
  }

  /** Force the pool for the next holdMs (tests, and callers who know better). */
  trip(): void {
    this.record(Number.POSITIVE_INFINITY);
  }
}

export const syncWriteGuard = new SyncWriteGuard();

/**
 * Busy-poll budget between two requests of a sequential stream (µs).
 *
 * A sequential FUSE stream is one request at a time (no FUSE_ASYNC_DIO,
 * docs/perf-notes.md §1). When the event loop has finished a request before
 * the next arrives, it sleeps in epoll_wait, and being woken by the libfuse
 * thread's uv_async_send costs more on these 2-vCPU VMs than the wait itself.
 * So after a request of a sequential stream the loop waits for the next one
 * by polling, for at most STREAM_POLL_US. Measured (docs/perf-notes.md §6):
 * 1 MiB sequential write through the passthrough 948 -> 1362 MB/s (encrypted
 * 1135 -> 1201), 4 interleaved rounds, with 50 µs. At 50 µs one poll in six
 * timed out during a 1 MiB stream (the gap between two 128 KiB requests is
 * close to it), and each timeout makes the poller skip chances; at 200 µs
 * fewer than one in a hundred did, and twice as many requests were caught by
 * the poll (docs/perf-notes.md §7).
 */
export const STREAM_POLL_US = 200;

/**
 * One poll per event-loop turn, at its end (setImmediate: after the reply,
 * the write-behind completion and any read-ahead), and it backs off: a poll
 * that timed out (the stream paused, or the machine is too busy for the
 * next request to come quickly) skips the next 2, 4, ... 256 chances, so an
 * idle or saturated daemon does not burn a core.
 */
class StreamPoller {
  private scheduled = false;
  private skip = 0;
  private backoff = 0;
  /** Outcomes, for tests and docs: [timed out, already pending, arrived]. */
  readonly outcomes = [0, 0, 0];

  constructor(private readonly io: NativeIo | null) {}

  /** Called after serving a request that continues a sequential stream. */
  request(): void {
    if (this.scheduled || this.io?.awaitLoopEvent === undefined) return;
    this.scheduled = true;
    setImmediate(this.run);
  }

  private readonly run = (): void => {
    this.scheduled = false;
    if (this.skip > 0) {
      this.skip--;
      return;
    }
    const r = this.io!.awaitLoopEvent!(STREAM_POLL_US);
    this.outcomes[r + 1]++;
    if (r < 0) {
      this.backoff = Math.min(Math.max(2, this.backoff * 2), 256);
      this.skip = this.backoff;
    } else {
      this.backoff = 0;
    }
  };
}

export const streamPoller = new StreamPoller(nativeIo);
