import { afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { Gauge } from 'prom-client';
import { DaemonMetrics } from '../../src/daemon/metrics.js';
import { METRICS_LIMITS } from '../../src/daemon/metrics-listener.js';
import { silentLogger } from '../../src/util/logger.js';

/**
 * The metrics listener's cap on busy connections that gave their slot while
 * answering (metrics-listener.ts makeRoom, `retiringCount`,
 * METRICS_LIMITS.maxLingeringRefused), over real loopback sockets. A source
 * on loopback is a local user, so each source is a client process of its own
 * uid (setpriv). Four sources fill the total with connections that were
 * answered once and now wait for a scrape held by a collect that does not end
 * until the test lets it; two more sources then come in, and every
 * connection of theirs takes the slot of a busy one (the largest source's
 * oldest answered connection), more of them than the cap: the first
 * maxLingeringRefused keep their connection until their answer is written
 * (then closed, `Connection: close`), the rest are closed at once, unanswered.
 */

/**
 * A client process: on `connect N` it opens N connections, each sending a
 * request answered at once (404, so it counts as answered) and GET /metrics
 * pipelined behind it, and prints `ready` once every 404 is read; on
 * `report` it prints each connection's state: closed or not, and what came
 * after the 404.
 */
const CLIENT = `
const net = require('node:net');
const port = Number(process.argv[1]);
const conns = [];
const print = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
const WARM = 'not found: GET /metrics\\n';
require('node:readline').createInterface({ input: process.stdin }).on('line', (line) => {
  const [cmd, n] = line.split(' ');
  if (cmd === 'connect') {
    let warm = 0;
    for (let i = 0; i < Number(n); i++) {
      const c = { got: '', closed: false, warm: false };
      conns.push(c);
      const s = net.connect({ host: '127.0.0.1', port }, () => s.write('GET /warm HTTP/1.1\\r\\nHost: x\\r\\n\\r\\nGET /metrics HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'));
      c.s = s;
      s.on('error', () => {});
      s.on('data', (d) => {
        c.got += d.toString('latin1');
        // The 404's end: its body, and the last chunk when it came chunked.
        const end = !c.warm && /transfer-encoding: chunked/i.test(c.got.slice(0, c.got.indexOf('\\r\\n\\r\\n'))) ? WARM + '\\r\\n0\\r\\n\\r\\n' : WARM;
        if (!c.warm && c.got.includes(end)) {
          c.warm = true;
          c.got = c.got.slice(c.got.indexOf(end) + end.length);
          if (++warm === Number(n)) print({ ready: true });
        }
      });
      s.on('close', () => { c.closed = true; });
    }
  } else if (cmd === 'report') {
    print({ report: conns.map((c) => ({ warm: c.warm, closed: c.closed, got: c.got.slice(0, 200), complete: /\\r\\n0\\r\\n\\r\\n$|^HTTP\\/1\\.1 200[\\s\\S]*test_gate 1\\n/.test(c.got) })) });
  } else if (cmd === 'end') {
    for (const c of conns) c.s.destroy();
    process.exit(0);
  }
});
print({ started: true });
`;

interface ConnState { warm: boolean; closed: boolean; got: string; complete: boolean }

class Client {
  private readonly p: ChildProcess;
  private readonly waiting: ((o: Record<string, unknown>) => void)[] = [];
  constructor(uid: number, port: number) {
    this.p = spawn('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', process.execPath, '-e', CLIENT, String(port)], { stdio: ['pipe', 'pipe', 'inherit'] });
    createInterface({ input: this.p.stdout! }).on('line', (l) => this.waiting.shift()?.(JSON.parse(l) as Record<string, unknown>));
    // A client that dies fails whatever waits for it, at once.
    this.p.on('exit', (code, signal) => {
      for (const w of this.waiting.splice(0)) w({ exited: code ?? signal });
    });
  }
  /** The next line the client prints, after sending `cmd` (if any). */
  next(cmd?: string): Promise<Record<string, unknown>> {
    const answer = new Promise<Record<string, unknown>>((r) => this.waiting.push(r));
    if (cmd) this.p.stdin!.write(`${cmd}\n`);
    return answer;
  }
  async report(): Promise<ConnState[]> {
    return (await this.next('report')).report as ConnState[];
  }
  stop(): void {
    if (this.p.exitCode === null && this.p.signalCode === null) this.p.kill('SIGKILL');
  }
}

