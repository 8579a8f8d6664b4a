/**
 * The files of an audit log: the live `events.ndjson` and the sealed, rotated
 * `events.<first sequence, 12 digits>.ndjson` before it (audit-log.ts), read
 * oldest first as one stream.
 */
import { promises as fsp, readdirSync } from 'node:fs';

export const EVENTS_FILE = 'events.ndjson';
/** A sealed, rotated log file: `events.<first sequence>.ndjson`. */
export const sealedName = (firstSeq: number): string => `events.${String(firstSeq).padStart(12, '0')}.ndjson`;
export const SEALED_FILE = /^events\.\d{12}\.ndjson$/;
/** The first sequence of a sealed file, from its name. */
export const sealedFirstSeq = (name: string): number => Number(name.slice('events.'.length, 'events.'.length + 12));
/** A digest file: `digests/<last sequence, 12 digits>.json`. */
export const DIGEST_FILE = /^\d{12}\.json$/;
/** The last sequence a digest covers, from its name. */
export const digestSeqOf = (name: string): number => Number(name.slice(0, 12));

/** The log files of an audit dir, oldest first: the sealed ones by first sequence, then the live one. */
export function auditLogFiles(dir: string): string[] {
  let names: string[] = [];
  try { names = readdirSync(dir); } catch { return []; }
  const sealed = names.filter((f) => SEALED_FILE.test(f)).sort();
  return names.includes(EVENTS_FILE) ? [...sealed, EVENTS_FILE] : sealed;
}

/** The last `n` complete lines of a file, reading backwards in 256 KiB steps. */
export async function readLastLines(path: string, n: number): Promise<string[]> {
  let fh: fsp.FileHandle;
  try { fh = await fsp.open(path, 'r'); } catch { return []; }
  try {
    let pos = (await fh.stat()).size;
    let text = '';
    let lines: string[] = [];
    while (pos > 0) {
      const len = Math.min(pos, 256 * 1024);
      pos -= len;
      const buf = Buffer.alloc(len);
      await fh.read(buf, 0, len, pos);
      text = buf.toString('utf8') + text;
      lines = text.split('\n').filter((l) => l.trim() !== '');
      if (pos > 0) lines.shift(); // possibly partial first line
      if (lines.length >= n) break;
    }
    return lines.slice(-n);
  } finally {
    await fh.close();
  }
}
