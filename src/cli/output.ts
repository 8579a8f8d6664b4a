import { UsageError } from './kms-args.js';
import { formatText } from './text-format.js';

/**
 * Output formats: `json` (AWS-CLI-shaped: the response object, 4-space
 * indented, blobs base64), `text` (the AWS CLI's text format, src/cli/text-format.ts:
 * for scripts, with or without --query) and `table` (for people; the default on a terminal).
 */
export type OutputFormat = 'json' | 'table' | 'text';

export function defaultFormat(): OutputFormat {
  return process.stdout.isTTY ? 'table' : 'json';
}

const QUERY_PART = /^([A-Za-z_][A-Za-z0-9_-]*)?((?:\[\d*\])*)$/;

/**
 * Refuse a --query outside the subset applyQuery() understands, as a usage
 * error naming the expression (checked before the request is sent).
 */
export function checkQuery(query: string): void {
  const parts = query.split('.');
  const bad = parts.find((p) => p === '' || !QUERY_PART.test(p));
  if (query === '' || bad !== undefined) {
    throw new UsageError(`unsupported --query expression "${query}"${bad ? ` (at "${bad}")` : ''}: use Member.Member, Member[0] or Member[].Member`);
  }
}

/** A tiny JMESPath subset: `A.B`, `A[0].B`, `A[].B` (a projection: missing and null results dropped). */
export function applyQuery(v: unknown, query: string | undefined): unknown {
  if (query === undefined) return v;
  checkQuery(query);
  let cur: unknown[] = [v];
  let mapped = false;
  for (const part of query.split('.')) {
    const m = QUERY_PART.exec(part)!;
    if (m[1]) cur = cur.map((x) => (x && typeof x === 'object' && Object.hasOwn(x, m[1]!) ? (x as Record<string, unknown>)[m[1]!] : undefined));
    for (const idx of m[2]!.match(/\[\d*\]/g) ?? []) {
      if (idx === '[]') { cur = cur.flatMap((x) => (Array.isArray(x) ? x : [])); mapped = true; }
      else cur = cur.map((x) => (Array.isArray(x) ? x[Number(idx.slice(1, -1))] : undefined));
    }
  }
  // As JMESPath: a projection (`A[].B`) leaves out what is missing or null, so
  // `Volumes[].Attachments[0].Device` lists the devices there are; a plain path to nothing is null.
  return mapped ? cur.filter((x) => x !== undefined && x !== null) : cur[0] ?? null;
}

/**
 * C0 controls, DEL and C1 controls: what a terminal may act on (ESC and CSI start sequences, BEL
 * ends OSC); and the bidirectional and line-separator controls (U+061C, U+200E/F, U+202A-E,
 * U+2066-9, U+2028/9), which reorder or break a row as displayed without being escape sequences.
 */
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/g;

/** `\x1b` for ESC, `\u202e` for a bidi override: the character's code as a visible escape. */
const visible = (c: string): string => {
  const n = c.charCodeAt(0);
  return n <= 0xff ? `\\x${n.toString(16).padStart(2, '0')}` : `\\u${n.toString(16).padStart(4, '0')}`;
};

/**
 * A value made safe to print on a terminal: every C0 and C1 control character
 * and DEL becomes a visible `\xNN` (ESC is `\x1b`, BEL `\x07`), so a volume
 * Name or tag value such as "\x1b]52;c;…\x07" (an OSC 52 clipboard write) or
 * "\x1b[2J" is shown, never acted on by the terminal of whoever lists it.
 * For cells of tables and text; --output json keeps values exact.
 */
export function printableCell(s: string): string {
  return s.replace(CONTROL, visible);
}

/** Output for a person, as a whole: controls other than the line breaks the layout itself uses made visible. */
function printableLayout(s: string): string {
  return s.replace(CONTROL, (c) => (c === '\n' ? c : visible(c)));
}

export function print(v: unknown, fmt: OutputFormat, table?: () => string): void {
  // An empty response (CreateAlias, EnableKey, DeleteVolume, ...) prints nothing, in every format, as the
  // AWS CLI does ("This command produces no output"); `{}` and `(empty)` told a script nothing either.
  // A command that draws its own table for people still draws it.
  if (isEmptyObject(v) && !(fmt === 'table' && table)) return;
  if (fmt === 'json') {
    // null, not {}, for a --query that names nothing (as the AWS CLI prints it).
    process.stdout.write(JSON.stringify(v === undefined ? null : v, null, 4) + '\n');
  } else if (fmt === 'text') {
    // Text feeds scripts (`--query … --output text`): values are exact, except on a terminal.
    const tty = process.stdout.isTTY === true;
    process.stdout.write(formatText(v === undefined ? null : v, tty ? printableCell : undefined));
  } else {
    // table() and kv() escape their cells; a command's own table callback may add lines of its own.
    process.stdout.write(printableLayout(table ? table() : kv(v)) + '\n');
  }
}

function isEmptyObject(v: unknown): boolean {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length === 0;
}

/** Nested object as indented `Key: value` lines. */
export function kv(v: unknown, indent = ''): string {
  if (v === null || v === undefined) return `${indent}-`;
  if (typeof v !== 'object') return `${indent}${printableCell(String(v))}`;
  const lines: string[] = [];
  const entries = Array.isArray(v) ? v.map((x, i) => [`[${i}]`, x] as const) : Object.entries(v);
  if (entries.length === 0) return `${indent}${Array.isArray(v) ? '(none)' : '(empty)'}`;
  for (const [key, x] of entries) {
    const k = printableCell(key);
    if (x !== null && typeof x === 'object' && (Array.isArray(x) ? x.length : Object.keys(x).length)) {
      lines.push(`${indent}${k}:`);
      lines.push(kv(x, indent + '  '));
    } else {
      lines.push(`${indent}${k}: ${x === null || x === undefined ? '-' : Array.isArray(x) ? '[]' : typeof x === 'object' ? '{}' : printableCell(String(x))}`);
    }
  }
  return lines.join('\n');
}

/** Fixed-width columns; cells through printableCell. */
export function table(rows: Record<string, unknown>[], columns: [header: string, get: (r: Record<string, unknown>) => unknown][]): string {
  if (rows.length === 0) return '(none)';
  const cells = rows.map((r) => columns.map(([, get]) => fmtCell(get(r))));
  const widths = columns.map(([h], i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]): string => c.map((x, i) => x.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(columns.map(([h]) => h)), ...cells.map(line)].join('\n');
}

function fmtCell(v: unknown): string {
  if (v === undefined || v === null || v === '') return '-';
  // JSON.stringify escapes C0 controls itself, not DEL or C1.
  return printableCell(typeof v === 'object' ? JSON.stringify(v) : String(v));
}

export function humanBytes(n: unknown): string {
  if (typeof n !== 'number') return '-';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let x = n;
  while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
  return `${Number.isInteger(x) ? x : x.toFixed(1)}${units[i]}`;
}
