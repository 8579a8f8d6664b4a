/**
 * The listener's front end on a worker thread (`--kms-front-threads 1`,
 * src/daemon/kms-front.ts): the worker is its own named thread; pipelined
 * requests whose bodies cross in one batch are answered in order and each
 * body arrives byte for byte (SigV4 checks its hash on the main thread); a
 * 1 MiB body crosses; a stop with requests in flight ends cleanly; and a
 * worker that dies takes the listener down and says so (in process, so the
 * test can end the worker itself).
 */
import { connect, type Socket } from 'node:net';
import { readdirSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KMS_ADMIN_POLICY, answers, makeAccessKey, signedBytes, startKmsDaemon, type AccessKey } from './helpers.js';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { tempDir, type TempDir } from '../helpers/temp-dir.js';
import { openKms, type Kms } from '../../src/kms/open-kms.js';
import { AccessKeyStore } from '../../src/kms/sts/access-keys.js';
import { TrustPolicies } from '../../src/kms/sts/trust-policies.js';
import { StsService } from '../../src/kms/sts/sts-service.js';
import { KmsListener } from '../../src/daemon/kms-listener.js';
import { createLogger } from '../../src/util/logger.js';

describe('KMS listener with its front end on a worker thread', () => {
  const env = new Env('kmsfront');
  const open: Socket[] = [];
  let url: URL;
  let key: AccessKey;

  beforeAll(async () => {
    ensureBuilt();
    url = new URL((await startKmsDaemon(env, { frontThreads: 1 })).url);
    ({ key } = await makeAccessKey(env, 'front', KMS_ADMIN_POLICY));
  }, 60_000);
  afterAll(async () => {
    for (const s of open) s.destroy();
    await env.cleanup();
  });

  const dial = async (): Promise<Socket> => {
    const s = connect({ host: url.hostname, port: Number(url.port) });
    open.push(s);
    await new Promise<void>((r, j) => { s.once('connect', r); s.once('error', j); });
    return s;
  };

  it('runs on its own thread, named ebsd-kms-front; the HSM worker on one named ebsd-hsm', () => {
    const names = readdirSync(`/proc/${env.pid}/task`).map((t) => readFileSync(`/proc/${env.pid}/task/${t}/comm`, 'utf8').trim());
    expect(names.filter((n) => n === 'ebsd-kms-front')).toHaveLength(1);
    expect(names.filter((n) => n === 'ebsd-hsm')).toHaveLength(1);
  });

  it('answers pipelined requests in order, each body intact across the hand-off', async () => {
    const s = await dial();
    const alias = `alias/front-${'x'.repeat(200)}`;
    // Three bodies of different sizes in one write: one worker turn, one batch, one shared body buffer.
    const reqs = await Promise.all([
      signedBytes(url, key, 'ListKeys', JSON.stringify({ Limit: 7 })),
      signedBytes(url, key, 'DescribeKey', JSON.stringify({ KeyId: alias })),
      signedBytes(url, key, 'ListAliases', '{}'),
    ]);
    const got = answers(s, 3);
    s.write(Buffer.concat(reqs));
    const [a, b, c] = await got;
    expect(a).toMatchObject({ status: 200, body: { Keys: expect.any(Array) } });
    expect(b).toMatchObject({ status: 400, body: { __type: 'NotFoundException' } });
    expect(b.body.message).toContain(alias);
    expect(c).toMatchObject({ status: 200, body: { Aliases: expect.any(Array) } });
  });

  it('carries a body of exactly the 1 MiB limit: SigV4 verifies it on the main thread, the KMS refuses its size', async () => {
    const s = await dial();
    const skeleton = JSON.stringify({ Description: '' });
    const body = JSON.stringify({ Description: 'A'.repeat((1 << 20) - skeleton.length) });
    expect(Buffer.byteLength(body)).toBe(1 << 20);
    const got = answers(s, 1);
    s.write(await signedBytes(url, key, 'CreateKey', body));
    const [r] = await got;
    // Not InvalidSignatureException: every byte reached the verifier as sent.
    expect(r!.status).toBe(400);
    expect(r!.body.__type).toBe('ValidationException');
    expect(r!.body.message).toMatch(/description/i);
  });

  it('stops cleanly (exit 0) with requests in flight', async () => {
    const socks = await Promise.all(Array.from({ length: 8 }, () => dial()));
    const bytes = await signedBytes(url, key, 'ListKeys', '{}');
    const settled = socks.map((s) => answers(s, 50).then(() => 'answered', () => 'closed'));
    for (const s of socks) for (let i = 0; i < 50; i++) s.write(bytes);
    expect(await env.stop()).toBe(0);
    // Each connection was either answered in full or closed by the stop: none left hanging.
    for (const x of await Promise.all(settled)) expect(['answered', 'closed']).toContain(x);
    expect(env.daemonLog()).toContain('ebsd daemon stopped');
  }, 60_000);
});

