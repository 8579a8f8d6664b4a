// A snapshot's blocks written through the directory store's block batch in its own
// process, so a test can SIGKILL it between two steps: argv STORE_DIR N_BLOCKS.
// Prints each block's hash, one a line, before the batch begins; then "committed"
// once the pack and its index are durable, then "done" once the manifest names them.
// EBSD_TEST_FAULT=snapshot-store.after-pack-sync kills it after the pack's fdatasync,
// before its index; EBSD_TEST_FAULT=pack-child.after-commit after the index, before the manifest.
import { createHash, randomBytes } from 'node:crypto';
import { DirSnapshotStore } from '../../dist/snapshot/dir-store.js';
import { faultPoint } from '../../dist/util/fault-point.js';

const [dir, n, id] = process.argv.slice(2);
const store = await DirSnapshotStore.open(dir);
const blocks = Array.from({ length: Number(n) }, () => randomBytes(512 * 1024));
const hashes = blocks.map((b) => createHash('sha256').update(b).digest('hex'));
process.stdout.write(hashes.map((h) => `${h}\n`).join(''));
const batch = store.openBlockBatch();
await Promise.all(blocks.map((b, i) => batch.put(hashes[i], b)));
await batch.commit();
process.stdout.write('committed\n');
faultPoint('pack-child.after-commit');
await store.putManifest({
  formatVersion: 1, snapshotId: id, volumeId: 'vol-0123456789abcdef0', volumeSize: 1, state: 'completed', progress: 100,
  startTime: '2026-11-30T09:00:00.000Z', description: '', tags: [], ownerId: '123456789012', encrypted: false, kmsKeyId: '',
  dataOffset: 4096, blocks: hashes.map((h, i) => [i, h]),
});
process.stdout.write('done\n');
