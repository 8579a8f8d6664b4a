/**
 * SIGKILL of a daemon whose snapshot store is S3 (s3rver), at each of the
 * snapshot fault points (src/util/fault-point.ts) of create, copy and delete:
 * after the restart every snapshot is `completed` or `error` (none left
 * `pending`), no manifest names a block the store lacks, a sweep frees what
 * the killed operations left unnamed, and the snapshots that completed
 * restore to their data. And S3 answering 500 (s3-server.mjs `fail-puts`) to
 * a create's block PUTs or to its pending manifest: the snapshot ends
 * `error`, or CreateSnapshot is refused, naming S3's error; nothing shows
 * completed, the volume reads as before.
 */
import { closeSync, openSync, readdirSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { SnapshotGc } from '../../src/snapshot/gc.js';
import { manifestHashes } from '../../src/snapshot/manifest-check.js';
import { S3SnapshotStore } from '../../src/snapshot/s3-store.js';
import { S3RVER_CREDENTIALS, startS3Server, useTestDeleteWindows, type S3Server } from './s3-helpers.js';
import { settled } from './helpers.js';

const MiB = 1 << 20;
const PREFIX = 'crash';

describe('SIGKILL at each snapshot fault point, S3 store', () => {
  const env = new Env('s3-crash');
  /** The volume's first `n` bytes as its block file serves them: attached, read, closed, detached. */
  const readThroughFile = async (vol: string, n: number): Promise<Buffer> => {
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    const fd = openSync(env.file(vol), 'r');
    const got = Buffer.alloc(n);
    try {
      readSync(fd, got, 0, n, 0);
    } finally {
      closeSync(fd);
    }
    await env.untilClosed(vol);
    await env.api('ebsd.DetachVolume', { VolumeId: vol, Force: false });
    return got;
  };
  let server: S3Server;
  let store: S3SnapshotStore;
  const saved = { ...process.env };
  const data = randomBytes(2 * MiB);
  let vol = '';
  let region = '';
  const args = (): string[] => ['--snapshot-store', `s3://${server.bucket}/${PREFIX}`];

  /**
   * Restarts the daemon with `fault` armed, runs `op` (whose call the kill may cut off before it answers), waits
   * for the fault point's SIGKILL, restarts it clean. Returns the manifests new to the store since before `op`.
   */
  async function killedAt(fault: string, op: () => Promise<unknown>): Promise<string[]> {
    const before = new Set(await store.listManifestIds());
    await env.stop();
    process.env.EBSD_TEST_FAULT = fault;
    try {
      await env.start(args());
    } finally {
      delete process.env.EBSD_TEST_FAULT;
    }
    const pid = env.pid!;
    await op().catch(() => {});
    for (let i = 0; ; i++) {
      try {
        process.kill(pid, 0);
      } catch {
        break;
      }
      if (i > 1500) throw new Error(`the daemon did not die at ${fault}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    await env.kill9();
    await env.start(args());
    return (await store.listManifestIds()).filter((x) => !before.has(x));
  }

  /** No manifest names a missing block; with `swept`, no block is left that no manifest names. */
  async function expectConsistent(swept: boolean): Promise<void> {
    const named = new Set<string>();
    for (const m of await store.listManifests()) {
      expect(m.state, m.snapshotId).not.toBe('pending');
      for (const h of manifestHashes(m)) named.add(h);
    }
    const present = new Set<string>();
    for await (const h of store.listBlocks()) present.add(h);
    expect([...named].filter((h) => !present.has(h))).toEqual([]);
    if (swept) expect([...present].filter((h) => !named.has(h))).toEqual([]);
  }

  beforeAll(async () => {
    ensureBuilt();
    server = await startS3Server();
    await useTestDeleteWindows(server, PREFIX);
    for (const k of Object.keys(process.env)) if (k.startsWith('AWS_')) delete process.env[k];
    Object.assign(process.env, server.env);
    store = await S3SnapshotStore.open({ bucket: server.bucket, prefix: PREFIX, endpoint: server.endpoint, credentials: S3RVER_CREDENTIALS });
    await env.start(args());
    region = (await env.api('ebsd.Status')).Daemon.Region as string;
    vol = (await env.api('ebsd.CreateVolume', { Size: '4MiB' })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    const fd = openSync(env.file(vol), 'r+');
    try {
      writeSync(fd, data, 0, data.length, 0);
    } finally {
      closeSync(fd);
    }
    await env.untilClosed(vol);
    await env.api('ebsd.DetachVolume', { VolumeId: vol, Force: false });
  }, 120_000);

  afterAll(async () => {
    await env.cleanup();
    store?.close();
    for (const k of Object.keys(process.env)) if (k.startsWith('AWS_')) delete process.env[k];
    Object.assign(process.env, Object.fromEntries(Object.entries(saved).filter(([k]) => k.startsWith('AWS_'))));
    await server?.stop();
  }, 60_000);

  it('create killed after its pending manifest, and after its blocks: both error after the restart, naming no blocks', async () => {
    for (const fault of ['snapshot.after-pending', 'snapshot.after-blocks']) {
      // after-pending kills the daemon before CreateSnapshot answers: the id is the manifest's new to the store.
      const fresh = await killedAt(fault, () => env.api('ebsd.CreateSnapshot', { VolumeId: vol }));
      expect(fresh, fault).toHaveLength(1);
      const id = fresh[0]!;
      const s = await settled(env, id);
      expect(s.State, fault).toBe('error');
      expect(s.StateMessage, fault).toMatch(/stopped|restart|shut down/i);
      expect((await store.getManifest(id))!.blocks).toEqual([]);
      await expectConsistent(false);
    }
  }, 120_000);

  it('copy killed after its pending manifest: error after the restart; the source intact', async () => {
    const src = await settled(env, (await env.api('ebsd.CreateSnapshot', { VolumeId: vol })).SnapshotId);
    expect(src.State).toBe('completed');
    const fresh = await killedAt('copy.after-pending', () => env.api('ebsd.CopySnapshot', { SourceSnapshotId: src.SnapshotId, SourceRegion: region }));
    expect(fresh).toHaveLength(1);
    const id = fresh[0]!;
    const s = await settled(env, id);
    expect(s.State).toBe('error');
    expect((await store.getManifest(id))!.blocks).toEqual([]);
    expect((await store.getManifest(src.SnapshotId))!.state).toBe('completed');
    await expectConsistent(false);
  }, 120_000);

  it('delete killed between its manifest and its blocks: the snapshot is gone, the others whole, a sweep frees the orphans, a restore of what is left reads the data', async () => {
    const keep = await settled(env, (await env.api('ebsd.CreateSnapshot', { VolumeId: vol })).SnapshotId);
    const gone = await settled(env, (await env.api('ebsd.CreateSnapshot', { VolumeId: vol })).SnapshotId);
    await killedAt('gc.after-manifest-delete', () => env.api('ebsd.DeleteSnapshot', { SnapshotId: gone.SnapshotId }));
    expect((await env.api('ebsd.DescribeSnapshots', { SnapshotIds: [] })).Snapshots.map((x: { SnapshotId: string }) => x.SnapshotId)).not.toContain(gone.SnapshotId);
    await expectConsistent(false);
    // Another host's collector (no grace): everything the killed operations left unnamed goes.
    await new SnapshotGc(store, { graceMs: 0 }).sweep();
    await expectConsistent(true);
    const r = await env.cli(['volume', 'create', '--snapshot-id', keep.SnapshotId, '--wait', '--output', 'json']);
    expect(r.code, r.stderr).toBe(0);
    const restored = r.json();
    expect(restored.State).toBe('available');
    expect((await readThroughFile(restored.VolumeId, data.length)).equals(data)).toBe(true);
  }, 120_000);

  it('S3 answers 500 to every block PUT mid-create: the snapshot ends error naming S3\'s error, names no block, the volume reads as before; once S3 answers, a snapshot completes', async () => {
    await server.failPuts(`${PREFIX}/blocks/`);
    let s: any;
    try {
      // Data the store has none of yet, so the create must put blocks.
      await env.api('ebsd.AttachVolume', { VolumeId: vol });
      const fd = openSync(env.file(vol), 'r+');
      try {
        writeSync(fd, randomBytes(MiB), 0, MiB, 2 * MiB);
      } finally {
        closeSync(fd);
      }
      await env.untilClosed(vol);
      await env.api('ebsd.DetachVolume', { VolumeId: vol, Force: false });
      s = await settled(env, (await env.api('ebsd.CreateSnapshot', { VolumeId: vol })).SnapshotId);
    } finally {
      await server.failPuts(undefined);
    }
    expect(s.State).toBe('error');
    expect(s.StateMessage).toMatch(/InternalError/);
    expect((await store.getManifest(s.SnapshotId))!).toMatchObject({ state: 'error', blocks: [] });
    await expectConsistent(false);
    expect((await readThroughFile(vol, data.length)).equals(data)).toBe(true);
    const again = await settled(env, (await env.api('ebsd.CreateSnapshot', { VolumeId: vol })).SnapshotId);
    expect(again.State).toBe('completed');
    await expectConsistent(false);
  }, 120_000);

  it('S3 answers 500 to the pending manifest\'s PUT: CreateSnapshot is refused naming S3\'s error; once S3 answers, the marker is settled, no snapshot shows, and the next create completes', async () => {
    await server.failPuts(`${PREFIX}/manifests/`);
    const before = new Set(await store.listManifestIds());
    let refused: unknown;
    try {
      refused = await env.api('ebsd.CreateSnapshot', { VolumeId: vol }).then(() => undefined, (e: unknown) => e);
    } finally {
      await server.failPuts(undefined);
    }
    expect((refused as Error | undefined)?.message).toMatch(/PutObject .*manifests\/snap-[0-9a-f]{17}\.json failed: InternalError \(HTTP 500\)/);
    // The marker is retried in the background (first after 5 s): polled until it is gone.
    const markers = join(env.state, 'snapshots-local', 'pending');
    for (let i = 0; readdirSync(markers).some((n) => n.startsWith('snap-')); i++) {
      if (i > 1500) throw new Error(`markers left: ${readdirSync(markers).join(', ')}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    expect((await store.listManifestIds()).filter((x) => !before.has(x))).toEqual([]);
    expect((await env.api('ebsd.DescribeSnapshots', {})).Snapshots.filter((x: { SnapshotId: string }) => !before.has(x.SnapshotId))).toEqual([]);
    // The refused create holds nothing of the volume: the next one completes.
    expect((await settled(env, (await env.api('ebsd.CreateSnapshot', { VolumeId: vol })).SnapshotId)).State).toBe('completed');
  }, 120_000);
});
