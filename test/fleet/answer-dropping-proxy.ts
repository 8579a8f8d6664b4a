import { createConnection, createServer, type Server, type Socket } from 'node:net';

/**
 * A TCP proxy on loopback in front of a real KMS listener (plain HTTP), for the
 * failures a network makes: the request of an operation reaches the KMS and its
 * answer is lost (`drop-answer`: KMS did the work, the caller times out), or
 * the request never reaches it (`refuse`: the connection is closed at once).
 * An operation is recognised by its X-Amz-Target header (`TrentService.<op>`)
 * in the bytes a client sends; from then on that connection stays so treated,
 * which is what a client that times out sees (it opens a new one to retry).
 */
export type ProxyFault = 'drop-answer' | 'refuse';

export class AnswerDroppingProxy {
  private server: Server | undefined;
  private readonly faults = new Map<string, ProxyFault>();
  private readonly sockets = new Set<Socket>();
  /** Requests per operation that met a fault. */
  readonly faulted: Record<string, number> = {};
  port = 0;

  constructor(private readonly upstream: { host: string; port: number }) {}

  async start(): Promise<string> {
    this.server = createServer((client) => this.connection(client));
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', () => r()));
    this.port = (this.server.address() as { port: number }).port;
    return `http://127.0.0.1:${this.port}`;
  }

  /** Operations (`CreateGrant`, `RetireGrant`) and what happens to them; none: every request passes. */
  set(faults: Record<string, ProxyFault>): void {
    this.faults.clear();
    for (const [op, f] of Object.entries(faults)) this.faults.set(op.toLowerCase(), f);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }

  private faultOf(chunk: Buffer): { op: string; fault: ProxyFault } | undefined {
    const m = /x-amz-target:\s*trentservice\.(\w+)/i.exec(chunk.toString('latin1'));
    const op = m?.[1]?.toLowerCase();
    const fault = op !== undefined ? this.faults.get(op) : undefined;
    return op !== undefined && fault ? { op, fault } : undefined;
  }

  private connection(client: Socket): void {
    const up = createConnection(this.upstream);
    this.sockets.add(client).add(up);
    let answersLost = false;
    const end = (): void => { client.destroy(); up.destroy(); this.sockets.delete(client); this.sockets.delete(up); };
    client.on('error', end).on('close', end);
    up.on('error', end).on('close', end);
    client.on('data', (chunk: Buffer) => {
      const f = this.faultOf(chunk);
      if (f) this.faulted[f.op] = (this.faulted[f.op] ?? 0) + 1;
      if (f?.fault === 'refuse') return end();
      if (f?.fault === 'drop-answer') answersLost = true;
      up.write(chunk);
    });
    up.on('data', (chunk: Buffer) => {
      if (!answersLost) client.write(chunk);
    });
  }
}
