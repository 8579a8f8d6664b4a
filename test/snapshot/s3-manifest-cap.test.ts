/**
 * Issue 17, finding 3, on the S3 store (s3rver in its own process): a
 * manifest object larger than MANIFEST_MAX_BYTES is refused on its
 * Content-Length, not retried, and leaves the other manifests listable for
 * DescribeSnapshots while the collector's listing refuses it. Its DeleteSnapshot (a refused
 * manifest's, docs/architecture.md §13.5) removes it without reading its body, recording its size,
 * ETag and LastModified (one HEAD), no digest.
 */
import { truncateSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { SnapshotGc } from '../../src/snapshot/gc.js';
import { MANIFEST_MAX_BYTES } from '../../src/snapshot/manifest-check.js';
import { S3SnapshotStore } from '../../src/snapshot/s3-store.js';
import { describingStore } from '../../src/snapshot/snapshot-view.js';
import { S3RVER_CREDENTIALS, startS3Server, type S3Server } from './s3-helpers.js';
import { manifest, snapId } from './store-suite.js';

let server: S3Server;
beforeAll(async () => {
  server = await startS3Server();
});
afterAll(async () => {
  await server?.stop();
});

describe('S3 store: manifest size cap', () => {
  test('an object over the cap is SNAPSHOT_CORRUPT on its size; DescribeSnapshots\' listing leaves it out', async () => {
    const s = await S3SnapshotStore.open({ bucket: server.bucket, prefix: 'cap', endpoint: server.endpoint, credentials: S3RVER_CREDENTIALS, maxAttempts: 2 });
    try {
      const good = snapId();
      const big = snapId();
      await s.putManifest(manifest(good, []));
      await s.putManifest(manifest(big, []));
      // Sparse: s3rver serves the file's size; nothing near 64 MiB is written to disk.
      truncateSync(server.objectFile(`cap/manifests/${big}.json`), MANIFEST_MAX_BYTES + 1);
      await expect(s.getManifest(big)).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT', message: expect.stringContaining(`${MANIFEST_MAX_BYTES + 1} bytes, over the`) });
      await expect(s.listManifests()).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT' });
      const reported: string[] = [];
      const listed = await describingStore(s, (id) => reported.push(id)).listManifests();
      expect(listed.map((m) => m.snapshotId)).toEqual([good]);
      expect(reported).toEqual([big]);
    } finally {
      s.close();
    }
  });

  test('its delete removes it unread: the size, ETag and LastModified recorded (a HEAD), no digest; the error that refused it names the object and its size', async () => {
    const s = await S3SnapshotStore.open({ bucket: server.bucket, prefix: 'cap-delete', endpoint: server.endpoint, credentials: S3RVER_CREDENTIALS, maxAttempts: 2 });
    try {
      const big = snapId();
      await s.putManifest(manifest(big, []));
      const size = MANIFEST_MAX_BYTES + 1;
      truncateSync(server.objectFile(`cap-delete/manifests/${big}.json`), size);
      const refused = await s.getManifest(big).then(() => undefined, (e: Error & { code?: string }) => e);
      expect(refused).toMatchObject({ code: 'SNAPSHOT_CORRUPT' });
      expect(refused!.message).toBe(`snapshot manifest s3://${server.bucket}/cap-delete/manifests/${big}.json is ${size} bytes, over the ${MANIFEST_MAX_BYTES}-byte limit`);
      const r = await new SnapshotGc(s, { graceMs: 0 }).deleteSnapshot(big, { refused: true });
      expect(r).toMatchObject({
        deleted: true,
        removedUnread: { bytes: size, etag: expect.stringMatching(/^"?[0-9a-f]{32}"?$/), lastModified: expect.stringMatching(/^\d{4}-\d\d-\d\dT/) },
      });
      expect(r.removedUnread!.sha256).toBeUndefined();
      expect(await s.getManifest(big)).toBeUndefined();
      await r.sweep;
    } finally {
      s.close();
    }
  });
});
