import { promises as fsp } from 'node:fs';

/** A UTF-8 file's text, or undefined if it does not exist (yet); any other error is thrown. */
export async function readTextIfExists(path: string): Promise<string | undefined> {
  try {
    return await fsp.readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}
