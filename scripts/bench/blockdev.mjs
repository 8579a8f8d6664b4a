#!/usr/bin/env node
// Block-device benchmark (issue 5 §Speed). Run through scripts/bench/blockdev.sh
// (builds a private copy of dist/), or build first and run directly.
// In one run, on the same backing file: plain pread/pwrite (fs.read/fs.write on
// the raw fd, the reference), the plaintext passthrough device (our sector path
// without crypto) and the encrypted device (AES-256-XTS through the selected
// engine): 1 MiB sequential read/write (QD1 and QD8) and 4 KiB random
// read/write, in two modes:
//   cache   the backing file in the page cache: plain I/O is a memcpy (~7 GB/s),
//           so this measures our CPU cost against a memcpy;
//   direct  the backing file opened O_DIRECT for every target: each I/O reaches
//           the disk, as on a real host with cache=none, so plain I/O costs
//           what the disk costs.
// Correctness is checked before anything is timed (docs/architecture.md §11.14): device output
// is compared with an independent node:crypto decryption of the ciphertext on disk.
//   node scripts/bench/blockdev.mjs [--seconds 2] [--size-mib 256] [--qd-seq 8] [--qd-rand 32] [--engine auto] [--mode both|cache|direct] [--json]
import { createDecipheriv, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, openSync, closeSync, readSync } from 'node:fs';
import { read, write, constants } from 'node:fs';
import { tmpdir, cpus, loadavg } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const distDir = process.env.EBSD_DIST ? resolve(process.env.EBSD_DIST) : resolve(root, 'dist');
const dist = (p) => pathToFileURL(resolve(distDir, p)).href;
const { selectXtsEngine } = await import(dist('crypto/xts-engine.js'));
const { buildLuks2Json, LUKS2_DATA_OFFSET } = await import(dist('volume/luks2-json.js'));
const { createLuks2 } = await import(dist('volume/luks2-header.js'));
const { openBackingFile, FdBackingFile } = await import(dist('volume/backing-file.js'));
const { EncryptedBlockDevice } = await import(dist('volume/encrypted-block-device.js'));
const { PlainBlockDevice } = await import(dist('volume/plain-block-device.js'));

const args = process.argv.slice(2);
const arg = (n, d) => (args.includes(`--${n}`) ? args[args.indexOf(`--${n}`) + 1] : d);
const SECONDS = Number(arg('seconds', '2'));
const SIZE = Number(arg('size-mib', '256')) * 1024 * 1024;
const QD_SEQ = Number(arg('qd-seq', '8'));
const QD_RAND = Number(arg('qd-rand', '32'));
const SS = 4096;
const MODES = arg('mode', 'both') === 'both' ? ['cache', 'direct'] : [arg('mode', 'both')];

const engine = selectXtsEngine(arg('engine', 'auto'));
const dir = mkdtempSync(join(tmpdir(), 'ebsd-bench-'));
const img = join(dir, 'bench.img');
const key = randomBytes(64);
const volumeId = 'vol-0bench0000000000';
await createLuks2(img, {
  json: buildLuks2Json({ size: SIZE, volumeKey: key, token: { key_arn: 'arn:aws:kms:us-east-1:111122223333:key/bench', ciphertext_blob: '', encryption_context: { 'aws:ebs:id': volumeId }, volume_id: volumeId } }),
  size: SIZE,
  dataOffset: LUKS2_DATA_OFFSET,
});

async function targets(direct) {
  const bOpts = { direct };
  const enc = new EncryptedBlockDevice({ volumeId, size: SIZE, dataOffset: LUKS2_DATA_OFFSET, backing: await openBackingFile(img, constants.O_RDWR, bOpts), xts: engine.createContext(key) });
  const pass = new PlainBlockDevice({ volumeId, size: SIZE, dataOffset: LUKS2_DATA_OFFSET, backing: await openBackingFile(img, constants.O_RDWR, bOpts) });
  const rawFile = await openBackingFile(img, constants.O_RDWR, bOpts);
  const fd = rawFile.fd;
  const raw = {
    allocBuffer: (n) => rawFile.allocBuffer(n),
    read: (off, len, into) => new Promise((res, rej) => read(fd, into, 0, len, LUKS2_DATA_OFFSET + off, (e, n) => (e ? rej(e) : res(n)))),
    write: (off, data) => new Promise((res, rej) => write(fd, data, 0, data.length, LUKS2_DATA_OFFSET + off, (e, n) => (e ? rej(e) : res(n)))),
    close: () => rawFile.close(),
  };
  return { enc, pass, raw };
}
let { enc, pass, raw } = await targets(false);

// ---- correctness first ------------------------------------------------------
function decryptOnDisk(sector) {
  const c = Buffer.alloc(SS);
  const f = openSync(img, 'r');
  readSync(f, c, 0, SS, LUKS2_DATA_OFFSET + sector * SS);
  closeSync(f);
  const iv = Buffer.alloc(16);
  iv.writeBigUInt64LE(BigInt(sector) * 8n);
  const d = createDecipheriv('aes-256-xts', key, iv).setAutoPadding(false);
  return Buffer.concat([d.update(c), d.final()]);
}
{
  const data = randomBytes(3 * SS + 123);
  const off = 5 * SS + 77;
  await enc.write(off, data);
  const back = Buffer.alloc(data.length);
  await enc.read(off, data.length, back);
  if (!back.equals(data)) throw new Error('encrypted device read-back mismatch');
  if (!decryptOnDisk(6).equals(data.subarray(SS - 77, 2 * SS - 77))) throw new Error('ciphertext on disk does not decrypt with node:crypto aes-256-xts');
  // A large (parallel-chunk) run: 1 MiB unaligned write and read-back.
  const big = randomBytes((1 << 20) + 999);
  await enc.write(64 * SS + 5, big);
  const bigBack = Buffer.alloc(big.length);
  await enc.read(64 * SS + 5, big.length, bigBack);
  if (!bigBack.equals(big)) throw new Error('encrypted device 1 MiB read-back mismatch');
  if (!decryptOnDisk(64 + 200).equals(big.subarray(200 * SS - 5, 201 * SS - 5))) throw new Error('1 MiB run: ciphertext does not decrypt with node:crypto');
}

