/**
 * A manifest damaged on its way from S3 (a GET body cut off or changed in transfer) is a transfer
 * failure, retried, and SNAPSHOT_STORE when every attempt is damaged, never SNAPSHOT_CORRUPT, which
 * refuses the manifest (its snapshot shown in `error`, deletable unread; docs/architecture.md §13.5).
 * Real S3 stores the SHA-256 each manifest PUT carries and the SDK checks it (ChecksumMode ENABLED);
 * s3rver keeps no checksums, so these tests go through the digest the store records in the object's
 * metadata and the Content-Length check. A TCP proxy in front of s3rver damages the answers.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { S3SnapshotStore } from '../../src/snapshot/s3-store.js';
import { S3RVER_CREDENTIALS, startS3Server, type S3Server } from './s3-helpers.js';
import { block, code, manifest, snapId } from './store-suite.js';

/** `none`: the answer passes as it is (a place in a sequence of damages). */
type Damage = 'corrupt' | 'truncate' | 'none';

/**
 * Proxies HTTP/1.1 on loopback to s3rver; while armed, the body of the answer to a GET of a manifest
 * (`/manifests/`) is damaged: `corrupt` changes one byte (another one each time), `truncate` sends all
 * but its last 10 bytes and closes the connection.
 */
class BodyDamager {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  /** The damage of each next answer to a GET under `kind`, in order. */
  private armed: { damages: Damage[]; kind: 'manifests' | 'blocks' } | undefined;
  /** Answers damaged so far. */
  damaged = 0;

  constructor(private readonly upstream: { host: string; port: number }) {}

  async start(): Promise<string> {
    this.server = createServer((client) => this.connection(client));
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', () => r()));
    return `http://127.0.0.1:${(this.server.address() as { port: number }).port}`;
  }

  damageNext(damage: Damage, times = 1, kind: 'manifests' | 'blocks' = 'manifests'): void {
    this.damageEach(Array.from({ length: times }, () => damage), kind);
  }

  /** The next answers damaged each its own way, in order. */
  damageEach(damages: Damage[], kind: 'manifests' | 'blocks' = 'manifests'): void {
    this.armed = { damages: [...damages], kind };
  }

  async close(): Promise<void> {
    for (const x of this.sockets) x.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }

  private connection(client: Socket): void {
    const up = createConnection(this.upstream);
    this.sockets.add(client).add(up);
    const end = (): void => { client.destroy(); up.destroy(); this.sockets.delete(client); this.sockets.delete(up); };
    client.on('error', end).on('close', end);
    up.on('error', end).on('close', end);
    /** The answer under way is to be damaged: its head as it arrives, then how much of its body passed. */
    let damaging: { damage: Exclude<Damage, 'none'>; head: Buffer; length?: number; passed: number; at: number } | undefined;
    client.on('data', (chunk: Buffer) => {
      if (this.armed && this.armed.damages.length > 0 && new RegExp(`^GET \\S*/${this.armed.kind}/`).test(chunk.toString('latin1', 0, 200))) {
        const damage = this.armed.damages.shift()!;
        if (damage !== 'none') {
          damaging = { damage, head: Buffer.alloc(0), passed: 0, at: this.damaged };
          this.damaged++;
        }
      }
      up.write(chunk);
    });
    up.on('data', (chunk: Buffer) => {
      const d = damaging;
      if (!d) {
        client.write(chunk);
        return;
      }
      if (d.length === undefined) {
        d.head = Buffer.concat([d.head, chunk]);
        const i = d.head.indexOf('\r\n\r\n');
        if (i < 0) return;
        const cl = /\r\ncontent-length: *(\d+)/i.exec(d.head.toString('latin1', 0, i));
        if (!cl) throw new Error('the proxy needs a Content-Length on the answer');
        d.length = Number(cl[1]);
        client.write(d.head.subarray(0, i + 4));
        chunk = d.head.subarray(i + 4);
      }
      const body = Buffer.from(chunk);
      if (d.damage === 'corrupt') {
        const k = d.at % d.length - d.passed; // another byte at each damaged answer
        if (k >= 0 && k < body.length) body[k] = body[k]! ^ 0x20;
        d.passed += body.length;
        client.write(body);
        if (d.passed >= d.length) damaging = undefined;
        return;
      }
      const keep = Math.max(0, Math.min(body.length, d.length - 10 - d.passed));
      d.passed += body.length;
      client.write(body.subarray(0, keep));
      if (d.passed >= d.length - 10) {
        damaging = undefined;
        end();
      }
    });
  }
}

