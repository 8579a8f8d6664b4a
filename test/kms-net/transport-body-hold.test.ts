import { request } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { DEFAULT_LIMITS, HttpTransport, type TransportRequest } from '../../src/daemon/kms-transport.js';

/**
 * The transport keeps a body's bytes in the guard's body budget until the
 * request is answered, not only until it is read (src/daemon/kms-transport.ts).
 * It is the one transport of both front-end settings (the main thread with
 * --kms-front-threads 0, the front-end worker with 1), so requests being
 * handled — 512 KiB PutSnapshotBlock bodies awaiting the store — are bounded
 * by the budget either way. A real listener on 127.0.0.1; the handler holds
 * requests unanswered as a slow store would.
 */
const BLOCK = 512 * 1024;
let transport: HttpTransport | undefined;
afterEach(async () => {
  await transport?.close();
  transport = undefined;
});

function put(port: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method: 'PUT', path: '/snapshots/snap-0123456789abcdef0/blocks/0', headers: { 'Content-Length': BLOCK } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.end(Buffer.alloc(BLOCK, 0x61));
  });
}

describe('HttpTransport: bodies held in the budget until answered', () => {
  it('with room for two 512 KiB bodies, a third put while two are unanswered is refused body-budget; once they are answered, the next gets through', async () => {
    const held: TransportRequest[] = [];
    const refused: string[] = [];
    let arrived: () => void = () => {};
    transport = new HttpTransport({
      host: '127.0.0.1', port: 0,
      limits: { ...DEFAULT_LIMITS, maxBufferedBodyBytes: 2 * BLOCK + BLOCK / 2, maxBufferedBodyBytesPerCaller: 2 * BLOCK + BLOCK / 2 },
      onRefusals: () => {},
      onRequest: (r) => {
        if (r.bodyError) {
          refused.push(r.bodyError.kind);
          r.respond({ status: 400, headers: { 'Content-Type': 'application/json' }, body: '{"__type":"ThrottlingException"}' });
        } else {
          held.push(r);
        }
        arrived();
      },
    });
    const { port } = await transport.listen();
    const until = (n: () => boolean): Promise<void> => new Promise((resolve) => {
      const check = (): void => { if (n()) resolve(); };
      arrived = check;
      check();
    });

    const first = [put(port), put(port)];
    await until(() => held.length === 2);
    // Both read, neither answered: their 1 MiB is still reserved.
    const third = await put(port);
    expect(third.status).toBe(400);
    expect(refused).toEqual(['body-budget']);
    expect(held).toHaveLength(2);

    for (const r of held.splice(0)) r.respond({ status: 201, headers: {}, body: '' });
    expect((await Promise.all(first)).map((r) => r.status)).toEqual([201, 201]);
    const fourth = put(port);
    await until(() => held.length === 1);
    held.splice(0)[0]!.respond({ status: 201, headers: {}, body: '' });
    expect((await fourth).status).toBe(201);
    expect(refused).toEqual(['body-budget']);
  }, 60_000);
});
