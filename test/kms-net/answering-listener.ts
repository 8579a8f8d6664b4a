/**
 * A listener that answers every request with a copy of one buffer (the transport-*.test.ts files), as
 * the KMS listener runs: node's transport on the main thread, or the front-end worker, with TLS if
 * asked (a CA made for it, whose PEM the client trusts). close() stops it and removes the certificates.
 */
import { readFileSync } from 'node:fs';
import { HttpTransport, type ListenerLimits, type WireResponse } from '../../src/daemon/kms-transport.js';
import { FrontWorker } from '../../src/daemon/kms-front.js';
import { silentLogger } from '../../src/util/logger.js';
import { tempDir } from '../helpers/temp-dir.js';
import { makeTestCa } from './helpers.js';

export interface AnsweringListener {
  port: number;
  /** The CA's PEM, with TLS. */
  ca?: string;
  /** On the main thread: the transport, for its guard's figures. */
  transport?: HttpTransport;
  /** On the worker: the front end, for its figures. */
  front?: FrontWorker;
  close(): Promise<void>;
}

export async function answeringListener(where: 'main thread' | 'front-end worker', tls: boolean, answer: Buffer, limits: ListenerLimits): Promise<AnsweringListener> {
  const w = (): WireResponse => ({ status: 200, headers: ['Content-Type', 'application/octet-stream', 'Content-Length', String(answer.length)], body: Buffer.from(answer) });
  if (where === 'main thread') {
    if (tls) throw new Error('answeringListener: TLS is served by the front-end worker only');
    const transport = new HttpTransport({ host: '127.0.0.1', port: 0, onRefusals: () => {}, limits, onRequest: (r) => r.respond(w()) });
    const port = (await transport.listen()).port;
    return { port, transport, close: () => transport.close() };
  }
  const certs = tls ? tempDir('ebsd-answering-tls-') : undefined;
  try {
    let ca: string | undefined;
    let keys: { cert: Buffer; key: Buffer } | undefined;
    if (certs) {
      const made = await makeTestCa(certs.dir);
      ca = readFileSync(made.ca, 'utf8');
      keys = { cert: readFileSync(made.cert), key: readFileSync(made.key) };
    }
    const front = await FrontWorker.start({ host: '127.0.0.1', port: 0, ...(keys ? { tls: keys } : {}), limits, log: silentLogger, onRefusals: () => {}, onFatal: () => {}, handle: async () => w() });
    return {
      port: front.address.port, front, ...(ca ? { ca } : {}),
      close: async () => { try { await front.close(); } finally { certs?.cleanup(); } },
    };
  } catch (e) {
    certs?.cleanup();
    throw e;
  }
}
