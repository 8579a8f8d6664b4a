import { describe, expect, test } from 'vitest';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BackingIo } from '../../src/volume/backing-io.js';
import { openBackingFile, FdBackingFile } from '../../src/volume/backing-file.js';
import { nativeIo, EOPNOTSUPP } from '../../src/volume/native-io.js';
import { silentLogger } from '../../src/util/logger.js';
import { tempDirPerTest } from '../helpers/temp-dir.js';

// BackingIo, the data path's one door to the disk (docs/architecture.md §3):
// what a filesystem answered to RWF_NOWAIT is remembered per filesystem, so a
// second image on a filesystem that refused it (ext4 and tmpfs refuse buffered
// RWF_NOWAIT writes) never asks again. The native call is counted by wrapping
// the real function, which still runs.

const tmp = tempDirPerTest('ebsd-bio-');

async function ioOn(dir: string): Promise<{ io: BackingIo; file: FdBackingFile }> {
  const p = join(dir, `img-${Math.random().toString(16).slice(2)}`);
  writeFileSync(p, '');
  const file = await openBackingFile(p);
  return { io: new BackingIo(file, { volumeId: 'vol-0123456789abcdef0', dataOffset: 0, logger: silentLogger }), file };
}

describe.skipIf(nativeIo === null)('BackingIo RWF_NOWAIT capability memory', () => {
  test('a filesystem that answered EOPNOTSUPP to a NOWAIT write is not asked again, another filesystem is', async () => {
    const io = nativeIo!;
    const answers: number[] = [];
    const real = io.pwriteNowait;
    io.pwriteNowait = (fd, buf, off, len, pos) => { const n = real(fd, buf, off, len, pos); answers.push(n); return n; };
    try {
      const dir = tmp();
      const a = await ioOn(dir);
      expect(a.io.writeCached(Buffer.alloc(4096, 1), 0)).toBeGreaterThanOrEqual(0);
      if (answers.length === 0 || answers[0] !== EOPNOTSUPP) {
        // This filesystem takes NOWAIT writes (XFS, btrfs): it is asked every time.
        expect(answers.length).toBeGreaterThan(0);
        return;
      }
      const b = await ioOn(dir); // another image, same filesystem
      b.io.writeCached(Buffer.alloc(4096, 2), 4096);
      expect(answers).toEqual([EOPNOTSUPP]);
      if (existsSync('/dev/shm')) {
        const c = await ioOn(tmp('/dev/shm'));
        c.io.writeCached(Buffer.alloc(4096, 3), 0);
        expect(answers.length).toBe(2); // a new filesystem is asked once
        await c.io.close();
      }
      await a.io.close();
      await b.io.close();
    } finally {
      io.pwriteNowait = real;
    }
  });
});
