import { connect } from 'node:net';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import type { IncomingMessage } from 'node:http';
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { DEFAULT_LIMITS, HttpTransport, type WireRequest, type WireResponse } from '../../src/daemon/kms-transport.js';
import { FrontWorker } from '../../src/daemon/kms-front.js';
import { silentLogger } from '../../src/util/logger.js';

/**
 * A request body may hold plaintext (an Encrypt's, a PutSnapshotBlock's block), and the
 * listener zeroes the body it was handed once it has answered (docs/architecture.md §5.2).
 * A body that arrives in several reads is joined into one buffer: the pieces it was joined
 * from must not outlive it with the same bytes. A real listener on 127.0.0.1; node's
 * `http.server.request.start` channel (node:diagnostics_channel) shows the test each piece
 * the server read, as node hands it to the transport.
 *
 * A binary answer (GetSnapshotBlock's block, in the clear for an encrypted snapshot) is the
 * answer's own buffer: zeroed once written, on the main thread's transport and when it
 * crosses to the front-end worker (`--kms-front-threads 1`).
 */
let transport: HttpTransport | undefined;
let onStart: ((m: unknown) => void) | undefined;
let front: FrontWorker | undefined;
afterEach(async () => {
  await front?.close();
  front = undefined;
  if (onStart) unsubscribe('http.server.request.start', onStart);
  onStart = undefined;
  await transport?.close();
  transport = undefined;
});

const isZero = (b: Uint8Array): boolean => b.every((x) => x === 0);
const until = async (ok: () => boolean): Promise<void> => {
  for (let i = 0; i < 500 && !ok(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(ok()).toBe(true);
};

describe('HttpTransport: a body read in several pieces', () => {
  it('once the handler has zeroed the body it was handed, every piece node read of it is zero too', async () => {
    const pieces: Buffer[] = [];
    onStart = (m: unknown) => (m as { request: IncomingMessage }).request.on('data', (c: Buffer) => pieces.push(c));
    subscribe('http.server.request.start', onStart);
    let handed: Buffer | undefined;
    transport = new HttpTransport({
      host: '127.0.0.1', port: 0, limits: DEFAULT_LIMITS, onRefusals: () => {},
      onRequest: (r) => {
        handed = r.body;
        r.body.fill(0); // as the listener does once it has answered (kms-listener.ts)
        r.respond({ status: 200, headers: ['Content-Length', '2'], body: '{}' });
      },
    });
    const { port } = await transport.listen();
    const secret = randomBytes(3000).toString('base64'); // an Encrypt's Plaintext member, 4,000 characters
    const body = Buffer.from(JSON.stringify({ KeyId: 'alias/x', Plaintext: secret }));
    const half = body.length >> 1;
    const s = connect(port, '127.0.0.1');
    const answer = new Promise<string>((resolve) => {
      let text = '';
      s.on('data', (c: Buffer) => { text += c.toString('latin1'); if (text.includes('\r\n\r\n{}')) resolve(text); });
    });
    s.write(`POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ${body.length}\r\n\r\n`);
    s.write(body.subarray(0, half));
    await until(() => pieces.length === 1); // the first half read on its own
    s.write(body.subarray(half));
    expect(await answer).toMatch(/^HTTP\/1\.1 200/);
    s.destroy();
    expect(pieces.length).toBeGreaterThanOrEqual(2);
    expect(Buffer.concat(pieces).equals(body)).toBe(false); // zeroed, not as sent
    expect(handed!.length).toBe(body.length);
    expect(isZero(handed!)).toBe(true);
    for (const p of pieces) expect(isZero(p)).toBe(true);
  }, 30_000);
});

/** GET / on a fresh connection: the answer's body, read to its end. */
function get(port: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    const got: Buffer[] = [];
    s.on('data', (c: Buffer) => got.push(c));
    s.on('end', () => {
      const all = Buffer.concat(got);
      resolve(all.subarray(all.indexOf('\r\n\r\n') + 4));
    });
    s.on('error', reject);
    s.write('GET /snapshots/snap-0123456789abcdef0/blocks/0 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n');
  });
}

const BLOCK = 512 * 1024;
/** The answer a GetSnapshotBlock gives: its plaintext block as the raw body. */
const blockAnswer = (block: Buffer): WireResponse => ({ status: 200, headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': block.length }, body: block });

describe('a binary answer is zeroed once written', () => {
  it('on the main thread\'s transport (--kms-front-threads 0)', async () => {
    const sent = randomBytes(BLOCK);
    const block = Buffer.from(sent);
    transport = new HttpTransport({ host: '127.0.0.1', port: 0, limits: DEFAULT_LIMITS, onRefusals: () => {}, onRequest: (r) => r.respond(blockAnswer(block)) });
    const { port } = await transport.listen();
    expect((await get(port)).equals(sent)).toBe(true);
    await until(() => isZero(block));
  }, 30_000);

  it('when the client has gone before the answer: zeroed all the same', async () => {
    const block = randomBytes(BLOCK);
    let answer: (() => void) | undefined;
    transport = new HttpTransport({ host: '127.0.0.1', port: 0, limits: DEFAULT_LIMITS, onRefusals: () => {}, onRequest: (r) => { answer = () => r.respond(blockAnswer(block)); } });
    const { port } = await transport.listen();
    const s = connect(port, '127.0.0.1');
    s.write('GET /snapshots/snap-0123456789abcdef0/blocks/0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    await until(() => answer !== undefined);
    s.destroy(); // an SDK's timeout: the client goes, the daemon answers later
    await new Promise((r) => setTimeout(r, 200));
    answer!();
    await until(() => isZero(block));
  }, 30_000);

  it('an answer queued behind a pipelined one, the client gone: zeroed all the same', async () => {
    const first = randomBytes(BLOCK);
    const second = randomBytes(BLOCK);
    const answers: (() => void)[] = [];
    transport = new HttpTransport({ host: '127.0.0.1', port: 0, limits: DEFAULT_LIMITS, onRefusals: () => {}, onRequest: (r) => { const b = answers.length === 0 ? first : second; answers.push(() => r.respond(blockAnswer(b))); } });
    const { port } = await transport.listen();
    const s = connect(port, '127.0.0.1');
    const req = 'GET /snapshots/snap-0123456789abcdef0/blocks/0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n';
    s.write(req + req); // two requests pipelined on one connection
    await until(() => answers.length === 2);
    answers[1]!(); // the second answer first: node queues it behind the first, unanswered yet
    s.destroy();
    await new Promise((r) => setTimeout(r, 200));
    answers[0]!();
    await until(() => isZero(first) && isZero(second));
  }, 30_000);

  it('across the front-end worker (--kms-front-threads 1): the main thread\'s buffer once handed over', async () => {
    const sent = randomBytes(BLOCK);
    const block = Buffer.from(sent);
    front = await FrontWorker.start({
      host: '127.0.0.1', port: 0, limits: DEFAULT_LIMITS, log: silentLogger, onRefusals: () => {}, onFatal: () => {},
      handle: async (_r: WireRequest) => blockAnswer(block),
    });
    expect((await get(front.address.port)).equals(sent)).toBe(true);
    await until(() => isZero(block));
  }, 30_000);
});
