/**
 * Calls `fn` until it returns a truthy value and returns that value, waiting `everyMs` between
 * tries; after `tries` tries it throws. For state a test cannot await directly (a count kept by a
 * server, a line in an audit file): polled, never a fixed sleep.
 */
export async function poll<T>(
  fn: () => Promise<T | undefined | false> | T | undefined | false,
  { tries = 300, everyMs = 20 }: { tries?: number; everyMs?: number } = {},
): Promise<T> {
  for (let i = 0; i < tries; i++) {
    const v = await fn();
    if (v) return v;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error('condition not reached');
}
