/**
 * DeleteSnapshot whose manifest reads valid to the manager and is refused by the collector's own read
 * just after (rewritten between the two reads): the collector removes it unread (src/snapshot/gc.ts),
 * and the audit event is the one of any refused manifest's delete (docs/architecture.md §13.5):
 * `manifestRefused: true`, the SHA-256 and size of the bytes removed, and no volume id, since what the
 * manager read no longer describes what was removed. The real manager, collector, directory store and
 * KMS core (in-process-host.ts).
 */
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { SnapshotGc } from '../../src/snapshot/gc.js';
import { SnapshotManager, type SnapshotAuditEvent } from '../../src/snapshot/snapshot-manager.js';
import { ACCOUNT, openInProcessHost, storeWith, type InProcessHost } from './in-process-host.js';

/** What the manifest is overwritten with between the two reads: not JSON, so refused. */
const NOT_JSON = '{"snapshotId": not json';

let h: InProcessHost;
beforeAll(async () => {
  h = await openInProcessHost('ebsd-delete-refused-late-');
}, 60_000);
afterAll(async () => {
  await h?.close();
});

test('a manifest refused only by the collector\'s read is removed unread and audited as refused, without a volume id', async () => {
  const src = await h.newSnapshot();
  const file = join(h.dir, 'snapshots', 'manifests', `${src.snapshotId}.json`);
  // The collector's store: its first read of the snapshot's manifest comes after someone rewrote it.
  let rewritten = false;
  const gcStore = storeWith(h.store, {
    getManifest: async (id) => {
      if (id === src.snapshotId && !rewritten) {
        rewritten = true;
        writeFileSync(file, NOT_JSON);
      }
      return h.store.getManifest(id);
    },
  });
  const gc = new SnapshotGc(gcStore, { graceMs: 0 });
  const events: SnapshotAuditEvent[] = [];
  const snaps = await SnapshotManager.open({ store: h.store, localDir: join(h.dir, 'snapshots-local'), volumes: h.mgr, accountId: ACCOUNT, gc, onAudit: (e) => void events.push(e) });
  try {
    await snaps.deleteSnapshot(src.snapshotId, h.root);
    expect(rewritten).toBe(true);
    expect(await h.store.getManifest(src.snapshotId)).toBeUndefined();
    const deleted = events.filter((e) => e.eventName === 'DeleteSnapshot');
    expect(deleted).toHaveLength(1);
    expect(deleted[0]!.volumeId).toBeUndefined();
    expect(deleted[0]!.details).toEqual({
      manifestRefused: true,
      manifestSha256: createHash('sha256').update(NOT_JSON).digest('hex'),
      manifestBytes: Buffer.byteLength(NOT_JSON),
      manifestLastModified: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
    });
    await gc.idle(); // the store's sweep, after the answer
  } finally {
    await snaps.close();
  }
}, 60_000);
