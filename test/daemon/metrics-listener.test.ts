import { afterEach, describe, expect, it } from 'vitest';
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { Gauge } from 'prom-client';
import { DaemonMetrics } from '../../src/daemon/metrics.js';
import { METRICS_LIMITS } from '../../src/daemon/metrics-listener.js';
import { createLogger, silentLogger } from '../../src/util/logger.js';

/**
 * The metrics listener over real loopback sockets, in this process: a burst
 * of concurrent scrapes shares collects instead of running one each on the
 * main thread (DaemonMetrics.collect), and every scrape is still answered;
 * a listener off loopback is served with a warning in the log.
 */
describe('metrics listener: concurrent scrapes share collects', () => {
  let m: DaemonMetrics | undefined;
  afterEach(async () => { await m?.close(); m = undefined; });

  it('16 concurrent scrapes (one local user\'s limit, from 8 addresses) are all answered by far fewer collects', async () => {
    m = new DaemonMetrics();
    let collects = 0;
    new Gauge({ name: 'test_collects', help: 'collects run', registers: [m.registry], collect() { this.set(++collects); } });
    const { port } = await m.listen('127.0.0.1:0', silentLogger);
    const texts = await Promise.all(Array.from({ length: METRICS_LIMITS.maxPerSource }, (_, i) => new Promise<string>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, path: '/metrics', localAddress: `127.0.2.${1 + (i % 8)}`, agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`status ${res.statusCode}`))));
      });
      req.on('error', reject);
      req.end();
    })));
    expect(texts).toHaveLength(METRICS_LIMITS.maxPerSource);
    for (const t of texts) expect(t).toMatch(/^test_collects \d+$/m);
    // Each collect is answered to every scrape that waited for it; at most one runs at a time, 100 ms apart.
    expect(collects).toBeLessThan(METRICS_LIMITS.maxPerSource / 2);
    expect(new Set(texts.map((t) => /^test_collects (\d+)$/m.exec(t)![1])).size).toBe(collects);
  });
});

describe('metrics listener: slow readers', () => {
  let m: DaemonMetrics | undefined;
  const held: Socket[] = [];
  afterEach(async () => {
    for (const s of held.splice(0)) s.destroy();
    await m?.close();
    m = undefined;
  });

  /** A GET /metrics from 127.0.0.1 on a connection of its own: the status, or the error code. */
  const scrape = (port: number): Promise<number | string> => new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path: '/metrics', agent: false }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode ?? 0)); });
    req.on('error', (e) => resolve((e as NodeJS.ErrnoException).code ?? 'error'));
    req.end();
  });

  it('a connection whose answers sit unread past stalledAnswerMs gives its slot to a scraper of its source; refused ones past the lingering cap are closed at once', async () => {
    m = new DaemonMetrics();
    // An answer of ~8 MiB: more than loopback's socket buffers take, so an unread one stays unwritten.
    const big = new Gauge({ name: 'test_big', help: 'x'.repeat(1000), labelNames: ['n'], registers: [m.registry] });
    for (let i = 0; i < 20_000; i++) big.set({ n: `${i}-${'y'.repeat(300)}` }, i);
    // Longer than the listener's 2 s, so the set-up below (an ~8 MiB collect per answer) cannot reach it on a loaded
    // machine: stalled too early, the held connections would be closed to admit the burst instead of refusing it.
    const stalledAnswerMs = 6_000;
    const { port } = await m.listen('127.0.0.1:0', silentLogger, { stalledAnswerMs });
    // This process is one source (one local user): its limit of connections, each with two requests and reading nothing.
    for (let i = 0; i < METRICS_LIMITS.maxPerSource; i++) {
      const s = connect({ host: '127.0.0.1', port });
      s.pause();
      s.on('error', () => {});
      await new Promise((r) => s.once('connect', r));
      s.write('GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(2));
      held.push(s);
    }
    await new Promise((r) => setTimeout(r, 500)); // every one is being answered, its answer stuck unread
    // Busy, not yet stalled: the source competes only with itself. 40 more connections held open at once: each is
    // refused; the first few get a 503 and linger to read it, past the cap they are closed at once.
    // (They read nothing until all 40 are in: a refused connection that reads its 503 at once would free its place.)
    const late: Socket[] = [];
    const burst = Promise.all(Array.from({ length: 40 }, () => new Promise<string>((resolve) => {
      const s = connect({ host: '127.0.0.1', port });
      s.pause();
      held.push(s);
      late.push(s);
      let got = '';
      s.on('data', (d) => (got += d.toString('latin1')));
      s.on('error', () => {});
      s.on('close', () => resolve(got.startsWith('HTTP/1.1 503') ? '503' : got === '' ? 'closed' : got.slice(0, 12)));
    })));
    await new Promise((r) => setTimeout(r, 300));
    for (const s of late) s.resume();
    const outcomes = await burst;
    const answered = outcomes.filter((r) => r === '503').length;
    expect(answered, JSON.stringify(outcomes)).toBeGreaterThan(0);
    expect(answered, 'at most the lingering cap get a 503 at once; the rest are closed').toBeLessThanOrEqual(METRICS_LIMITS.maxLingeringRefused);
    expect(outcomes.filter((r) => r === 'closed').length).toBe(40 - answered);
    await new Promise((r) => setTimeout(r, stalledAnswerMs + 200));
    // Stalled now: one of them is closed to make room, and the scraper is answered.
    expect(await scrape(port)).toBe(200);
  }, 30_000);
});

describe('metrics listener off loopback', () => {
  /** A DaemonMetrics listening on `spec`; the lines it logged while starting. */
  async function startLog(spec: string): Promise<string[]> {
    const lines: string[] = [];
    const log = createLogger({ level: 'info', destination: { write: (l: string) => void lines.push(l) } });
    const m = new DaemonMetrics();
    try {
      const { port } = await m.listen(spec, log);
      const res = await fetch(`http://127.0.0.1:${port}/metrics`); // served all the same
      expect(res.status).toBe(200);
      await res.text();
    } finally {
      await m.close();
    }
    return lines;
  }

  it('0.0.0.0 is served with one warning naming the flag; 127.0.0.1 without', async () => {
    const wide = (await startLog('0.0.0.0:0')).map((l) => JSON.parse(l) as { level: number; msg: string; metricsListen?: string });
    expect(wide).toEqual([expect.objectContaining({ level: 40, metricsListen: '0.0.0.0:0', msg: expect.stringContaining('--metrics-listen is not a loopback address') })]);
    expect(await startLog('127.0.0.1:0')).toEqual([]);
  });
});

describe('metrics listener: what a malformed request is told', () => {
  let m: DaemonMetrics | undefined;
  afterEach(async () => { await m?.close(); m = undefined; });

  const raw = (port: number, text: string): Promise<string> => new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port }, () => s.end(text));
    let got = '';
    s.on('data', (d) => (got += d.toString('latin1')));
    s.on('close', () => resolve(got));
    s.on('error', reject);
  });

  it('headers over the limit are 431 and a non-HTTP line 400, each saying why', async () => {
    m = new DaemonMetrics();
    const { port } = await m.listen('127.0.0.1:0', silentLogger);
    const big = await raw(port, `GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: ${'a'.repeat(9000)}\r\n\r\n`);
    expect(big).toMatch(/^HTTP\/1\.1 431 Request Header Fields Too Large\r\n/);
    expect(big).toContain(`headers over ${METRICS_LIMITS.maxHeaderBytes} bytes`);
    const junk = await raw(port, 'HELLO\r\n\r\n');
    expect(junk).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(junk).toContain('GET /metrics');
  });
});
