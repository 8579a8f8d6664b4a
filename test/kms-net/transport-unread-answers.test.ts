/**
 * Answers a client does not read (src/daemon/kms-transport.ts). A caller
 * allowed to read one snapshot can pipeline 32 GetSnapshotBlock requests on
 * each of its connections and never read: node writes what the kernel takes
 * and holds every other answer (512 KiB of plaintext block each) in memory,
 * with no timeout once the requests are read (a probe: 20 such connections
 * held 260 MB, still after 10 s; 128 connections of one source would hold
 * 2 GiB). Answers are bodies the daemon holds for a caller too: they are
 * held in the guard's body budget until written (past it, a connection
 * with answers unread gets ThrottlingException instead), and a connection
 * whose answers the kernel takes less than 16 KiB of in a request timeout is
 * closed (src/daemon/answer-writer.ts). A real HttpTransport on
 * loopback; the assertions are on bytes and closed connections, not time.
 */
import { connect, type Socket } from 'node:net';
import { request } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { DEFAULT_LIMITS, HttpTransport } from '../../src/daemon/kms-transport.js';
import { answeringListener, type AnsweringListener } from './answering-listener.js';
import { poll } from '../helpers/poll.js';
import { pacedGet, parseAnswer, type PacedGet } from './paced-reader.js';

/** This file's polling: how many tries, how far apart. */
const POLL = { tries: 400, everyMs: 25 };

const BLOCK = 512 * 1024;
const PER_CALLER = 4 << 20;


describe('KMS transport: answers the client does not read', () => {
  let t: HttpTransport | undefined;
  const socks: Socket[] = [];
  afterEach(async () => {
    for (const s of socks.splice(0)) s.destroy();
    await t?.close();
    t = undefined;
  });

  let answered = 0;
  let maxHeld = 0;
  const start = async (perCaller = PER_CALLER): Promise<number> => {
    answered = 0;
    maxHeld = 0;
    t = new HttpTransport({
      host: '127.0.0.1', port: 0, onRefusals: () => {},
      limits: { ...DEFAULT_LIMITS, headersTimeoutMs: 1_000, requestTimeoutMs: 2_000, maxBufferedBodyBytes: 4 * PER_CALLER, maxBufferedBodyBytesPerCaller: perCaller },
      onRequest: (r) => {
        answered++;
        r.respond({ status: 200, headers: { 'Content-Type': 'application/octet-stream' }, body: Buffer.alloc(BLOCK, 7) });
        maxHeld = Math.max(maxHeld, t!.guard.usage().bufferedBodyBytes);
      },
    });
    return (await t.listen()).port;
  };

  it('8 connections x 32 pipelined 512 KiB answers, never read: what is held for the caller stays within its budget, and the connections close once a request timeout passes without progress', async () => {
    const port = await start();
    const req = 'GET /snapshots/snap-0123456789abcdef0/blocks/0?blockToken=x HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(32);
    for (let i = 0; i < 8; i++) {
      const s = connect({ host: '127.0.0.1', port });
      s.pause(); // never reads
      s.on('error', () => {});
      s.on('connect', () => s.write(req));
      socks.push(s);
    }
    await poll(() => answered >= 8, POLL); // each connection's first request at least
    // The kernel takes a few MB of each connection's answers; the rest node would hold. Held for the caller: its budget,
    // past which only a connection with no answer unwritten gets one more (one answer each at most).
    expect(maxHeld).toBeLessThanOrEqual(PER_CALLER + 8 * BLOCK);
    await poll(() => t!.guard.usage().connections === 0, POLL);
    expect(t!.guard.usage().bufferedBodyBytes).toBe(0);
  }, 60_000);

  it.each([
    ['within its share', PER_CALLER],
    ['whose share is smaller than one answer', BLOCK / 2],
  ])('a client that reads, %s, gets every 512 KiB answer whole, one after another, nothing stays held, no refusal is counted', async (_what, perCaller) => {
    const port = await start(perCaller);
    for (let i = 0; i < 20; i++) {
      const body = await new Promise<Buffer>((resolve, reject) => {
        const r = request({ host: '127.0.0.1', port, path: '/snapshots/x/blocks/0' }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve(Buffer.concat(chunks)));
        });
        r.on('error', reject);
        r.end();
      });
      expect(body.length).toBe(BLOCK);
      expect(body.every((b) => b === 7)).toBe(true);
    }
    await poll(() => t!.guard.usage().bufferedBodyBytes === 0, POLL);
    expect(t!.guard.usage().refusalsPending).toBe(0); // an answer that went out is not a refusal
  }, 60_000);
});

