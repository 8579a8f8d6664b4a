import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ROOT, ensureBuilt } from '../e2e/helpers.js';

/**
 * A listener's source for a connection (src/daemon/loopback-peers.ts
 * `connectionSource`): a local user is one source whatever local address it
 * uses, loopback or another of the host's own addresses; a connection from
 * elsewhere counts by its address. The "host" is a network namespace with a
 * veth pair (10.213.0.1 and .2 on one end) and its own loopback: the listener, in a
 * node process there, reports each connection's source; clients are root and
 * uid 65534 in the same namespace. Nothing leaves the namespace, which is
 * deleted at the end, also on failure.
 */
const NS = `ebsdown${process.pid}`;
const SERVER = `
  const { createServer } = require('node:net');
  import(${JSON.stringify(join(ROOT, 'dist', 'daemon', 'loopback-peers.js'))}).then(({ connectionSource }) => {
    const srv = createServer((s) => { process.stdout.write(JSON.stringify({ from: s.remoteAddress, source: connectionSource(s) }) + '\\n'); s.on('error', () => {}); });
    srv.listen(0, '0.0.0.0', () => process.stdout.write(JSON.stringify({ port: srv.address().port }) + '\\n'));
  });`;

function ip(args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
}

/** Connect from `uid` in the namespace to host:port (from `local`, if given), hold it a moment, close. */
function connectAs(uid: number, host: string, port: number, local?: string): Promise<void> {
  const code = `const s=require('net').connect({host:'${host}',port:${port}${local ? `,localAddress:'${local}'` : ''}});s.on('connect',()=>setTimeout(()=>s.end(),300));s.on('error',(e)=>{console.error(e.message);process.exit(1)})`;
  const argv = uid === 0 ? [process.execPath, '-e', code] : ['setpriv', `--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', process.execPath, '-e', code];
  return new Promise((resolve, reject) => {
    const c = spawn('ip', ['netns', 'exec', NS, ...argv], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    c.stderr.on('data', (d) => (err += d));
    c.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`client as ${uid}: ${err}`))));
  });
}

describe('connection sources: a local user is one source on any of the host\'s addresses', () => {
  let server: ReturnType<typeof spawn> | undefined;
  const lines: Record<string, unknown>[] = [];

  beforeAll(() => {
    ensureBuilt();
    ip(['netns', 'add', NS]);
    ip(['-n', NS, 'link', 'set', 'lo', 'up']);
    // Both ends of a veth pair inside the namespace (no dummy module here): an interface to hold its addresses.
    ip(['-n', NS, 'link', 'add', 'e0', 'type', 'veth', 'peer', 'name', 'e1']);
    ip(['-n', NS, 'addr', 'add', '10.213.0.1/24', 'dev', 'e0']);
    ip(['-n', NS, 'addr', 'add', '10.213.0.2/24', 'dev', 'e0']);
    ip(['-n', NS, 'link', 'set', 'e0', 'up']);
    ip(['-n', NS, 'link', 'set', 'e1', 'up']);
  });
  afterAll(() => {
    server?.kill('SIGKILL');
    spawnSync('ip', ['netns', 'del', NS]);
  });

  it('root and 65534 are uid:0 and uid:65534 on loopback and on the namespace\'s other addresses', async () => {
    server = spawn('ip', ['netns', 'exec', NS, process.execPath, '-e', SERVER], { stdio: ['ignore', 'pipe', 'inherit'] });
    let buf = '';
    server.stdout!.on('data', (d) => {
      buf += d;
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        lines.push(JSON.parse(buf.slice(0, i)) as Record<string, unknown>);
        buf = buf.slice(i + 1);
      }
    });
    for (let i = 0; i < 200 && !lines.some((l) => l.port); i++) await new Promise((r) => setTimeout(r, 25));
    const port = lines.find((l) => l.port)!.port as number;
    await connectAs(65534, '10.213.0.1', port, '10.213.0.2');
    await connectAs(65534, '127.0.0.1', port, '127.0.0.9');
    await connectAs(0, '10.213.0.1', port);
    for (let i = 0; i < 100 && lines.length < 4; i++) await new Promise((r) => setTimeout(r, 25));
    const seen = lines.filter((l) => l.source).map((l) => [l.from, l.source]);
    expect(seen).toEqual([['10.213.0.2', 'uid:65534'], ['127.0.0.9', 'uid:65534'], ['10.213.0.1', 'uid:0']]);
  }, 30_000);
});
