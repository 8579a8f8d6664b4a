import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, watch, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ATOMIC_TEMP_NAME, atomicWrite, atomicWriteSync, removeAtomicWriteTemps } from '../../src/util/atomic-write.js';

/** Temp files of interrupted atomic writes, removed at daemon start (issue 13, point 9). */
describe('removeAtomicWriteTemps', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'ebsd-temps-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('removes atomicWrite temp names down to `depth` levels, and nothing else', async () => {
    mkdirSync(join(dir, 'a', 'b', 'c'), { recursive: true });
    const temps = [join(dir, '.catalog.json.0123456789ab.tmp'), join(dir, 'a', '.x.json.abcdefabcdef.tmp'), join(dir, 'a', 'b', '.y.0a0a0a0a0a0a.tmp')];
    const tooDeep = join(dir, 'a', 'b', 'c', '.z.0a0a0a0a0a0a.tmp');
    const keep = [join(dir, 'catalog.json'), join(dir, '.catalog.json.tmp'), join(dir, '.catalog.json.0123456789AB.tmp'), join(dir, 'a', 'notes.0123456789ab.tmp'), tooDeep];
    for (const p of [...temps, ...keep]) writeFileSync(p, 'x');
    // A symlink named like a temp file is neither followed nor removed; its target stays.
    const outside = join(dir, 'outside.txt');
    writeFileSync(outside, 'x');
    const link = join(dir, '.link.json.0123456789ab.tmp');
    symlinkSync(outside, link);

    const removed = await removeAtomicWriteTemps(dir, { depth: 2 });
    expect(removed.sort()).toEqual([...temps].sort());
    for (const p of temps) expect(existsSync(p)).toBe(false);
    for (const p of [...keep, outside, link]) expect(existsSync(p)).toBe(true);
  });

  it('matches the names atomicWrite really makes (seen through inotify while it writes)', async () => {
    const seen: string[] = [];
    const w = watch(dir, (_ev, name) => { if (name) seen.push(String(name)); });
    try {
      await atomicWrite(join(dir, 'state.json'), '{}');
      atomicWriteSync(join(dir, 'other.json'), '{}');
      for (let i = 0; i < 500 && new Set(seen.filter((n) => n.endsWith('.tmp'))).size < 2; i++) await new Promise((r) => setTimeout(r, 10)); // poll: inotify events arrive asynchronously
    } finally {
      w.close();
    }
    const temps = [...new Set(seen.filter((n) => n.endsWith('.tmp')))];
    expect(temps).toHaveLength(2);
    for (const n of temps) {
      expect(n).toMatch(ATOMIC_TEMP_NAME);
      writeFileSync(join(dir, n), '{}'); // what a crash between write and rename leaves
    }
    expect((await removeAtomicWriteTemps(dir)).sort()).toEqual(temps.map((n) => join(dir, n)).sort());
    expect(existsSync(join(dir, 'state.json'))).toBe(true);
  });

  it('a missing directory removes nothing', async () => {
    expect(await removeAtomicWriteTemps(join(dir, 'nope'))).toEqual([]);
  });
});
