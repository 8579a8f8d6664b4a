import { promises as fsp } from 'node:fs';
import { withPath } from './errors.js';

/**
 * Create `path` with O_CREAT|O_EXCL, write `data` and fsync it. Returns false
 * (and writes nothing) if the file already exists; any other error is thrown,
 * naming the file, once the file it made is removed again.
 * O_EXCL creation is atomic on local filesystems and NFSv3+, so of several
 * racing callers exactly one gets true: the basis of the pid and attach locks.
 */
export async function createExclusive(path: string, data: string | Uint8Array, mode = 0o600): Promise<boolean> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(path, 'wx', mode);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  }
  try {
    await fh.writeFile(data);
    await fh.sync();
  } catch (e) {
    await fh.close().catch(() => {});
    // The file is ours (O_EXCL made it) and holds nothing whole: left behind, an attach lock
    // reads as another process's attach under way (attach-lock.ts) until it is 10 s old.
    await fsp.rm(path, { force: true }).catch(() => {});
    throw withPath(e, path);
  }
  await fh.close();
  return true;
}
