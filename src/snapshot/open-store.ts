import { join } from 'node:path';
import { ArgRangeError } from '../util/errors.js';
import { DirSnapshotStore } from './dir-store.js';
import type { CollectableStore } from './gc.js';
import type { S3SnapshotStoreOptions } from './s3-store.js';

/** `<state>/snapshots`: the default store's directory. */
export const SNAPSHOTS_DIR = 'snapshots';

/**
 * The store `--snapshot-store` names (docs/architecture.md §13.1):
 *   undefined            a directory store at `<state>/snapshots`
 *   s3://bucket[/prefix] an S3-compatible store, configured the standard AWS way
 * Anything else is refused naming the value. Call it with the state-dir lock
 * held: opening the directory store removes temp files of interrupted writes.
 * `s3` passes options to the S3 client (tests: credentials, timeouts).
 */
export async function openSnapshotStore(
  spec: string | undefined,
  stateDir: string,
  s3: Omit<S3SnapshotStoreOptions, 'bucket' | 'prefix'> = {},
): Promise<CollectableStore> {
  if (spec === undefined) return DirSnapshotStore.open(join(stateDir, SNAPSHOTS_DIR), { removeTemps: true });
  const m = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(spec);
  if (!m) {
    throw new ArgRangeError('--snapshot-store', `"${spec}" is not a snapshot store: give s3://BUCKET[/PREFIX], or leave it out for ${join(stateDir, SNAPSHOTS_DIR)}`);
  }
  // The S3 client is loaded only for an S3 store: the directory store's daemon starts without it.
  const { S3SnapshotStore } = await import('./s3-store.js');
  try {
    return await S3SnapshotStore.open({ ...s3, bucket: m[1]!, prefix: m[2] ?? '' });
  } catch (e) {
    if (e instanceof ArgRangeError) throw new ArgRangeError('--snapshot-store', `"${spec}": ${e.message}`);
    throw e;
  }
}
