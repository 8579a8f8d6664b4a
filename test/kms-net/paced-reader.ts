/**
 * A client that reads its answer at a pace the test sets (the transport-*.test.ts files): a slow link, a
 * trickle, or a client that stops reading and neither reads nor closes again. Bounded by bytes, not time:
 * the pace is `perTick` bytes per `tickMs`, and reading stops for good once `stopAt` bytes have come.
 */
import { connect, type Socket } from 'node:net';
import { connect as connectTls } from 'node:tls';

export interface PacedGet {
  /** The raw answer bytes (head and body), once the connection has closed. */
  done: Promise<Buffer>;
  /** Bytes read so far. */
  received(): number;
  /** Read everything still buffered and to come, at full speed (after a stop, to see how much was sent). */
  drain(): void;
  socket: Socket;
}

/**
 * GET `path` on 127.0.0.1:`port` and read the answer at most `perTick` bytes every `tickMs`, up to `stopAt`
 * bytes; over TLS when `ca` (PEM) is given.
 */
export function pacedGet(port: number, o: { perTick: number; tickMs: number; stopAt?: number; path?: string; ca?: string }): PacedGet {
  const s: Socket = o.ca ? connectTls({ host: '127.0.0.1', port, ca: o.ca }) : connect({ host: '127.0.0.1', port });
  const chunks: Buffer[] = [];
  let got = 0;
  let thisTick = 0;
  let draining = false;
  const stopAt = o.stopAt ?? Infinity;
  s.on('error', () => {}); // a reset once the server gives up on it: 'close' follows
  const timer = setInterval(() => {
    thisTick = 0;
    if (got < stopAt) s.resume();
  }, o.tickMs);
  s.on('data', (c: Buffer) => {
    chunks.push(c);
    got += c.length;
    thisTick += c.length;
    if (!draining && (thisTick >= o.perTick || got >= stopAt)) s.pause();
  });
  const done = new Promise<Buffer>((resolve) => s.on('close', () => { clearInterval(timer); resolve(Buffer.concat(chunks)); }));
  s.on(o.ca ? 'secureConnect' : 'connect', () => s.write(`GET ${o.path ?? '/snapshots/snap-0123456789abcdef0/blocks/0?blockToken=x'} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`));
  return {
    done,
    received: () => got,
    drain: () => { draining = true; clearInterval(timer); s.resume(); },
    socket: s,
  };
}

/** The body of a raw HTTP/1.1 answer with a Content-Length, and its status; the body as far as it came. */
export function parseAnswer(raw: Buffer): { status: number; length: number; body: Buffer } {
  const end = raw.indexOf('\r\n\r\n');
  if (end < 0) return { status: 0, length: -1, body: Buffer.alloc(0) };
  const head = raw.subarray(0, end).toString('latin1');
  return { status: Number(head.slice(9, 12)), length: Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? -1), body: raw.subarray(end + 4) };
}