describe('metrics listener: busy connections that give their slot', () => {
  let m: DaemonMetrics | undefined;
  const clients: Client[] = [];
  afterEach(async () => {
    for (const c of clients.splice(0)) c.stop();
    await m?.close();
    m = undefined;
  });

  it(`past maxLingeringRefused (${METRICS_LIMITS.maxLingeringRefused}) retiring at once, a retiring connection is closed at once; the others are closed after their answer`, async () => {
    m = new DaemonMetrics();
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    // Every collect waits for the gate: each GET /metrics is being answered until the test opens it.
    new Gauge({ name: 'test_gate', help: 'held until the test lets the collect end', registers: [m.registry], async collect() { await gate; this.set(1); } });
    // Nothing counts as stalled while the test sets up (six client processes on a loaded machine may take
    // longer than the 2 s limit): a stalled connection would be closed as idle instead of retiring.
    const { port } = await m.listen('127.0.0.1:0', silentLogger, { stalledAnswerMs: 10 * 60_000 });
    const l = METRICS_LIMITS;
    const full = l.maxTotal / l.maxPerSource; // sources that fill the total
    const incoming = 10; // connections of each of two newcomers: each takes a busy connection's slot
    const retired = 2 * incoming;
    expect(retired).toBeGreaterThan(l.maxLingeringRefused);
    for (let i = 0; i < full + 2; i++) clients.push(new Client(61_000 + i, port));
    await Promise.all(clients.map((c) => c.next())); // started
    const old = clients.slice(0, full);
    const [e, f] = clients.slice(full);

    // The total filled: every connection answered once, and busy with its scrape.
    await Promise.all(old.map((c) => c.next(`connect ${l.maxPerSource}`)));
    // Two newcomers, one after the other (each of theirs busy before the next comes in, so none is idle to close instead).
    await e!.next(`connect ${incoming}`);
    await f!.next(`connect ${incoming}`);

    const oldStates = async (): Promise<ConnState[]> => (await Promise.all(old.map((c) => c.report()))).flat();
    // Before any answer: the retirements past the cap closed, unanswered; every other connection still open.
    let before: ConnState[] = [];
    for (let i = 0; i < 200; i++) {
      before = await oldStates();
      if (before.filter((s) => s.closed).length >= retired - l.maxLingeringRefused) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(before.every((s) => s.warm)).toBe(true);
    const cut = before.filter((s) => s.closed);
    expect(cut).toHaveLength(retired - l.maxLingeringRefused);
    for (const s of cut) expect(s.got).toBe('');
    for (const c of [e!, f!]) expect((await c.report()).every((s) => s.warm && !s.closed)).toBe(true);

    // The collect ends: every open connection is answered; the retiring ones then closed, the others kept.
    open();
    let after: ConnState[] = [];
    for (let i = 0; i < 500; i++) {
      after = await oldStates();
      if (after.every((s) => (s.closed && s.got === '') || s.complete) && after.filter((s) => s.closed).length >= retired) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    const answeredThenClosed = after.filter((s) => s.closed && s.got !== '');
    expect(answeredThenClosed).toHaveLength(l.maxLingeringRefused);
    for (const s of answeredThenClosed) {
      expect(s.got).toMatch(/^HTTP\/1\.1 200/);
      expect(s.got.toLowerCase()).toContain('connection: close');
    }
    const kept = after.filter((s) => !s.closed);
    expect(kept).toHaveLength(l.maxTotal - retired);
    for (const s of kept) {
      expect(s.complete).toBe(true);
      expect(s.got.toLowerCase()).not.toContain('connection: close');
    }
    for (const c of [e!, f!]) expect((await c.report()).every((s) => s.complete && !s.closed)).toBe(true);
  }, 20_000);
});
