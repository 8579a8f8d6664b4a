import { createConnection, createServer, type Server, type Socket } from 'node:net';

/**
 * A TCP forwarder on loopback in front of a KMS, to make it unreachable and
 * reachable again on one address: `reserve` picks a port while nothing
 * answers there, `start` listens on it (again, after `stop`), `stop` closes it
 * (new connections refused, open ones cut).
 */
export class TcpForwarder {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  port = 0;
  constructor(private readonly target: { host: string; port: number }) {}

  /** A free port, bound then released: a host is configured with it before anything listens there. */
  async reserve(): Promise<number> {
    const s = createServer();
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
    this.port = (s.address() as { port: number }).port;
    await new Promise<void>((r) => s.close(() => r()));
    return this.port;
  }

  /** Listens on `port` (a free one the first time if none was reserved); retries a port not yet released. */
  async start(): Promise<void> {
    for (let i = 0; ; i++) {
      const server = createServer((c) => {
        const up = createConnection(this.target.port, this.target.host);
        for (const x of [c, up]) {
          this.sockets.add(x);
          x.on('close', () => this.sockets.delete(x));
          x.on('error', () => {});
        }
        c.pipe(up).pipe(c);
        c.on('close', () => up.destroy());
        up.on('close', () => c.destroy());
      });
      try {
        await new Promise<void>((res, rej) => {
          server.once('error', rej);
          server.listen(this.port, '127.0.0.1', () => res());
        });
        this.server = server;
        this.port = (server.address() as { port: number }).port;
        return;
      } catch (e) {
        if (i >= 20 || (e as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw e;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
  }

  async stop(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    for (const x of this.sockets) x.destroy();
    if (s) await new Promise<void>((res) => s.close(() => res()));
  }
}
