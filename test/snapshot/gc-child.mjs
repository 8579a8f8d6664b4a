// Runs the snapshot collector in its own process so a test can SIGKILL it:
// argv: STORE_DIR delete SNAP-ID | sweep | summaries (DescribeSnapshots' listing). Prints "start" before it begins and "done" after.
// Blocks are aged by running the collector's clock two grace periods ahead.
import { DirSnapshotStore } from '../../dist/snapshot/dir-store.js';
import { SnapshotGc } from '../../dist/snapshot/gc.js';

const [dir, mode, id] = process.argv.slice(2);
const store = await DirSnapshotStore.open(dir);
const gc = new SnapshotGc(store, { graceMs: 60_000, now: () => Date.now() + 120_000 });
process.stdout.write('start\n');
if (mode === 'delete') await (await gc.deleteSnapshot(id)).collected; // the blocks are collected after the delete resolves
else if (mode === 'summaries') process.stdout.write(`${(await store.listManifestSummaries()).length} summaries\n`);
else await gc.sweep();
process.stdout.write('done\n');
