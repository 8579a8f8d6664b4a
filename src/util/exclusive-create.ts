import { promises as fsp } from 'node:fs';

/**
 * Create `path` with O_CREAT|O_EXCL, write `data` and fsync it. Returns false
 * (and writes nothing) if the file already exists; any other error is thrown.
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
  } finally {
    await fh.close();
  }
  return true;
}
