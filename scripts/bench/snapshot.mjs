#!/usr/bin/env node
// Snapshot benchmark (issue 17, Speed). Build first (npx tsc -p .), run as root:
//   node scripts/bench/snapshot.mjs [--size-mib 1024] [--runs 3] [--fio-seconds 10] [--skip-fio | --only-fio] [--log] [--json]
// In one run, on one daemon (a child process with its own state dir under /tmp):
//   1. full snapshot of an attached, filled, encrypted volume, from CreateSnapshot to
//      `completed` (blocks durable), against `cp` of the same image file (and cp + sync,
//      which, like the snapshot, waits for the disk), each from an image out of the page cache;
//      the snapshot is checked first: every
//      stored block equals the image's ciphertext (docs/architecture.md §11.14);
//   2. incremental snapshot after 1 % of the blocks were rewritten, against the full one
//      (both as the client sees them, polling every 10 ms, and as the daemon measures them:
//      from CreateSnapshot reaching the snapshot manager to the completed manifest durable,
//      its log's split, each part rounded to 1 ms);
//   3. fio 4 KiB random write IOPS on the volume file while full snapshots run back to back,
//      against fio alone (--runs pairs, alternating, medians), and how long those snapshots
//      take against one on the idle volume (the copier yields to writes: cow-pacer.ts).
// --only-fio: only the correctness check and part 3. --log: each snapshot's copy and durable
// times and copy-on-write counts, from the daemon's log.
// --skip-fio: parts 1 and 2 only.
// --baseline DIR (with --only-fio): a second build (a checkout with dist/ and native/build/, e.g. the
//   commit before a change) runs as a second daemon with its own volume; in every pair both builds run
//   fio alone and with snapshots, in alternating order (A/B in the same run).
// --daemon-node-args '...': V8/node flags for this build's daemon. --cpu-prof DIR: this build's daemon
//   writes a V8 CPU profile there at exit; the bench prints the monotonic windows of its fio phases
//   (scripts/bench/cpuprof-window.mjs reads a profile within them).
// --env-this K=V (repeatable): an environment variable for this build's daemon only (the baseline's
//   inherits the bench's environment), e.g. --env-this EBSD_TEST_COW_TRIM_MS=600000 (keep COW slabs 10 min).
// Each fio phase also prints the daemon's CPU per thread (/proc/PID/task/*/stat) in µs per fio write,
// with its system (kernel) part, voluntary context switches per 1000 writes, and fio's own latency
// (submission to completion) p50 / p99 (µs; one write in flight at a time on a FUSE file, see docs/benchmarks.md).
// --log also prints, per snapshot, captures read on the pool and the write watchdog's trips (native-io.ts).
// Each full run deletes its snapshot (collector grace 0) so the next one stores every block
// again. Prints the load average beside the figures: the machine may be shared.
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, mkdirSync, openSync, readSync, closeSync, rmSync, writeSync, readFileSync, readdirSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { callDaemon, socketPathFor } = await import(pathToFileURL(join(root, 'dist/cli/client.js')).href);
const args = process.argv.slice(2);
const arg = (n, d) => (args.includes(`--${n}`) ? args[args.indexOf(`--${n}`) + 1] : d);
const SIZE_MIB = Number(arg('size-mib', '1024'));
const RUNS = Number(arg('runs', '3'));
const FIO_SECONDS = Number(arg('fio-seconds', '10'));
const SKIP_FIO = args.includes('--skip-fio');
const ONLY_FIO = args.includes('--only-fio');
const B = 512 * 1024;
const DATA_OFFSET = 16 * 1024 * 1024;

const BASELINE = arg('baseline', undefined);
const NODE_ARGS = (arg('daemon-node-args', '') || '').split(' ').filter(Boolean);
const CPU_PROF = arg('cpu-prof', undefined);
const ENV_THIS = {};
args.forEach((a, i) => {
  if (a !== '--env-this') return;
  const kv = args[i + 1] ?? '';
  if (!kv.includes('=')) throw new Error(`--env-this wants K=V, got '${kv}'`);
  ENV_THIS[kv.slice(0, kv.indexOf('='))] = kv.slice(kv.indexOf('=') + 1);
});
if (BASELINE && !ONLY_FIO) throw new Error('--baseline runs the fio part only: add --only-fio');

