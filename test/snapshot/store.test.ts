/**
 * The conformance suite (test/snapshot/store-suite.ts) against both stores:
 * the directory store on a temp dir, and the S3 store on s3rver started by
 * this file in its own process. Plus what only the directory store does:
 * temp files of interrupted writes are removed when the daemon opens it.
 */
import { cpSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { S3SnapshotStore } from '../../src/snapshot/s3-store.js';
import { SnapshotGc } from '../../src/snapshot/gc.js';
import { manifestHashes } from '../../src/snapshot/manifest-check.js';
import { block, manifest, runSnapshotStoreSuite, sha256, snapId } from './store-suite.js';
import { tempDirPerTest } from '../helpers/temp-dir.js';
import { S3RVER_CREDENTIALS, startS3Server, type S3Server } from './s3-helpers.js';

runSnapshotStoreSuite('DirSnapshotStore', async () => {
  const dir = mkdtempSync('/tmp/ebsd-dirstore-');
  const store = await DirSnapshotStore.open(join(dir, 'snapshots'));
  return {
    store,
    corruptBlock: async (hash, bytes) => writeFileSync(join(dir, 'snapshots', 'blocks', hash.slice(0, 2), hash), bytes),
    writeRawManifest: async (id, text) => writeFileSync(join(dir, 'snapshots', 'manifests', `${id}.json`), text),
    close: async () => rmSync(dir, { recursive: true, force: true }),
  };
});

let server: S3Server | undefined;
let raw: S3Client | undefined;
let prefixes = 0;
beforeAll(async () => {
  server = await startS3Server();
  raw = new S3Client({ endpoint: server.endpoint, forcePathStyle: true, region: 'us-east-1', credentials: S3RVER_CREDENTIALS });
});
afterAll(async () => {
  raw?.destroy();
  await server?.stop();
});

runSnapshotStoreSuite('S3SnapshotStore on s3rver', async () => {
  const prefix = `t${prefixes++}/snapshots`;
  // Three keys per ListObjectsV2 page, so the suite's listings cross pages.
  const store = await S3SnapshotStore.open({ bucket: server!.bucket, prefix, endpoint: server!.endpoint, credentials: S3RVER_CREDENTIALS, listPageSize: 3 });
  const put = (key: string, body: Buffer | string): Promise<unknown> => raw!.send(new PutObjectCommand({ Bucket: server!.bucket, Key: `${prefix}/${key}`, Body: body }));
  return {
    store,
    corruptBlock: async (hash, bytes) => void (await put(`blocks/${hash}`, bytes)),
    writeRawManifest: async (id, text) => void (await put(`manifests/${id}.json`, text)),
    close: async () => store.close(),
  };
});

describe('DirSnapshotStore after a crash', () => {
  test('temp files of interrupted writes are removed when opened with removeTemps, and only they', async () => {
    const dir = mkdtempSync('/tmp/ebsd-dirstore-');
    try {
      const root = join(dir, 'snapshots');
      const s = await DirSnapshotStore.open(root);
      const b = block(4096);
      await s.putBlock(b.hash, b.data);
      const id = snapId();
      await s.putManifest(manifest(id, [[0, b.hash]]));
      // What atomicWrite leaves when killed between creating its temp file and the rename.
      const sub = join(root, 'blocks', b.hash.slice(0, 2));
      writeFileSync(join(sub, `.${b.hash}.0123456789ab.tmp`), 'partial');
      mkdirSync(join(root, 'blocks', 'ff'), { recursive: true });
      writeFileSync(join(root, 'blocks', 'ff', `.${'f'.repeat(64)}.aaaaaaaaaaaa.tmp`), 'partial');
      writeFileSync(join(root, 'manifests', `.${id}.json.bbbbbbbbbbbb.tmp`), '{"formatVersion":1');
      await DirSnapshotStore.open(root); // without removeTemps: left alone
      expect(readdirSync(sub)).toHaveLength(2);
      const reopened = await DirSnapshotStore.open(root, { removeTemps: true });
      expect(readdirSync(sub)).toEqual([b.hash]);
      expect(readdirSync(join(root, 'blocks', 'ff'))).toEqual([]);
      expect(readdirSync(join(root, 'manifests'))).toEqual([`${id}.json`]);
      expect((await reopened.getBlock(b.hash)).equals(b.data)).toBe(true);
      expect((await reopened.getManifest(id))!.blocks).toEqual([[0, b.hash]]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the frozen store of format version 1 (test/fixtures/snapshot-store-v1)', () => {
  test('opens, lists its manifests, reads every block, and a sweep frees only its orphan', async () => {
    const fixture = join(import.meta.dirname, '..', 'fixtures', 'snapshot-store-v1');
    const expected = JSON.parse(readFileSync(join(fixture, 'expected.json'), 'utf8')) as { manifests: string[]; referenced: string[]; orphans: string[] };
    const dir = mkdtempSync('/tmp/ebsd-dirstore-v1-');
    try {
      cpSync(join(fixture, 'snapshots'), join(dir, 'snapshots'), { recursive: true });
      const s = await DirSnapshotStore.open(join(dir, 'snapshots'), { removeTemps: true });
      const ms = await s.listManifests();
      expect(ms.map((m) => m.snapshotId)).toEqual(expected.manifests);
      expect(ms.map((m) => m.state)).toEqual(['completed', 'completed', 'error']);
      expect(ms[1]!.parentSnapshotId).toBe(ms[0]!.snapshotId);
      const named = new Set(ms.flatMap((m) => manifestHashes(m)));
      expect([...named].sort()).toEqual(expected.referenced);
      for (const h of [...expected.referenced, ...expected.orphans]) expect(sha256(await s.getBlock(h))).toBe(h);
      const r = await new SnapshotGc(s, { graceMs: 0 }).sweep();
      expect(r).toMatchObject({ manifests: 3, deleted: 1 });
      const left: string[] = [];
      for await (const h of s.listBlocks()) left.push(h);
      expect(left.sort()).toEqual(expected.referenced);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('DirSnapshotStore.touchBlock', () => {
  test('makes a two-hour-old block young again, so a collector with one hour of grace keeps it', async () => {
    const dir = mkdtempSync(join(process.env.TMPDIR ?? '/tmp', 'ebsd-touch-'));
    try {
      const store = await DirSnapshotStore.open(join(dir, 'snapshots'));
      const b = block(4096);
      await store.putBlock(b.hash, b.data);
      const old = new Date(Date.now() - 2 * 3600_000);
      utimesSync(join(dir, 'snapshots', 'blocks', b.hash.slice(0, 2), b.hash), old, old);
      expect(await store.blockModifiedMs(b.hash)).toBeLessThan(Date.now() - 3600_000);
      const before = Date.now();
      expect(await store.touchBlock(b.hash)).toBe(true);
      expect(await store.blockModifiedMs(b.hash)).toBeGreaterThanOrEqual(before - 1000);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('DirSnapshotStore: completed manifests parsed once', () => {
  const tmp = tempDirPerTest('ebsd-dirstore-');
  test('read again unchanged: the same frozen object; rewritten, edited in place, corrupted or deleted: seen at once', async () => {
    const dir = tmp();
    const root = join(dir, 'snapshots');
    const s = await DirSnapshotStore.open(root);
    const b = block(4096);
    await s.putBlock(b.hash, b.data);
    const id = snapId();
    const wrappedKey = { ciphertextBlob: Buffer.from('blob').toString('base64'), keyArn: 'arn:aws:kms:us-east-1:123456789012:key/00000000-0000-4000-8000-000000000000', encryptionContext: { 'aws:ebs:id': 'vol-0123456789abcdef0' } };
    await s.putManifest(manifest(id, [[0, b.hash]], { description: 'one', tags: [{ Key: 'k', Value: 'v' }], wrappedKey }));
    const first = (await s.getManifest(id))!;
    expect(await s.getManifest(id)).toBe(first);
    expect((await s.listManifests()).find((m) => m.snapshotId === id)).toBe(first);
    for (const part of [first, first.blocks, first.blocks[0], first.tags, first.tags[0], first.wrappedKey, first.wrappedKey!.encryptionContext]) expect(Object.isFrozen(part)).toBe(true);
    expect(() => (first.blocks as [number, string][]).push([1, b.hash])).toThrow(TypeError);
    expect(() => ((first.wrappedKey!.encryptionContext as Record<string, string>).x = 'y')).toThrow(TypeError);

    // putManifest replaces the file (rename): the new content, not the kept one.
    await s.putManifest(manifest(id, [[0, b.hash]], { description: 'two' }));
    const second = (await s.getManifest(id))!;
    expect(second.description).toBe('two');

    // Edited in place from outside, same size, at once (timestamps may not move): the text is compared.
    const path = join(root, 'manifests', `${id}.json`);
    const text = readFileSync(path, 'utf8');
    writeFileSync(path, text.replace('"description":"two"', '"description":"6wo"'));
    expect((await s.getManifest(id))!.description).toBe('6wo');
    // Corrupted in place: refused, never the kept good copy.
    writeFileSync(path, text.slice(0, 40));
    await expect(s.getManifest(id)).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT' });

    // A pending manifest is parsed each time (it changes), and not frozen.
    const p = snapId();
    await s.putManifest(manifest(p, [], { state: 'pending', progress: 0 }));
    const pend = (await s.getManifest(p))!;
    expect(await s.getManifest(p)).not.toBe(pend);
    expect(Object.isFrozen(pend)).toBe(false);

    // An error manifest is not kept either.
    const e = snapId();
    await s.putManifest(manifest(e, [], { state: 'error', progress: 0, stateMessage: 'failed' }));
    expect(await s.getManifest(e)).not.toBe(await s.getManifest(e));

    await s.putManifest(manifest(id, [[0, b.hash]], { description: 'three' }));
    const third = (await s.getManifest(id))!;
    expect(third.description).toBe('three');
    await s.deleteManifest(id);
    expect(await s.getManifest(id)).toBeUndefined();
    // Put again with the very same text: a new object, the kept one went with the delete.
    await s.putManifest(manifest(id, [[0, b.hash]], { description: 'three' }));
    expect(await s.getManifest(id)).not.toBe(third);
  });
});

describe('DirSnapshotStore: the kept manifests are bounded in bytes', () => {
  const tmp = tempDirPerTest('ebsd-dirstore-');
  test('the least recently read goes first; one over a quarter of the bound is never kept', async () => {
    const dir = tmp();
    const root = join(dir, 'snapshots');
    const b = block(4096);
    const ids = Array.from({ length: 5 }, () => snapId());
    const one = JSON.stringify(manifest(ids[0]!, [[0, b.hash]])).length + 1;
    // Room for four (each counted 3 × its text), a quarter of it for one.
    const s = await DirSnapshotStore.open(root, { keptManifestBytes: 4 * 3 * one + 10 });
    await s.putBlock(b.hash, b.data);
    for (const id of ids) await s.putManifest(manifest(id, [[0, b.hash]]));
    const got = [];
    for (const id of ids) got.push((await s.getManifest(id))!);
    expect(await s.getManifest(ids[4]!)).toBe(got[4]);
    expect(await s.getManifest(ids[1]!)).toBe(got[1]);
    expect(await s.getManifest(ids[0]!), 'the first read, pushed out by the fifth').not.toBe(got[0]);
    const big = snapId();
    await s.putManifest(manifest(big, Array.from({ length: 40 }, (_, i) => [i, b.hash] as [number, string]), { volumeSize: 1 }));
    expect(await s.getManifest(big)).not.toBe(await s.getManifest(big));
  });
});
