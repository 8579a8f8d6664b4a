/**
 * What only the S3 store does, against s3rver in its own process: the
 * standard AWS configuration (AWS_ENDPOINT_URL_S3, a profile's services
 * section, path-style addressing), the object layout, the checksum every
 * block PUT carries, and failures typed and named without credentials.
 */
import { createServer, request, type IncomingHttpHeaders, type Server } from 'node:http';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { SnapshotError } from '../../src/snapshot/errors.js';
import { openSnapshotStore } from '../../src/snapshot/open-store.js';
import { S3SnapshotStore } from '../../src/snapshot/s3-store.js';
import { DEFAULT_DELETE_WINDOWS } from '../../src/snapshot/store-settings.js';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { unusedPort } from '../helpers/ports.js';
import { tempDir } from '../helpers/temp-dir.js';
import { S3RVER_CREDENTIALS, startS3Server, type S3Server } from './s3-helpers.js';
import { block, manifest, snapId } from './store-suite.js';

let server: S3Server;
const scratch = tempDir('ebsd-s3store-');
const tmp = scratch.dir;
beforeAll(async () => {
  server = await startS3Server();
});
afterAll(async () => {
  await server?.stop();
  scratch.cleanup();
});

/** Runs fn with these environment variables set, then puts the environment back. */
async function withEnv<T>(vars: Record<string, string | undefined>, fn: () => Promise<T>): Promise<T> {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  for (const [k, v] of Object.entries(vars)) if (v === undefined) delete process.env[k]; else process.env[k] = v;
  try {
    return await fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) if (v === undefined) delete process.env[k]; else process.env[k] = v;
  }
}

const CLEAN = { AWS_PROFILE: undefined, AWS_CONFIG_FILE: undefined, AWS_SHARED_CREDENTIALS_FILE: undefined, AWS_ENDPOINT_URL: undefined, AWS_ENDPOINT_URL_S3: undefined, AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined, AWS_SESSION_TOKEN: undefined, AWS_REGION: undefined };

describe('--snapshot-store values', () => {
  test('absent: the directory store under the state dir', async () => {
    const s = await openSnapshotStore(undefined, join(tmp, 'state'));
    expect(s).toBeInstanceOf(DirSnapshotStore);
    expect(s.location).toBe(`dir:${join(tmp, 'state', 'snapshots')}`);
  });

  test.each(['file:///var/snap', '/var/snap', 's3://', 's3:/bucket', 's3://Bad_Bucket/x', 's3://ab/x', 's3://bucket/a//b', 'S3://bucket'])('%s is refused naming the value', async (v) => {
    const e = await openSnapshotStore(v, tmp).then(() => undefined, (err: Error) => err);
    expect(e).toMatchObject({ code: 'ERR_ARG_RANGE' });
    expect(e!.message).toContain('--snapshot-store');
    expect(e!.message).toContain(`"${v}"`);
  });
});

describe('standard AWS configuration', () => {
  test('AWS_ENDPOINT_URL_S3 and credentials from the environment: path style, PREFIX/blocks/<hash>, PREFIX/manifests/<id>.json', async () => {
    await withEnv({ ...CLEAN, ...server.env }, async () => {
      const s = (await openSnapshotStore(`s3://${server.bucket}/env/pre`, tmp)) as S3SnapshotStore;
      try {
        expect(s.location).toBe(`s3://${server.bucket}/env/pre`);
        expect(s.endpoint).toBe(server.endpoint);
        const b = block(4096);
        await s.putBlock(b.hash, b.data);
        const id = snapId();
        await s.putManifest(manifest(id, [[0, b.hash]]));
        expect(existsSync(server.objectFile(`env/pre/blocks/${b.hash}`))).toBe(true);
        expect(existsSync(server.objectFile(`env/pre/manifests/${id}.json`))).toBe(true);
        expect((await s.getBlock(b.hash)).equals(b.data)).toBe(true);
      } finally {
        s.close();
      }
    });
  });

  test('a profile with a services section names the endpoint; credentials from the shared credentials file', async () => {
    const config = join(tmp, 'config');
    const creds = join(tmp, 'credentials');
    writeFileSync(config, `[profile snap]\nregion = eu-west-3\nservices = local-s3\n\n[services local-s3]\ns3 =\n  endpoint_url = ${server.endpoint}\n`);
    writeFileSync(creds, `[snap]\naws_access_key_id = ${S3RVER_CREDENTIALS.accessKeyId}\naws_secret_access_key = ${S3RVER_CREDENTIALS.secretAccessKey}\n`);
    await withEnv({ ...CLEAN, AWS_PROFILE: 'snap', AWS_CONFIG_FILE: config, AWS_SHARED_CREDENTIALS_FILE: creds }, async () => {
      const s = (await openSnapshotStore(`s3://${server.bucket}`, tmp)) as S3SnapshotStore;
      try {
        expect(s.endpoint).toBe(server.endpoint);
        const id = snapId();
        await s.putManifest(manifest(id, []));
        expect(existsSync(server.objectFile(`manifests/${id}.json`))).toBe(true);
        expect((await s.listManifests()).map((m) => m.snapshotId)).toContain(id);
      } finally {
        s.close();
      }
    });
  });
});

