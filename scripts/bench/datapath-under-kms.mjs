#!/usr/bin/env node
// The volume data path while the KMS listener is loaded (issue 14, "Hardening of the listener": the volume
// data path keeps its speed while the KMS is loaded). ONE daemon, as a host runs it: FUSE mount, an attached
// AES-256-XTS volume, and `--kms-listen 127.0.0.1:0` with a certificate this script makes with openssl.
// Phases alternate, same daemon, same volume, same run:
//   quiet   fio on the volume's block file, nothing else
//   loaded  the same fio while the lean client (kms-lean-client.mjs) floods the HTTPS listener with
//           SigV4-signed Decrypt of a 64-byte data key, 64 keep-alive connections
//   kms     the flood alone (what the KMS serves without the data path beside it)
// and it prints, per workload, the medians of fio's bandwidth and IOPS in each phase and loaded/quiet, with
// the KMS calls/s served during the loaded and kms phases. Before timing it checks that fio --verify passes
// on the volume and that the flood's Decrypt returns the data key.
// Build first:  npx tsc -p .   then (root: FUSE):
//   node scripts/bench/datapath-under-kms.mjs [--seconds 5] [--rounds 3] [--size 512MiB] [--concurrency 64]
//        [--rate N] [--front-threads 0|1] [--flood-target same|separate] [--cpu-prof DIR]
// --rate N: the daemon's --kms-rate-while-io-busy (callers' calls admitted per second while the data path is busy,
//           0 = no limit; src/daemon/data-path-first.ts); --front-threads: its --kms-front-threads.
// --flood-target separate: the flood goes to a second daemon (--kms-only, same machine) instead: what the data path
//           keeps when the KMS load shares only the cores, not the volume daemon's event loop.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, readFileSync, createWriteStream, existsSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { leanClient } from './kms-lean-client.mjs';

const arg = (n, d) => { const i = process.argv.indexOf(`--${n}`); return i > 0 ? process.argv[i + 1] : d; };
const seconds = Number(arg('seconds', '5'));
const rounds = Number(arg('rounds', '3'));
const size = arg('size', '512MiB');
const concurrency = Number(arg('concurrency', '64'));
const rate = arg('rate', undefined); // --kms-rate-while-io-busy of the daemon (its default when not given)
const frontThreads = arg('front-threads', undefined); // --kms-front-threads of the daemon (its default when not given)
const floodTarget = arg('flood-target', 'same'); // same: the volume's daemon; separate: a second, --kms-only daemon (the reference)
const cpuProf = arg('cpu-prof', undefined);
/** fio's unmeasured start, seconds: the flood is already running when fio's measured window opens. */
const RAMP_S = 1;
const ROOT = resolve(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'dist', 'cli', 'main.js');
const dir = mkdtempSync(join(tmpdir(), 'ebsd-dp-kms-'));
const state = join(dir, 'state');
const mnt = join(dir, 'mnt');
mkdirSync(mnt);

/** fio workloads: direct I/O on the block file, as a VM or a filesystem on a loop device would issue it. */
const WORKLOADS = {
  'randrw-4k-qd32': ['--rw=randrw', '--bs=4k', '--iodepth=32', '--numjobs=2', '--rwmixread=50'],
  'seqwrite-1m-qd8': ['--rw=write', '--bs=1m', '--iodepth=8', '--numjobs=1'],
  'seqread-1m-qd8': ['--rw=read', '--bs=1m', '--iodepth=8', '--numjobs=1'],
};

const median = (a) => { const s = [...a].sort((x, y) => x - y); return s[s.length >> 1]; };
/** `ebsd … --output json` against the daemon of `stateDir`. */
const cliAt = (stateDir) => (...a) => { const out = execFileSync(process.execPath, [CLI, ...a, '--output', 'json'], { env: { ...process.env, EBSD_STATE_DIR: stateDir } }).toString(); return out.trim() ? JSON.parse(out) : {}; };
const cli = cliAt(state);
/** fio's --size for the working set (fio reads 512m, not 512MiB). */
const FIO_SIZE = size.replace(/iB$/, '').toLowerCase();
const cpuOf = (pid) => { const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' '); return (Number(f[11]) + Number(f[12])) * 10; }; // ms

