/**
 * Answers written at their reader's pace (docs/architecture.md, "KMS over the
 * network"). An answer may be a 512 KiB GetSnapshotBlock block in the clear:
 * the daemon holds it until the kernel has taken it, so a client that stops
 * reading must not hold it for ever, and a client on a slow link that keeps
 * reading must get it however long that takes.
 *
 * The rule, per connection: while answers handed to node are not all taken by
 * the kernel, the kernel must take at least ANSWER_SLICE_BYTES of them (or
 * all that is left) in every idle period (the request timeout, 30 s by
 * default); otherwise the connection is closed, and its answers are zeroed
 * and given back to the body budget by their owner (kms-transport.ts). A
 * client reading 16 KiB per 30 s (about 0.5 KiB/s) keeps its answer; one that
 * reads a byte now and then loses it after one period; an answer of n bytes is
 * held at most about n / 16 KiB idle periods.
 *
 * Progress is what the kernel has taken. node counts a write done only once
 * the kernel took all of it (`writableLength`, `bytesWritten` minus it, and a
 * write's callback alike, on a plain and a TLS socket): one 512 KiB write
 * would show no progress until its last byte left. So a body longer than a
 * slice goes to node in slices, at most SLICES_AHEAD of them not yet taken by
 * the kernel, and each slice's callback is the progress.
 */
import type { ServerResponse } from 'node:http';

/**
 * The size of the pieces a long body is written in, and the progress a connection owing answers must make per
 * idle period. 16 KiB: a TLS record's largest plaintext, so a slice is one record.
 */
export const ANSWER_SLICE_BYTES = 16 * 1024;

/** Slices of one body handed to node before the kernel has taken the first: 64 KiB ahead of the reader. */
const SLICES_AHEAD = 4;

/**
 * One connection's answers not yet taken by the kernel, and the idle timer over them: armed when the
 * connection starts owing, pushed back each time the kernel has taken ANSWER_SLICE_BYTES more, stopped when
 * nothing is owed; when it fires, `onIdle` (the transport destroys the connection). `close` when the
 * connection closes: nothing is owed any more, and nothing will be.
 */
export class AnswerProgress {
  private owed = 0;
  /** Taken since the timer was last pushed back. */
  private taken = 0;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly idleMs: number, private readonly onIdle: () => void) {}

  /** `bytes` more handed to node for this connection. */
  owe(bytes: number): void {
    if (bytes <= 0 || this.closed) return;
    if (this.owed === 0) {
      this.taken = 0;
      this.timer = setTimeout(() => this.onIdle(), this.idleMs);
      this.timer.unref();
    }
    this.owed += bytes;
  }

  /** The kernel has taken `bytes` of them (or they will never be sent: a connection gone, an answer dropped). */
  took(bytes: number): void {
    if (bytes <= 0 || this.owed === 0) return;
    this.owed = Math.max(0, this.owed - bytes);
    if (this.owed === 0) { this.stop(); return; }
    this.taken += bytes;
    if (this.taken >= ANSWER_SLICE_BYTES) {
      this.taken = 0;
      this.timer?.refresh();
    }
  }

  /** Whether the connection owes answer bytes now (its idle timer is running). */
  get owing(): boolean {
    return this.owed > 0;
  }

  close(): void {
    this.closed = true;
    this.stop();
  }

  private stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.owed = 0;
  }
}

/**
 * End `res` (its head written already) with `body`, telling `took` each time the kernel has taken part of it.
 * A body longer than a slice is written a slice at a time; its head must carry its Content-Length
 * (node would send it chunked otherwise). The slices are views of `body`: its owner zeroes it only
 * once the response is written or its connection gone (whenWritten), not before.
 */
export function endPaced(res: ServerResponse, body: string | Buffer, took: (bytes: number) => void): void {
  if (typeof body === 'string' || body.length <= ANSWER_SLICE_BYTES) {
    const n = typeof body === 'string' ? Buffer.byteLength(body) : body.length;
    res.end(body, () => took(n));
    return;
  }
  // Up to SLICES_AHEAD slices handed to node at once, so a fast reader's answer is not held to one slice per
  // turn of the event loop; each slice's callback (the kernel has taken it) still reports 16 KiB of progress.
  let off = 0;
  let inFlight = 0;
  const pump = (): void => {
    if (res.destroyed) return; // the connection is gone: whenWritten has the body zeroed
    while (inFlight < SLICES_AHEAD && off < body.length) {
      const slice = body.subarray(off, off + ANSWER_SLICE_BYTES);
      off += slice.length;
      inFlight++;
      res.write(slice, (e?: Error | null) => {
        inFlight--;
        if (e) return;
        took(slice.length);
        pump();
      });
    }
    if (off >= body.length && inFlight === 0 && !res.writableEnded) res.end();
  };
  pump();
}

/** Whether `headers` (node's flat array or an object) name `name` (lower-case). */
export function hasHeader(headers: string[] | Record<string, string | number>, name: string): boolean {
  if (Array.isArray(headers)) {
    for (let i = 0; i < headers.length; i += 2) if (headers[i]!.toLowerCase() === name) return true;
    return false;
  }
  return Object.keys(headers).some((k) => k.toLowerCase() === name);
}