describe('what goes over the wire', () => {
  let proxy: Server;
  const seen: { method: string; url: string; headers: IncomingHttpHeaders; body: Buffer }[] = [];
  /** GET responses still to cut off after half their body (a dropped connection). */
  let cutGets = 0;
  beforeAll(async () => {
    // A loopback relay in front of s3rver that records each request (S3 itself checks the checksum; s3rver does not).
    proxy = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const body = Buffer.concat(chunks);
        seen.push({ method: req.method!, url: req.url!, headers: req.headers, body });
        const up = request(`${server.endpoint}${req.url}`, { method: req.method, headers: req.headers }, (r) => {
          res.writeHead(r.statusCode!, r.headers);
          if (req.method === 'GET' && r.statusCode === 200 && cutGets > 0) {
            cutGets--;
            const half = Number(r.headers['content-length']) / 2;
            let sent = 0;
            r.on('data', (c: Buffer) => {
              if (sent < half) res.write(c.subarray(0, half - sent));
              sent += c.length;
              if (sent >= half) res.socket?.destroy();
            });
            return;
          }
          r.pipe(res);
        });
        up.on('error', () => res.destroy());
        up.end(body);
      });
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  });
  afterAll(() => new Promise<void>((r) => {
    proxy.closeAllConnections();
    proxy.close(() => r());
  }));

  test('a GET whose body is cut off after the headers is retried, and the block still verifies', async () => {
    const port = (proxy.address() as { port: number }).port;
    const s = await S3SnapshotStore.open({ bucket: server.bucket, prefix: 'cut', endpoint: `http://127.0.0.1:${port}`, credentials: S3RVER_CREDENTIALS, maxAttempts: 2 });
    try {
      const b = block();
      await s.putBlock(b.hash, b.data);
      const before = seen.filter((r) => r.method === 'GET').length;
      cutGets = 1;
      expect((await s.getBlock(b.hash)).equals(b.data)).toBe(true);
      expect(seen.filter((r) => r.method === 'GET').length - before).toBe(2);
      // Cut on every attempt: a SnapshotError naming GetObject, not a short block.
      cutGets = 2;
      await expect(s.getBlock(b.hash)).rejects.toMatchObject({ code: 'SNAPSHOT_STORE', message: expect.stringContaining('GetObject') });
    } finally {
      cutGets = 0;
      s.close();
    }
  });

  test('touchBlock under a prefix with a non-ASCII character or a \'%\': the copy source is URL-encoded and names the block itself', async () => {
    const port = (proxy.address() as { port: number }).port;
    const open = (prefix: string): Promise<S3SnapshotStore> => S3SnapshotStore.open({ bucket: server.bucket, prefix, endpoint: `http://127.0.0.1:${port}`, credentials: S3RVER_CREDENTIALS, maxAttempts: 1 });
    const [cjk, pct, decoded] = await Promise.all([open('\u4e2d\u6587/x'), open('x%41y'), open('xAy')]);
    try {
      for (const [s, encoded] of [[cjk, '%E4%B8%AD%E6%96%87/x'], [pct, 'x%2541y']] as const) {
        const b = block(1024);
        expect(await s.touchBlock(b.hash)).toBe(false);
        await s.putBlock(b.hash, b.data);
        expect(await s.touchBlock(b.hash)).toBe(true);
        const copy = seen.filter((r) => r.method === 'PUT' && r.headers['x-amz-copy-source']).at(-1)!;
        expect(copy.headers['x-amz-copy-source']).toBe(`${server.bucket}/${encoded}/blocks/${b.hash}`);
        expect((await s.getBlock(b.hash)).equals(b.data)).toBe(true);
      }
      // Present only under `xAy` (what `x%41y` decodes to): absent under `x%41y`.
      const other = block(1024);
      await decoded.putBlock(other.hash, other.data);
      expect(await pct.touchBlock(other.hash)).toBe(false);
    } finally {
      for (const s of [cjk, pct, decoded]) s.close();
    }
  });

  test('getBlock refuses an object larger than a block (or than the size it is given) on its Content-Length, naming the key and the size', async () => {
    const port = (proxy.address() as { port: number }).port;
    const s = await S3SnapshotStore.open({ bucket: server.bucket, prefix: 'big', endpoint: `http://127.0.0.1:${port}`, credentials: S3RVER_CREDENTIALS, maxAttempts: 1 });
    try {
      const big = block(512 * 1024 + 4096);
      await s.putBlock(big.hash, big.data);
      const e = await s.getBlock(big.hash).then(() => undefined, (err: SnapshotError) => err);
      expect(e).toMatchObject({ code: 'SNAPSHOT_CORRUPT' });
      expect(e!.message).toContain(`s3://${server.bucket}/big/blocks/${big.hash} is ${big.data.length} bytes`);
      expect(e!.message).toContain(`${512 * 1024} bytes this read accepts`);
      // A header area's read says how large it may be.
      expect((await s.getBlock(big.hash, big.data.length)).equals(big.data)).toBe(true);
      await expect(s.getBlock(big.hash, big.data.length - 1)).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT' });
      const ok = block(512 * 1024);
      await s.putBlock(ok.hash, ok.data);
      expect((await s.getBlock(ok.hash)).equals(ok.data)).toBe(true);
    } finally {
      s.close();
    }
  });

  test('a block PUT carries x-amz-checksum-sha256 equal to the block hash', async () => {
    const port = (proxy.address() as { port: number }).port;
    const s = await S3SnapshotStore.open({ bucket: server.bucket, prefix: 'wire', endpoint: `http://127.0.0.1:${port}`, credentials: S3RVER_CREDENTIALS });
    try {
      const b = block(8192);
      await s.putBlock(b.hash, b.data);
      const put = seen.find((r) => r.method === 'PUT' && r.url.includes(`/wire/blocks/${b.hash}`));
      expect(put).toBeDefined();
      const trailer = put!.body.toString('latin1');
      const sent = put!.headers['x-amz-checksum-sha256'] ?? /x-amz-checksum-sha256:([A-Za-z0-9+/=]+)/.exec(trailer)?.[1];
      expect(sent).toBe(Buffer.from(b.hash, 'hex').toString('base64'));
    } finally {
      s.close();
    }
  });
});

