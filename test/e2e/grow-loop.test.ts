import { statSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt, run } from './helpers.js';

// README, "Growing an attached volume": after ModifyVolume a loop device on the
// volume file learns the new size from `losetup -c`, which reads the kernel's
// cached attributes of the FUSE file (libfuse's default attr_timeout, 1 s):
// so a stat after that timeout first, then `losetup -c`.

const MiB = 1024 * 1024;

describe('growing an attached volume under a loop device (real daemon)', () => {
  const env = new Env('growloop');
  let vol = '';
  let loop = '';

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    vol = (await env.api('ebsd.CreateVolume', { Size: '8MiB' })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    loop = await env.losetup(vol);
  }, 60_000);
  afterAll(() => env.cleanup(), 60_000);

  const loopSize = async (): Promise<number> => Number((await run('blockdev', ['--getsize64', loop])).stdout.trim());

  it('the README recipe: modify, wait out the attribute timeout, stat, losetup -c', async () => {
    expect(await loopSize()).toBe(8 * MiB);
    await env.ok(['volume', 'modify', vol, '--size', '16MiB']);
    await new Promise((r) => setTimeout(r, 1100));
    expect(statSync(env.file(vol)).size).toBe(16 * MiB);
    const c = await run('losetup', ['-c', loop]);
    expect(c.code, c.stderr).toBe(0);
    expect(await loopSize()).toBe(16 * MiB);
    // The grown part is usable through the loop device.
    const w = await run('dd', ['if=/dev/urandom', `of=${loop}`, 'bs=1M', 'count=1', `seek=15`, 'oflag=direct', 'status=none']);
    expect(w.code, w.stderr).toBe(0);
  });
});
