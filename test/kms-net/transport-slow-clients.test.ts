/**
 * Slow clients on the KMS listener's transport (src/daemon/kms-transport.ts):
 * a client sending its headers, or its body, one byte at a time holds its
 * connection only until the header or request timeout, and an idle
 * keep-alive connection until the keep-alive timeout; a connection closed so
 * gives its slot back to the source's cap. A real HttpTransport on loopback
 * with short timeouts; every client is bounded by a byte count, and each
 * case asserts how many bytes the client could send before it was cut off,
 * never how long it took.
 */
import { connect } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { DEFAULT_LIMITS, HttpTransport } from '../../src/daemon/kms-transport.js';
import { answeringListener, type AnsweringListener } from './answering-listener.js';
import { poll } from '../helpers/poll.js';
import { pacedGet, parseAnswer } from './paced-reader.js';

const TICK_MS = 100;


/**
 * Connect and write `head` at once, then `trickled` one byte every TICK_MS,
 * until the connection closes or every byte is sent; resolves with how many
 * trickled bytes were written. A client that does not `read` never takes the
 * server's answer nor its half-close off the socket, as a slowloris would not.
 */
function trickle(port: number, head: string, trickled: Buffer, read: boolean): Promise<{ sent: number; answer: string }> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    let sent = 0;
    let answer = '';
    let timer: NodeJS.Timeout | undefined;
    if (read) s.on('data', (c: Buffer) => (answer += c.toString('latin1')));
    else s.pause();
    s.on('error', () => {}); // reset once the server gives up on it: 'close' follows
    s.on('close', () => { clearInterval(timer); resolve({ sent, answer }); });
    s.on('connect', () => {
      s.write(head);
      timer = setInterval(() => {
        if (sent >= trickled.length) { clearInterval(timer); s.destroy(); return; }
        s.write(trickled.subarray(sent, sent + 1));
        sent++;
      }, TICK_MS);
    });
  });
}

describe('KMS transport: slow clients hold a connection only until a timeout', () => {
  let t: HttpTransport | undefined;
  afterEach(async () => {
    await t?.close();
    t = undefined;
  });

  let handled = 0;
  const start = async (): Promise<number> => {
    handled = 0;
    t = new HttpTransport({
      host: '127.0.0.1', port: 0, onRefusals: () => {},
      // 1 s for the headers and 2 s for a request: 10 and 20 ticks. The clients below have far more bytes than that to send.
      limits: { ...DEFAULT_LIMITS, headersTimeoutMs: 1_000, requestTimeoutMs: 2_000, keepAliveTimeoutMs: 1_000 },
      onRequest: (r) => { if (!r.bodyError) handled++; r.respond({ status: 200, headers: { 'Content-Type': 'application/x-amz-json-1.1' }, body: '{}' }); },
    });
    return (await t.listen()).port;
  };

  // 1 s for the headers, 2 s for a request (10 and 20 ticks), node looks every second, and an answered
  // client is given 1 s to close: about 40 ticks at most. Each client has 150 bytes to trickle (15 s), and
  // must be cut off before 100.
  const TRICKLED = 150;
  const CUT_BY = 100;
  const HEAD = 'POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-amz-json-1.1\r\n';

  for (const read of [true, false]) {
    const who = read ? 'reading its answers' : 'never reading (nor closing)';
    it(`headers one byte at a time, a client ${who}: cut off within the header timeout, no request handed over, its slot given back`, async () => {
      const port = await start();
      const r = await trickle(port, HEAD, Buffer.alloc(TRICKLED, 0x61).fill('X-Pad: ', 0, 7), read);
      expect(r.sent).toBeLessThan(CUT_BY);
      if (read) expect(r.answer).toMatch(/^HTTP\/1\.1 408 /);
      expect(handled).toBe(0);
      await poll(() => t!.guard.usage().connections === 0);
    }, 60_000);

    it(`a body one byte at a time, a client ${who}: cut off within the request timeout, its slot given back`, async () => {
      const port = await start();
      const r = await trickle(port, `${HEAD}Content-Length: ${TRICKLED}\r\n\r\n`, Buffer.alloc(TRICKLED, 0x20), read);
      expect(r.sent).toBeLessThan(CUT_BY);
      if (read) expect(r.answer).toMatch(/^HTTP\/1\.1 408 /);
      await poll(() => t!.guard.usage().connections === 0);
    }, 60_000);
  }

  it('100 connections that send nothing and never read: all cut off within the header timeout and a linger, their slots given back', async () => {
    const port = await start();
    const socks = Array.from({ length: 100 }, () => {
      const s = connect({ host: '127.0.0.1', port });
      s.pause();
      s.on('error', () => {});
      return s;
    });
    try {
      await poll(() => t!.guard.usage().connections === 100);
      // Before the fix they were answered 400 with a half-close and held until the client closed: never.
      await poll(() => t!.guard.usage().connections === 0, { tries: 500 });
    } finally {
      for (const s of socks) s.destroy();
    }
  }, 60_000);

  it('a keep-alive connection left idle after its answer: closed, its slot given back', async () => {
    const port = await start();
    const s = connect({ host: '127.0.0.1', port });
    let answer = '';
    s.on('data', (c: Buffer) => (answer += c.toString('latin1')));
    s.on('error', () => {});
    const closed = new Promise<void>((r) => s.on('close', () => r()));
    s.on('connect', () => s.write('POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}'));
    await closed;
    expect(answer).toMatch(/^HTTP\/1\.1 200/);
    await poll(() => t!.guard.usage().connections === 0);
  }, 60_000);
});

