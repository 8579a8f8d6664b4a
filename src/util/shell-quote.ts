/**
 * `s` as one word of a POSIX shell command line, for a command a message tells the operator to run:
 * as is when it holds only characters no shell treats specially, otherwise in single quotes (a
 * single quote in it written `'\''`).
 */
export function shellQuote(s: string): string {
  if (/^[A-Za-z0-9_\/.,:@%+=-]+$/.test(s)) return s;
  return `'${s.replace(/'/g, `'\\''`)}'`;
}