const dir = mkdtempSync('/tmp/ebsd-bench-snap-');
const load0 = loadavg();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Child processes run without blocking the event loop: a loop blocked in spawnSync would miss
// the daemon closing an idle keep-alive connection and then write into it (EPIPE).
const sh = (cmd, a) => new Promise((res, rej) => {
  const p = spawn(cmd, a, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  p.stderr.on('data', (c) => (err += c));
  p.on('exit', (c) => (c === 0 ? res() : rej(new Error(`${cmd} ${a.join(' ')}: exit ${c}: ${err}`))));
});
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
/**
 * Per thread name (comm) of a process (the event loop 'main', libuv's pool, V8's helpers): CPU ms
 * [user, system] and voluntary context switches (the thread slept: a wait in the kernel or for work).
 */
const threadsOf = (pid) => {
  const out = new Map();
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      const st = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      const vcs = Number(/voluntary_ctxt_switches:\s*(\d+)/.exec(readFileSync(`/proc/${pid}/task/${t}/status`, 'utf8'))?.[1] ?? 0);
      const comm = t === String(pid) ? 'main' : st.slice(st.indexOf('(') + 1, st.lastIndexOf(')')) + (process.env.BENCH_TIDS ? `:${t}` : '');
      const f = st.slice(st.lastIndexOf(') ') + 2).split(' ');
      const o = out.get(comm) ?? { u: 0, s: 0, vcs: 0 };
      o.u += Number(f[11]) * 10; // CLK_TCK 100
      o.s += Number(f[12]) * 10;
      o.vcs += vcs;
      out.set(comm, o);
    } catch { /* the thread ended */ }
  }
  return out;
};

/** One daemon of one build, with its own state dir, mount and attached volume. */
const builds = [];
async function startBuild(name, buildRoot, nodeArgs, env = process.env) {
  const bdir = join(dir, name);
  const state = join(bdir, 'state');
  const mnt = join(bdir, 'mnt');
  mkdirSync(bdir, { recursive: true });
  const logPath = join(bdir, 'daemon.log');
  // The daemon logs straight into a file, read for readiness.
  const logFd = openSync(logPath, 'a');
  const daemon = spawn(process.execPath, [...nodeArgs, join(buildRoot, 'dist/cli/main.js'), 'daemon', '--state-dir', state, '--mount', mnt, '--snapshot-gc-grace', '0'], { stdio: ['ignore', logFd, logFd], env });
  const b = { name, daemon, state, mnt, logPath, call: (t, x = {}) => callDaemon(socketPathFor(state), t, x) };
  builds.push(b);
  for (let i = 0; !readFileSync(logPath, 'utf8').includes('"ebsd daemon ready"'); i++) {
    if (i > 600 || daemon.exitCode !== null) throw new Error(`${name}: daemon not ready (see its log)`);
    await sleep(50);
  }
  b.vol = (await b.call('ebsd.CreateVolume', { Size: SIZE_MIB * 1024 * 1024 })).VolumeId;
  await b.call('ebsd.AttachVolume', { VolumeId: b.vol });
  b.file = join(mnt, b.vol);
  b.image = join(state, 'volumes', `${b.vol}.img`);
  // Fill with random data (every block non-zero, nothing deduplicates).
  await sh('dd', ['if=/dev/urandom', `of=${b.file}`, 'bs=1M', `count=${SIZE_MIB}`, 'oflag=direct', 'conv=notrunc,fsync', 'status=none']);
  return b;
}