/** One timed fio workload on `file` as a child process (this thread's event loop stays free for the flood). */
function fio(file, name, extra, secs) {
  return new Promise((ok, fail) => {
    const child = spawn('fio', ['--output-format=json', `--name=${name}`, `--filename=${file}`, '--ioengine=libaio', '--direct=1', '--time_based=1',
      `--runtime=${secs}`, `--ramp_time=${RAMP_S}`, `--size=${FIO_SIZE}`, '--randrepeat=0', '--norandommap=1', '--group_reporting=1', '--invalidate=0', '--lat_percentiles=1', '--percentile_list=50:99', ...extra],
    { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (c) => (out += c));
    child.on('exit', (code) => (code === 0 ? ok(fioResult(out)) : fail(new Error(`fio ${name} exited ${code}`))));
  });
}

/** fio writes 64 MiB of the volume with checksummed blocks and reads them back (exits non-zero on a wrong one). */
const verifyVolume = (file) => execFileSync('fio', ['--name=verify', `--filename=${file}`, '--ioengine=libaio', '--direct=1', '--rw=randwrite', '--bs=4k', '--iodepth=16', '--size=64m', '--verify=crc32c', '--do_verify=1', '--verify_fatal=1'], { stdio: 'ignore' });

/** On the daemon `run` talks to: user `bench` allowed kms:*, its access key, a key and a 64-byte data key under it. */
function benchCaller(run) {
  run('iam', 'create-user', 'bench');
  run('iam', 'put-policy', 'user/bench', '--policy-name', 'kms', '--policy-document', JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'kms:*', Resource: '*' }] }));
  const key = run('iam', 'create-access-key', '--user-name', 'bench').AccessKey;
  const keyId = run('kms', 'create-key').KeyMetadata.KeyId;
  const dk = run('kms', 'generate-data-key', '--key-id', keyId, '--number-of-bytes', '64', '--encryption-context', 'purpose=bench');
  return { key, dk };
}

/** Bandwidth (MiB/s), IOPS, and the p50/p99 of each I/O's whole latency (submission + completion, ms; reads' if any, else writes'). */
function fioResult(out) {
  const j = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
  const side = j.read.io_bytes > 0 ? j.read : j.write;
  const p = side.lat_ns?.percentile ?? {};
  return { bw: (j.read.bw_bytes + j.write.bw_bytes) / 2 ** 20, iops: j.read.iops + j.write.iops, p50: (p['50.000000'] ?? NaN) / 1e6, p99: (p['99.000000'] ?? NaN) / 1e6 };
}

let daemon;
let kmsDaemon; // --flood-target separate
let flood;
let file;
const cleanup = () => {
  try { if (file) cli('detach', file.split('/').pop()); } catch { /* the daemon is gone */ }
  if (daemon && daemon.exitCode === null) daemon.kill('SIGTERM');
  if (kmsDaemon && kmsDaemon.exitCode === null) kmsDaemon.kill('SIGTERM');
};
for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => { cleanup(); try { execFileSync('fusermount', ['-u', '-z', mnt], { stdio: 'ignore' }); } catch { /* not mounted */ } rmSync(dir, { recursive: true, force: true }); process.exit(130); });

