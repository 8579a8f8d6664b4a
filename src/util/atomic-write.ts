import { promises as fsp, openSync, writeSync, fsyncSync, closeSync, renameSync, type Dirent } from 'node:fs';
import { dirname, basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { withPath } from './errors.js';

/** `.<name>.<12 hex>.tmp` beside the target: hidden, and recognisable by removeAtomicWriteTemps. */
function tempName(path: string): string {
  return join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
}

/** The temp names atomicWrite and atomicWriteSync make, and nothing else. */
export const ATOMIC_TEMP_NAME = /^\..+\.[0-9a-f]{12}\.tmp$/;

/**
 * Remove the temp files that interrupted atomic writes left in `dir` (a crash
 * between creating the temp file and renaming it): regular files named as
 * atomicWrite names them, in `dir` and, with `depth` > 0, in its
 * subdirectories down to that many levels. Symlinks are neither followed nor
 * removed. Only safe while no atomic write into `dir` can be under way: the
 * daemon calls it with the state-dir lock held, before it opens any store.
 * Returns the paths removed; a missing `dir` removes nothing.
 */
export async function removeAtomicWriteTemps(dir: string, opts: { depth?: number } = {}): Promise<string[]> {
  const depth = opts.depth ?? 0;
  let entries: Dirent[];
  try {
    entries = await fsp.readdir(dir, { withFileTypes: true });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  const removed: string[] = [];
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isFile() && ATOMIC_TEMP_NAME.test(e.name)) {
      await fsp.rm(p, { force: true });
      removed.push(p);
    } else if (e.isDirectory() && depth > 0) {
      removed.push(...(await removeAtomicWriteTemps(p, { depth: depth - 1 })));
    }
  }
  return removed;
}

/**
 * Replace `path` atomically: write a temp file in the same directory, fsync it,
 * rename over the target, fsync the directory. A crash at any point leaves
 * either the old content or the new one, never a mix (POSIX rename(2)).
 */
export async function atomicWrite(path: string, data: Uint8Array | string, mode = 0o600): Promise<void> {
  const dir = dirname(path);
  const tmp = tempName(path);
  const fh = await fsp.open(tmp, 'wx', mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } catch (e) {
    await fh.close().catch(() => {});
    await fsp.rm(tmp, { force: true });
    throw withPath(e, path);
  }
  await fh.close();
  try {
    await fsp.rename(tmp, path);
  } catch (e) {
    await fsp.rm(tmp, { force: true });
    throw e;
  }
  await fsyncDir(dir);
}

/** Synchronous twin, for shutdown paths where the event loop may not turn again. */
export function atomicWriteSync(path: string, data: Uint8Array | string, mode = 0o600): void {
  const dir = dirname(path);
  const tmp = tempName(path);
  const fd = openSync(tmp, 'wx', mode);
  try {
    const buf = typeof data === 'string' ? Buffer.from(data) : data;
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
  const dfd = openSync(dir, 'r');
  try { fsyncSync(dfd); } finally { closeSync(dfd); }
}

export async function fsyncDir(dir: string): Promise<void> {
  const dh = await fsp.open(dir, 'r');
  try { await dh.sync(); } finally { await dh.close(); }
}
