import { promises as fsp } from 'node:fs';

/**
 * Create `path` with O_CREAT|O_EXCL, write `data` and fsync it. Returns false
 * (and writes nothing) if the file already exists; any other error is thrown, and a
 * file this call created but could not write is removed first.
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
    // Created but not written (ENOSPC, EDQUOT, EIO): an empty file left here would read as a
    // lock whose owner is between O_EXCL and its write, and refuse every caller for a while.
    await fh.close().catch(() => {});
    await fsp.rm(path, { force: true }).catch(() => {});
    throw e;
  }
  await fh.close();
  return true;
}
