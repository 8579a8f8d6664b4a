import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt, run } from './helpers.js';

// A volume file is a block device: opening it with O_TRUNC (dd without
// conv=notrunc, cp, a shell's `>`) writes over it, as onto /dev/sdX; its size
// never changes.

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

describe('O_TRUNC and truncate on a volume file (real daemon, FUSE mount)', () => {
  const env = new Env('otrunc');
  let vol = '';
  let img = '';

  async function readBack(): Promise<Buffer> {
    return fsp.readFile(env.file(vol));
  }

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    vol = (await env.api('ebsd.CreateVolume', { Size: '8MiB', Name: 'otrunc' })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    img = join(env.dir, 'image');
  });
  afterAll(() => env.cleanup());

  it('cp of a file of the volume\'s size onto the volume file succeeds and reads back', async () => {
    const data = randomBytes(SIZE);
    await fsp.writeFile(img, data);
    const r = await run('cp', [img, env.file(vol)]);
    expect(r.code, r.stderr).toBe(0);
    await env.untilClosed(vol);
    expect((await fsp.stat(env.file(vol))).size).toBe(SIZE);
    expect((await readBack()).equals(data)).toBe(true);
  });

  it('dd without conv=notrunc succeeds and reads back; the size stays', async () => {
    const data = randomBytes(SIZE);
    await fsp.writeFile(img, data);
    const r = await run('dd', [`if=${img}`, `of=${env.file(vol)}`, 'bs=1M', 'status=none']);
    expect(r.code, r.stderr).toBe(0);
    await env.untilClosed(vol);
    expect((await fsp.stat(env.file(vol))).size).toBe(SIZE);
    expect((await readBack()).equals(data)).toBe(true);
  });

  it('a shell redirect (O_TRUNC) writes over the start and leaves the rest', async () => {
    const before = await readBack();
    const r = await run('sh', ['-c', `printf 'hello' > ${env.file(vol)}`]);
    expect(r.code, r.stderr).toBe(0);
    await env.untilClosed(vol);
    const after = await readBack();
    expect(after.length).toBe(SIZE);
    expect(after.subarray(0, 5).toString()).toBe('hello');
    expect(after.subarray(5).equals(before.subarray(5))).toBe(true);
  });

  it('truncate -s to the volume\'s size is a no-op; to any other size fails with EPERM', async () => {
    const before = await readBack();
    const same = await run('truncate', ['-s', String(SIZE), env.file(vol)]);
    expect(same.code, same.stderr).toBe(0);
    for (const size of ['0', String(SIZE - 4096), String(SIZE + 4096)]) {
      const r = await run('truncate', ['-s', size, env.file(vol)]);
      expect(r.code, `truncate -s ${size}`).not.toBe(0);
      expect(r.stderr).toMatch(/Operation not permitted/);
    }
    await env.untilClosed(vol);
    expect((await fsp.stat(env.file(vol))).size).toBe(SIZE);
    expect((await readBack()).equals(before)).toBe(true);
  });
});