/**
 * The other way: a client reading a long answer slowly (a slow link, a throttled backup job). The answer is
 * written as fast as the client reads, and kept only while it reads (src/daemon/answer-writer.ts): a request
 * timeout is an idle timeout on answers, not a deadline. The answer is 8 MiB, more than loopback's kernel
 * buffers take at once (about 4 MB), read 128 KiB every 25 ms: several request timeouts long in all, far more
 * than 16 KiB per timeout. On the main thread and across the front-end worker (`--kms-front-threads 1`), whose
 * transport is the same, and there over TLS too (the default with --kms-only): node counts a TLS socket's
 * writes done, as a plain one's, once the kernel has taken their records.
 */
describe.each([
  ['main thread', false],
  ['front-end worker', false],
  ['front-end worker, TLS', true],
] as const)('KMS transport (%s): a client reading a long answer slowly', (where, withTls) => {
  // Over TLS 12 MiB: the client's TLS socket reads ahead of it, and the kernel's buffers then take more at once.
  const ANSWER = (withTls ? 12 : 8) << 20;
  let l: AnsweringListener | undefined;
  afterEach(async () => {
    await l?.close();
    l = undefined;
  });

  /** A listener answering every request with a copy of `answer`; its port. */
  const start = async (answer: Buffer): Promise<number> => {
    // 0.5 s: the 8 MiB answer takes three times that to read at this pace.
    const limits = { ...DEFAULT_LIMITS, headersTimeoutMs: 500, requestTimeoutMs: 500, keepAliveTimeoutMs: 1_000 };
    l = await answeringListener(where === 'main thread' ? 'main thread' : 'front-end worker', withTls, answer, limits);
    return l.port;
  };

  it('gets it whole and correct, though it takes several request timeouts', async () => {
    const answer = Buffer.alloc(ANSWER);
    for (let i = 0; i < ANSWER; i += 4) answer.writeUInt32LE(i, i);
    const port = await start(answer);
    const a = parseAnswer(await pacedGet(port, { perTick: 128 * 1024, tickMs: 25, ...(l?.ca ? { ca: l.ca } : {}) }).done);
    expect(a.status).toBe(200);
    expect(a.body.length).toBe(ANSWER); // before the fix: cut at the request timeout, 1 MB or more short
    expect(a.body.equals(answer)).toBe(true);
  }, 60_000);

  // Answers queued behind one being written (pipelining) are written slice by slice once their turn comes.
  if (where === 'main thread') it('four pipelined 2 MiB answers, read at the same pace: each whole, in order, nothing left held', async () => {
    const answer = Buffer.alloc(2 << 20);
    for (let i = 0; i < answer.length; i += 4) answer.writeUInt32LE(i, i);
    const port = await start(answer);
    const s = connect({ host: '127.0.0.1', port });
    const chunks: Buffer[] = [];
    let thisTick = 0;
    s.on('data', (c: Buffer) => { chunks.push(c); thisTick += c.length; if (thisTick >= 128 * 1024) s.pause(); });
    const pace = setInterval(() => { thisTick = 0; s.resume(); }, 25);
    const closed = new Promise((r) => s.on('close', r));
    s.write(`${'GET /a HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(3)}GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    await closed;
    clearInterval(pace);
    let rest: Buffer = Buffer.concat(chunks);
    for (let i = 0; i < 4; i++) {
      const a = parseAnswer(rest);
      expect(a.status).toBe(200);
      expect(a.body.subarray(0, answer.length).equals(answer)).toBe(true);
      rest = a.body.subarray(answer.length);
    }
    expect(rest.length).toBe(0);
    expect(l!.transport!.guard.usage().bufferedBodyBytes).toBe(0);
  }, 60_000);
});
