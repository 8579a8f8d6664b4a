import { join } from 'node:path';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';

/**
 * What a daemon's directory store holds, read from disk by a store of the
 * test's own (block files and packs alike, docs/architecture.md §13.4), so
 * a test sees what a restart would see.
 */
export async function storedBlockSet(stateDir: string): Promise<Set<string>> {
  const store = await DirSnapshotStore.open(join(stateDir, 'snapshots'));
  const out = new Set<string>();
  for await (const h of store.listBlocks()) out.add(h);
  return out;
}

/** A stored block's bytes, checked against its hash by the store. */
export async function storedBlockBytes(stateDir: string, hash: string): Promise<Buffer> {
  return (await DirSnapshotStore.open(join(stateDir, 'snapshots'))).getBlock(hash);
}