describe('failures are SnapshotError SNAPSHOT_STORE naming S3\'s error, never a credential', () => {
  const SECRET = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY';
  const failing = async (opts: Partial<Parameters<typeof S3SnapshotStore.open>[0]>, fn: (s: S3SnapshotStore) => Promise<unknown>): Promise<SnapshotError> => {
    const s = await S3SnapshotStore.open({ bucket: server.bucket, prefix: 'fail', endpoint: server.endpoint, credentials: S3RVER_CREDENTIALS, maxAttempts: 1, ...opts });
    try {
      await fn(s);
    } catch (e) {
      expect(e).toBeInstanceOf(SnapshotError);
      expect((e as Error).message).not.toContain(SECRET);
      expect(JSON.stringify(e)).not.toContain(SECRET);
      return e as SnapshotError;
    } finally {
      s.close();
    }
    throw new Error('expected a failure');
  };

  // s3rver checks the access key id, not SigV4 signatures: an unknown key is what it can refuse.
  test('unknown credentials: InvalidAccessKeyId, and the secret appears nowhere', async () => {
    const e = await failing({ credentials: { accessKeyId: 'AKIAEXAMPLEUNKNOWN00', secretAccessKey: SECRET } }, (s) => s.getManifest(snapId()));
    expect(e.code).toBe('SNAPSHOT_STORE');
    expect(e.message).toMatch(/GetObject .*InvalidAccessKeyId \(HTTP 403\)/);
  });

  test('a bucket that does not exist: NoSuchBucket, from check() too (the daemon\'s start-up probe)', async () => {
    const ok = await S3SnapshotStore.open({ bucket: server.bucket, prefix: 'fail', endpoint: server.endpoint, credentials: S3RVER_CREDENTIALS });
    await ok.check();
    ok.close();
    const probe = await failing({ bucket: 'no-such-bucket' }, (s) => s.check());
    expect(probe.message).toMatch(/ListObjectsV2 .*NoSuchBucket/);
    const e = await failing({ bucket: 'no-such-bucket' }, (s) => s.listManifests());
    expect(e.code).toBe('SNAPSHOT_STORE');
    expect(e.message).toMatch(/ListObjectsV2 of s3:\/\/no-such-bucket\/fail\/manifests\/ failed: NoSuchBucket/);
  });

  test('a bucket that does not exist: hasBlock and blockModifiedMs (a HEAD\'s bare 404) throw naming the bucket, not "absent"', async () => {
    const h = block(64).hash;
    for (const op of [(s: S3SnapshotStore) => s.hasBlock(h), (s: S3SnapshotStore) => s.blockModifiedMs(h)]) {
      const e = await failing({ bucket: 'no-such-bucket' }, op);
      expect(e.code).toBe('SNAPSHOT_STORE');
      expect(e.message).toContain('S3 bucket no-such-bucket does not exist');
      expect(e.message).toContain(`s3://no-such-bucket/fail/blocks/${h}`);
    }
    // The bucket there: absent is absent, and one HeadBucket answers for the 404s that follow.
    const s = await S3SnapshotStore.open({ bucket: server.bucket, prefix: 'fail', endpoint: server.endpoint, credentials: S3RVER_CREDENTIALS, maxAttempts: 1 });
    const sent: string[] = [];
    s['s3'].middlewareStack.add((next, ctx) => (args) => (sent.push(ctx.commandName!), next(args)), { step: 'initialize' });
    try {
      expect(await Promise.all([s.hasBlock(h), s.hasBlock(block(64).hash), s.blockModifiedMs(h)])).toEqual([false, false, undefined]);
      expect(await s.hasBlock(h)).toBe(false);
      expect(sent.filter((c) => c === 'HeadBucketCommand')).toHaveLength(1);
    } finally {
      s.close();
    }
  });

  test('nobody listening: the connection error, after the configured attempts', async () => {
    // A port nobody listens on cannot be held: another process may take it in between, so an
    // answer other than ECONNREFUSED is tried again on a new port, three times at most.
    let e: SnapshotError | undefined;
    for (let i = 0; i < 3 && !e?.message.includes('ECONNREFUSED'); i++) {
      const port = await unusedPort();
      e = await failing({ endpoint: `http://127.0.0.1:${port}`, maxAttempts: 2 }, (s) => s.getBlock(block(64).hash));
    }
    expect(e!.code).toBe('SNAPSHOT_STORE');
    expect(e!.message).toMatch(/GetObject .*ECONNREFUSED/);
  });
});

