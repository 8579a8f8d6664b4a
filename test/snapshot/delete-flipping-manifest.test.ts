/**
 * DeleteSnapshot of a manifest that DescribeSnapshots shows refused (SNAPSHOT_CORRUPT) but that the
 * collector's own read finds valid (rewritten meanwhile) reads it again and judges it as it now reads
 * (SnapshotManager.deleteSnapshot): a few times at most (DELETE_REREADS_MAX), then SNAPSHOT_STORE,
 * nothing deleted. Before, it read again for as long as the content kept changing, holding the
 * snapshot's delete lock all the while. The store is a real directory store; its manifest file is
 * rewritten on disk, alternately unreadable and valid, before each read of it, as a writer racing
 * the reads would.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { SnapshotGc, type CollectableStore } from '../../src/snapshot/gc.js';
import { DELETE_REREADS_MAX, SnapshotManager } from '../../src/snapshot/snapshot-manager.js';
import type { Caller } from '../../src/kms/types.js';
import { tempDir, type TempDir } from '../helpers/temp-dir.js';
import { block, manifest, snapId } from './store-suite.js';

const ROOT: Caller = { type: 'Root', arn: 'arn:aws:iam::111122223333:root', accountId: '111122223333' } as Caller;
/** Rewrites past this many reads stop (the old code's loop then ends): the test never spins for ever. */
const FLIPS_BOUND = 40;

describe('DeleteSnapshot of a manifest whose content keeps changing', () => {
  let t: TempDir | undefined;
  afterEach(() => t?.cleanup());

  test(`reads it again at most ${DELETE_REREADS_MAX} times, then fails SNAPSHOT_STORE with the manifest left in place`, async () => {
    t = tempDir('ebsd-delete-flip-');
    const raw = await DirSnapshotStore.open(join(t.dir, 'snapshots'));
    const b = block(4096);
    await raw.putBlock(b.hash, b.data);
    const id = snapId();
    await raw.putManifest(manifest(id, [[0, b.hash]]));
    const file = join(t.dir, 'snapshots', 'manifests', `${id}.json`);
    const valid = readFileSync(file, 'utf8');
    let reads = 0;
    // Before each read of it: unreadable, valid, unreadable, ... (the delete's first read finds it refused).
    const store: CollectableStore = Object.assign(Object.create(raw) as CollectableStore, {
      getManifest: async (sid: string) => {
        if (sid === id && reads < FLIPS_BOUND) writeFileSync(file, reads++ % 2 === 0 ? '{"snapshotId": not json' : valid);
        return raw.getManifest(sid);
      },
    });
    const gc = new SnapshotGc(store, { graceMs: 0 });
    const snaps = await SnapshotManager.open({
      store, gc, localDir: join(t.dir, 'local'), accountId: '111122223333',
      volumes: { withVolumeForSnapshot: async () => { throw new Error('no volume is snapshotted here'); } },
    });
    try {
      const e = await snaps.deleteSnapshot(id, ROOT).then(() => undefined, (x: unknown) => x);
      expect(e).toMatchObject({ code: 'SNAPSHOT_STORE' });
      expect((e as Error).message).toMatch(new RegExp(`DeleteSnapshot of ${id}: its manifest was refused, then read back valid, ${DELETE_REREADS_MAX + 1} times in a row`));
      // Each try is two reads (the delete's, refused; the collector's, valid): bounded, well before the rewrites stop.
      expect(reads).toBe(2 * (DELETE_REREADS_MAX + 1));
      // Nothing was deleted: the manifest (as last written, valid) and its block are there.
      expect(await raw.getManifest(id)).toMatchObject({ snapshotId: id });
      expect(await raw.hasBlock(b.hash)).toBe(true);
      // Once it stays as it is, the delete goes through.
      reads = FLIPS_BOUND;
      await snaps.deleteSnapshot(id, ROOT);
      expect(await raw.getManifest(id)).toBeUndefined();
    } finally {
      await snaps.close();
    }
  }, 30_000);
});
