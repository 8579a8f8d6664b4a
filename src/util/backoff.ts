/**
 * The back-off the daemon's background retries share (src/daemon/host-resolver.ts,
 * src/volume/resume-retry.ts): 1 s doubling to 30 s, times a jitter in
 * [0.5, 1) so hosts restarted together do not retry in step; whole milliseconds.
 * `attempt` counts from 1 (the first retry).
 */
export const BACKOFF_FIRST_MS = 1_000;
export const BACKOFF_MAX_MS = 30_000;

export function backoffDelayMs(attempt: number, random: () => number = Math.random): number {
  const n = Math.max(1, Math.floor(attempt));
  return Math.round(Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** Math.min(n - 1, 5)) * (0.5 + 0.5 * random()));
}
