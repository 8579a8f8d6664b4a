/**
 * Test files share their worker process with the files before them (vitest.config.ts,
 * ISOLATED): a file that changes process-wide state must be listed there, so it runs in a
 * fresh process. This reads every test file for the changes that outlive a file (process.env
 * written directly, handlers on process, module mocks, fake timers, the umask, the uid, the
 * working directory) and fails naming any file that makes one and is not listed. The helpers
 * that set the AWS SDK's environment for a file (StandardChain, setAwsEnv) put it back in
 * the file's afterAll, and are not counted.
 */
import { describe, expect, it } from 'vitest';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { ISOLATED } from '../../vitest.config.js';

const ROOT = resolve(import.meta.dirname, '..', '..');
const PROCESS_WIDE = /vi\.(mock|doMock|stubEnv|stubGlobal|useFakeTimers)\(|process\.env\.[A-Za-z_]+ *=[^=]|process\.env\[[^\]]+\] *=[^=]|delete process\.env|process\.(chdir|umask|setuid|setgid|seteuid|setegid)\(|process\.(on|once|prependListener)\(/;

function testFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...testFiles(p));
    else if (name.endsWith('.test.ts')) out.push(relative(ROOT, p));
  }
  return out;
}

describe('test isolation (vitest.config.ts ISOLATED)', () => {
  const files = testFiles(join(ROOT, 'test'));

  it('every test file that changes process-wide state runs in a fresh process', () => {
    const self = relative(ROOT, import.meta.filename); // its examples below are text, not changes
    const changing = files.filter((f) => f !== self && PROCESS_WIDE.test(readFileSync(join(ROOT, f), 'utf8')));
    expect(changing.length).toBeGreaterThan(0); // the pattern finds the files it is meant to
    expect(changing.filter((f) => !ISOLATED.includes(f))).toEqual([]);
  });

  it('the list names only test files that exist', () => {
    expect(ISOLATED.filter((f) => !files.includes(f))).toEqual([]);
  });

  it('the pattern sees each kind of change', () => {
    for (const line of ["process.env.EBSD_TEST_FAULT = 'x';", 'delete process.env[k];', "vi.useFakeTimers();", "process.on('exit', f);", 'process.umask(0o22);', "vi.mock('node:fs');"]) {
      expect(PROCESS_WIDE.test(line), line).toBe(true);
    }
    for (const line of ["if (process.env.CI === '1')", 'const v = process.env.HOME;', 'chain.use({ AWS_REGION: r });']) {
      expect(PROCESS_WIDE.test(line), line).toBe(false);
    }
  });
});
