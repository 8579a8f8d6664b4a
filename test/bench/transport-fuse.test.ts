import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp, readFileSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { quietly, sh, tempDir } from '../fuse/helpers.js';

// A smoke test of the transport study's C FUSE server (scripts/bench/transport,
// docs/perf-notes.md §9) in classic mode with its XTS + backing-file work: it
// mounts, serves the file, round-trips data as ciphertext, refuses what it must,
// and unmounts on SIGTERM. The study itself (run.sh) is not part of the suite.

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SRC = join(ROOT, 'scripts', 'bench', 'transport');
const SERVER = join(SRC, 'build', 'transport-fuse');
const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

function mounted(dir: string): boolean {
  return readFileSync('/proc/mounts', 'utf8').split('\n').some(l => l.split(' ')[1] === dir);
}

function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise(res => child.once('exit', code => res(code)));
}

describe('transport-fuse, classic mode with AES-256-XTS and a backing file', () => {
  const dir = tempDir('transport');
  const mnt = join(dir, 'mnt');
  const backing = join(dir, 'backing.img');
  const file = join(mnt, 'vol-smoke');
  let child: ChildProcess | undefined;
  let stderr = '';

  beforeAll(async () => {
    await sh('make', ['-s', '-C', SRC]);
    await fsp.mkdir(mnt);
    await fsp.writeFile(backing, '');
    await fsp.truncate(backing, SIZE);
    const server = spawn(SERVER, ['--mount', mnt, '--size', String(SIZE), '--name', 'vol-smoke', '--threads', '2', '--backing', backing], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child = server;
    server.stderr!.on('data', d => { stderr += d; });
    await new Promise<void>((res, rej) => {
      let out = '';
      server.stdout!.on('data', d => {
        out += d;
        if (out.includes('ready ')) res();
      });
      server.once('exit', code => rej(new Error(`transport-fuse exited (${code}) before ready: ${stderr}`)));
    });
  });

  afterAll(async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child?.kill('SIGKILL'), 10_000);
      await exited(child);
      clearTimeout(t);
    }
    if (mounted(mnt)) quietly('umount', ['-l', mnt]);
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves one file of the given size on a fuse.ebsd-transport mount', async () => {
    expect(mounted(mnt)).toBe(true);
    expect(readFileSync('/proc/mounts', 'utf8')).toContain(`ebsd-transport ${mnt} fuse.ebsd-transport`);
    const st = await fsp.stat(file);
    expect(st.size).toBe(SIZE);
    expect(await fsp.readdir(mnt)).toEqual(['vol-smoke']);
    expect(stderr).toMatch(/negotiated flags 0x[0-9a-f]+ ASYNC_DIO MAX_PAGES/);
  });

  it('reads back what was written, and the backing file holds only ciphertext', async () => {
    const marker = `transport-smoke-${process.pid}-`;
    const data = Buffer.alloc(MiB, marker);
    const src = join(dir, 'pattern');
    await fsp.writeFile(src, data);
    await sh('dd', [`if=${src}`, `of=${file}`, 'bs=1M', 'count=1', 'seek=2', 'oflag=direct', 'conv=notrunc', 'status=none']);
    const back = join(dir, 'back');
    await sh('dd', [`if=${file}`, `of=${back}`, 'bs=1M', 'count=1', 'skip=2', 'iflag=direct', 'status=none']);
    expect((await fsp.readFile(back)).equals(data)).toBe(true);
    const img = await fsp.readFile(backing);
    expect(img.includes(Buffer.from(marker))).toBe(false);
    expect(img.subarray(2 * MiB, 3 * MiB).equals(Buffer.alloc(MiB))).toBe(false); // something was written there
  });

  it('refuses a write that is not whole 4096-byte data units (EINVAL)', async () => {
    const src = join(dir, 'small');
    await fsp.writeFile(src, Buffer.alloc(512, 7));
    await expect(sh('dd', [`if=${src}`, `of=${file}`, 'bs=512', 'count=1', 'oflag=direct', 'conv=notrunc', 'status=none'])).rejects.toThrow(/Invalid argument/);
  });

  it('unmounts and exits 0 on SIGTERM, saying how many requests it served', async () => {
    child!.kill('SIGTERM');
    expect(await exited(child!)).toBe(0);
    expect(mounted(mnt)).toBe(false);
    const served = /served classic (\d+), ring 0/.exec(stderr);
    expect(served).not.toBeNull();
    expect(Number(served![1])).toBeGreaterThan(0);
  });
});