try {
  const ossl = (...a) => execFileSync('openssl', a, { stdio: 'ignore' });
  ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(dir, 'k.pem'), '-out', join(dir, 'c.pem'), '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1');
  const log = createWriteStream(join(dir, 'daemon.log'));
  daemon = spawn(process.execPath, [...(cpuProf ? ['--cpu-prof', '--cpu-prof-dir', resolve(cpuProf)] : []), CLI, 'daemon', '--state-dir', state, '--mount', mnt, '--kms-listen', '127.0.0.1:0', '--tls-cert', join(dir, 'c.pem'), '--tls-key', join(dir, 'k.pem'), ...(frontThreads !== undefined ? ['--kms-front-threads', frontThreads] : []), ...(rate !== undefined ? ['--kms-rate-while-io-busy', rate] : [])], { stdio: ['ignore', 'pipe', 'pipe'] });
  const url = await new Promise((ok, fail) => {
    let buf = '';
    const on = (c) => { log.write(c); if (buf.length < 1e5) buf += c; const m = /"kmsUrl":"([^"]+)"/.exec(buf); if (m) ok(m[1]); };
    daemon.stdout.on('data', on); daemon.stderr.on('data', on);
    daemon.on('exit', (c) => fail(new Error(`daemon exited ${c}: ${buf}`)));
  });
  let { key, dk } = benchCaller(cli);
  const EncryptionContext = { purpose: 'bench' };
  const volumeId = cli('volume', 'create', '--size', size, '--wait').VolumeId;
  cli('attach', volumeId);
  file = join(mnt, volumeId);
  if (!existsSync(file)) throw new Error(`${file} did not appear after attach`);

  // What is timed must be right: fio's own verify on the volume, and the flood's answers.
  verifyVolume(file);
  // Every block of the working set written once: reads then decrypt written data, not holes.
  execFileSync('fio', ['--name=fill', `--filename=${file}`, '--ioengine=libaio', '--direct=1', '--rw=write', '--bs=1m', '--iodepth=8', `--size=${FIO_SIZE}`], { stdio: 'ignore' });
  let floodUrl = url;
  if (floodTarget === 'separate') {
    const floodState = join(dir, 'state2');
    const d2 = kmsDaemon = spawn(process.execPath, [CLI, 'daemon', '--state-dir', floodState, '--kms-only', '--kms-listen', '127.0.0.1:0', '--tls-cert', join(dir, 'c.pem'), '--tls-key', join(dir, 'k.pem')], { stdio: ['ignore', 'pipe', 'pipe'] });
    floodUrl = await new Promise((ok) => { let b = ''; d2.stdout.on('data', (c) => { b += c; const m = /"kmsUrl":"([^"]+)"/.exec(b); if (m) ok(m[1]); }); });
    ({ key, dk } = benchCaller(cliAt(floodState)));
  }
  flood = await leanClient({ op: 'Decrypt', body: { CiphertextBlob: dk.CiphertextBlob, EncryptionContext }, conns: concurrency, threads: 0, url: floodUrl, ca: readFileSync(join(dir, 'c.pem')), accessKeyId: key.AccessKeyId, secretAccessKey: key.SecretAccessKey, region: 'us-east-1' });
  await flood.check(dk.Plaintext);
  await flood.run(5); // warm-up: JIT of the KMS path on the daemon's threads
  for (const [name, w] of Object.entries(WORKLOADS)) await fio(file, name, w, 2); // warm-up of the data path

  const rows = {};
  const loads = [];
  const kmsAlone = [];
  for (let r = 0; r < rounds; r++) {
    for (const [name, w] of Object.entries(WORKLOADS)) {
      const row = (rows[name] ??= { quiet: [], loaded: [], kmsLoaded: [], cpuQuiet: [], cpuLoaded: [] });
      for (const phase of r % 2 ? ['loaded', 'quiet'] : ['quiet', 'loaded']) {
        const c0 = cpuOf(daemon.pid); const t0 = Date.now();
        if (phase === 'quiet') {
          row.quiet.push(await fio(file, name, w, seconds));
          row.cpuQuiet.push((cpuOf(daemon.pid) - c0) / (Date.now() - t0));
        } else {
          await flood.run(0.3); // reconnect what the listener closed meanwhile, outside the timing
          const c1 = cpuOf(daemon.pid); const t1 = Date.now();
          // fio as a child (asynchronously); the flood on this thread's event loop from half a second after fio's
          // start until after its measured window ends (its first RAMP_S seconds are not measured): the KMS figure is
          // all from calls served while fio ran, and fio's from I/O while the flood ran.
          const f = fio(file, name, w, seconds);
          await new Promise((r) => setTimeout(r, 500));
          const tk = Date.now();
          const n = await flood.run(seconds + RAMP_S - 0.5);
          row.kmsLoaded.push(n / ((Date.now() - tk) / 1000));
          row.loaded.push(await f);
          row.cpuLoaded.push((cpuOf(daemon.pid) - c1) / (Date.now() - t1));
        }
        loads.push(loadavg()[0]);
      }
    }
    await flood.run(0.3);
    const t = Date.now();
    const n = await flood.run(seconds);
    kmsAlone.push(n / ((Date.now() - t) / 1000));
  }
  // After every phase the volume still writes and reads back right (fio checksums each block it wrote).
  verifyVolume(file);

  console.log(`Volume data path with and without the KMS listener loaded: ${floodTarget === 'separate' ? 'flood to a second (--kms-only) daemon' : 'one daemon'}, --kms-rate-while-io-busy ${rate ?? 'default'}, --kms-front-threads ${frontThreads ?? 'default'}, ${size} AES-256-XTS volume, fio libaio direct=1, ${seconds} s per phase, ${rounds} round(s), phases alternated; flood: HTTPS+SigV4 Decrypt, ${concurrency} connections; load average ${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)}; medians`);
  console.log('workload          quiet MiB/s  loaded MiB/s  loaded/quiet   quiet IOPS  loaded IOPS  KMS calls/s while loaded  daemon cores quiet/loaded');
  for (const [name, row] of Object.entries(rows)) {
    const q = median(row.quiet.map((x) => x.bw)); const l = median(row.loaded.map((x) => x.bw));
    console.log(`${name.padEnd(16)} ${q.toFixed(1).padStart(12)} ${l.toFixed(1).padStart(13)} ${(l / q).toFixed(2).padStart(13)} ${median(row.quiet.map((x) => x.iops)).toFixed(0).padStart(12)} ${median(row.loaded.map((x) => x.iops)).toFixed(0).padStart(12)} ${median(row.kmsLoaded).toFixed(0).padStart(25)} ${median(row.cpuQuiet).toFixed(2).padStart(14)}/${median(row.cpuLoaded).toFixed(2)}`);
  }
  console.log('workload          latency p50/p99 ms, quiet    loaded');
  for (const [name, row] of Object.entries(rows)) {
    const f = (xs) => `${median(xs.map((x) => x.p50)).toFixed(2)}/${median(xs.map((x) => x.p99)).toFixed(2)}`;
    console.log(`${name.padEnd(16)} ${f(row.quiet).padStart(24)} ${f(row.loaded).padStart(10)}`);
  }
  console.log(`KMS alone (no fio): ${median(kmsAlone).toFixed(0)} Decrypt/s (runs: ${kmsAlone.map((x) => x.toFixed(0)).join(', ')})`);
} finally {
  if (flood) await flood.close();
  cleanup();
  for (const d of [daemon, kmsDaemon]) if (d && d.exitCode === null) await new Promise((r) => d.once('exit', r));
  try { execFileSync('fusermount', ['-u', '-z', mnt], { stdio: 'ignore' }); } catch { /* the daemon unmounted it */ }
  if (process.env.KEEP_BENCH_DIR) console.log(`kept ${dir}`); else rmSync(dir, { recursive: true, force: true });
}
