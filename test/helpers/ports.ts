/**
 * Loopback ports for tests, without a window between choosing a port and
 * listening on it where another process could take it. A daemon listens on
 * port 0 and says where (`kmsUrl` in test/kms-net/helpers.ts reads its ready
 * line); a server a test starts in-process listens on 0 and is asked
 * `address()` while it stays open. What is here is for the two cases that
 * cannot do that.
 */
import { createServer } from 'node:net';
import type { Env } from '../e2e/helpers.js';

/**
 * `env.start(args)` for a daemon coming back on the fixed port it listened on
 * before (`args` name it): its clients were configured with that address, so
 * port 0 will not do. While it was down another process may have bound the
 * port, most likely a client socket's ephemeral port, held for a moment; so a
 * start that fails with EADDRINUSE is tried again, at most `attempts` times,
 * 250 ms apart. Any other failure is thrown at once.
 */
export async function restartOnSamePort(env: Env, args: string[], attempts = 20): Promise<void> {
  for (let i = 1; ; i++) {
    try {
      await env.start(args);
      return;
    } catch (e) {
      if (i >= attempts || !(e instanceof Error) || !e.message.includes('EADDRINUSE')) throw e;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

/**
 * A loopback port nobody listened on a moment ago, for a "connection refused"
 * test. It cannot be kept free (a listener holding it would answer), so
 * another process may take it meanwhile: a caller that gets an answer other
 * than ECONNREFUSED tries again with a new port, a bounded number of times.
 */
export function unusedPort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => res(port));
    });
  });
}
