import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { Agent, request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { Env, ROOT, ensureBuilt, run } from '../e2e/helpers.js';
import { parseMetrics } from '../../src/cli/top.js';
import { callDaemon, socketPathFor } from '../../src/cli/client.js';
import { KMS_LATENCY_BUCKETS_SECONDS, LATENCY_BUCKETS_SECONDS } from '../../src/daemon/metrics.js';
import { VERSION } from '../../src/daemon/config.js';
import { settled } from '../snapshot/helpers.js';
import { METRICS_LIMITS } from '../../src/daemon/metrics-listener.js';
import { spawn, spawnSync } from 'node:child_process';

const BUSY_CLIENT = join(ROOT, 'test', 'ops', 'metrics-busy-client.mjs');

/**
 * `ebsd daemon --metrics-listen`: a real daemon child, a real attached volume
 * under FUSE, real reads/writes/fsyncs, then a scrape of /metrics over HTTP.
 * The figures must move by exactly what was done.
 */

type Samples = Map<string, number>;

/** The Prometheus text format as `name{labels}` -> value (labels as printed): `ebsd top`'s own reader. */
const parse = parseMetrics;

async function scrape(port: number): Promise<{ status: number; type: string; samples: Samples; text: string }> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  const text = await res.text();
  return { status: res.status, type: res.headers.get('content-type') ?? '', samples: parse(text), text };
}

/** One control-API request over the daemon's Unix socket; resolves with the HTTP status. */
function rawCall(stateDir: string, target: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: join(stateDir, 'ebsd.sock'), method: 'POST', path: '/', headers: { 'X-Amz-Target': target, 'Content-Type': 'application/x-amz-json-1.1' } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end('{}');
  });
}

/** A GET /metrics from the loopback address `from`, on a connection of its own; the status, or the error code. */
function scrapeFrom(port: number, from: string): Promise<number | string> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path: '/metrics', localAddress: from, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', (e) => resolve((e as NodeJS.ErrnoException).code ?? 'error'));
    req.end();
  });
}

/** An idle TCP connection to the metrics port from `from`, open once connected; `closed` resolves with what the server sent before it closed. */
function idleConnection(port: number, from: string): Promise<{ s: Socket; closed: Promise<string> }> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port, localAddress: from });
    let got = '';
    s.on('data', (d) => (got += d.toString('latin1')));
    const closed = new Promise<string>((r) => s.on('close', () => r(got)));
    s.on('error', () => {}); // a connection node drops at accept is reset
    s.once('connect', () => resolve({ s, closed }));
    s.once('error', reject);
  });
}

/** The port the daemon bound for --metrics-listen 127.0.0.1:0, from its log past `from` (polled: the log file is written asynchronously). */
async function metricsPort(env: Env, from = 0): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const m = /"metrics":"http:\/\/127\.0\.0\.1:(\d+)\/metrics"/.exec(env.daemonLog().slice(from));
    if (m) return Number(m[1]);
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`no metrics address in the daemon log:\n${env.daemonLog()}`);
}

