/**
 * Every reference a comment makes resolves inside the repository
 * (docs/architecture.md §11.15): each `docs/architecture.md §n` names a section
 * that exists, the architecture's own `§n` cross-references and file links
 * resolve, and nothing cites by section the DESIGN or STYLE notes, which were
 * never in the repository.
 */
import { describe, expect, test } from 'vitest';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const ARCH = join(ROOT, 'docs', 'architecture.md');
const TEXT = /\.(ts|mjs|js|sh|c|h|md|gyp|fio|yml|service)$/;
const SKIP = new Set(['node_modules', 'build', 'fixtures', 'dist', '.git']);

function* files(dir: string): Generator<string> {
  for (const name of readdirSync(dir)) {
    if (SKIP.has(name)) continue;
    const p = join(dir, name);
    if (statSync(p).isDirectory()) yield* files(p);
    else if (TEXT.test(name)) yield p;
  }
}

function sources(): string[] {
  const out = [join(ROOT, 'README.md')];
  for (const d of ['src', 'test', 'scripts', 'native', 'docs', 'contrib']) if (existsSync(join(ROOT, d))) out.push(...files(join(ROOT, d)));
  return out;
}

/** Section numbers docs/architecture.md defines: `## §n` / `### §n.m` headings and the numbered items of §11. */
function sections(md: string): Set<string> {
  const s = new Set<string>();
  for (const m of md.matchAll(/^#{2,3} §(\d+(?:\.\d+)?) /gm)) s.add(m[1]!);
  const conventions = md.slice(md.indexOf('\n## §11 '));
  for (const m of conventions.matchAll(/^(\d+)\. /gm)) s.add(`11.${m[1]}`);
  return s;
}

/** `docs/architecture.md §5.3, §6.2` -> ['5.3', '6.2'], with where each was found. */
function citations(): { where: string; section: string }[] {
  const out: { where: string; section: string }[] = [];
  for (const f of sources()) {
    const lines = readFileSync(f, 'utf8').split('\n');
    lines.forEach((line, i) => {
      for (const m of line.matchAll(/docs\/architecture\.md((?:,? ?§\d+(?:\.\d+)?)+)/g)) {
        for (const n of m[1]!.matchAll(/§(\d+(?:\.\d+)?)/g)) out.push({ where: `${relative(ROOT, f)}:${i + 1}`, section: n[1]! });
      }
    });
  }
  return out;
}

describe('references resolve inside the repository', () => {
  test('docs/architecture.md exists and numbers its sections', () => {
    const s = sections(readFileSync(ARCH, 'utf8'));
    for (const n of ['1', '2', '3', '3.3', '5.1', '6.3', '7', '8', '11.1', '11.18']) expect(s.has(n), `§${n}`).toBe(true);
  });

  test('every `docs/architecture.md §n` in code, tests, scripts and docs names a section that exists', () => {
    const s = sections(readFileSync(ARCH, 'utf8'));
    const cites = citations();
    expect(cites.length).toBeGreaterThan(40);
    expect(cites.filter((c) => !s.has(c.section)).map((c) => `${c.where} cites §${c.section}`)).toEqual([]);
  });

  test("docs/architecture.md's own §n cross-references and file links resolve", () => {
    const md = readFileSync(ARCH, 'utf8');
    const s = sections(md);
    // References into other documents (`perf-notes.md §6–§7`) and quoted examples
    // (`// NIST SP 800-108r1 §4.1`) are not ours.
    const own = md.replace(/`[^`\n]*`/g, '').replace(/[\w-]+\.md §[\d.§–-]+/g, '');
    const missing = [...own.matchAll(/§(\d+(?:\.\d+)?)/g)].map((m) => m[1]!).filter((n) => !s.has(n));
    expect(missing).toEqual([]);
    const links = [...md.matchAll(/\]\(([^)#]+)\)/g)].map((m) => m[1]!).filter((l) => !/^[a-z]+:/.test(l));
    expect(links.length).toBeGreaterThan(10);
    expect(links.filter((l) => !existsSync(resolve(dirname(ARCH), l)))).toEqual([]);
  });

  test('nothing cites a section of the DESIGN or STYLE notes (documents outside the repository)', () => {
    const found: string[] = [];
    for (const f of sources()) {
      readFileSync(f, 'utf8').split('\n').forEach((line, i) => {
        if (/\b(DESIGN|STYLE) §/.test(line)) found.push(`${relative(ROOT, f)}:${i + 1}: ${line.trim()}`);
      });
    }
    expect(found).toEqual([]);
  });
});
