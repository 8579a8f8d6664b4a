import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockFileSystem, FuseMount } from '../../src/fuse/index.js';
import { createLogger } from '../../src/util/logger.js';
import { MemoryBlockDevice, sh, tempDir } from './helpers.js';

// Everything below talks to the mount asynchronously: this process serves the
// FUSE requests on its event loop, so a *Sync call against the mount deadlocks.

const MiB = 1024 * 1024;
const log = createLogger({ level: 'silent' });

async function attempt(cmd: string, args: string[]): Promise<void> {
  await sh(cmd, args, { timeoutMs: 30_000 }).catch(() => {});
}

describe('FUSE block files over an in-memory BlockDevice', () => {
  const dir = tempDir('fuse');
  const mnt = join(dir, 'mnt');
  const fsMount = join(dir, 'ext4');
  const bfs = new BlockFileSystem({ logger: log });
  const mount = new FuseMount(mnt, bfs.ops(), { logger: log });
  const dev = new MemoryBlockDevice('vol-0123456789abcdef0', 64 * MiB);
  const file = join(mnt, dev.volumeId);
  let loop: string | undefined;

  beforeAll(async () => {
    await fsp.mkdir(fsMount, { recursive: true });
    await mount.mount();
    bfs.add(dev);
  });

  afterAll(async () => {
    await attempt('umount', [fsMount]);
    if (loop) await attempt('losetup', ['-d', loop]);
    await mount.unmount();
    await attempt('fusermount', ['-uz', mnt]);
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('lists one 0600 regular file per volume, sized as the volume', async () => {
    expect(await fsp.readdir(mnt)).toEqual([dev.volumeId]);
    const st = await fsp.stat(file);
    expect(st.isFile()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
    expect(st.size).toBe(64 * MiB);
  });

  it('reads back what it wrote, at unaligned offsets, and stops at the end', async () => {
    const fh = await fsp.open(file, 'r+');
    try {
      const data = Buffer.from('hello, block file');
      expect((await fh.write(data, 0, data.length, 12345)).bytesWritten).toBe(data.length);
      await fh.sync();
      const back = Buffer.alloc(data.length);
      expect((await fh.read(back, 0, back.length, 12345)).bytesRead).toBe(data.length);
      expect(back).toEqual(data);
      expect(dev.mem.subarray(12345, 12345 + data.length)).toEqual(data);
      expect(dev.flushes).toBeGreaterThan(0);
      expect((await fh.read(Buffer.alloc(10), 0, 10, 64 * MiB)).bytesRead).toBe(0);
      await expect(fh.write(Buffer.alloc(10), 0, 10, 64 * MiB)).rejects.toMatchObject({ code: expect.stringMatching(/ENOSPC|EFBIG/) });
    } finally {
      await fh.close();
    }
  });

  it('refuses truncate with EPERM, unknown names with ENOENT, and new files', async () => {
    await expect(fsp.truncate(file, 0)).rejects.toMatchObject({ code: 'EPERM' });
    await expect(fsp.stat(join(mnt, 'vol-nope'))).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(fsp.writeFile(join(mnt, 'new'), 'x')).rejects.toBeTruthy();
  });

  it('keeps its names: rename, link, unlink, symlink, mkdir, mknod, chmod and chown all fail with EPERM, the file unchanged', async () => {
    const other = join(mnt, 'vol-0fedcba9876543210');
    await expect(fsp.rename(file, other)).rejects.toMatchObject({ code: 'EPERM' });
    await expect(fsp.link(file, other)).rejects.toMatchObject({ code: 'EPERM' });
    await expect(fsp.unlink(file)).rejects.toMatchObject({ code: 'EPERM' });
    await expect(fsp.symlink(file, other)).rejects.toMatchObject({ code: 'EPERM' });
    await expect(fsp.mkdir(other)).rejects.toMatchObject({ code: 'EPERM' });
    await expect(sh('mknod', [other, 'p'])).rejects.toMatchObject({ stderr: expect.stringMatching(/Operation not permitted/) });
    await expect(fsp.chmod(file, 0o644)).rejects.toMatchObject({ code: 'EPERM' });
    await expect(fsp.chown(file, 1000, 1000)).rejects.toMatchObject({ code: 'EPERM' });
    expect(await fsp.readdir(mnt)).toEqual([dev.volumeId]);
    const st = await fsp.stat(file);
    expect([st.mode & 0o777, st.uid, st.size]).toEqual([0o600, process.getuid!(), 64 * MiB]);
  });

  it('tracks open handles so a volume cannot be removed while open', async () => {
    const fh = await fsp.open(file, 'r');
    try {
      expect(bfs.openCount(dev.volumeId)).toBe(1);
      await expect(bfs.remove(dev.volumeId)).rejects.toMatchObject({ code: 'VOLUME_FILE_OPEN', awsName: 'VolumeInUse' });
    } finally {
      await fh.close();
    }
    // release(2) reaches us asynchronously after close(2) returns; polled up to 10 s (1 s was tight for a loaded machine)
    for (const end = Date.now() + 10_000; bfs.openCount(dev.volumeId) > 0 && Date.now() < end;) await new Promise((r) => setTimeout(r, 10));
    expect(bfs.openCount(dev.volumeId)).toBe(0);
  });

  it('maps device failures to EIO', async () => {
    const fh = await fsp.open(file, 'r');
    dev.failWith = Object.assign(new Error('volume impaired'), { code: 'VOLUME_IMPAIRED' });
    try {
      await expect(fh.read(Buffer.alloc(4096), 0, 4096, 1 * MiB)).rejects.toMatchObject({ code: 'EIO' });
    } finally {
      dev.failWith = undefined;
      await fh.close();
    }
  });

  it('works as a block device: losetup, mkfs.ext4, mount, files, e2fsck -fn', async () => {
    loop = (await sh('losetup', ['-f', '--show', file])).trim();
    await sh('mkfs.ext4', ['-q', '-F', loop]);
    await sh('mount', [loop, fsMount]);
    await fsp.writeFile(join(fsMount, 'hello.txt'), 'hello from ext4 on ebsd\n');
    await sh('umount', [fsMount]);
    await sh('e2fsck', ['-fn', loop]);
    await sh('mount', [loop, fsMount]);
    expect(await fsp.readFile(join(fsMount, 'hello.txt'), 'utf8')).toBe('hello from ext4 on ebsd\n');
    await sh('umount', [fsMount]);
    await sh('losetup', ['-d', loop]);
    loop = undefined;
  });

  it('serves fio with O_DIRECT and libaio, verified', async () => {
    const out = await sh('fio', [
      '--name=ebsd', `--filename=${file}`, '--direct=1', '--ioengine=libaio', '--rw=randwrite',
      '--bs=4k', '--size=16m', '--iodepth=8', '--verify=crc32c', '--do_verify=1', '--output-format=json',
    ]);
    const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBe(16 * MiB);
  });
});
