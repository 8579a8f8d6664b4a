import { describe, expect, test } from 'vitest';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

// One source for the FUSE mount options (src/fuse/mount-options.ts): the daemon's
// mount and the benchmark scripts that mount a FUSE file (the no-op ceiling and the
// fio harness) take them from there, so a benchmark measures the daemon's transport.
// A script that spelled an option out itself could drift from the daemon again.

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const OPTION_WORDS = /big_writes|max_write|max_read|entry_timeout|negative_timeout|allow_other|default_permissions|maxRead|allowOther|defaultPermissions/;

/** The file without // and /* *\/ comments (the scripts explain the options in prose). */
function code(path: string): string {
  return readFileSync(join(ROOT, path), 'utf8').replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:])\/\/.*$/gm, '$1');
}

describe('FUSE mount options come from src/fuse/mount-options.ts', () => {
  test('the daemon\'s mount uses them', () => {
    const src = code('src/fuse/mount.ts');
    expect(src).toMatch(/from '\.\/mount-options\.js'/);
    expect(src).toMatch(/EXTRA_MOUNT_OPTIONS/);
    expect(src).toMatch(/fuseNativeOptions\(/);
  });

  test.each(['scripts/bench/noop-fuse.mjs', 'scripts/bench/fio-harness.mjs'])('%s imports them and names none itself', (path) => {
    const src = code(path);
    expect(src).toMatch(/mount-options\.js/);
    expect(src).toMatch(/EXTRA_MOUNT_OPTIONS/);
    expect(src).toMatch(/fuseNativeOptions\(/);
    expect(src.match(OPTION_WORDS)).toBeNull();
  });
});
