/**
 * restartOnSamePort (test/helpers/ports.ts): a daemon coming back on its old
 * port while something else holds it is started again once the port is free,
 * a bounded number of times; the first failure is not swallowed when the
 * attempts run out.
 */
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { startKmsDaemon } from '../kms-net/helpers.js';
import { restartOnSamePort } from './ports.js';

const hold = (host: string): Promise<Server> => new Promise((ok, fail) => {
  const [h, p] = [host.slice(0, host.lastIndexOf(':')), Number(host.slice(host.lastIndexOf(':') + 1))];
  const s = createServer();
  s.once('error', fail);
  s.listen(p, h, () => ok(s));
});
const release = (s: Server): Promise<void> => new Promise((r) => s.close(() => r()));

describe('restartOnSamePort', () => {
  const env = new Env('ports');
  let host = '';
  /** Starts refused so far, by the daemon's own failure line. */
  const inUse = (): number => env.daemonLog().split('"msg":"daemon failed"').filter((x, i) => i > 0 && x.includes('EADDRINUSE')).length;
  beforeAll(async () => {
    ensureBuilt();
    host = new URL((await startKmsDaemon(env)).url).host;
    await env.kill9();
  }, 60_000);
  afterAll(() => env.cleanup());

  it('out of attempts: the EADDRINUSE failure is thrown', async () => {
    const blocker = await hold(host);
    try {
      await expect(restartOnSamePort(env, ['--kms-only', '--kms-listen', host], 1)).rejects.toThrow(/EADDRINUSE/);
    } finally {
      await release(blocker);
    }
  });

  it('a port held by someone else when the daemon starts: started again once it is free, on that port', async () => {
    const blocker = await hold(host);
    const before = inUse();
    const readyLines = (log: string): string[] => log.match(/"kmsUrl":"([^"]+)"/g) ?? [];
    const readyBefore = readyLines(env.daemonLog()).length;
    const restarted = restartOnSamePort(env, ['--kms-only', '--kms-listen', host]);
    try {
      // Let go only once a start has failed on it (polled, bounded). The bound is the daemon's start-up
      // time to its listen() on a loaded machine (Env.start allows 30 s): released earlier, the first
      // start would succeed and the retry would go untested.
      const end = Date.now() + 30_000;
      while (inUse() === before && Date.now() < end) await new Promise((r) => setTimeout(r, 25));
    } finally {
      await release(blocker);
    }
    await restarted;
    expect(inUse()).toBeGreaterThan(before);
    // The restarted daemon's ready line reaches the log file behind the ready event: polled for.
    const ready = readyLines(await env.untilLog((log) => readyLines(log).length > readyBefore));
    expect(ready).toHaveLength(readyBefore + 1);
    expect(ready.at(-1)).toBe(`"kmsUrl":"http://${host}"`);
  }, 60_000);
});
