/**
 * The KMS network listener shares the control socket's connection guard
 * (src/daemon/connection-guard.ts), keyed by source: an address, or on
 * loopback the local user owning the client's socket. One source flooding
 * connections hits its own cap (128 by default, below the overall 1024),
 * another still gets through, and the refusals are audited in aggregate. Daemon as a child process
 * (`--kms-only --kms-listen 127.0.0.1:0`), the guard in the front-end worker
 * and on the main thread (`--kms-front-threads 1`, `0`); the flood is bounded
 * and closed in cleanup, also on failure.
 */
import { connect, type Socket } from 'node:net';
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KMSClient, ListKeysCommand, type KMSServiceException } from '@aws-sdk/client-kms';
import { FRONT_THREADS, KMS_ADMIN_POLICY, answers, auditEvents, makeAccessKey, signedBytes, signedStsBytes, startKmsDaemon } from './helpers.js';
import { MAX_IN_FLIGHT_PER_CONNECTION } from '../../src/daemon/kms-transport.js';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { poll } from '../helpers/poll.js';
import { nodeAs } from '../helpers/node-as.js';

/** This file's polling: how many tries, how far apart. */
const POLL = { tries: 300, everyMs: 100 };

const FLOOD = 200;
const PER_SOURCE = 128; // DEFAULT_LIMITS.maxPerCaller of src/daemon/kms-listener.ts
const NOBODY = 65534;

/**
 * One raw request from `localAddress`: `head` (request line and headers, without the blank line), then
 * `body`. Resolves with the first answer's status, Connection header and JSON body, and `closed`: whether
 * the server then closed the connection (waited for when the answer says `Connection: close`); or with
 * `reset` when the connection ended without an answer.
 */
function rawExchange(url: URL, localAddress: string, head: string, body: Buffer[]): Promise<{ status: number; connection?: string; body: any; closed: boolean } | 'reset'> {
  return new Promise((resolve) => {
    const s = connect({ host: url.hostname, port: Number(url.port), localAddress });
    let buf = Buffer.alloc(0);
    let answer: { status: number; connection?: string; body: any; closed: boolean } | undefined;
    s.on('data', (c: Buffer) => {
      if (answer) return;
      buf = Buffer.concat([buf, c]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const h = buf.subarray(0, end).toString('latin1');
      const len = Number(/content-length: *(\d+)/i.exec(h)?.[1] ?? 0);
      if (buf.length < end + 4 + len) return;
      answer = { status: Number(h.slice(9, 12)), connection: /\r\nconnection: *([^\r]+)/i.exec(h)?.[1]?.toLowerCase(), body: JSON.parse(buf.subarray(end + 4, end + 4 + len).toString('utf8') || '{}'), closed: false };
      if (answer.connection !== 'close') { s.destroy(); resolve(answer); }
    });
    s.on('error', () => {}); // a reset: 'close' follows
    s.on('close', () => {
      if (!answer) { resolve('reset'); return; }
      if (answer.connection === 'close') resolve({ ...answer, closed: true });
    });
    s.on('connect', () => {
      s.write(`${head}\r\n\r\n`);
      for (const b of body) s.write(b);
    });
  });
}

/** `Transfer-Encoding: chunked` framing of `parts`, with the last chunk. */
function chunked(parts: Buffer[]): Buffer[] {
  return [...parts.flatMap((p) => [Buffer.from(`${p.length.toString(16)}\r\n`), p, Buffer.from('\r\n')]), Buffer.from('0\r\n\r\n')];
}

/** One unsigned request from `localAddress`; resolves with the status and the JSON body. */
function post(url: URL, localAddress: string, userAgent = 'listener-guard-test'): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: url.hostname, port: Number(url.port), localAddress, method: 'POST', path: '/', agent: false,
      headers: { 'X-Amz-Target': 'TrentService.ListKeys', 'Content-Type': 'application/x-amz-json-1.1', 'User-Agent': userAgent } }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text || '{}') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end('{}');
  });
}