describe('S3 manifest reads damaged in transfer', () => {
  let server: S3Server;
  let proxy: BodyDamager;
  let store: S3SnapshotStore;
  const prefix = 'damage';

  beforeAll(async () => {
    server = await startS3Server();
    const u = new URL(server.endpoint);
    proxy = new BodyDamager({ host: u.hostname, port: Number(u.port) });
    const endpoint = await proxy.start();
    store = await S3SnapshotStore.open({ bucket: server.bucket, prefix, endpoint, credentials: S3RVER_CREDENTIALS, maxAttempts: 3 });
  }, 30_000);
  afterAll(async () => {
    store?.close();
    await proxy?.close();
    await server?.stop();
  });

  test('a body changed by a byte in one answer is read again: the manifest as stored', async () => {
    const m = manifest(snapId(), [[0, 'a'.repeat(64)]], { description: 'damaged once' });
    await store.putManifest(m);
    const before = proxy.damaged;
    proxy.damageNext('corrupt');
    expect(await store.getManifest(m.snapshotId)).toEqual(m);
    expect(proxy.damaged).toBe(before + 1);
  });

  test('a body cut off in one answer is read again: the manifest as stored', async () => {
    const m = manifest(snapId(), [[0, 'b'.repeat(64)]], { description: 'cut once' });
    await store.putManifest(m);
    const before = proxy.damaged;
    proxy.damageNext('truncate');
    expect(await store.getManifest(m.snapshotId)).toEqual(m);
    expect(proxy.damaged).toBe(before + 1);
  });

  test('damaged in every answer: SNAPSHOT_STORE (retryable), naming the transfer, not a refused manifest', async () => {
    const m = manifest(snapId(), [[0, 'c'.repeat(64)]]);
    await store.putManifest(m);
    for (const damage of ['corrupt', 'truncate'] as const) {
      proxy.damageNext(damage, 3);
      const e = await store.getManifest(m.snapshotId).then(() => undefined, (err: Error & { code?: string }) => err);
      expect(e?.code).toBe('SNAPSHOT_STORE');
      expect(e?.message).toContain(`manifests/${m.snapshotId}.json`);
      if (damage === 'corrupt') expect(e?.message).toContain('damaged in transfer');
    }
    // Nothing was lost: read undamaged, it is as stored.
    proxy.damageNext('corrupt', 0);
    expect(await store.getManifest(m.snapshotId)).toEqual(m);
  });

  test('cut, cut, then changed by a byte (no damaged bytes seen twice): SNAPSHOT_STORE, not the stored object refused; read again, as stored', async () => {
    const m = manifest(snapId(), [[0, 'e'.repeat(64)]], { description: 'cut twice then changed' });
    await store.putManifest(m);
    const before = proxy.damaged;
    proxy.damageEach(['truncate', 'truncate', 'corrupt']);
    const e = await store.getManifest(m.snapshotId).then(() => undefined, (err: Error & { code?: string }) => err);
    expect(proxy.damaged).toBe(before + 3);
    expect(e?.code).toBe('SNAPSHOT_STORE');
    expect(e?.message).toContain('damaged in transfer');
    expect(await store.getManifest(m.snapshotId)).toEqual(m);
    // The same for a block (its name is its SHA-256).
    const b = block(4096);
    await store.putBlock(b.hash, b.data);
    proxy.damageEach(['truncate', 'truncate', 'corrupt'], 'blocks');
    expect(await code(store.getBlock(b.hash))).toBe('SNAPSHOT_STORE');
    expect((await store.getBlock(b.hash)).equals(b.data)).toBe(true);
  });

  test('the stored object changed, and one of the reads also cut in transfer: SNAPSHOT_STORE (not judged on mixed damage); undamaged reads then refuse it', async () => {
    const m = manifest(snapId(), [[0, 'f'.repeat(64)]]);
    await store.putManifest(m);
    const file = server.objectFile(`${prefix}/manifests/${m.snapshotId}.json`);
    const bytes = readFileSync(file);
    bytes[0] = 0x5b; // '{' becomes '[': not a manifest
    writeFileSync(file, bytes);
    const before = proxy.damaged;
    // Read 1: the changed bytes; read 2: cut; read 3: the changed bytes again.
    proxy.damageEach(['none', 'truncate']);
    expect(await code(store.getManifest(m.snapshotId))).toBe('SNAPSHOT_STORE');
    expect(proxy.damaged).toBe(before + 1);
    expect(await code(store.getManifest(m.snapshotId))).toBe('SNAPSHOT_CORRUPT');
  });

  test('the stored object itself changed (the same bytes at every read): judged as stored, refused (SNAPSHOT_CORRUPT)', async () => {
    const m = manifest(snapId(), [[0, 'd'.repeat(64)]]);
    await store.putManifest(m);
    // Someone with access to the store's disk changes a byte; the object's metadata (its recorded digest) stays.
    const file = server.objectFile(`${prefix}/manifests/${m.snapshotId}.json`);
    const bytes = readFileSync(file);
    bytes[0] = 0x5b; // '{' becomes '[': not a manifest
    writeFileSync(file, bytes);
    expect(await code(store.getManifest(m.snapshotId))).toBe('SNAPSHOT_CORRUPT');
  });

  test('a block damaged in transfer is read again (its name is its SHA-256); one the store holds damaged is SNAPSHOT_CORRUPT', async () => {
    const b = block(4096);
    await store.putBlock(b.hash, b.data);
    const before = proxy.damaged;
    proxy.damageNext('corrupt', 1, 'blocks');
    expect((await store.getBlock(b.hash)).equals(b.data)).toBe(true);
    expect(proxy.damaged).toBe(before + 1);
    proxy.damageNext('corrupt', 3, 'blocks');
    expect(await code(store.getBlock(b.hash))).toBe('SNAPSHOT_STORE');
    proxy.damageNext('corrupt', 0, 'blocks');
    const file = server.objectFile(`${prefix}/blocks/${b.hash}`);
    const bytes = readFileSync(file);
    bytes[7] = bytes[7]! ^ 1;
    writeFileSync(file, bytes);
    expect(await code(store.getBlock(b.hash))).toBe('SNAPSHOT_CORRUPT');
  });
});
