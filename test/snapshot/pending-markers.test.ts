/**
 * The local marker of a snapshot this daemon writes (src/snapshot/pending-markers.ts,
 * docs/architecture.md §12.4) goes only once a terminal manifest is durable:
 * a create or copy whose `completed` and then `error` writes both fail
 * keeps its marker, so the snapshot is not left `pending` for good: the next
 * start marks it `error`.
 *
 * In process: the directory store (behind a wrapper that fails chosen
 * writes), the real manager, copier and collector.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { selectXtsEngine } from '../../src/crypto/xts-engine.js';
import { SnapshotCopier, type CopyAuditEvent } from '../../src/snapshot/copy.js';
import { SnapshotError } from '../../src/snapshot/errors.js';
import { SnapshotGc } from '../../src/snapshot/gc.js';
import { SnapshotManager } from '../../src/snapshot/snapshot-manager.js';
import type { SnapshotManifest, SnapshotStore } from '../../src/snapshot/types.js';
import { ACCOUNT, REGION, openInProcessHost, storeWith, type InProcessHost } from './in-process-host.js';

describe('pending markers', () => {
  let h: InProcessHost;
  let gc: SnapshotGc;
  let n = 0;
  /** A fresh local directory per manager or copier (`<dir>/local-N`). */
  const localDir = (): string => join(h.dir, `local-${++n}`);

  beforeAll(async () => {
    h = await openInProcessHost('ebsd-pending-markers-');
    gc = new SnapshotGc(h.store, { graceMs: 0 });
  }, 60_000);

  afterAll(async () => {
    await h?.close();
  });

  /**
   * The directory store, except that while `down` a manifest write naming a
   * terminal state (`completed`, `error`) fails as a full disk or an S3
   * outage would; `refused` resolves at the first failed `error` write.
   */
  function terminalWritesFail(): { store: SnapshotStore; up: () => void; refused: Promise<SnapshotManifest> } {
    let down = true;
    let refuse!: (m: SnapshotManifest) => void;
    const refused = new Promise<SnapshotManifest>((r) => (refuse = r));
    const store = storeWith(h.store, {
      putManifest: async (m) => {
        if (down && m.state !== 'pending') {
          if (m.state === 'error') refuse(m);
          throw new SnapshotError('SNAPSHOT_STORE', `putManifest ${m.snapshotId}: ENOSPC (injected)`);
        }
        return h.store.putManifest(m);
      },
    });
    return { store, up: () => (down = false), refused };
  }

  const copierOn = (store: SnapshotStore, dir: string, more: { onAudit?: (ev: CopyAuditEvent) => void } = {}): Promise<SnapshotCopier> => SnapshotCopier.open({
    store, keyService: h.keyService, xtsEngine: selectXtsEngine('auto'), region: REGION, accountId: ACCOUNT,
    localDir: dir, pin: (x) => gc.pin(x), ...more,
  });

  it('CreateSnapshot whose completed and error writes both fail keeps its marker; the next start marks it error', async () => {
    const vol = await h.newVolume();
    const local = localDir();
    const f = terminalWritesFail();
    const snaps = await SnapshotManager.open({ store: f.store, localDir: local, volumes: h.mgr, accountId: ACCOUNT, gc });
    const { SnapshotId } = await snaps.createSnapshot({ VolumeId: vol }, h.root);
    await f.refused;
    await snaps.close();
    const marker = join(local, 'pending', SnapshotId);
    expect(existsSync(marker), 'marker kept').toBe(true);
    expect((await h.store.getManifest(SnapshotId))!.state).toBe('pending');
    const again = await SnapshotManager.open({ store: h.store, localDir: local, volumes: h.mgr, accountId: ACCOUNT, gc });
    try {
      const m = (await h.store.getManifest(SnapshotId))!;
      expect(m).toMatchObject({ state: 'error', blocks: [] });
      expect(m.stateMessage).toMatch(/stopped .*while the snapshot was being created/);
      expect(existsSync(marker)).toBe(false);
      // No longer pending: DeleteSnapshot takes it.
      await again.deleteSnapshot(SnapshotId, h.root);
    } finally {
      await again.close();
    }
  });

  it('CopySnapshot whose completed and error writes both fail keeps its marker; the next start marks it error', async () => {
    const src = await h.newSnapshot();
    const local = localDir();
    const f = terminalWritesFail();
    const c = await copierOn(f.store, local);
    const { SnapshotId } = await c.copySnapshot({ SourceSnapshotId: src.snapshotId, SourceRegion: REGION }, h.root);
    await c.settled();
    await f.refused;
    expect(existsSync(join(local, SnapshotId)), 'marker kept').toBe(true);
    expect((await h.store.getManifest(SnapshotId))!.state).toBe('pending');
    const events: CopyAuditEvent[] = [];
    await copierOn(h.store, local, { onAudit: (ev) => events.push(ev) });
    const m = (await h.store.getManifest(SnapshotId))!;
    expect(m).toMatchObject({ state: 'error', blocks: [] });
    expect(m.stateMessage).toMatch(/stopped .*while the snapshot was being copied/);
    expect(existsSync(join(local, SnapshotId))).toBe(false);
    expect(events).toEqual([expect.objectContaining({ eventName: 'SnapshotFailed', snapshotId: SnapshotId })]);
  });
});
