import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, readSync, readdirSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { api, detachWhenClosed, settled } from './helpers.js';

/**
 * Issue 17 edges around a snapshot's life, against the real daemon (child
 * process) and its directory store:
 * - a deleted volume's changed-block tracking file goes with it, and one
 *   whose volume no longer exists is removed when the daemon starts;
 * - `snapshot create --wait` and `volume create --snapshot-id --wait` exit
 *   non-zero naming the `error` state when the snapshot or restore fails
 *   (store errors the test causes and undoes: the blocks directory replaced
 *   by a file, every put failing with ENOTDIR; one byte of a stored block
 *   flipped, so its hash no longer matches).
 */
const MiB = 1024 * 1024;

describe('tracking files of deleted volumes; --wait on a failed snapshot or restore', () => {
  const env = new Env('ebs-edges');
  const tracking = (): string => join(env.state, 'snapshots-local', 'tracking');
  const blocksDir = (): string => join(env.state, 'snapshots', 'blocks');

  /** A volume with 2 MiB of random data written through its FUSE file, detached again. */
  const volumeWithData = async (): Promise<string> => {
    const call = api(env);
    const vol = (await call('CreateVolume', { Size: 8 * MiB })).VolumeId as string;
    await call('AttachVolume', { VolumeId: vol });
    const fd = openSync(env.file(vol), 'r+');
    try {
      writeSync(fd, randomBytes(2 * MiB), 0, 2 * MiB, 0);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    await detachWhenClosed(env, vol);
    return vol;
  };

  /** Run `fn` with the store's blocks directory replaced by a file; restored after, also on failure. */
  const withBrokenStore = async <T>(fn: () => Promise<T>): Promise<T> => {
    renameSync(blocksDir(), `${blocksDir()}.aside`);
    writeFileSync(blocksDir(), '');
    try {
      return await fn();
    } finally {
      rmSync(blocksDir(), { force: true });
      renameSync(`${blocksDir()}.aside`, blocksDir());
    }
  };

  /**
   * Flip one byte of a stored block where the directory store keeps it (a
   * pack, docs/architecture.md §13.4, or a block file); returns the undo.
   */
  const flipStoredByte = (hash: string): (() => void) => {
    let at: { file: string; offset: number } | undefined;
    const file = join(blocksDir(), hash.slice(0, 2), hash);
    if (existsSync(file)) at = { file, offset: 0 };
    const packs = join(env.state, 'snapshots', 'packs');
    for (const idx of existsSync(packs) && !at ? readdirSync(packs).filter((n) => n.endsWith('.idx')) : []) {
      const hit = (JSON.parse(readFileSync(join(packs, idx), 'utf8')).blocks as [string, number, number][]).find(([h]) => h === hash);
      if (hit) at = { file: join(packs, idx.replace(/\.idx$/, '.pack')), offset: hit[1] };
    }
    if (!at) throw new Error(`block ${hash} is in no block file or pack`);
    const { file: f, offset } = at;
    const flip = (): void => {
      const fd = openSync(f, 'r+');
      try {
        const b = Buffer.alloc(1);
        readSync(fd, b, 0, 1, offset);
        b[0] = b[0]! ^ 0xff;
        writeSync(fd, b, 0, 1, offset);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
    };
    flip();
    return flip;
  };

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
  }, 120_000);
  afterAll(() => env.cleanup());

  it('DeleteVolume removes the volume\'s tracking file; a restart removes one whose volume is gone and keeps the others', async () => {
    const vol = await volumeWithData();
    const keep = await volumeWithData();
    // A snapshot of a detached volume leaves its tracking clean on disk (the next snapshot's base).
    const call = api(env);
    for (const v of [vol, keep]) expect((await settled(env, (await call('CreateSnapshot', { VolumeId: v })).SnapshotId)).State).toBe('completed');
    expect(existsSync(join(tracking(), `${vol}.json`))).toBe(true);
    expect(existsSync(join(tracking(), `${keep}.json`))).toBe(true);

    await call('DeleteVolume', { VolumeId: vol });
    expect(existsSync(join(tracking(), `${vol}.json`))).toBe(false);
    expect(existsSync(join(tracking(), `${keep}.json`))).toBe(true);

    // As a crash between DeleteVolume and the removal would leave it: a tracking file of a volume that does not exist.
    const ghost = 'vol-0123456789abcdef0';
    writeFileSync(join(tracking(), `${ghost}.json`), `${JSON.stringify({ formatVersion: 1, volumeId: ghost, clean: false })}\n`);
    writeFileSync(join(tracking(), 'notes.txt'), 'not a tracking file');
    await env.stop();
    await env.start();
    expect(readdirSync(tracking()).sort()).toEqual([`${keep}.json`, 'notes.txt'].sort());
    const removed = new RegExp(`removed the changed-block tracking of volumes that no longer exist.*${ghost}|${ghost}.*removed the changed-block tracking`);
    expect(await env.untilLog(removed)).toMatch(removed);
  }, 180_000);

  it('snapshot create --wait exits non-zero naming the error state when the store fails; volume create --snapshot-id --wait too', async () => {
    const vol = await volumeWithData();
    const failed = await withBrokenStore(() => env.cli(['snapshot', 'create', vol, '--wait', '--output', 'json']));
    expect(failed.code, failed.stderr).toBe(10);
    expect(failed.stderr).toMatch(/snap-[0-9a-f]{17} ended in state 'error': .*ENOTDIR/);
    expect(failed.json()).toMatchObject({ State: 'error' });

    const snap = (await api(env)('CreateSnapshot', { VolumeId: vol })).SnapshotId as string;
    expect((await settled(env, snap)).State).toBe('completed');
    // One stored byte of a data block flipped (the header stays, so CreateVolume accepts the restore and it fails in the background).
    const [, hash] = (JSON.parse(readFileSync(join(env.state, 'snapshots', 'manifests', `${snap}.json`), 'utf8')).blocks as [number, string][])[1]!;
    const undo = flipStoredByte(hash);
    let restore;
    try {
      restore = await env.cli(['volume', 'create', '--snapshot-id', snap, '--wait', '--output', 'json']);
    } finally {
      undo();
    }
    expect(restore.code, restore.stderr).not.toBe(0);
    expect(restore.stderr).toMatch(/vol-[0-9a-f]{17} from snap-[0-9a-f]{17} ended in state 'error'/);
    // The store back, the same restore succeeds: the failure was the store's, not the snapshot's.
    const ok = await env.cli(['volume', 'create', '--snapshot-id', snap, '--wait', '--output', 'json']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.json()).toMatchObject({ State: 'available' });
  }, 180_000);
});