// Fill the whole volume once (encrypted), so reads decrypt real sectors, not holes.
{
  const chunk = randomBytes(1 << 20);
  for (let off = 0; off < SIZE; off += chunk.length) await enc.write(off, chunk);
  await enc.flush();
}

// ---- timing -------------------------------------------------------------------
async function run(target, kind, bs, qd, seq) {
  const nBlocks = SIZE / bs;
  let next = 0;
  let ops = 0;
  const end = performance.now() + SECONDS * 1000;
  const worker = async () => {
    const buf = target.allocBuffer(bs); // O_DIRECT-aligned in direct mode
    randomBytes(bs).copy(buf);
    while (performance.now() < end) {
      const blk = seq ? next++ % nBlocks : Math.floor(Math.random() * nBlocks);
      if (kind === 'read') await target.read(blk * bs, bs, buf);
      else await target.write(blk * bs, buf);
      ops++;
    }
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: qd }, worker));
  const s = (performance.now() - t0) / 1000;
  return { ops: ops / s, mbps: (ops * bs) / s / 1e6 };
}

const workloads = [
  { name: '1 MiB seq read, QD1', kind: 'read', bs: 1 << 20, qd: 1, seq: true, unit: 'MB/s', goal: 0.85 },
  { name: '1 MiB seq write, QD1', kind: 'write', bs: 1 << 20, qd: 1, seq: true, unit: 'MB/s', goal: 0.85 },
  { name: `1 MiB seq read, QD${QD_SEQ}`, kind: 'read', bs: 1 << 20, qd: QD_SEQ, seq: true, unit: 'MB/s', goal: 0.85 },
  { name: `1 MiB seq write, QD${QD_SEQ}`, kind: 'write', bs: 1 << 20, qd: QD_SEQ, seq: true, unit: 'MB/s', goal: 0.85 },
  { name: `4 KiB rand read, QD${QD_RAND}`, kind: 'read', bs: SS, qd: QD_RAND, seq: false, unit: 'IOPS', goal: 0.9 },
  { name: `4 KiB rand write, QD${QD_RAND}`, kind: 'write', bs: SS, qd: QD_RAND, seq: false, unit: 'IOPS', goal: 0.9 },
];
const rows = [];
for (const mode of MODES) {
  if (mode !== 'cache') {
    await Promise.all([enc.close(), pass.close(), raw.close()]);
    ({ enc, pass, raw } = await targets(mode === 'direct'));
    // Same checks through O_DIRECT: read-back, and the ciphertext on disk decrypts with node:crypto.
    const w = enc.allocBuffer(SS);
    randomBytes(SS).copy(w);
    await enc.write(6 * SS, w);
    const b = enc.allocBuffer(SS);
    await enc.read(6 * SS, SS, b);
    if (!b.equals(w)) throw new Error(`${mode} mode: read-back mismatch`);
    if (!decryptOnDisk(6).equals(w)) throw new Error(`${mode} mode: ciphertext on disk does not decrypt with node:crypto`);
  }
  for (const w of workloads) {
    const r = {};
    // Interleave targets so drift (page cache, CPU frequency, neighbours) hits all three alike.
    for (const [name, target] of [['raw', raw], ['plain', pass], ['enc', enc], ['raw2', raw], ['enc2', enc]]) {
      const m = await run(target, w.kind, w.bs, w.qd, w.seq);
      r[name] = w.unit === 'MB/s' ? m.mbps : m.ops;
    }
    const rawV = (r.raw + r.raw2) / 2;
    const encV = (r.enc + r.enc2) / 2;
    rows.push({ ...w, mode, raw: rawV, plain: r.plain, enc: encV, ratio: encV / rawV });
  }
}
await Promise.all([enc.close(), pass.close(), raw.close()]);
rmSync(dir, { recursive: true, force: true });

const fmt = (v, u) => (u === 'IOPS' ? `${(v / 1000).toFixed(1)}k` : v.toFixed(0));
if (args.includes('--json')) console.log(JSON.stringify({ engine: engine.name, rows }, null, 1));
else {
  console.log(`engine: ${engine.name}; ${cpus().length} × ${cpus()[0]?.model}; volume ${SIZE >> 20} MiB; ${SECONDS} s per target per workload; load average ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
  console.log('| Mode | Workload | plain pread/pwrite | passthrough device | encrypted device | enc / plain | goal |');
  console.log('|---|---|--:|--:|--:|--:|--:|');
  for (const r of rows) console.log(`| ${r.mode} | ${r.name} (${r.unit}) | ${fmt(r.raw, r.unit)} | ${fmt(r.plain, r.unit)} | ${fmt(r.enc, r.unit)} | ${r.ratio.toFixed(2)} | ≥ ${r.goal.toFixed(2)} ${r.ratio >= r.goal ? '✓' : '✗'} |`);
}
