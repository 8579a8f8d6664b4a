import { throttled } from './ebs-direct-errors.js';

/**
 * EBS direct APIs' per-snapshot request-rate quotas ("Quotas for Amazon EBS":
 * GetSnapshotBlock and PutSnapshotBlock requests per snapshot, 1,000 per
 * second each), one token bucket per snapshot and operation. A request past
 * the rate is RequestThrottledException (HTTP 400) with Reason
 * RESOURCE_LEVEL_THROTTLE; the SDKs retry it with back-off (it is in their
 * throttling error list), so a client that keeps to the rate on average goes
 * through.
 */
export type ThrottledOperation = 'GetSnapshotBlock' | 'PutSnapshotBlock';
export const DEFAULT_REQUESTS_PER_SNAPSHOT_PER_SECOND = 1_000;
/** Buckets kept at once; past it the one idle longest is dropped (a dropped bucket is a full one: lenient, never wrong the other way for long). */
const MAX_BUCKETS = 10_000;

interface Bucket {
  tokens: number;
  /** When `tokens` was last brought up to date (ms). */
  at: number;
}

export class SnapshotThrottle {
  private readonly buckets = new Map<string, Bucket>();
  private readonly rate: number;

  /**
   * @param perSecond requests per second per snapshot and operation; also the
   *   burst (a full bucket holds one second's worth). At least 1.
   * @param now injected clock, ms.
   */
  constructor(perSecond: number = DEFAULT_REQUESTS_PER_SNAPSHOT_PER_SECOND, private readonly now: () => number = Date.now) {
    if (!Number.isFinite(perSecond) || perSecond < 1) throw new RangeError(`perSecond: at least 1, got ${perSecond}`);
    this.rate = perSecond;
  }

  /** Take one token for `op` on `snapshotId`, or throw RequestThrottledException. */
  take(op: ThrottledOperation, snapshotId: string): void {
    const key = `${op}\0${snapshotId}`;
    const now = this.now();
    let b = this.buckets.get(key);
    if (b) {
      this.buckets.delete(key); // re-inserted below: the map stays in order of last use
      b.tokens = Math.min(this.rate, b.tokens + ((now - b.at) / 1000) * this.rate);
      b.at = now;
    } else {
      if (this.buckets.size >= MAX_BUCKETS) this.buckets.delete(this.buckets.keys().next().value!);
      b = { tokens: this.rate, at: now };
    }
    this.buckets.set(key, b);
    if (b.tokens < 1) {
      throw throttled('RESOURCE_LEVEL_THROTTLE', `${op} on ${snapshotId}: more than ${this.rate} requests per second for this snapshot; retry with back-off`);
    }
    b.tokens -= 1;
  }
}
