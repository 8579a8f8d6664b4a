import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, test } from 'vitest';
import { SnapshotCopier } from '../../src/snapshot/copy.js';
import { openSnapshotHarness, overrideStore, type SnapshotHarness } from './in-process.js';
import { testEngine } from '../volume/helpers/engine.js';

/**
 * A same-key copy on a shared store waits (the store's recheckMs) before it
 * asks again for the source's objects. A shutdown during that wait ends it at
 * once and the copy `error`, as a create's does, never `completed` written
 * during the shutdown (src/snapshot/copy.ts, SnapshotCopier.close()).
 */

const MiB = 1024 * 1024;

let h: SnapshotHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('SnapshotCopier.close() during a same-key copy\'s wait on a shared store', () => {
  test('the wait ends at once and the copy ends error, naming the shutdown', async () => {
    h = await openSnapshotHarness();
    const hh = h;
    const vol = await hh.writtenVolume(randomBytes(MiB));
    const s1 = await hh.snapshot(vol);
    expect(s1.state).toBe('completed');
    // Far longer than the test's timeout: only close() can end the wait.
    const copier = await SnapshotCopier.open({
      store: overrideStore(hh.store, { singleWriter: undefined }), keyService: hh.kms.keyService, xtsEngine: await testEngine(), region: 'us-east-1', accountId: '111122223333',
      localDir: `${hh.t.dir}/copies-shutdown`, pin: (hs) => hh.gc.pin(hs), allowUnencrypted: true, foundRecheckMs: 10 * 60_000,
    });
    const { SnapshotId: copy } = await copier.copySnapshot({ SourceSnapshotId: s1.snapshotId, SourceRegion: 'us-east-1' }, hh.caller);
    await copier.close();
    await copier.settled();
    const m = (await hh.store.getManifest(copy))!;
    expect(m.state).toBe('error');
    expect(m.stateMessage).toContain('the daemon shut down during the copy');
    expect(m.blocks).toEqual([]);
  }, 30_000);
});