describe('Prometheus metrics from a running daemon', () => {
  const env = new Env('metrics');
  let vol = '';
  let port = 0;

  beforeAll(async () => {
    ensureBuilt();
    await env.start(['--metrics-listen', '127.0.0.1:0']);
    port = await metricsPort(env);
    vol = (await env.api('ebsd.CreateVolume', { Size: '16MiB' })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
  }, 90_000);
  afterAll(() => env.cleanup(), 60_000);

  it('counts reads, writes, bytes, flushes and latency per volume after real I/O', async () => {
    const before = await scrape(port);
    expect(before.status).toBe(200);
    expect(before.type).toMatch(/^text\/plain; version=0\.0\.4/);
    const L = `volume_id="${vol}"`;
    // Attached and idle: the series exist at zero.
    expect(before.samples.get(`ebsd_volume_operations_total{${L},operation="write"}`)).toBe(0);
    // The series alerts take rate() of exist at zero before the first error (a series born at 1 has no rate).
    for (const op of ['read', 'write', 'flush']) expect(before.samples.get(`ebsd_volume_io_errors_total{${L},operation="${op}",errno="EIO"}`)).toBe(0);
    for (const op of ['GenerateDataKeyWithoutPlaintext', 'CreateGrant', 'Decrypt']) {
      for (const outcome of ['InternalError', 'KMSInternalException', 'KeyUnavailableException', 'DependencyTimeoutException', 'ThrottlingException']) {
        expect(before.samples.get(`ebsd_kms_requests_total{operation="${op}",outcome="${outcome}"}`), `${op} ${outcome}`).toBe(0);
      }
    }

    const fd = openSync(env.file(vol), 'r+');
    try {
      const block = randomBytes(4096);
      for (let i = 0; i < 8; i++) expect(writeSync(fd, block, 0, 4096, i * 4096)).toBe(4096);
      fsyncSync(fd);
      const back = Buffer.alloc(4096);
      // O_DIRECT is not set: the kernel may serve some reads from its cache, so read
      // a range never read before and count at least one FUSE read.
      expect(readSync(fd, back, 0, 4096, 1 << 20)).toBe(4096);
      const s = (await scrape(port)).samples;
      expect(s.get(`ebsd_volume_open_handles{${L}}`)).toBe(1);
      const writes = s.get(`ebsd_volume_operations_total{${L},operation="write"}`)!;
      const written = s.get(`ebsd_volume_bytes_total{${L},operation="write"}`)!;
      // The kernel may merge the 8 page writes into fewer, larger FUSE writes; the bytes are exact.
      expect(writes).toBeGreaterThanOrEqual(1);
      expect(written).toBe(8 * 4096);
      expect(s.get(`ebsd_volume_operations_total{${L},operation="read"}`)).toBeGreaterThanOrEqual(1);
      expect(s.get(`ebsd_volume_bytes_total{${L},operation="read"}`)).toBeGreaterThanOrEqual(4096);
      expect(s.get(`ebsd_volume_operations_total{${L},operation="flush"}`)).toBeGreaterThanOrEqual(1);
      // Histogram: one request in 16 per volume is timed (the first is), every flush is;
      // the +Inf bucket equals the count, and the first bound is µs-scale.
      const count = (op: string): number => s.get(`ebsd_volume_request_duration_seconds_count{${L},operation="${op}"}`)!;
      expect(count('read') + count('write')).toBeGreaterThanOrEqual(1);
      expect(count('write')).toBeLessThanOrEqual(writes);
      expect(count('flush')).toBe(s.get(`ebsd_volume_operations_total{${L},operation="flush"}`));
      for (const op of ['read', 'write', 'flush']) {
        expect(s.get(`ebsd_volume_request_duration_seconds_bucket{${L},operation="${op}",le="+Inf"}`)).toBe(count(op));
      }
      expect(s.has(`ebsd_volume_request_duration_seconds_bucket{${L},operation="read",le="0.00001"}`)).toBe(true);
      // Up to 10 s: a flush under heavy write-back or a stalled backing disk takes seconds, and must not all read "+Inf".
      const volBounds = [...s.keys()].filter((k) => k.startsWith(`ebsd_volume_request_duration_seconds_bucket{${L},operation="flush",`)).map((k) => /le="([^"]+)"/.exec(k)![1]);
      expect(volBounds).toEqual([...LATENCY_BUCKETS_SECONDS.map(String), '+Inf']);
      expect(volBounds).toContain('10');
      expect(s.get(`ebsd_volume_request_duration_seconds_sum{${L},operation="flush"}`)).toBeGreaterThan(0);
      expect(s.get(`ebsd_volume_requests_in_flight{${L}}`)).toBe(0);

      // Past the end of the volume: ENOSPC, counted by errno.
      expect(() => writeSync(fd, block, 0, 4096, 16 * 1024 * 1024)).toThrow(/ENOSPC/);
      const e = (await scrape(port)).samples;
      expect(e.get(`ebsd_volume_io_errors_total{${L},operation="write",errno="ENOSPC"}`)).toBe(1);
      expect(e.get(`ebsd_volume_bytes_total{${L},operation="write"}`)).toBe(8 * 4096);
    } finally {
      closeSync(fd);
    }
  });

  it('reports the key cache, KMS calls by operation and outcome, audit events and control requests', async () => {
    const s0 = (await scrape(port)).samples;
    const L = `volume_id="${vol}"`;
    expect(s0.get(`ebsd_key_cache_state{${L},state="cached"}`)).toBe(1);
    expect(s0.get(`ebsd_key_cache_state{${L},state="impaired"}`)).toBe(0);
    // Points in time as Unix timestamps, the same instants as status's key cache (no refresh in between: TTL 5 min).
    const kc = (await env.api('ebsd.Status', {})).Volumes.find((v: any) => v.VolumeId === vol).KeyCache;
    const unwrap = s0.get(`ebsd_key_cache_last_unwrap_timestamp_seconds{${L}}`)!;
    const expiry = s0.get(`ebsd_key_cache_expiry_timestamp_seconds{${L}}`)!;
    expect(unwrap).toBe(Date.parse(kc.LastUnwrapTime) / 1000);
    expect(expiry).toBe(Date.parse(kc.ExpiryTime) / 1000);
    expect(unwrap).toBeLessThanOrEqual(Date.now() / 1000);
    expect(expiry - unwrap).toBeGreaterThan(0);
    expect(expiry - unwrap).toBeLessThanOrEqual(3600); // default max-stale 1 h
    // The attach unwrapped through a grant: the daemon's own KMS calls are counted.
    expect(s0.get('ebsd_kms_requests_total{operation="CreateGrant",outcome="ok"}')).toBeGreaterThanOrEqual(1);
    expect(s0.get('ebsd_kms_requests_total{operation="Decrypt",outcome="ok"}')).toBeGreaterThanOrEqual(1);

    // A refused and a failing KMS call from the control API.
    expect((await env.cli(['kms', 'describe-key', '--key-id', 'alias/nope'])).code).not.toBe(0);
    expect((await env.cli(['status'], { uid: 4242 })).code).toBe(4); // unmapped uid: denied
    const s1 = (await scrape(port)).samples;
    expect(s1.get('ebsd_kms_requests_total{operation="DescribeKey",outcome="NotFoundException"}')).toBe(
      (s0.get('ebsd_kms_requests_total{operation="DescribeKey",outcome="NotFoundException"}') ?? 0) + 1,
    );
    expect(s1.get('ebsd_kms_request_duration_seconds_count{operation="DescribeKey"}')).toBeGreaterThanOrEqual(1);
    // KMS buckets of their own, up to 30 s (a remote call that times out is not lost in +Inf); the FUSE ones stop at 1 s.
    const kmsBounds = [...s1.keys()].filter((k) => k.startsWith('ebsd_kms_request_duration_seconds_bucket{') && k.includes('operation="DescribeKey"')).map((k) => /le="([^"]+)"/.exec(k)![1]);
    expect(kmsBounds).toEqual([...KMS_LATENCY_BUCKETS_SECONDS.map(String), '+Inf']);
    expect(kmsBounds).toContain('30');
    expect(s1.get('ebsd_control_requests_total{operation="ebsd.Status",result="denied"}')).toBe(1);
    expect(s1.get('ebsd_control_requests_total{operation="ebsd.AttachVolume",result="ok"}')).toBe(1);
    expect(s1.get('ebsd_control_requests_total{operation="TrentService.DescribeKey",result="NotFoundException"}')).toBe(1);
    // Every one of those calls was audited, and the counter moved with them.
    expect(s1.get('ebsd_audit_events_written_total')!).toBeGreaterThan(s0.get('ebsd_audit_events_written_total')!);
    // Nothing is in the KMS core between calls, and nobody waits for a turn (src/kms/fair-gate.ts).
    expect(s1.get('ebsd_kms_calls_active')).toBe(0);
    expect(s1.get('ebsd_kms_calls_waiting')).toBe(0);
    // The embedded KMS: no remote reachability series; the attached volume is served.
    expect([...s1.keys()].some((k) => k.startsWith('ebsd_kms_remote_reachable'))).toBe(false);
    expect(s1.get('ebsd_volumes_unserved')).toBe(0);
  });

  it('keeps labels bounded: unknown operation names are counted as "other", never as new series', async () => {
    for (let i = 0; i < 5; i++) {
      expect(await rawCall(env.state, `TrentService.MadeUpOperation${i}`)).toBe(400);
      expect(await rawCall(env.state, `ebsd.MadeUpOperation${i}`)).toBe(400);
    }
    const { text, samples } = await scrape(port);
    expect(text).not.toMatch(/MadeUpOperation/);
    expect(samples.get('ebsd_kms_requests_total{operation="other",outcome="UnknownOperationException"}')).toBe(5);
    expect(samples.get('ebsd_control_requests_total{operation="other",result="UnknownOperationException"}')).toBe(10);
  });

  it('an unmapped caller\'s made-up targets are "other" and take no label place: root\'s later operations keep their names', async () => {
    // 300 distinct targets (more than the label's 256 places) from an unmapped uid, refused before dispatch.
    const flood = `import { request, Agent } from 'node:http';
const agent = new Agent({ keepAlive: true, maxSockets: 1 });
const counts = {};
for (let i = 0; i < 300; i++) {
  for (const t of ['ebsd.Flood' + i, 'TrentService.Flood' + i]) {
    const status = await new Promise((resolve) => {
      const req = request({ socketPath: process.argv[1], agent, method: 'POST', path: '/', headers: { 'X-Amz-Target': t, 'Content-Type': 'application/x-amz-json-1.1' } }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode)); });
      req.on('error', (e) => resolve(e.code));
      req.end('{}');
    });
    counts[status] = (counts[status] ?? 0) + 1;
  }
}
agent.destroy();
console.log(JSON.stringify(counts));`;
    const r = await run(process.execPath, ['--input-type=module', '-e', flood, join(env.state, 'ebsd.sock')], { uid: 65534 });
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ 400: 600 });
    expect(await rawCall(env.state, 'ebsd.DescribeSnapshots')).toBe(200);
    const { text, samples } = await scrape(port);
    expect(text).not.toMatch(/Flood/);
    expect(samples.get('ebsd_control_requests_total{operation="ebsd.DescribeSnapshots",result="ok"}')).toBe(1);
  }, 120_000);

  it('every ebsd_ metric the shipped alert rules use is one the daemon exports', async () => {
    const rules = readFileSync(join(ROOT, 'contrib', 'prometheus', 'ebsd-alerts.yml'), 'utf8');
    const used = new Set(rules.match(/\bebsd_[a-z_]+/g));
    expect(used.size).toBeGreaterThanOrEqual(4);
    const { text } = await scrape(port);
    const exported = new Set([...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!));
    // A histogram's series are its name plus _bucket, _sum or _count.
    for (const name of used) expect(exported, name).toContain(exported.has(name) ? name : name.replace(/_(bucket|sum|count)$/, ''));
  });

  it('bounds the connections one source holds: one past the limit takes the place of the oldest idle one, which is closed; scrapes from that source and another still succeed', async () => {
    const n = METRICS_LIMITS.maxPerSource;
    const held: { s: Socket; closed: Promise<string> }[] = [];
    try {
      for (let i = 0; i < n; i++) held.push(await idleConnection(port, '127.0.0.1'));
      let closedFirst = false;
      void held[0]!.closed.then(() => (closedFirst = true));
      const extra = await idleConnection(port, '127.0.0.1');
      held.push(extra);
      expect(await held[0]!.closed).toBe(''); // closed by the server, with nothing sent: it had no request
      expect(closedFirst).toBe(true);
      expect(await scrapeFrom(port, '127.0.0.1')).toBe(200); // takes the next oldest idle one's place
      expect(await scrapeFrom(port, '127.0.0.2')).toBe(200);
      // Still at most the limit of that source open.
      await new Promise((r) => setTimeout(r, 100));
      expect(held.filter((h) => !h.s.destroyed && h.s.readyState === 'open').length).toBeLessThanOrEqual(n);
    } finally {
      for (const h of held) h.s.destroy();
    }
  });

  it('on loopback a source is a local user, not an address: four users keeping 16 connections each always busy (two requests pipelined, from 64 addresses) give way to one holding none', async () => {
    const users = [65531, 65532, 65533, 65534];
    const kids = users.map((uid, i) => {
      const child = spawn('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', process.execPath, BUSY_CLIENT, String(port), String(METRICS_LIMITS.maxPerSource), `127.0.${20 + i}`], { stdio: ['ignore', 'pipe', 'inherit'] });
      let text = '';
      child.stdout!.on('data', (d) => (text += d));
      const ready = new Promise<void>((resolve, reject) => {
        const t = setInterval(() => { if (text.includes('ready')) { clearInterval(t); resolve(); } }, 20);
        child.once('exit', (code) => { clearInterval(t); reject(new Error(`busy client of uid ${uid} exited ${code}: ${text}`)); });
      });
      return { child, ready, result: () => text };
    });
    try {
      await Promise.all(kids.map((k) => k.ready)); // 64 connections, every one answered once and asking again
      // Keyed by address, each of the 64 holds one and a newcomer holding none could take none (503).
      for (let i = 0; i < 5; i++) {
        expect(await scrapeFrom(port, '127.0.0.1'), 'root, holding none').toBe(200);
        expect(await scrapeFrom(port, `127.0.30.${i + 1}`), 'root from another address').toBe(200);
      }
    } finally {
      for (const k of kids) k.child.kill('SIGTERM');
      await Promise.all(kids.map((k) => new Promise((r) => (k.child.exitCode !== null ? r(null) : k.child.once('exit', r)))));
    }
    const outs = kids.map((k) => JSON.parse(k.result().trim().split('\n').at(-1)!) as { answered: number; refused: number; closed: number });
    for (const o of outs) expect(o.answered).toBeGreaterThan(0);
    console.log(`busy users while root scraped 10 times: ${JSON.stringify(outs)}`);
  }, 60_000);

  it('a connection with more than a few requests unanswered (a slow reader pipelining) is closed, not answered into memory', async () => {
    const s = connect({ host: '127.0.0.1', port, localAddress: '127.0.0.1' });
    s.pause();
    s.on('error', () => {});
    await new Promise((r) => s.once('connect', r));
    s.write('GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'.repeat(900));
    const closed = new Promise<number>((r) => {
      let bytes = 0;
      s.on('data', (d) => (bytes += d.length));
      s.on('close', () => r(bytes));
    });
    await new Promise((r) => setTimeout(r, 300));
    s.resume();
    const bytes = await closed;
    // At most the answers to the requests it was allowed (the last may be cut short).
    const one = (await scrape(port)).text.length;
    expect(bytes).toBeLessThanOrEqual((METRICS_LIMITS.maxUnansweredPerConnection + 1) * (one + 512));
    expect(await scrapeFrom(port, '127.0.0.1')).toBe(200);
  }, 30_000);

  it('a flood of 200 connections from many loopback sources holds at most the total limit open, a new source still scrapes during it, and the control socket keeps answering', async () => {
    const conns: { s: Socket; closed: Promise<string> }[] = [];
    try {
      // 20 sources x 10: under the per-source cap, over the total.
      for (let i = 0; i < 200; i++) {
        const c = await idleConnection(port, `127.0.1.${10 + (i % 20)}`).catch(() => undefined);
        if (c) conns.push(c);
        if (i % 50 === 49) {
          const st = await callDaemon(socketPathFor(env.state), 'ebsd.Status', {}) as { Volumes: unknown[] };
          expect(st.Volumes.length).toBe(1);
        }
      }
      // Well within the 10 s idle timeouts: what is still open is what the limits left.
      const openNow = async (): Promise<number> => {
        await new Promise((r) => setTimeout(r, 50));
        return conns.filter((c) => !c.s.destroyed && c.s.readyState === 'open').length;
      };
      let open = await openNow();
      for (let i = 0; i < 20 && open > METRICS_LIMITS.maxTotal; i++) open = await openNow();
      expect(open).toBeLessThanOrEqual(METRICS_LIMITS.maxTotal);
      expect(open).toBeGreaterThan(0);
      expect(await scrapeFrom(port, '127.0.2.1')).toBe(200); // while the flood's connections are held
      expect((await env.cli(['status'])).code).toBe(0);
    } finally {
      for (const c of conns) c.s.destroy();
    }
  }, 60_000);

  it('follows the exposition conventions: the standard process_ and nodejs_ metrics under their own names, ebsd_build_info, HELP and TYPE for each, counters in _total', async () => {
    const { text, samples } = await scrape(port);
    // Generic dashboards and alerts query these names (open fds near the limit, restarts): not ebsd_-prefixed.
    for (const name of ['process_cpu_seconds_total', 'process_open_fds', 'process_max_fds', 'process_resident_memory_bytes', 'process_start_time_seconds', 'nodejs_heap_size_used_bytes', 'nodejs_eventloop_lag_seconds']) {
      expect(samples.has(name), name).toBe(true);
    }
    expect(text).not.toMatch(/^ebsd_(process|nodejs)_/m);
    expect(samples.get(`ebsd_build_info{version="${VERSION}"}`)).toBe(1);
    const help = new Set([...text.matchAll(/^# HELP (\S+) \S/gm)].map((m) => m[1]!));
    const types = [...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => ({ name: m[1]!, type: m[2]! }));
    expect(types.length).toBeGreaterThan(20);
    for (const { name, type } of types) {
      expect(help, `HELP of ${name}`).toContain(name);
      if (!name.startsWith('ebsd_')) continue;
      if (type === 'counter') expect(name, 'a counter ends in _total').toMatch(/_total$/);
      else expect(name, `a ${type} does not end in _total`).not.toMatch(/_total$/);
      if (type === 'histogram') expect(name, 'a histogram has its unit').toMatch(/_(seconds|bytes)$/);
    }
    // Prometheus's own linter over the whole exposition (ours, prom-client's process_ and nodejs_, with a volume
    // attached so its per-volume families are in it): no complaint. And over the shipped alert rules.
    const lint = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    expect(lint.status, `${lint.stdout}${lint.stderr}`).toBe(0);
    expect(`${lint.stdout}${lint.stderr}`.trim()).toBe('');
    const rules = spawnSync('promtool', ['check', 'rules', join(ROOT, 'contrib', 'prometheus', 'ebsd-alerts.yml')], { encoding: 'utf8' });
    expect(rules.status, `${rules.stdout}${rules.stderr}`).toBe(0);
    expect(rules.stdout).toMatch(/SUCCESS: \d+ rules found/);
    // The alerts' own unit tests (contrib/prometheus/ebsd-alerts.test.yml): which series fire which alert, when, saying what.
    const unit = spawnSync('promtool', ['test', 'rules', 'ebsd-alerts.test.yml'], { cwd: join(ROOT, 'contrib', 'prometheus'), encoding: 'utf8' });
    expect(unit.status, `${unit.stdout}${unit.stderr}`).toBe(0);
    expect(unit.stdout).toContain('SUCCESS');
  });

  it('reports the audit log\'s state and write latency, and counts events whose write failed (the file made immutable)', async () => {
    const s0 = (await scrape(port)).samples;
    expect(s0.get('ebsd_audit_log_state{state="ok"}')).toBe(1);
    expect(s0.get('ebsd_audit_log_state{state="failing"}')).toBe(0);
    expect(s0.get('ebsd_audit_log_tampered')).toBe(0);
    expect(s0.get('ebsd_audit_events_failed_total')).toBe(0);
    expect(s0.get('ebsd_audit_refusal_events_dropped_total')).toBe(0);
    // Every earlier call was audited in some batch; the failed series exists at 0 before the first failure.
    expect(s0.get('ebsd_audit_write_duration_seconds_count{result="ok"}')).toBeGreaterThanOrEqual(1);
    expect(s0.get('ebsd_audit_write_duration_seconds_count{result="failed"}')).toBe(0);
    const events = join(env.state, 'kms', 'audit', 'events.ndjson');
    const chattr = (flag: '+i' | '-i'): void => {
      const r = spawnSync('chattr', [flag, events], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`chattr ${flag} ${events}: ${r.stderr}`);
    };
    chattr('+i');
    try {
      await expect(env.api('TrentService.CreateKey', { Description: 'not audited, not created' })).rejects.toThrow();
    } finally {
      chattr('-i');
    }
    const s1 = (await scrape(port)).samples;
    expect(s1.get('ebsd_audit_events_failed_total')).toBeGreaterThanOrEqual(1);
    expect(s1.get('ebsd_audit_write_duration_seconds_count{result="failed"}')).toBeGreaterThanOrEqual(1);
    // Writable again: the next call is audited, and counted ok.
    await env.api('TrentService.ListKeys', {});
    const s2 = (await scrape(port)).samples;
    expect(s2.get('ebsd_audit_write_duration_seconds_count{result="ok"}')).toBeGreaterThan(s1.get('ebsd_audit_write_duration_seconds_count{result="ok"}')!);
    expect(s2.get('ebsd_audit_events_failed_total')).toBe(s1.get('ebsd_audit_events_failed_total'));
  });

  it('reports snapshot creates: none in progress when idle, and each ended one in the duration histogram by its state', async () => {
    const s0 = (await scrape(port)).samples;
    expect(s0.get('ebsd_snapshots_in_progress')).toBe(0);
    expect(s0.get('ebsd_snapshot_create_duration_seconds_count{state="error"}')).toBe(0);
    const before = s0.get('ebsd_snapshot_create_duration_seconds_count{state="completed"}')!;
    expect(before).toBe(0);
    const snap = await settled(env, (await env.api('ebsd.CreateSnapshot', { VolumeId: vol })).SnapshotId);
    expect(snap.State).toBe('completed');
    const s1 = (await scrape(port)).samples;
    expect(s1.get('ebsd_snapshot_create_duration_seconds_count{state="completed"}')).toBe(before + 1);
    expect(s1.get('ebsd_snapshot_create_duration_seconds_sum{state="completed"}')).toBeGreaterThan(0);
    expect(s1.get('ebsd_snapshot_create_duration_seconds_bucket{le="21600",state="completed"}')).toBe(before + 1);
    expect(s1.get('ebsd_snapshots_in_progress')).toBe(0);
    expect([...s1.keys()].some((k) => k.startsWith('ebsd_snapshot_copied_ratio{'))).toBe(false);
  });

  it('answers 404 off /metrics', async () => {
    const res = await fetch(`http://127.0.0.1:${port}/secrets`);
    expect(res.status).toBe(404);
    await res.text();
  });

  it('a daemon with a malformed --metrics-listen refuses to start, naming the flag, before mounting', async () => {
    const bad = new Env('metrics-bad');
    try {
      await expect(bad.start(['--metrics-listen', 'localhost'])).rejects.toThrow(/--metrics-listen must be HOST:PORT/);
      expect(existsSync(bad.state)).toBe(false); // refused before the state dir or the mount was touched
    } finally {
      await bad.cleanup();
    }
  }, 60_000);
});

describe('ebsd_audit_events_written_total after a restart (real daemon)', () => {
  const env = new Env('metrics-restart');
  afterAll(() => env.cleanup(), 60_000);

  it('counts every event this daemon wrote and times its batches, those of its start (the re-attach of a recorded volume) included', async () => {
    ensureBuilt();
    const args = ['--metrics-listen', '127.0.0.1:0'];
    await env.start(args);
    const vol = (await env.api('ebsd.CreateVolume', { Size: '4MiB' })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    expect(await env.stop()).toBe(0);
    const lines = (): string[] => env.auditText().split('\n').filter((l) => l.length > 0);
    const before = lines().length;
    const logBefore = env.daemonLog().length;
    await env.start(args);
    // Before anything is asked of it, the start wrote the re-attach's events (ListRetirableGrants, the grant's Decrypt).
    const written = lines().slice(before).map((l) => (JSON.parse(l) as { eventName: string }).eventName);
    expect(written).toContain('Decrypt');
    const port = await metricsPort(env, logBefore);
    const s = (await scrape(port)).samples;
    expect(s.get('ebsd_audit_events_written_total')).toBe(written.length);
    // Their batch writes are timed too (one batch or more, at most one per event).
    const batches = s.get('ebsd_audit_write_duration_seconds_count{result="ok"}')!;
    expect(batches).toBeGreaterThanOrEqual(1);
    expect(batches).toBeLessThanOrEqual(written.length);
  }, 90_000);
});