/** A KmsListener with its front-end worker in this process, over a fresh KMS in `dir` (the test can reach inside). */
async function inProcess(dir: string): Promise<{ kms: Kms; listener: KmsListener; a: { host: string; port: number }; lines: string[]; fatal: Error[]; front: { worker: { terminate(): Promise<number> }; connectionsKnown: number } }> {
  const kms = await openKms({ stateDir: dir, region: 'us-east-1' });
  const core = kms.core;
  const keys = await AccessKeyStore.open(dir, core.hsm, kms.identities);
  const sts = new StsService(kms.identities, keys, await TrustPolicies.open(dir, kms.identities), core.hsm);
  const lines: string[] = [];
  const log = createLogger({ level: 'info', name: 'test', destination: { write: (l: string) => void lines.push(l) } });
  const fatal: Error[] = [];
  const listener = new KmsListener({
    host: '127.0.0.1', port: 0, region: 'us-east-1', accountId: kms.identities.accountId, sts, log,
    kms: (op, req, caller, id) => core.call(op, req, caller, id), audit: (e) => core.audit.append(e),
    frontThreads: 1, onFatal: (e) => fatal.push(e),
  });
  const a = await listener.listen();
  const front = (listener as unknown as { transport: { worker: { terminate(): Promise<number> }; connectionsKnown: number } }).transport;
  return { kms, listener, a, lines, fatal, front };
}

describe('KMS listener: the front-end worker in process', () => {
  const dirs: TempDir[] = [];
  const opened: Kms[] = [];
  afterAll(async () => {
    for (const k of opened) await k.close();
    for (const d of dirs) d.cleanup();
  });
  const start = async (): ReturnType<typeof inProcess> => {
    const t = tempDir('ebsd-kmsfront-');
    dirs.push(t);
    const r = await inProcess(t.dir);
    opened.push(r.kms);
    return r;
  };

  it('forgets a connection that closes while its first body is read (no entry left per aborted client)', async () => {
    const { listener, a, front } = await start();
    try {
      // Headers announcing 100 bytes, 3 sent, then the client goes: node closes the socket before it
      // ends the request, so the connection is first named to the main thread after it closed.
      for (let i = 0; i < 20; i++) {
        const s = connect({ host: a.host, port: a.port });
        await new Promise<void>((r, j) => { s.once('connect', r); s.once('error', j); });
        s.write(`POST / HTTP/1.1\r\nHost: ${a.host}\r\nX-Amz-Target: TrentService.ListKeys\r\nContent-Length: 100\r\n\r\n{}x`);
        await new Promise((r) => setTimeout(r, 20));
        s.destroy();
      }
      // A live connection is known while it is open...
      const live = connect({ host: a.host, port: a.port });
      await new Promise<void>((r, j) => { live.once('connect', r); live.once('error', j); });
      const answered = new Promise<void>((r) => live.once('data', () => r()));
      live.write(`POST / HTTP/1.1\r\nHost: ${a.host}\r\nX-Amz-Target: TrentService.ListKeys\r\nContent-Length: 2\r\n\r\n{}`);
      await answered;
      expect(front.connectionsKnown).toBeGreaterThanOrEqual(1);
      live.destroy();
      // ...and every one is forgotten once closed, the aborted ones included.
      for (let i = 0; i < 200 && front.connectionsKnown > 0; i++) await new Promise((r) => setTimeout(r, 20));
      expect(front.connectionsKnown).toBe(0);
    } finally {
      await listener.close();
    }
  }, 60_000);

  it('takes the listener down when the worker dies, and reports it (the daemon exits non-zero on it)', async () => {
    const { listener, a, front, fatal, lines } = await start();
    try {
      // The worker ends as an uncaught exception would end it.
      await front.worker.terminate();
      for (let i = 0; i < 100 && fatal.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
      expect(fatal).toHaveLength(1);
      expect(fatal[0]).toMatchObject({ code: 'KMS_FRONT_DIED' });
      expect(fatal[0]!.message).toMatch(/front-end worker died.*listener is down/);
      expect(lines.join('')).toMatch(/"level":50.*front-end worker died/);
      // Nobody listens on the port any more: connections are refused, not left hanging.
      const refused = await new Promise<string>((r) => {
        const s = connect({ host: a.host, port: a.port });
        s.once('connect', () => { s.destroy(); r('connected'); });
        s.once('error', (e: NodeJS.ErrnoException) => r(e.code ?? 'error'));
      });
      expect(refused).toBe('ECONNREFUSED');
    } finally {
      await listener.close();
    }
  }, 60_000);
});
