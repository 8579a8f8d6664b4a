import type { Env } from '../e2e/helpers.js';

/** The listener URL from the daemon's ready line; polls, since the log file is written behind the ready event. */
export async function kmsUrl(env: Env): Promise<string> {
  for (let i = 0; i < 200; i++) {
    const m = /"kmsUrl":"([^"]+)"/.exec(env.daemonLog());
    if (m) return m[1]!;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`no kmsUrl in the daemon log:\n${env.daemonLog()}`);
}
