#!/usr/bin/env node
// Block-device benchmark (issue 5 §Speed). Build first: `npx tsc -p .`.
// In one run, on the same backing file: plain pread/pwrite (fs.read/fs.write on
// the raw fd, the reference), the plaintext passthrough device (our sector path
// without crypto) and the encrypted device (AES-256-XTS through the selected
// engine): 1 MiB sequential read/write and 4 KiB random read/write with N
// requests outstanding. Correctness is checked before anything is timed
// (STYLE §14): device output is compared with an independent node:crypto
// decryption of the ciphertext on disk.
//   node scripts/bench/blockdev.mjs [--seconds 2] [--size-mib 256] [--qd-seq 8] [--qd-rand 32] [--engine auto] [--json]
import { createDecipheriv, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, openSync, closeSync, readSync } from 'node:fs';
import { read, write } from 'node:fs';
import { tmpdir, cpus } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const dist = (p) => pathToFileURL(resolve(root, 'dist', p)).href;
const { selectXtsEngine } = await import(dist('crypto/xts-engine.js'));
const { buildLuks2Json, LUKS2_DATA_OFFSET } = await import(dist('volume/luks2-json.js'));
const { createLuks2 } = await import(dist('volume/luks2-header.js'));
const { openBackingFile } = await import(dist('volume/backing-file.js'));
const { EncryptedBlockDevice } = await import(dist('volume/encrypted-block-device.js'));
const { PlainBlockDevice } = await import(dist('volume/plain-block-device.js'));

const args = process.argv.slice(2);
const arg = (n, d) => (args.includes(`--${n}`) ? args[args.indexOf(`--${n}`) + 1] : d);
const SECONDS = Number(arg('seconds', '2'));
const SIZE = Number(arg('size-mib', '256')) * 1024 * 1024;
const QD_SEQ = Number(arg('qd-seq', '8'));
const QD_RAND = Number(arg('qd-rand', '32'));
const SS = 4096;

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

const enc = new EncryptedBlockDevice({ volumeId, size: SIZE, dataOffset: LUKS2_DATA_OFFSET, backing: await openBackingFile(img), xts: engine.createContext(key) });
const pass = new PlainBlockDevice({ volumeId, size: SIZE, dataOffset: LUKS2_DATA_OFFSET, backing: await openBackingFile(img) });
const fd = openSync(img, 'r+');
const raw = {
  read: (off, len, into) => new Promise((res, rej) => read(fd, into, 0, len, LUKS2_DATA_OFFSET + off, (e, n) => (e ? rej(e) : res(n)))),
  write: (off, data) => new Promise((res, rej) => write(fd, data, 0, data.length, LUKS2_DATA_OFFSET + off, (e, n) => (e ? rej(e) : res(n)))),
};

// ---- correctness first ------------------------------------------------------
{
  const data = randomBytes(3 * SS + 123);
  const off = 5 * SS + 77;
  await enc.write(off, data);
  const back = Buffer.alloc(data.length);
  await enc.read(off, data.length, back);
  if (!back.equals(data)) throw new Error('encrypted device read-back mismatch');
  const c = Buffer.alloc(SS);
  const f = openSync(img, 'r');
  readSync(f, c, 0, SS, LUKS2_DATA_OFFSET + 6 * SS);
  closeSync(f);
  const iv = Buffer.alloc(16);
  iv.writeBigUInt64LE(6n * 8n);
  const d = createDecipheriv('aes-256-xts', key, iv).setAutoPadding(false);
  const p = Buffer.concat([d.update(c), d.final()]);
  if (!p.equals(data.subarray(SS - 77, 2 * SS - 77))) throw new Error('ciphertext on disk does not decrypt with node:crypto aes-256-xts');
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
    const buf = randomBytes(bs);
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
  { name: `1 MiB seq read, QD${QD_SEQ}`, kind: 'read', bs: 1 << 20, qd: QD_SEQ, seq: true, unit: 'MB/s', goal: 0.85 },
  { name: `1 MiB seq write, QD${QD_SEQ}`, kind: 'write', bs: 1 << 20, qd: QD_SEQ, seq: true, unit: 'MB/s', goal: 0.85 },
  { name: `4 KiB rand read, QD${QD_RAND}`, kind: 'read', bs: SS, qd: QD_RAND, seq: false, unit: 'IOPS', goal: 0.9 },
  { name: `4 KiB rand write, QD${QD_RAND}`, kind: 'write', bs: SS, qd: QD_RAND, seq: false, unit: 'IOPS', goal: 0.9 },
];
const rows = [];
for (const w of workloads) {
  const r = {};
  // Interleave targets so drift (page cache, CPU frequency) hits all three alike.
  for (const [name, target] of [['raw', raw], ['plain', pass], ['enc', enc], ['raw2', raw], ['enc2', enc]]) {
    const m = await run(target, w.kind, w.bs, w.qd, w.seq);
    r[name] = w.unit === 'MB/s' ? m.mbps : m.ops;
  }
  const rawV = (r.raw + r.raw2) / 2;
  const encV = (r.enc + r.enc2) / 2;
  rows.push({ ...w, raw: rawV, plain: r.plain, enc: encV, ratio: encV / rawV });
}
await enc.close();
await pass.close();
closeSync(fd);
rmSync(dir, { recursive: true, force: true });

const fmt = (v, u) => (u === 'IOPS' ? `${(v / 1000).toFixed(1)}k` : v.toFixed(0));
if (args.includes('--json')) console.log(JSON.stringify({ engine: engine.name, rows }, null, 1));
else {
  console.log(`engine: ${engine.name}; ${cpus().length} × ${cpus()[0]?.model}; volume ${SIZE >> 20} MiB in page cache; ${SECONDS} s per target per workload`);
  console.log('| Workload | plain pread/pwrite | passthrough device | encrypted device | enc / plain | goal |');
  console.log('|---|--:|--:|--:|--:|--:|');
  for (const r of rows) console.log(`| ${r.name} (${r.unit}) | ${fmt(r.raw, r.unit)} | ${fmt(r.plain, r.unit)} | ${fmt(r.enc, r.unit)} | ${r.ratio.toFixed(2)} | ≥ ${r.goal.toFixed(2)} ${r.ratio >= r.goal ? '✓' : '✗'} |`);
}
