import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, ensureBuilt, run } from './helpers.js';

/** Whether /proc/self/mountinfo lists a mount at `dir` (field 5; the paths here have no characters it escapes). */
const mountedAt = (dir: string): boolean => readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === dir);

/**
 * A --mount the daemon cannot use is refused naming why. A directory that holds files failed
 * with "cannot mount FUSE at …: fuse failed" (libfuse's reason only on stderr). A mount inside
 * the state dir mounted over the daemon's own files and failed on them ("EPERM … instance-id");
 * a mount that is the state dir failed as "fuse failed". Both are flags that do not fit together:
 * exit 2 before the state dir is touched.
 */
describe('ebsd daemon --mount it cannot use', () => {
  let dir = '';
  const daemon = (state: string, mount: string) =>
    run(process.execPath, [CLI, 'daemon', '--state-dir', state, '--mount', mount, '--log-format', 'json'], { timeoutMs: 60_000 });

  beforeAll(() => {
    ensureBuilt();
    dir = mkdtempSync('/tmp/ebsd-e2e-mountdir-');
  });
  afterAll(() => {
    for (const m of [join(dir, 'full'), join(dir, 's1', 'volumes'), join(dir, 's2')]) if (mountedAt(m)) run('umount', ['-l', m]);
    rmSync(dir, { recursive: true, force: true });
  });

  it('a directory that is not empty: exit 9 naming it and what it holds, nothing mounted', async () => {
    const full = join(dir, 'full');
    mkdirSync(full);
    writeFileSync(join(full, 'keep-me'), 'x');
    const r = await daemon(join(dir, 's0'), full);
    expect(r.code).toBe(9);
    expect(r.stderr).toContain(`ebsd daemon: cannot mount FUSE at ${full} (--mount): the directory is not empty (keep-me); give an empty directory`);
    expect(mountedAt(full)).toBe(false);
    expect(readFileSync(join(full, 'keep-me'), 'utf8')).toBe('x');
  });

  it('inside the state dir, or the state dir itself: exit 2 before the state dir is made', async () => {
    const s1 = join(dir, 's1');
    const inside = await daemon(s1, join(s1, 'volumes'));
    expect(inside.code).toBe(2);
    expect(inside.stderr).toContain(`--mount ${join(s1, 'volumes')} is the state dir or inside it (${s1}): give the FUSE mount a directory of its own`);
    expect(existsSync(s1)).toBe(false);

    const s2 = join(dir, 's2');
    const same = await daemon(s2, s2);
    expect(same.code).toBe(2);
    expect(same.stderr).toContain(`--mount ${s2} is the state dir or inside it`);
    expect(existsSync(s2)).toBe(false);

    const s3 = join(dir, 'm3', 'state');
    const under = await daemon(s3, join(dir, 'm3'));
    expect(under.code).toBe(2);
    expect(under.stderr).toContain(`--state-dir ${s3} is inside the FUSE mount directory ${join(dir, 'm3')}: the mount would hide it`);
    expect(existsSync(join(dir, 'm3'))).toBe(false);
  });
});
