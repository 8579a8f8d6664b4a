import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MOUNT_RECORD_MAX_BYTES, MOUNT_RECORD_MAX_EARLIER, readMountRecord } from '../../src/fuse/mount-record.js';
import { createLogger } from '../../src/util/logger.js';

/**
 * `<state>/mount.json` read defensively (src/fuse/mount-record.ts): a file of the state dir someone may have
 * replaced is not followed through a symlink, not waited on as a FIFO, not read past 64 KiB, and its earlier
 * mounts are read each once and 16 at most. Real files in a temp dir.
 */

const mount = (i: number) => ({ MountDir: `/srv/m${i}`, Device: `0:${40 + i}`, Source: `ebsd:${i.toString(16).padStart(16, '0')}` });

describe('readMountRecord', () => {
  let dir = '';
  let lines: { msg: string }[] = [];
  const log = () => createLogger({ level: 'debug', destination: new Writable({ write: (c, _e, cb) => { lines.push(JSON.parse(String(c))); cb(); } }) });
  const file = () => join(dir, 'mount.json');

  beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'ebsd-mount-record-')); lines = []; });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('reads a record; its earlier mounts each once, at most MOUNT_RECORD_MAX_EARLIER', async () => {
    const earlier = [...Array.from({ length: 20 }, (_, i) => mount(i + 1)), mount(1), mount(2)];
    writeFileSync(file(), JSON.stringify({ ...mount(0), Earlier: [mount(1), mount(1), ...earlier] }));
    const r = await readMountRecord(dir, log());
    expect(r).toMatchObject(mount(0));
    expect(r!.Earlier).toEqual(Array.from({ length: MOUNT_RECORD_MAX_EARLIER }, (_, i) => mount(i + 1)));
  });

  it('a symlink is not followed: no record, and the log says why', async () => {
    const real = join(dir, 'elsewhere.json');
    writeFileSync(real, JSON.stringify({ ...mount(0), Earlier: [] }));
    symlinkSync(real, file());
    expect(await readMountRecord(dir, log())).toBeUndefined();
    expect(lines.map((l) => l.msg).join('\n')).toContain('is not read (it is a symbolic link)');
  });

  it('a FIFO is not waited on', async () => {
    expect(spawnSync('mkfifo', [file()]).status).toBe(0);
    expect(await readMountRecord(dir, log())).toBeUndefined();
    expect(lines.map((l) => l.msg).join('\n')).toContain('is not read (not a regular file)');
  }, 5_000);

  it(`more than ${MOUNT_RECORD_MAX_BYTES} bytes is not read`, async () => {
    writeFileSync(file(), JSON.stringify({ ...mount(0), Earlier: [] }) + ' '.repeat(MOUNT_RECORD_MAX_BYTES));
    expect(await readMountRecord(dir, log())).toBeUndefined();
    expect(lines.map((l) => l.msg).join('\n')).toContain(`more than ${MOUNT_RECORD_MAX_BYTES}`);
  });

  it('none: no record, nothing logged', async () => {
    expect(await readMountRecord(dir, log())).toBeUndefined();
    expect(lines).toEqual([]);
  });
});
