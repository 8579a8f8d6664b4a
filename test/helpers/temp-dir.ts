/**
 * Temporary directories for tests, made one way: `mkdtemp` under the system temp
 * dir (or `parent`), so two test files running side by side never share one
 * (docs/architecture.md §10).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach } from 'vitest';

export interface TempDir {
  dir: string;
  /** Removes the directory and all below it; safe to call twice. */
  cleanup: () => void;
}

/** A fresh directory named `<prefix>XXXXXX` under `parent`; the caller calls cleanup(). */
export function tempDir(prefix = 'ebsd-test-', parent = tmpdir()): TempDir {
  const dir = mkdtempSync(join(parent, prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * For a file whose tests each want fresh directories: returns a maker whose
 * directories are removed after each test (an afterEach registered here, at
 * the level this is called from), also when the test fails.
 */
export function tempDirPerTest(prefix: string): (parent?: string) => string {
  const made: TempDir[] = [];
  afterEach(() => {
    for (const t of made.splice(0)) t.cleanup();
  });
  return (parent) => {
    const t = tempDir(prefix, parent);
    made.push(t);
    return t.dir;
  };
}
