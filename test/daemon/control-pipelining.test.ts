/**
 * Requests one control-socket connection may have waiting for answers
 * (src/daemon/control-server.ts). node's HTTP parser reads pipelined requests
 * as fast as they arrive, answered or not, so without a cap one connection of
 * one uid could put any number of calls into the daemon at once, past every
 * per-uid connection cap. The client is a process of uid 65534 (setpriv):
 * root is exempt from the caps. A real ControlServer on a Unix socket in a temp dir,
 * a handler that holds every call until the test lets it go; bounded counts,
 * no timing.
 */
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { ControlServer, MAX_IN_FLIGHT_PER_CONNECTION } from '../../src/daemon/control-server.js';
import type { RefusalSummary } from '../../src/daemon/connection-guard.js';
import { silentLogger } from '../../src/util/logger.js';
import { poll } from '../helpers/poll.js';
import { nodeAs } from '../helpers/node-as.js';

const PIPELINED = 200;
const NOBODY = 65534;

/** A process of `uid` writing `count` copies of `request` on one connection to `path`; resolves with all it read once `count` answers came. */
function pipelineAs(uid: number, path: string, request: string, count: number): Promise<string> {
  const code = `const s=require('net').connect(${JSON.stringify(path)});let t='';s.on('data',(c)=>{t+=c.toString('latin1');`
    + `if((t.match(/HTTP\\/1\\.1 /g)||[]).length>=${count}){process.stdout.write(t);s.destroy();}});`
    + `s.on('error',(e)=>{process.stderr.write(String(e));process.exit(1)});s.on('connect',()=>s.write(${JSON.stringify(request)}.repeat(${count})));`;
  return nodeAs(uid, code, { what: 'client', timeoutMs: 20_000 });
}


describe('control socket: requests in flight per connection', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ebsd-ctl-pipe-'));
  let server: ControlServer | undefined;
  afterEach(async () => {
    await server?.close(1_000);
    server = undefined;
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it(`${PIPELINED} pipelined requests on one connection: at most ${MAX_IN_FLIGHT_PER_CONNECTION} reach the handler, the rest are ThrottlingException, refusals in aggregate; every request is answered`, async () => {
    const path = join(dir, 'ebsd.sock');
    let inHandler = 0;
    let entered = 0;
    const held: (() => void)[] = [];
    const reports: RefusalSummary[][] = [];
    server = new ControlServer(path, async () => {
      inHandler++;
      entered++;
      await new Promise<void>((r) => held.push(r));
      inHandler--;
      return {};
    }, silentLogger, { onRefusals: (r) => reports.push(r) });
    chmodSync(dir, 0o755); // the client is not root
    await server.listen();

    const one = 'POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: TrentService.ListAliases\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: 2\r\n\r\n{}';
    const answered = pipelineAs(NOBODY, path, one, PIPELINED);

    // Everything the daemon will take of this connection while nothing is answered.
    await poll(() => entered >= MAX_IN_FLIGHT_PER_CONNECTION);
    // Let node read and parse what it will: the cap must hold whatever the parser has seen.
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    expect(entered).toBeLessThanOrEqual(MAX_IN_FLIGHT_PER_CONNECTION);
    expect(inHandler).toBeLessThanOrEqual(MAX_IN_FLIGHT_PER_CONNECTION);

    // Let every held call go, and any that come after: each request gets exactly one answer.
    const release = setInterval(() => { for (const r of held.splice(0)) r(); }, 5);
    let text: string;
    try {
      text = await answered;
    } finally {
      clearInterval(release);
    }
    const statuses = [...text.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));
    expect(statuses).toHaveLength(PIPELINED);
    const ok = statuses.filter((x) => x === 200).length;
    const throttled = statuses.filter((x) => x === 503).length;
    expect(ok + throttled).toBe(PIPELINED);
    expect(ok).toBe(entered);
    expect(throttled).toBeGreaterThan(0);
    expect(text).toContain('ThrottlingException');
    server.guard.flushRefusals();
    const rows = reports.flat().filter((r) => r.reason === 'in-flight-limit');
    expect(rows).toHaveLength(1); // one row for the uid, not one per request
    expect(rows[0]!.count).toBe(throttled);
  });

  it('answers a client never reads: held in the uid\'s body budget until written (past it, ThrottlingException), the connection closed within the request timeout', async () => {
    const path = join(dir, 'ebsd.sock');
    const PER_CALLER = 4 << 20;
    const ANSWER = 700_000; // a GetSnapshotBlock answer: 512 KiB of block in base64
    let maxHeld = 0;
    let answered = 0;
    server = new ControlServer(path, async () => {
      answered++;
      return { BlockData: 'A'.repeat(ANSWER) };
    }, silentLogger, { limits: { headersTimeoutMs: 1_000, requestTimeoutMs: 2_000, maxBufferedBodyBytes: 4 * PER_CALLER, maxBufferedBodyBytesPerCaller: PER_CALLER } });
    chmodSync(dir, 0o755);
    await server.listen();
    const sample = setInterval(() => { maxHeld = Math.max(maxHeld, server!.guard.usage().bufferedBodyBytes); }, 1);
    // A process of uid 65534: 4 connections, each pipelining 32 requests, never reading; it lives until killed.
    const one = 'POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: ebs.GetSnapshotBlock\r\nContent-Length: 2\r\n\r\n{}';
    const code = `for(let i=0;i<4;i++){const s=require('net').connect(${JSON.stringify(path)});s.pause();s.on('error',()=>{});s.on('connect',()=>s.write(${JSON.stringify(one)}.repeat(${MAX_IN_FLIGHT_PER_CONNECTION})));}setInterval(()=>{},1000);`;
    const child = spawn('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', process.execPath, '-e', code], { stdio: 'ignore' });
    try {
      await poll(() => answered >= 4 && server!.guard.usage().connections === 4);
      await poll(() => server!.guard.usage().connections === 0, { tries: 500 }); // before: held as long as the client lived
      expect(maxHeld).toBeGreaterThan(0);
      expect(maxHeld).toBeLessThanOrEqual(PER_CALLER + 4 * (ANSWER + 1024)); // its share, and one answer per connection past it
      await poll(() => server!.guard.usage().bufferedBodyBytes === 0);
    } finally {
      clearInterval(sample);
      child.kill('SIGKILL');
    }
  }, 60_000);
});
