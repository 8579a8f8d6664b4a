#!/usr/bin/env node
// Restore from a snapshot under ANOTHER KMS key (every block decrypted and encrypted again,
// docs/architecture.md §14.1) against the XTS engine's single-thread speed, in one run.
// In-process: the KMS core, a VolumeManager, the snapshot manager over a directory store; no FUSE.
// Build first:  npx tsc -p .   then:
//   node scripts/bench/restore.mjs [--size-mib 256] [--runs 3] [--window 16] [--run-mib 8] [--max-writes 2] [--no-writeback]
//                                  [--cpu-threads N] [--cpu-mib 256]
// Correctness before timing: the first restore is attached and every written block read back
// and compared with what was written; only then are the timed runs made.
// Throughput = data bytes of the snapshot's stored blocks / wall time from CreateVolume to `available`.
// Reference: one thread of the same XTS engine encrypting 1 MiB runs (encryptSync), same run.
// Also, same run: that thread decrypting, and the CPU ceiling of a restore on this machine's
// cores (SHA-256 check + XTS decrypt + XTS encrypt of every byte and nothing else), computed
// (cores / (1/sha + 1/dec + 1/enc), from the one-core figures) and measured (--cpu-threads worker
// threads, default os.availableParallelism(), each doing that work on --cpu-mib MiB of its own
// blocks: restore-cpu-worker.mjs), each as a ratio to one XTS thread.
// Second reference, same run: the machine's durable write rate (the restore's bytes written to
// a new file in the same directory + one fdatasync), which bounds any restore that is durable
// before `available`. Also printed: SHA-256 on one core and on the pool, memcpy, page-cache
// reads, each stage of the restore alone (store reads with the hash check, re-encryption,
// image writes + fdatasync) and as it ran overlapped (per-stage time summed over blocks).
import { mkdtempSync, rmSync, openSync, writeSync, fdatasyncSync, closeSync, readSync } from 'node:fs';
import { createHash, webcrypto } from 'node:crypto';
import { tmpdir, loadavg, availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { KmsService } from '../../dist/kms/kms-core.js';
import { openAuthz, registerAuthzOperations } from '../../dist/kms/authz/index.js';
import { selectXtsEngine } from '../../dist/crypto/xts-engine.js';
import { VolumeManager } from '../../dist/volume/volume-manager.js';
import { KmsCoreKeyService } from '../../dist/volume/key-service.js';
import { DirSnapshotStore } from '../../dist/snapshot/dir-store.js';
import { SnapshotGc } from '../../dist/snapshot/gc.js';
import { SnapshotManager } from '../../dist/snapshot/snapshot-manager.js';
import { SnapshotRestore } from '../../dist/snapshot/restore.js';
import { pipeBlocks } from '../../dist/snapshot/block-pipeline.js';
import { ImageWriter } from '../../dist/snapshot/image-writer.js';
import { reencryptBlock } from '../../dist/snapshot/reencrypt.js';
import { startWriteback } from '../../dist/native/addon.js';

const arg = (n, d) => { const i = process.argv.indexOf(`--${n}`); return i > 0 ? process.argv[i + 1] : d; };
const MiB = 1024 * 1024;
const sizeMiB = Number(arg('size-mib', '256'));
const runs = Number(arg('runs', '3'));
const window = Number(arg('window', '16'));
const runMiB = Number(arg('run-mib', '8'));
const maxWrites = Number(arg('max-writes', '2'));
const earlyWriteback = !process.argv.includes('--no-writeback');
const cores = availableParallelism();
const cpuThreads = Number(arg('cpu-threads', String(cores)));
const cpuMiB = Number(arg('cpu-mib', '256'));
const ACCOUNT = '111122223333';
const REGION = 'us-east-1';

const dir = mkdtempSync(join(tmpdir(), 'ebsd-restore-bench-'));
let kms;
let mgr;
try {
  const authz = await openAuthz({ stateDir: dir, kmsDir: join(dir, 'kms'), accountId: ACCOUNT, region: REGION });
  kms = await KmsService.open({ stateDir: join(dir, 'kms'), accountId: ACCOUNT, region: REGION, authorizer: authz.authorizer });
  registerAuthzOperations(kms, authz.authorizer, { onKeyDeleted: kms.context.onKeyDeleted });
  const root = authz.identities.callerForUid(0);
  const engine = selectXtsEngine('auto');
  mgr = await VolumeManager.open({ stateDir: dir, keyService: new KmsCoreKeyService(kms), hostPrincipal: root, xtsEngine: engine, region: REGION });
  const keyA = (await kms.call('CreateKey', { Description: 'bench A' }, root)).KeyMetadata.Arn;
  const keyB = (await kms.call('CreateKey', { Description: 'bench B' }, root)).KeyMetadata.Arn;

  // A volume full of random data, snapshotted detached.
  const vol = (await mgr.createVolume({ Size: sizeMiB * MiB, KmsKeyId: keyA }, root)).VolumeId;
  await mgr.attachVolume({ VolumeId: vol }, root);
  const dev = mgr.getBlockDevice(vol);
  const chunk = randomBytes(4 * MiB);
  for (let off = 0; off < sizeMiB * MiB; off += chunk.length) {
    chunk.writeUInt32LE(off / chunk.length, 0); // every chunk differs: no block is stored once for several
    await dev.write(off, chunk);
  }
  await dev.flush();
  await mgr.detachVolume({ VolumeId: vol }, root);
  const store = await DirSnapshotStore.open(join(dir, 'snapshots'));
  const gc = new SnapshotGc(store, {});
  const snaps = await SnapshotManager.open({ store, gc, localDir: join(dir, 'snapshots-local'), volumes: mgr, accountId: ACCOUNT });
  const { SnapshotId } = await snaps.createSnapshot({ VolumeId: vol }, root);
  let m;
  for (;;) {
    m = await store.getManifest(SnapshotId);
    if (m.state !== 'pending') break;
    await new Promise((r) => setTimeout(r, 50));
  }
  if (m.state !== 'completed') throw new Error(`snapshot ended ${m.state}: ${m.stateMessage}`);
  const bytes = m.blocks.length * 512 * 1024;
  let timing;
  const restore = new SnapshotRestore({ store, volumes: mgr, window, writer: { runBytes: runMiB * MiB, maxWrites, earlyWriteback }, onTiming: (t) => (timing = t) });

  const restoreOnce = async (kmsKeyId = keyB) => {
    const t0 = process.hrtime.bigint();
    const v = await restore.createVolume({ SnapshotId, KmsKeyId: kmsKeyId }, root);
    await mgr.settled();
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    const d = mgr.describeVolumes({ VolumeIds: [v.VolumeId] }).Volumes[0];
    if (d.State !== 'available' || d.KmsKeyId !== kmsKeyId) throw new Error(`restore ended ${d.State} (${d.StateMessage ?? ''})`);
    return { id: v.VolumeId, s, timing };
  };

  // Correctness first: the restored volume, under the other key, reads back what was written.
  const first = await restoreOnce();
  await mgr.attachVolume({ VolumeId: first.id }, root);
  const back = Buffer.alloc(chunk.length);
  for (let off = 0; off < sizeMiB * MiB; off += chunk.length) {
    await mgr.getBlockDevice(first.id).read(off, back.length, back);
    chunk.writeUInt32LE(off / chunk.length, 0);
    if (!back.equals(chunk)) throw new Error(`restored data differs at ${off}`);
  }
  await mgr.detachVolume({ VolumeId: first.id }, root);
  await mgr.deleteVolume({ VolumeId: first.id }, root);

  // The engine's single-thread speed, measured right before each timed restore (the machine is
  // shared: interleaving keeps both figures under the same load): 1 MiB runs, 4 KiB units, tweak step 8.
  const ctx = engine.createContext(Buffer.concat([randomBytes(32), randomBytes(32)]));
  const buf = randomBytes(MiB);
  const xtsOnce = (secs, decrypt = false) => {
    let n = 0;
    let el = 0;
    const t0 = process.hrtime.bigint();
    while (el < secs) {
      if (decrypt) ctx.decryptSync(buf, n * 256 * 8, { unitSize: 4096, tweakStep: 8 });
      else ctx.encryptSync(buf, n * 256 * 8, { unitSize: 4096, tweakStep: 8 });
      n++;
      el = Number(process.hrtime.bigint() - t0) / 1e9;
    }
    return (n * MiB) / 1e6 / el;
  };
  const now = () => performance.now();
  const mbs = (n, ms) => (n / 1e6 / (ms / 1e3));
  const f0 = (x) => x.toFixed(0);
  // The disk's durable write rate for the restore's bytes: a new file in the same directory, written
  // in 8 MiB pwrites from the page cache, then one fdatasync (what a restore owes before `available`).
  const durableOnce = () => {
    const p = join(dir, 'durable.tmp');
    const fd = openSync(p, 'wx');
    const chunk = randomBytes(8 * MiB);
    const t0 = now();
    for (let off = 0; off < bytes; off += chunk.length) writeSync(fd, chunk, 0, Math.min(chunk.length, bytes - off), off);
    const t1 = now();
    fdatasyncSync(fd);
    const t2 = now();
    closeSync(fd);
    rmSync(p);
    return { total: mbs(bytes, t2 - t0), write: mbs(bytes, t1 - t0), syncMs: t2 - t1 };
  };
  const times = [];
  const xts = [];
  const xtsDec = [];
  const durable = [];
  const timings = [];
  for (let i = 0; i < runs; i++) {
    xts.push(xtsOnce(1));
    xtsDec.push(xtsOnce(1, true));
    durable.push(durableOnce());
    const r = await restoreOnce();
    times.push(r.s);
    timings.push(r.timing);
    await mgr.deleteVolume({ VolumeId: r.id }, root);
  }
  ctx.destroy();
  const same = [];
  for (let i = 0; i < runs; i++) {
    const r = await restoreOnce(keyA);
    same.push(r.s);
    await mgr.deleteVolume({ VolumeId: r.id }, root);
  }

  // The machine's ceilings, same process: SHA-256 (one core, pool), memcpy, page-cache read.
  const blocks = [];
  for (const [, h] of m.blocks) blocks.push(await store.getBlock(h));
  let t = now();
  for (const b of blocks) createHash('sha256').update(b).digest();
  const shaOne = mbs(bytes, now() - t);
  t = now();
  {
    let k = 0;
    await Promise.all(Array.from({ length: 8 }, async () => { while (k < blocks.length) await webcrypto.subtle.digest('SHA-256', blocks[k++]); }));
  }
  const shaPool = mbs(bytes, now() - t);
  const dst = Buffer.allocUnsafe(512 * 1024);
  t = now();
  for (const b of blocks) b.copy(dst);
  const memcpy = mbs(bytes, now() - t);
  const vImg = join(dir, 'volumes', `${vol}.img`);
  const rfd = openSync(vImg, 'r');
  const rb = Buffer.allocUnsafe(8 * MiB);
  for (let off = 0; off < bytes; off += rb.length) readSync(rfd, rb, 0, rb.length, 16 * MiB + off); // into the cache
  t = now();
  for (let off = 0; off < bytes; off += rb.length) readSync(rfd, rb, 0, rb.length, 16 * MiB + off);
  const cacheRead = mbs(bytes, now() - t);
  closeSync(rfd);

  // The restore's CPU work alone (hash check, decrypt, encrypt), on every core at once: worker threads
  // with their own blocks, started together once each has checked its first block; each reports the
  // wall time of its timed pass, and the rate is all their bytes over the longest of them.
  const cpuRuns = await Promise.all(Array.from({ length: cpuThreads }, (_, seed) => new Promise((res, rej) => {
    const wk = new Worker(new URL('./restore-cpu-worker.mjs', import.meta.url), { workerData: { mib: cpuMiB, seed } });
    wk.once('error', rej);
    wk.on('message', (msg) => { if (msg.ready) res(wk); });
  })));
  const cpuDone = cpuRuns.map((wk) => new Promise((res, rej) => {
    wk.once('error', rej);
    wk.on('message', (msg) => { if (!msg.ready) { res(msg); wk.terminate(); } });
  }));
  for (const wk of cpuRuns) wk.postMessage('go');
  const cpuRes = await Promise.all(cpuDone);
  const cpuMeasured = mbs(cpuRes.reduce((a, r) => a + r.bytes, 0), Math.max(...cpuRes.map((r) => r.ms)));

  // Each stage alone, as the pipeline runs it.
  t = now();
  await pipeBlocks({ store, manifest: m, window, sink: { put: async () => {} } });
  const readAlone = mbs(bytes, now() - t);
  const kA = engine.createContext(Buffer.concat([randomBytes(32), randomBytes(32)]));
  const kB = engine.createContext(Buffer.concat([randomBytes(32), randomBytes(32)]));
  t = now();
  {
    let k = 0;
    await Promise.all(Array.from({ length: window }, async () => { while (k < blocks.length) { const i = k++; await reencryptBlock(kA, kB, blocks[i], m.blocks[i][0]); } }));
  }
  const xAlone = mbs(bytes, now() - t);
  kA.destroy();
  kB.destroy();
  const wPath = join(dir, 'writer.tmp');
  closeSync(openSync(wPath, 'wx'));
  t = now();
  const w = await ImageWriter.open(wPath, 0, { runBytes: runMiB * MiB, maxWrites, earlyWriteback });
  for (let k = 0; k < blocks.length; k++) await w.put(m.blocks[k][0], blocks[k]);
  await w.finish();
  const wAlone = mbs(bytes, now() - t);
  const wSync = w.stats.syncMs;
  rmSync(wPath);

  const med = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
  const restoreMBs = bytes / 1e6 / med(times);
  const xtsMBs = med(xts);
  const durMBs = med(durable.map((d) => d.total));
  const xtsDecMBs = med(xtsDec);
  const cpuCeiling = cores / (1 / shaOne + 1 / xtsDecMBs + 1 / xtsMBs);
  const load = loadavg().map((x) => x.toFixed(2)).join(' ');
  console.log(`restore under another key: ${sizeMiB} MiB volume, ${m.blocks.length} blocks, ${runs} runs: ${times.map((x) => x.toFixed(2)).join(', ')} s (window ${window}, runs ${runMiB} MiB, ${maxWrites} writes at once, early writeback ${earlyWriteback && startWriteback ? 'on' : 'off'})`);
  console.log(`  restore (decrypt + encrypt + SHA-256 check + write + fdatasync), median: ${f0(restoreMBs)} MB/s`);
  console.log(`  XTS ${engine.name} (${engine.library}) one thread, encrypt only, before each run: ${xts.map(f0).join(', ')} MB/s, median ${f0(xtsMBs)}`);
  console.log(`  XTS ${engine.name} one thread, decrypt only, before each run: ${xtsDec.map(f0).join(', ')} MB/s, median ${f0(xtsDecMBs)}`);
  console.log(`  restore CPU ceiling on ${cores} cores (SHA-256 check + decrypt + encrypt per byte, nothing else): computed ${cores} / (1/${f0(shaOne)} + 1/${f0(xtsDecMBs)} + 1/${f0(xtsMBs)}) = ${f0(cpuCeiling)} MB/s, ${(cpuCeiling / xtsMBs).toFixed(2)}x XTS one thread; measured, ${cpuThreads} worker threads x ${cpuMiB} MiB: ${f0(cpuMeasured)} MB/s (each ${cpuRes.map((r) => f0(mbs(r.bytes, r.ms))).join(', ')}), ${(cpuMeasured / xtsMBs).toFixed(2)}x XTS one thread; the restore reaches ${(restoreMBs / cpuMeasured).toFixed(2)} of the measured ceiling`);
  console.log(`  durable write of ${sizeMiB} MiB (pwrite + fdatasync), before each run: ${durable.map((d) => f0(d.total)).join(', ')} MB/s, median ${f0(durMBs)} (page-cache writes ${durable.map((d) => f0(d.write)).join(', ')} MB/s; fdatasync ${durable.map((d) => f0(d.syncMs)).join(', ')} ms)`);
  console.log(`  ratio to XTS one thread: ${(restoreMBs / xtsMBs).toFixed(2)} (goal >= 0.5); to the durable write: ${(restoreMBs / durMBs).toFixed(2)}`);
  console.log(`  same key (ciphertext copy), ${runs} runs: ${same.map((x) => x.toFixed(2)).join(', ')} s, median ${f0(bytes / 1e6 / med(same))} MB/s`);
  for (const [i, tm] of timings.entries()) {
    console.log(`  run ${i + 1} stages overlapped (ms summed over blocks): read+hash ${f0(tm.readMs)}, re-encrypt ${f0(tm.transformMs)}, waiting on the writer ${f0(tm.sinkWaitMs)}, writes ${f0(tm.writeMs)} (${tm.writes} writev), pipeline wall ${f0(tm.wallMs)}, final fdatasync ${f0(tm.syncMs)}, blocks to durable ${f0(tm.totalMs)}; request to available ${f0(times[i] * 1000)}`);
  }
  console.log(`  stages alone: store read + SHA-256 check ${f0(readAlone)} MB/s, re-encrypt (pool, ${window} blocks at once) ${f0(xAlone)} MB/s, image writes + fdatasync ${f0(wAlone)} MB/s (fdatasync ${f0(wSync)} ms)`);
  console.log(`  machine: SHA-256 one core ${f0(shaOne)} MB/s, on the pool (8 at once) ${f0(shaPool)} MB/s, memcpy ${f0(memcpy)} MB/s, page-cache read ${f0(cacheRead)} MB/s`);
  console.log(`  load average ${load}`);
  await snaps.close?.();
} finally {
  await mgr?.close().catch(() => {});
  await kms?.close().catch(() => {});
  rmSync(dir, { recursive: true, force: true });
}
