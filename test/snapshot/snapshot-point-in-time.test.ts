import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Env, ensureBuilt, sh } from '../e2e/helpers.js';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { api, settled } from './helpers.js';
import { stampPointInTime } from './stamp-check.js';

/** The stamp check is in stamp-check.ts (also run with a spilling copy-on-write by cow-daemon.test.ts). */
const SEED = Number(process.env.SNAP_TEST_SEED ?? Date.now() % 100000);

describe('snapshot of an attached volume under write load', () => {
  const env = new Env('snap-pit');
  const children: ChildProcess[] = [];
  let vol = '';

  beforeAll(async () => {
    ensureBuilt();
    await env.start(['--allow-unencrypted']);
    vol = (await env.api('ebsd.CreateVolume', { Size: '128MiB', Cipher: 'none' })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
  }, 60_000);

  afterAll(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await env.cleanup();
  });

  it(`holds exactly the writes before one cut inside [request, answer] (seed ${SEED})`, async () => {
    await stampPointInTime(env, vol, SEED, children);
  }, 90_000);

  it('an ext4 frozen around create restores (same key) to a filesystem that passes e2fsck -fn and holds the files of that moment', async () => {
    const call = api(env);
    const v = (await call('CreateVolume', { Size: 64 * 1024 * 1024 })).VolumeId;
    await call('AttachVolume', { VolumeId: v });
    const loop = await env.losetup(v);
    await sh('mkfs.ext4', ['-q', loop]);
    const at = await env.mountFs(loop, 'fs');
    const data = randomBytes(3 * 1024 * 1024);
    writeFileSync(join(at, 'a'), data);
    writeFileSync(join(at, 'b'), 'before the snapshot\n');
    await sh('fsfreeze', ['-f', at]);
    let id = '';
    try {
      id = (await call('CreateSnapshot', { VolumeId: v })).SnapshotId;
    } finally {
      await sh('fsfreeze', ['-u', at]);
    }
    // Changes after the answer are not in the snapshot.
    writeFileSync(join(at, 'b'), 'after the snapshot\n');
    writeFileSync(join(at, 'c'), randomBytes(1024 * 1024));
    expect((await settled(env, id)).State).toBe('completed');
    await env.umountFs(at);
    await env.detachLoop(loop);

    const r = (await call('CreateVolume', { SnapshotId: id })).VolumeId;
    for (let st = ''; st !== 'available'; ) {
      st = (await call('DescribeVolumes', { VolumeIds: [r] })).Volumes[0].State;
      expect(st).not.toBe('error');
      if (st !== 'available') await new Promise((res) => setTimeout(res, 50));
    }
    await call('AttachVolume', { VolumeId: r });
    const fsck = await sh('e2fsck', ['-fn', env.file(r)]);
    expect(fsck).toMatch(/clean|files/);
    const loop2 = await env.losetup(r);
    const at2 = await env.mountFs(loop2, 'restored');
    expect(createHash('sha256').update(readFileSync(join(at2, 'a'))).digest('hex')).toBe(createHash('sha256').update(data).digest('hex'));
    expect(readFileSync(join(at2, 'b'), 'utf8')).toBe('before the snapshot\n');
    expect(() => readFileSync(join(at2, 'c'))).toThrow(/ENOENT/);
    await env.umountFs(at2);
    await env.detachLoop(loop2);
  }, 120_000);
});