/**
 * A client that stops reading in the middle of a long answer, neither reading nor closing again: the answer
 * is kept only while the kernel takes 16 KiB of it per request timeout (src/daemon/answer-writer.ts), so the
 * connection is cut one timeout after it stopped, the answer zeroed and given back to the budget, and the same
 * source's next request is answered whole. A 16 MiB answer (more than loopback's kernel buffers take),
 * a 0.5 s request timeout; on the main thread and across the front-end worker, whose transport is the same,
 * and there over TLS too (the default with --kms-only).
 */
describe.each([
  ['main thread', false],
  ['front-end worker', false],
  ['front-end worker, TLS', true],
] as const)('KMS transport (%s): a client that stops reading mid-answer', (where, withTls) => {
  // More than loopback's kernel buffers can hold for one connection (tcp_wmem's and tcp_rmem's maxima: 4 and 6 MiB by default).
  const ANSWER = 16 << 20;
  let l: AnsweringListener | undefined;
  const clients: PacedGet[] = [];
  afterEach(async () => {
    for (const c of clients.splice(0)) c.socket.destroy();
    await l?.close();
    l = undefined;
  });

  const answer = Buffer.alloc(ANSWER, 0x5a);
  /** A listener answering every request with a copy of `answer`; its port. */
  const start = async (): Promise<number> => {
    const limits = { ...DEFAULT_LIMITS, headersTimeoutMs: 500, requestTimeoutMs: 500 };
    l = await answeringListener(where === 'main thread' ? 'main thread' : 'front-end worker', withTls, answer, limits);
    return l.port;
  };
  /** Connections the listener still has (the worker's: those that carried a request). */
  const open = (): number => (l!.front ? l!.front.connectionsKnown : l!.transport!.guard.usage().connections);

  // The trickle on the main thread only: the other front ends differ in what carries the answer, not in the rule.
  it.each([
    ['stops after 1 MiB', { perTick: 256 * 1024, tickMs: 10, stopAt: 1 << 20 }],
    ...(where === 'main thread' ? [['trickles 256 bytes every 50 ms (less than 16 KiB per timeout)', { perTick: 256, tickMs: 50 }] as const] : []),
  ] as const)('%s: cut, its answer given back; the same source\'s next request is answered whole', async (_what, pace) => {
    const port = await start();
    const stalled = pacedGet(port, { ...pace, ...(l?.ca ? { ca: l.ca } : {}) });
    clients.push(stalled);
    await poll(() => stalled.received() > 0 && open() === 1, POLL);
    await poll(() => open() === 0, POLL); // cut one request timeout after it stopped: no deadline, no reading
    if (l!.transport) expect(l!.transport.guard.usage().bufferedBodyBytes).toBe(0);
    stalled.drain();
    const cutShort = parseAnswer(await stalled.done);
    expect(cutShort.length).toBe(ANSWER);
    expect(cutShort.body.length).toBeLessThan(ANSWER);

    const next = parseAnswer(await pacedGet(port, { perTick: Infinity, tickMs: 1_000, ...(l?.ca ? { ca: l.ca } : {}) }).done);
    expect(next.body.length).toBe(ANSWER);
    expect(next.body.equals(answer)).toBe(true);
  }, 60_000);
});