describe('the store settings object (PREFIX/settings.json): the delete windows every host follows', () => {
  test('absent: the defaults; written: its figures, read back by a second host; one a daemon cannot follow is refused naming it', async () => {
    const open = (): Promise<S3SnapshotStore> => S3SnapshotStore.open({ bucket: server.bucket, prefix: 'settings', endpoint: server.endpoint, credentials: S3RVER_CREDENTIALS });
    const a = await open();
    const b = await open();
    try {
      expect(await a.deleteWindows()).toEqual(DEFAULT_DELETE_WINDOWS);
      await a.putSettings({ deleteWindowMs: 300, deleteMarginMs: 200 });
      expect(existsSync(server.objectFile('settings/settings.json'))).toBe(true);
      expect(await b.deleteWindows()).toEqual({ deleteWindowMs: 300, recheckMs: 500 });
      // Refused before it is written.
      await expect(a.putSettings({ deleteWindowMs: 0 })).rejects.toThrow(/deleteWindowMs is 0/);
      writeFileSync(server.objectFile('settings/settings.json'), '{"formatVersion":2}');
      const c = await open();
      try {
        const e = await c.deleteWindows().catch((x: unknown) => x);
        expect(e).toBeInstanceOf(SnapshotError);
        expect((e as SnapshotError).code).toBe('SNAPSHOT_CORRUPT');
        expect((e as Error).message).toContain(`s3://${server.bucket}/settings/settings.json have formatVersion 2`);
      } finally {
        c.close();
      }
    } finally {
      a.close();
      b.close();
    }
  });
});
