/**
 * The local marker of a snapshot this daemon writes (src/snapshot/pending-markers.ts,
 * docs/architecture.md §12.4) goes only once a terminal manifest is durable,
 * and a store that does not answer never stops the daemon from starting:
 *
 * - a create or copy whose `completed` and then `error` writes both fail
 *   keeps its marker, so the snapshot is not left `pending` for good: it is
 *   marked `error` once the store answers (in the background) or at the next
 *   start;
 * - SnapshotManager.open and SnapshotCopier.open with a leftover marker and a
 *   store that fails (S3 on a closed loopback port, a store whose manifest
 *   reads fail) resolve, warn naming the snapshot, keep the marker and settle
 *   it in the background with backoff once the store answers.
 *
 * In process: the directory store (behind a wrapper that fails chosen
 * writes), the real manager, copier and collector, a manual clock.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { selectXtsEngine } from '../../src/crypto/xts-engine.js';
import { SnapshotCopier, type CopyAuditEvent } from '../../src/snapshot/copy.js';
import { SnapshotError } from '../../src/snapshot/errors.js';
import { SnapshotGc } from '../../src/snapshot/gc.js';
import { S3SnapshotStore } from '../../src/snapshot/s3-store.js';
import { SnapshotManager, type SnapshotAuditEvent } from '../../src/snapshot/snapshot-manager.js';
import type { SnapshotManifest, SnapshotStore } from '../../src/snapshot/types.js';
import { ManualClock } from '../volume/helpers/manual-clock.js';
import { unusedPort } from '../helpers/ports.js';
import { makeSnapshot } from './make-snapshot.js';
import { ACCOUNT, REGION, openInProcessHost, storeWith, type InProcessHost } from './in-process-host.js';

const RETRY_MS = 5_000;

/** Polls `pred` (each turn gives the event loop a few milliseconds) until it holds; fails naming `what` after 10 s. */
async function until(pred: () => boolean | Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 2000; i++) {
    if (await pred()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`timed out waiting for ${what}`);
}

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

  const copierOn = (store: SnapshotStore, dir: string, more: { clock?: ManualClock; onAudit?: (ev: CopyAuditEvent) => void; logger?: pino.Logger } = {}): Promise<SnapshotCopier> => SnapshotCopier.open({
    store, keyService: h.keyService, xtsEngine: selectXtsEngine('auto'), region: REGION, accountId: ACCOUNT,
    localDir: dir, pin: (x) => gc.pin(x), markerRetryMs: RETRY_MS, ...more,
  });

  it('CreateSnapshot whose completed and error writes both fail keeps its marker; the next start marks it error', async () => {
    const vol = await h.newVolume();
    const local = localDir();
    const f = terminalWritesFail();
    const snaps = await SnapshotManager.open({ store: f.store, localDir: local, volumes: h.mgr, accountId: ACCOUNT, gc, clock: new ManualClock() });
    const { SnapshotId } = await snaps.createSnapshot({ VolumeId: vol }, h.root);
    await f.refused;
    await snaps.close();
    const marker = join(local, 'pending', SnapshotId);
    expect(existsSync(marker), 'marker kept').toBe(true);
    expect((await h.store.getManifest(SnapshotId))!.state).toBe('pending');
    const events: SnapshotAuditEvent[] = [];
    const again = await SnapshotManager.open({ store: h.store, localDir: local, volumes: h.mgr, accountId: ACCOUNT, gc, onAudit: (ev) => void events.push(ev) });
    try {
      const m = (await h.store.getManifest(SnapshotId))!;
      expect(m).toMatchObject({ state: 'error', blocks: [] });
      expect(m.stateMessage).toMatch(/stopped .*while the snapshot was being created/);
      expect(existsSync(marker)).toBe(false);
      // As the copier's recovery does: the audit log says it failed (docs/architecture.md §5.8).
      expect(events).toEqual([{ eventName: 'SnapshotFailed', snapshotId: SnapshotId, volumeId: vol, details: { reason: 'the daemon restarted during the create' } }]);
      // No longer pending: DeleteSnapshot takes it.
      await again.deleteSnapshot(SnapshotId, h.root);
    } finally {
      await again.close();
    }
  });

  it('CreateSnapshot: without a restart, the kept marker is settled in the background once the store answers', async () => {
    const vol = await h.newVolume();
    const local = localDir();
    const clock = new ManualClock();
    const f = terminalWritesFail();
    const snaps = await SnapshotManager.open({ store: f.store, localDir: local, volumes: h.mgr, accountId: ACCOUNT, gc, clock, markerRetryMs: RETRY_MS });
    try {
      const { SnapshotId } = await snaps.createSnapshot({ VolumeId: vol }, h.root);
      await until(() => snaps.unsettledMarkers.includes(SnapshotId), 'the failed create to hand its marker to the retries');
      await expect(snaps.deleteSnapshot(SnapshotId, h.root)).rejects.toMatchObject({ awsName: 'IncorrectState' });
      f.up();
      await clock.advance(RETRY_MS);
      expect(await h.store.getManifest(SnapshotId)).toMatchObject({ state: 'error', blocks: [] });
      expect(existsSync(join(local, 'pending', SnapshotId))).toBe(false);
      expect(snaps.unsettledMarkers).toEqual([]);
      await snaps.deleteSnapshot(SnapshotId, h.root);
    } finally {
      await snaps.close();
    }
  });

  it('CopySnapshot whose completed and error writes both fail keeps its marker; the next start marks it error', async () => {
    const src = await h.newSnapshot();
    const local = localDir();
    const f = terminalWritesFail();
    const c = await copierOn(f.store, local, { clock: new ManualClock() });
    const { SnapshotId } = await c.copySnapshot({ SourceSnapshotId: src.snapshotId, SourceRegion: REGION }, h.root);
    await c.settled();
    await f.refused;
    await c.close();
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

  it('start with a leftover marker and S3 on a closed loopback port: the manager and the copier open, warn naming the snapshot, and keep the marker', async () => {
    const pending = await makeSnapshot(h.dir, await h.newVolume(), { state: 'pending' });
    const lines: string[] = [];
    const logger = pino({ level: 'info' }, { write: (s: string) => void lines.push(s) });
    const port = await unusedPort();
    const s3 = await S3SnapshotStore.open({ bucket: 'ebsd-snapshots', prefix: 'down', endpoint: `http://127.0.0.1:${port}`, region: REGION, credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' }, maxAttempts: 1 });
    try {
      const local = localDir();
      for (const d of ['pending', 'copies']) {
        mkdirSync(join(local, d), { recursive: true });
        writeFileSync(join(local, d, pending.snapshotId), '');
      }
      const s3gc = new SnapshotGc(s3);
      const snaps = await SnapshotManager.open({ store: s3, localDir: local, volumes: h.mgr, accountId: ACCOUNT, gc: s3gc, logger, clock: new ManualClock() });
      const c = await copierOn(s3, join(local, 'copies'), { logger, clock: new ManualClock() });
      try {
        expect(snaps.unsettledMarkers).toEqual([pending.snapshotId]);
        expect(c.unsettledMarkers).toEqual([pending.snapshotId]);
        expect(existsSync(join(local, 'pending', pending.snapshotId))).toBe(true);
        expect(existsSync(join(local, 'copies', pending.snapshotId))).toBe(true);
        const warned = lines.map((l) => JSON.parse(l) as { level: number; snapshotId?: string; msg: string; component?: string }).filter((l) => l.level === 40 && l.snapshotId === pending.snapshotId);
        expect(warned.map((l) => l.component).sort()).toEqual(['snapshot', 'snapshot-copy']);
        for (const l of warned) expect(l.msg).toContain(`snapshot ${pending.snapshotId}`);
      } finally {
        await snaps.close();
        await c.close();
      }
    } finally {
      s3.close();
      await h.store.putManifest({ ...pending, state: 'error', stateMessage: 'test cleanup' });
    }
  });

  it('start while manifest reads fail: open resolves; the marker is retried with backoff and settled once the store answers', async () => {
    const pending = await makeSnapshot(h.dir, await h.newVolume(), { state: 'pending' });
    let down = true;
    let reads = 0;
    const store = storeWith(h.store, {
      getManifest: async (id) => {
        if (down && id === pending.snapshotId) {
          reads++;
          throw new SnapshotError('SNAPSHOT_STORE', `getManifest ${id}: ECONNREFUSED (injected)`);
        }
        return h.store.getManifest(id);
      },
    });
    const local = localDir();
    mkdirSync(join(local, 'copies'), { recursive: true });
    writeFileSync(join(local, 'copies', pending.snapshotId), '');
    const clock = new ManualClock();
    const events: CopyAuditEvent[] = [];
    const c = await copierOn(store, join(local, 'copies'), { clock, onAudit: (ev) => events.push(ev) });
    try {
      expect(reads).toBe(1);
      expect(c.unsettledMarkers).toEqual([pending.snapshotId]);
      // Tried again after 5 s, then 10 s later (backoff), while the store still fails.
      await clock.advance(RETRY_MS);
      expect(reads).toBe(2);
      await clock.advance(RETRY_MS);
      expect(reads).toBe(2);
      await clock.advance(RETRY_MS);
      expect(reads).toBe(3);
      expect((await h.store.getManifest(pending.snapshotId))!.state).toBe('pending');
      down = false;
      await clock.advance(4 * RETRY_MS);
      expect(await h.store.getManifest(pending.snapshotId)).toMatchObject({ state: 'error', blocks: [] });
      expect(existsSync(join(local, 'copies', pending.snapshotId))).toBe(false);
      expect(c.unsettledMarkers).toEqual([]);
      expect(events).toEqual([expect.objectContaining({ eventName: 'SnapshotFailed', snapshotId: pending.snapshotId })]);
      expect(clock.pending, 'no retry left armed').toBe(0);
    } finally {
      await c.close();
    }
  });
});