/** The same request as `post`, sent by a process of local user `uid` (setpriv); with `bodyBytes`, a body of that many spaces. */
function postAs(uid: number, url: URL, localAddress: string, bodyBytes = 0): Promise<{ status: number; body: any }> {
  const code = `const r=require('http').request({host:${JSON.stringify(url.hostname)},port:${Number(url.port)},localAddress:${JSON.stringify(localAddress)},method:'POST',path:'/',agent:false,`
    + `headers:{'X-Amz-Target':'TrentService.ListKeys','Content-Type':'application/x-amz-json-1.1'}},(res)=>{let t='';res.on('data',(c)=>t+=c);`
    + `res.on('end',()=>process.stdout.write(JSON.stringify({status:res.statusCode,body:JSON.parse(t||'{}')})))});r.on('error',(e)=>{process.stderr.write(String(e));process.exit(1)});`
    + `r.end(${bodyBytes} ? Buffer.alloc(${bodyBytes}, 0x20) : '{}')`;
  return nodeAs(uid, code, { what: 'request' }).then((out) => JSON.parse(out));
}


describe.each(FRONT_THREADS)('KMS listener: connection guard per source address (--kms-front-threads %i)', (front) => {
  const env = new Env('kmsguard');
  const flood: Socket[] = [];
  let url: URL;
  const events = (): Record<string, any>[] => auditEvents(env);

  beforeAll(async () => {
    ensureBuilt();
    // Refusals are audited once their 3 s window ends (default 10 s): what each case waits for.
    url = new URL((await startKmsDaemon(env, { frontThreads: front, extra: ['--refusal-window', '3s'] })).url);
  }, 60_000);
  afterAll(async () => {
    for (const s of flood) s.destroy();
    await env.cleanup();
  });

  it(`${FLOOD} connections from one local user on two loopback addresses: its cap holds across them, another local user gets through, refusals audited in aggregate`, async () => {
    let refused = 0;
    let closed = 0;
    // On loopback a source is the local user owning the client's socket (any user may use any address of 127/8).
    await Promise.all(Array.from({ length: FLOOD }, (_, i) => new Promise<void>((resolve) => {
      const s = connect({ host: url.hostname, port: Number(url.port), localAddress: i % 2 ? '127.0.0.3' : '127.0.0.1' });
      flood.push(s);
      s.on('connect', () => {
        // Headers of a request whose body never comes: the connection stays busy.
        s.write(`POST / HTTP/1.1\r\nHost: ${url.host}\r\nX-Amz-Target: TrentService.ListKeys\r\nContent-Length: 1024\r\n\r\n`);
        resolve();
      });
      // AWS KMS answers ThrottlingException with HTTP 400 (src/daemon/aws-json.ts, KMS_ERROR_STATUS), the refusal at accept too.
      s.on('data', (d) => { const a = d.toString('latin1'); if (a.startsWith('HTTP/1.1 400') && a.includes('"ThrottlingException"')) refused++; });
      s.on('error', () => resolve());
      s.on('close', () => { closed++; resolve(); });
    })));
    // Everything past the user's cap is answered ThrottlingException and closed, whichever address; the admitted ones stay open.
    await poll(() => refused + closed >= FLOOD - PER_SOURCE && refused > 0, POLL);
    expect(FLOOD - closed).toBeGreaterThanOrEqual(PER_SOURCE);

    const same = await post(url, '127.0.0.2');
    expect(same.status, 'the same user from a third address').toBe(400);
    expect(same.body.__type).toBe('ThrottlingException');
    // @aws-sdk/client-kms, as installed, reads the 400 as a throttle by its __type: it retries (backing off), then
    // surfaces ThrottlingException. (No credentials get that far: the connection is refused before SigV4.)
    const sdk = new KMSClient({ endpoint: url.origin, region: 'us-east-1', maxAttempts: 3, credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'not-a-secret' } });
    try {
      const e = await sdk.send(new ListKeysCommand({})).then(() => undefined, (x: unknown) => x as KMSServiceException);
      expect(e?.name).toBe('ThrottlingException');
      expect(e!.$metadata).toMatchObject({ httpStatusCode: 400, attempts: 3 });
      expect(e!.$fault).toBe('client');
    } finally {
      sdk.destroy();
    }
    // Another local user has its own count: it reaches the listener (and SigV4 refuses the unsigned request).
    const other = await postAs(NOBODY, url, '127.0.0.2');
    expect(other.body.__type).toBe('MissingAuthenticationTokenException');

    for (const s of flood) s.destroy();
    // One event per (source, reason) and window, with the count; none per connection. The flood and the
    // request after it usually fall in one 3 s window; a loaded machine may spread them over a second one.
    const refusals = (): Record<string, any>[] => events().filter((e) => e.eventName === 'KmsConnection');
    const all = await poll(() => {
      const r = refusals();
      return r.reduce((n, e) => n + (e.additionalEventData?.aggregated?.count ?? 0), 0) >= FLOOD - PER_SOURCE + 1 && r;
    }, POLL);
    expect(all.length).toBeLessThanOrEqual(2);
    for (const e of all) {
      expect(e.errorCode).toBe('ThrottlingException');
      expect(e.additionalEventData.caller).toBe('uid:0');
      expect(['127.0.0.1', '127.0.0.2', '127.0.0.3']).toContain(e.sourceIPAddress);
    }
    // The user's count falls as the listener sees the flood's connections close (on a loaded machine, after the
    // audit above): its requests reach SigV4 again, which the next cases count on.
    await poll(async () => (await post(url, '127.0.0.2')).body.__type === 'MissingAuthenticationTokenException', POLL);
  }, 90_000);

  it('200 unsigned requests with an 8 KB User-Agent: audited in aggregate, each record bounded', async () => {
    const N = 200;
    const ua = 'u'.repeat(8192);
    for (let i = 0; i < N; i++) {
      const r = await post(url, '127.0.0.3', ua);
      expect(r.body.__type).toBe('MissingAuthenticationTokenException');
    }
    const mine = (): Record<string, any>[] => events().filter((e) => e.sourceIPAddress === '127.0.0.3');
    // The first few as they happened, then one summary with the count when the refusal window closes.
    const all = await poll(() => {
      const m = mine();
      return m.reduce((n, e) => n + (e.additionalEventData?.aggregated?.count ?? 1), 0) === N && m;
    }, POLL);
    // At most (burst 5 + 1 summary) per 3 s window; one event per request would be N.
    expect(all.length).toBeLessThanOrEqual(N / 8);
    for (const e of all) {
      expect(e.errorCode).toBe('MissingAuthenticationTokenException');
      expect(e.userAgent.length).toBeLessThanOrEqual(1100);
    }
  }, 90_000);

  it('requests signed with made-up access key ids, a new one each (a new audit key each), cannot fold away a real access key\'s refusal nor a principal\'s AccessDenied: each is still its own record', async () => {
    const insider = await makeAccessKey(env, `insider${front}`); // no policy: every KMS call is AccessDenied
    const wrongSecret = { ...insider.key, SecretAccessKey: 'not-the-secret' };
    const fakes = (n: number, from: number) => Promise.all(Array.from({ length: n }, (_, i) => signedBytes(url, { AccessKeyId: `AKIAFAKE${front}X${from + i}`, SecretAccessKey: 'not-a-secret', UserName: '', Status: '', CreateDate: '' }, 'ListAliases', '{}')));
    const exchange = async (localAddress: string, reqs: Buffer[]): Promise<string[]> => {
      const s = connect({ host: url.hostname, port: Number(url.port), localAddress });
      try {
        await new Promise<void>((r, j) => { s.once('connect', () => r()); s.once('error', j); });
        const got = answers(s, reqs.length);
        s.write(Buffer.concat(reqs));
        return (await got).map((a) => a.body.__type as string);
      } finally {
        s.destroy();
      }
    };
    const ROUNDS = 2;
    const PER_ROUND = 90; // over the 64 keys a window shares among refusals nobody vouches for; 30 a connection (32 may be in flight)
    for (let r = 0; r < ROUNDS; r++) {
      // The flood, from three addresses at once, then at once the real key's and the principal's refusals.
      const floods = await Promise.all([0, 1, 2].map(async (c) => exchange(`127.0.0.${11 + c}`, await fakes(PER_ROUND / 3, r * PER_ROUND + c * (PER_ROUND / 3)))));
      for (const f of floods) expect(new Set(f)).toEqual(new Set(['UnrecognizedClientException']));
      expect(await exchange('127.0.0.14', [await signedBytes(url, wrongSecret, 'ListAliases', '{}')])).toEqual(['InvalidSignatureException']);
      expect(await exchange('127.0.0.14', [await signedBytes(url, insider.key, 'ListAliases', '{}')])).toEqual(['AccessDeniedException']);
    }
    // Each refusal of the real key and each denial a record of its own (burst 5 per key), not a count in an overflow row.
    const own = await poll(() => {
      const ev = events();
      const badSig = ev.filter((e) => e.userIdentity?.accessKeyId === insider.key.AccessKeyId && e.errorCode === 'InvalidSignatureException');
      const denied = ev.filter((e) => e.userIdentity?.arn === insider.arn && e.errorCode === 'AccessDeniedException');
      return badSig.length + denied.length >= 2 * ROUNDS && { badSig, denied };
    }, POLL);
    expect(own.badSig).toHaveLength(ROUNDS);
    expect(own.denied).toHaveLength(ROUNDS);
    for (const e of [...own.badSig, ...own.denied]) {
      expect(e).toMatchObject({ eventName: 'ListAliases', sourceIPAddress: '127.0.0.14' });
      expect(e.additionalEventData?.aggregated).toBeUndefined();
    }
    // Every refusal of the flood accounted for, the keys past the shared budget in an overflow row.
    const flood = await poll(() => {
      const m = events().filter((e) => String(e.userIdentity?.accessKeyId ?? '').startsWith(`AKIAFAKE${front}X`));
      return m.reduce((n, e) => n + (e.additionalEventData?.aggregated?.count ?? 1), 0) === ROUNDS * PER_ROUND && m;
    }, POLL);
    expect(flood.some((e) => e.eventName === 'RefusalsOverflow')).toBe(true);
  }, 90_000);

  it('a chunked body past 1 MiB is read to its end and answered 413 RequestEntityTooLargeException, then the connection closes', async () => {
    const parts = Array.from({ length: 20 }, () => Buffer.alloc(64 * 1024, 0x20)); // 1.25 MiB of spaces
    const r = await rawExchange(url, '127.0.0.7', `POST / HTTP/1.1\r\nHost: ${url.host}\r\nX-Amz-Target: TrentService.ListKeys\r\nContent-Type: application/x-amz-json-1.1\r\nTransfer-Encoding: chunked`, chunked(parts));
    expect(r).toMatchObject({ status: 413, connection: 'close', closed: true, body: { __type: 'RequestEntityTooLargeException' } });
  }, 60_000);

  it('one source\'s bodies are held to 48 MiB (on loopback a local user, whatever its addresses): the one past it is read to its end, answered ThrottlingException and closed; another user still sends its bodies', async () => {
    const MiB = 1 << 20;
    const N = 49; // 49 x (1 MiB - 1) does not fit in 48 MiB: at least one body is refused
    const head = `POST / HTTP/1.1\r\nHost: ${url.host}\r\nX-Amz-Target: TrentService.ListKeys\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: ${MiB}\r\n\r\n`;
    // Each request declares 1 MiB (the largest allowed body) and holds back its last byte.
    const socks: Socket[] = [];
    const got = await Promise.all(Array.from({ length: N }, () => new Promise<Socket>((resolve, reject) => {
      const s = connect({ host: url.hostname, port: Number(url.port), localAddress: '127.0.0.5' });
      flood.push(s);
      socks.push(s);
      s.on('error', reject);
      s.on('connect', () => { s.write(head); s.write(Buffer.alloc(MiB - 1, 0x20), () => resolve(s)); });
    })));
    // The refusal happens as the bytes arrive; the aggregated audit record says when it has.
    const ev = await poll(() => events().find((e) => e.sourceIPAddress === '127.0.0.5' && e.errorMessage === 'connection refused: body-budget'), POLL);
    expect(ev.errorCode).toBe('ThrottlingException');
    // The same user from another address shares the budget: its body is refused too.
    const same = await rawExchange(url, '127.0.0.6', `POST / HTTP/1.1\r\nHost: ${url.host}\r\nX-Amz-Target: TrentService.ListKeys\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: ${512 * 1024}`, [Buffer.alloc(512 * 1024, 0x20)]);
    expect(same).toMatchObject({ status: 400, body: { __type: 'ThrottlingException' } });
    // Meanwhile another local user's body is read and reaches SigV4.
    const other = await postAs(NOBODY, url, '127.0.0.6', 512 * 1024);
    expect(other).toMatchObject({ status: 400, body: { __type: 'MissingAuthenticationTokenException' } });
    // Now the last bytes: every request gets an answer, none a reset; the refused ones ThrottlingException and a close.
    const outcomes = await Promise.all(got.map((s) => new Promise<string>((resolve) => {
      let buf = '';
      s.on('data', (c: Buffer) => {
        buf += c.toString('latin1');
        const type = /"__type":"(\w+)"/.exec(buf)?.[1];
        if (type === 'MissingAuthenticationTokenException') resolve(type);
      });
      s.on('close', () => {
        const type = /"__type":"(\w+)"/.exec(buf)?.[1] ?? 'reset';
        resolve(type === 'ThrottlingException' && /\r\nconnection: close\r\n/i.test(buf) && buf.startsWith('HTTP/1.1 400') ? 'ThrottlingException, closed' : type);
      });
      s.write(' ');
    })));
    expect(outcomes.every((o) => o === 'MissingAuthenticationTokenException' || o === 'ThrottlingException, closed')).toBe(true);
    expect(outcomes.filter((o) => o === 'ThrottlingException, closed').length).toBeGreaterThanOrEqual(1);
    expect(outcomes.filter((o) => o === 'MissingAuthenticationTokenException').length).toBeGreaterThanOrEqual(1);
    for (const s of socks) s.destroy();
  }, 120_000);

  it(`64 pipelined requests on one connection: ${MAX_IN_FLIGHT_PER_CONNECTION} reach the listener, the rest are ThrottlingException, audited in aggregate`, async () => {
    const N = 64;
    const s = connect({ host: url.hostname, port: Number(url.port), localAddress: '127.0.0.4' });
    flood.push(s);
    await new Promise<void>((r, j) => { s.once('connect', r); s.once('error', j); });
    // Signed, so each one goes as far as the KMS core and its audit write: real work, answered later.
    const { key } = await makeAccessKey(env, 'pipeliner', KMS_ADMIN_POLICY);
    const one = await signedBytes(url, key, 'ListKeys', '{}');
    const got = answers(s, N);
    // One write (≈ 50 KB, one read on loopback): all 64 are parsed before the first answer is written.
    s.write(Buffer.concat(Array.from({ length: N }, () => one)));
    const replies = (await got).map((a) => ({ status: a.status, type: (a.body.__type as string | undefined) ?? 'ok' }));
    // In order: the first ones were served, the ones past the cap never left the transport.
    expect(replies.slice(0, MAX_IN_FLIGHT_PER_CONNECTION).every((a) => a.status === 200)).toBe(true);
    expect(replies.slice(MAX_IN_FLIGHT_PER_CONNECTION).every((a) => a.type === 'ThrottlingException' && a.status === 400)).toBe(true);
    s.destroy();
    const ev = await poll(() => events().find((e) => e.sourceIPAddress === '127.0.0.4' && e.errorMessage === 'connection refused: in-flight-limit'), POLL);
    expect(ev.additionalEventData.aggregated.count).toBe(N - MAX_IN_FLIGHT_PER_CONNECTION);
  }, 60_000);

  it('the same on STS: the requests past the cap are 400 Throttling in STS\'s XML (Sender), as STS throttles, not 500 InternalFailure', async () => {
    const N = 48;
    const s = connect({ host: url.hostname, port: Number(url.port), localAddress: '127.0.0.5' });
    flood.push(s);
    await new Promise<void>((r, j) => { s.once('connect', r); s.once('error', j); });
    const { key } = await makeAccessKey(env, 'sts-pipeliner', KMS_ADMIN_POLICY);
    const one = await signedStsBytes(url, key, 'GetCallerIdentity');
    const got = answers(s, N);
    s.write(Buffer.concat(Array.from({ length: N }, () => one)));
    const replies = await got;
    expect(replies.slice(0, MAX_IN_FLIGHT_PER_CONNECTION).every((a) => a.status === 200 && a.text.includes('<GetCallerIdentityResult>'))).toBe(true);
    const refused = replies.slice(MAX_IN_FLIGHT_PER_CONNECTION);
    expect(refused.length).toBe(N - MAX_IN_FLIGHT_PER_CONNECTION);
    for (const a of refused) {
      expect(a.status).toBe(400);
      expect(a.text).toMatch(/<Type>Sender<\/Type><Code>Throttling<\/Code><Message>[^<]*in flight on this connection[^<]*<\/Message>/);
    }
    s.destroy();
  }, 60_000);
});
