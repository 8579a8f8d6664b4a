import { EbsdError } from './errors.js';

/**
 * A state file (catalog.json, grants.json, identities.json, ...) that is not
 * valid JSON. The message names the file and where the parse stopped, so an
 * operator can find the damage; `code` is the caller's (`CATALOG_CORRUPT`, ...).
 */
export class StateFileError extends EbsdError {
  constructor(code: string, readonly file: string, message: string, cause?: unknown) {
    super(code, message, cause === undefined ? {} : { cause });
  }
}

/** JSON.parse of a state file's text; a syntax error becomes a StateFileError naming `file`, line and column. */
export function parseStateJson(code: string, file: string, text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    const why = (e as Error).message;
    const pos = /at position (\d+)/.exec(why);
    let where = '';
    if (pos) {
      const before = text.slice(0, Number(pos[1]));
      const line = before.split('\n').length;
      where = ` (line ${line}, column ${before.length - before.lastIndexOf('\n')})`;
    } else if (text.trim() === '') where = ' (the file is empty)';
    throw new StateFileError(code, file, `${file} is corrupt: not valid JSON${where}: ${why}`, e);
  }
}
