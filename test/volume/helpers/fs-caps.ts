import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nativeIo, EOPNOTSUPP } from '../../../src/volume/native-io.js';

/**
 * Whether the filesystem under TMPDIR serves preadv2(RWF_NOWAIT) from the
 * page cache. tmpfs on this kernel (6.18) answers EOPNOTSUPP: there the device's
 * page-cache fast paths (and write-behind and read-ahead, which need them)
 * stay off and every read takes the pool, so the tests that assert a fast
 * path run only where it exists; the tmpfs run (test/volume/tmpfs.test.ts)
 * checks the rest and that the capability is reported missing.
 */
export const readNowaitSupported: boolean = (() => {
  if (!nativeIo) return false;
  const dir = mkdtempSync(join(tmpdir(), 'ebsd-caps-'));
  try {
    const p = join(dir, 'probe');
    writeFileSync(p, Buffer.alloc(4096, 1));
    const fd = openSync(p, 'r');
    try {
      return nativeIo.preadNowait(fd, Buffer.alloc(4096), 0, 4096, 0) !== EOPNOTSUPP;
    } finally {
      closeSync(fd);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
})();