try {
  if (BASELINE) await startBuild('baseline', resolve(BASELINE), []);
  const me = await startBuild('this', root, [...NODE_ARGS, ...(CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', resolve(CPU_PROF)] : [])], { ...process.env, ...ENV_THIS });
  const { call, vol, file, image, state } = me;

  // Polls every 10 ms for the snapshot timings; every 250 ms while fio runs, where the snapshot's
  // duration is a by-product and a client reading the manifest 100 times a second would be
  // part of what fio is measured against.
  const snapshotOf = async (b, pollMs = 10) => {
    const t0 = performance.now();
    const s = await b.call('ebsd.CreateSnapshot', { VolumeId: b.vol });
    for (;;) {
      const d = (await b.call('ebsd.DescribeSnapshots', { SnapshotIds: [s.SnapshotId] })).Snapshots[0];
      if (d.State === 'completed') return { id: s.SnapshotId, ms: performance.now() - t0 };
      if (d.State === 'error') throw new Error(`${b.name}: snapshot ${s.SnapshotId} failed: ${d.StateMessage}`);
      await sleep(pollMs);
    }
  };
  const snapshot = (pollMs) => snapshotOf(me, pollMs);
  const manifestOf = (b, id) => JSON.parse(readFileSync(join(b.state, 'snapshots', 'manifests', `${id}.json`), 'utf8'));
  const manifest = (id) => manifestOf(me, id);
  // The daemon's own split of a snapshot's time (its `snapshot completed` log line): where the time goes.
  const completedLog = (id) => {
    const line = readFileSync(me.logPath, 'utf8').split('\n').find((l) => l.includes(id) && l.includes('"snapshot completed"'));
    return line ? JSON.parse(line) : {};
  };

  // The daemon's own measure of each snapshot, from CreateSnapshot reaching the snapshot manager to
  // its completed manifest durable (the four parts of its "snapshot completed" line): without the client's round trip and
  // the 10 ms poll that the client-side figures include. (The manifest's completionTime is stamped before
  // that last write, so it would leave out 4-10 ms.)
  const recorded = (id) => {
    const l = completedLog(id);
    const ms = l.startMs + l.copyMs + l.durableMs + l.manifestMs;
    // A missing line or field would be NaN, which sorts anywhere in a median: stop instead.
    if (!Number.isFinite(ms)) throw new Error(`no complete "snapshot completed" line for ${id} in ${me.logPath}`);
    return ms;
  };

  // Correctness first (each build): every block of a full snapshot is the image's ciphertext.
  let first;
  for (const b of builds) {
    const f = await snapshotOf(b);
    const m = manifestOf(b, f.id);
    if (m.blocks.length !== (SIZE_MIB * 1024 * 1024) / B) throw new Error(`${b.name}: full snapshot lists ${m.blocks.length} blocks`);
    const fd = openSync(b.image, 'r');
    const buf = Buffer.alloc(B);
    for (const [i, h] of m.blocks) {
      readSync(fd, buf, 0, B, DATA_OFFSET + i * B);
      if (createHash('sha256').update(buf).digest('hex') !== h) throw new Error(`${b.name}: block ${i} differs from the image`);
    }
    closeSync(fd);
    await b.call('ebsd.DeleteSnapshot', { SnapshotId: f.id });
    if (b === me) first = f;
  }
  const idleFullMs = first.ms;

  // 1. full snapshot vs cp (and cp + sync), alternating.
  const full = [];
  const cp = [];
  const cpSync = [];
  const fullSplit = [];
  // Each starts with the image out of the page cache (GNU dd: iflag=nocache count=0 drops a file's
  // clean pages): before, the snapshot read it from the disk and the cp that followed from the cache
  // the snapshot had just filled, so the ratio measured the page cache as much as the copy.
  const evict = () => sh('dd', [`if=${image}`, 'iflag=nocache', 'count=0', 'status=none']);
  for (let r = 0; r < (ONLY_FIO ? 0 : RUNS); r++) {
    await evict();
    const s = await snapshot();
    full.push(s.ms);
    fullSplit.push(s.id);
    await call('ebsd.DeleteSnapshot', { SnapshotId: s.id });
    const copy = join(dir, 'copy.img');
    await evict();
    let t = performance.now();
    await sh('cp', [image, copy]);
    cp.push(performance.now() - t);
    rmSync(copy);
    await evict();
    t = performance.now();
    await sh('cp', [image, copy]);
    await sh('sync', ['-f', copy]);
    cpSync.push(performance.now() - t);
    rmSync(copy);
  }

  // 2. incremental after 1 % of the blocks changed, against a full one.
  if (!ONLY_FIO) await snapshot();
  const nBlocks = (SIZE_MIB * 1024 * 1024) / B;
  const incr = [];
  const incrSplit = [];
  const fdw = openSync(file, 'r+');
  for (let r = 0; r < (ONLY_FIO ? 0 : RUNS); r++) {
    for (let k = 0; k < Math.ceil(nBlocks / 100); k++) {
      const i = Math.floor(Math.random() * nBlocks);
      writeSync(fdw, randomBytes(B), 0, B, i * B);
    }
    const s = await snapshot();
    incr.push(s.ms);
    incrSplit.push(s.id);
    const mm = manifest(s.id);
    if (mm.changedBlocks > Math.ceil(nBlocks / 100)) throw new Error(`incremental changed ${mm.changedBlocks} blocks`);
  }
  closeSync(fdw);

  // 3. fio random writes alone, then with full snapshots back to back (each build, alternating per pair).
  /** Per build: fio IOPS alone and with snapshots, per pair; the snapshots' durations under fio; CPU per thread. */
  for (const b of builds) Object.assign(b, { alones: [], withs: [], underFioMs: [], during: 0, threads: { alone: [], with: [] }, sys: { alone: [], with: [] }, vcs: { alone: [], with: [] }, lat: { alone: [], with: [] } });
  /** Monotonic windows (µs, the clock of a V8 CPU profile) of this build's fio phases. */
  const windows = { alone: [], with: [] };
  if (!SKIP_FIO) {
    const fio = (b) => new Promise((res, rej) => {
      const p = spawn('fio', ['--name=rw', `--filename=${b.file}`, '--rw=randwrite', '--bs=4k', '--direct=1', '--ioengine=libaio', '--iodepth=16',
        `--runtime=${FIO_SECONDS}`, '--time_based', '--fallocate=none', '--lat_percentiles=1', '--output-format=json'], { stdio: ['ignore', 'pipe', 'inherit'] });
      let o = '';
      p.stdout.on('data', (c) => (o += c));
      p.on('exit', (c) => {
        if (c !== 0) return rej(new Error(`fio exit ${c}`));
        const w = JSON.parse(o.slice(o.indexOf('{'))).jobs[0].write;
        const pct = w.lat_ns?.percentile ?? {};
        res({ iops: w.iops, p50: (pct['50.000000'] ?? NaN) / 1000, p99: (pct['99.000000'] ?? NaN) / 1000 });
      });
    });
    // The daemon's CPU per thread over one fio phase, in µs per fio write.
    const phase = async (b, kind, run) => {
      const th0 = threadsOf(b.daemon.pid);
      const t0 = process.hrtime.bigint();
      // BENCH_PERF=PREFIX: `perf record` of this build's daemon over its first phase of each kind (PREFIX.alone, PREFIX.with).
      let perf;
      if (process.env.BENCH_PERF && b === me && !b.threads[kind].length) {
        perf = spawn('perf', ['record', '-q', '-F', '499', '-g', '-p', String(b.daemon.pid), '-o', `${process.env.BENCH_PERF}.${kind}`, '--', 'sleep', String(FIO_SECONDS - 1)], { stdio: 'ignore' });
      }
      const { iops, p50, p99 } = await run();
      if (perf && perf.exitCode === null) await new Promise((r) => perf.once('exit', r));
      const t1 = process.hrtime.bigint();
      const ios = iops * (Number(t1 - t0) / 1e9);
      const per = {};
      const sys = {};
      const vcs = {};
      for (const [k, v] of threadsOf(b.daemon.pid)) {
        const z = th0.get(k) ?? { u: 0, s: 0, vcs: 0 };
        per[k] = ((v.u + v.s - z.u - z.s) * 1000) / ios;
        sys[k] = ((v.s - z.s) * 1000) / ios;
        vcs[k] = ((v.vcs - z.vcs) * 1000) / ios;
      }
      b.threads[kind].push(per);
      b.sys[kind].push(sys);
      b.vcs[kind].push(vcs);
      b.lat[kind].push([p50, p99]);
      if (b === me) windows[kind].push([Number(t0 / 1000n), Number(t1 / 1000n)]);
      return iops;
    };
    // Every snapshot during fio is full: the previous one is deleted first.
    for (const b of builds) for (const s of (await b.call('ebsd.DescribeSnapshots', {})).Snapshots) await b.call('ebsd.DeleteSnapshot', { SnapshotId: s.SnapshotId });
    for (let r = 0; r < RUNS; r++) {
      for (const b of r % 2 ? [...builds].reverse() : builds) {
        b.alones.push(await phase(b, 'alone', () => fio(b)));
        let snapping = true;
        const loop = (async () => {
          while (snapping) {
            b.during++;
            const s = await snapshotOf(b, 250);
            if (snapping) b.underFioMs.push(s.ms);
            await b.call('ebsd.DeleteSnapshot', { SnapshotId: s.id });
          }
        })();
        // Awaited below; until then a failure must not be an unhandled rejection, which would end the
        // process past the finally and leave the daemon and its mount behind.
        loop.catch(() => {});
        b.withs.push(await phase(b, 'with', () => fio(b)));
        snapping = false;
        await loop;
      }
    }
  }
  const { alones, withs, underFioMs, during } = me;
  const alone = alones.length ? median(alones) : NaN;
  const withSnap = withs.length ? median(withs) : NaN;

  // Read once every run is done: a log line may reach the file a moment after the manifest.
  const fullRec = fullSplit.map(recorded);
  const incrRec = incrSplit.map(recorded);
  const mibs = (ms) => (SIZE_MIB / (ms / 1000)).toFixed(0);
  const ms = (xs) => (xs.length ? Math.round(median(xs)) : null);
  const res = {
    sizeMiB: SIZE_MIB,
    runs: RUNS,
    loadavgStart: load0.map((x) => x.toFixed(1)).join(' '),
    loadavgEnd: loadavg().map((x) => x.toFixed(1)).join(' '),
    fullMs: ms(full),
    cpMs: ms(cp),
    cpSyncMs: ms(cpSync),
    fullVsCp: full.length ? +(median(cp) / median(full)).toFixed(2) : null,
    fullVsCpSync: full.length ? +(median(cpSync) / median(full)).toFixed(2) : null,
    incrementalMs: ms(incr),
    incrementalVsFull: incr.length ? +(median(incr) / median(full)).toFixed(3) : null,
    fullRecordedMs: ms(fullRec),
    incrementalRecordedMs: ms(incrRec),
    incrementalRecordedVsFull: incrRec.length ? +(median(incrRec) / median(fullRec)).toFixed(3) : null,
    fioIopsAlone: Math.round(alone),
    fioIopsDuringSnapshots: Math.round(withSnap),
    fioIopsAloneRuns: alones.map(Math.round),
    fioIopsDuringRuns: withs.map(Math.round),
    snapshotsDuringFio: during,
    fioRatio: +(withSnap / alone).toFixed(2),
    fullSplit: fullSplit.map(completedLog).map((l) => ({ startMs: l.startMs, copyMs: l.copyMs, durableMs: l.durableMs, manifestMs: l.manifestMs })),
    incrementalSplit: incrSplit.map(completedLog).map((l) => ({ blocksRead: l.blocksRead, startMs: l.startMs, copyMs: l.copyMs, durableMs: l.durableMs, manifestMs: l.manifestMs })),
    idleFullMs: Math.round(idleFullMs),
    underFioFullMs: ms(underFioMs),
    underFioCompleted: underFioMs.length,
    builds: builds.map((b) => ({ name: b.name, alones: b.alones.map(Math.round), withs: b.withs.map(Math.round), threads: b.threads, sys: b.sys, vcs: b.vcs, latUs: b.lat, underFioMs: b.underFioMs.map(Math.round) })),
    windows,
  };
  if (args.includes('--json')) console.log(JSON.stringify(res));
  else {
    console.log(`snapshot bench, ${SIZE_MIB} MiB encrypted volume, median of ${RUNS}; load average ${res.loadavgStart} -> ${res.loadavgEnd}`);
    if (!ONLY_FIO) {
      console.log(`full snapshot       ${res.fullMs} ms (${mibs(res.fullMs)} MiB/s)`);
      console.log(`cp of the image     ${res.cpMs} ms (${mibs(res.cpMs)} MiB/s)   snapshot/cp throughput ${res.fullVsCp}x (goal >= 0.8x)`);
      console.log(`cp + sync           ${res.cpSyncMs} ms (${mibs(res.cpSyncMs)} MiB/s)   snapshot/(cp+sync) ${res.fullVsCpSync}x`);
      console.log(`incremental (1 %)   ${res.incrementalMs} ms   = ${(res.incrementalVsFull * 100).toFixed(1)} % of full (goal <= 5 %)`);
      console.log(`  as the daemon measures them (CreateSnapshot to completed manifest durable): full ${res.fullRecordedMs} ms, incremental ${res.incrementalRecordedMs} ms = ${(res.incrementalRecordedVsFull * 100).toFixed(1)} % of full`);
      console.log(`  daemon's split     full ${JSON.stringify(res.fullSplit)}; incremental ${JSON.stringify(res.incrementalSplit)}`);
    }
    if (!SKIP_FIO) {
      console.log(`fio 4k randwrite    ${res.fioIopsAlone} IOPS alone, ${res.fioIopsDuringSnapshots} IOPS with full snapshots running throughout (${during} started): ${res.fioRatio}x (goal >= 0.7x); runs alone ${res.fioIopsAloneRuns.join(' ')}, with ${res.fioIopsDuringRuns.join(' ')}`);
      console.log(`snapshot duration   ${res.idleFullMs} ms on the idle volume (the check run), median ${res.underFioFullMs ?? '-'} ms of ${res.underFioCompleted} completed under fio`);
      for (const b of builds) {
        const ratios = b.withs.map((w, i) => (w / b.alones[i]).toFixed(2));
        console.log(`${b.name.padEnd(9)} fio alone ${b.alones.map(Math.round).join(' ')}, with ${b.withs.map(Math.round).join(' ')}: median ${(median(b.withs) / median(b.alones)).toFixed(3)}x, per pair ${ratios.join(' ')}, median of pairs ${median(ratios.map(Number)).toFixed(2)}x`);
        for (const kind of ['alone', 'with']) {
          const names = [...new Set(b.threads[kind].flatMap((x) => Object.keys(x)))].sort();
          const med = (xs, t) => median(xs.map((x) => x[t] ?? 0));
          console.log(`  daemon CPU µs per fio write, ${kind.padEnd(5)} (median): ${names.map((t) => `${t} ${med(b.threads[kind], t).toFixed(1)} (sys ${med(b.sys[kind], t).toFixed(1)}, vcsw/1000 ${med(b.vcs[kind], t).toFixed(0)})`).join(', ')}`);
          console.log(`  fio lat µs, ${kind.padEnd(5)}: p50 ${b.lat[kind].map((l) => l[0].toFixed(0)).join(' ')}, p99 ${b.lat[kind].map((l) => l[1].toFixed(0)).join(' ')} (median p50 ${median(b.lat[kind].map((l) => l[0])).toFixed(0)}, p99 ${median(b.lat[kind].map((l) => l[1])).toFixed(0)})`);
        }
      }
      if (CPU_PROF) console.log(`cpu profile windows (µs, monotonic): ${JSON.stringify(windows)}`);
    }
  }
  if (args.includes('--log')) {
    // Where each snapshot's time went (the daemon's own account of it).
    for (const b of builds) {
      for (const l of readFileSync(b.logPath, 'utf8').split('\n')) {
        if (!l.includes('"snapshot completed"')) continue;
        const j = JSON.parse(l);
        console.log(`  ${b.name} ${j.time} ${j.snapshotId}: copy ${j.copyMs} ms, durable ${j.durableMs} ms, cow sectors ${j.cowSectors} (spilled ${j.cowSpilledSectors}, pool captures ${j.cowPoolCaptures ?? '-'}${j.cowNewSlabs !== undefined ? `, new 1 MiB slabs ${j.cowNewSlabs}` : ''}), paced blocks ${j.pacedBlocks}, watchdog trips ${j.writeTrips ?? '-'} (writes held to the pool ${j.writesHeld ?? '-'})`);
      }
    }
  }
} catch (e) {
  process.stderr.write(`bench failed: ${e?.stack ?? e}\n`);
  for (const b of builds) process.stderr.write(`${b.name} daemon log tail:\n${readFileSync(b.logPath, 'utf8').split('\n').slice(-15).join('\n')}\n`);
  process.exitCode = 1;
} finally {
  for (const b of builds) {
    if (b.vol) await b.call('ebsd.DetachVolume', { VolumeId: b.vol, Force: true }).catch(() => {});
    if (b.daemon.exitCode === null && b.daemon.signalCode === null) {
      b.daemon.kill('SIGTERM');
      await new Promise((r) => b.daemon.once('exit', r));
    }
    spawnSync('fusermount', ['-uz', b.mnt]);
  }
  if (process.env.KEEP_BENCH_DIR) console.log(`kept ${dir}`); else rmSync(dir, { recursive: true, force: true });
}
