#!/usr/bin/env node
// Old-vs-new A/B of the volume data path in ONE process, so both sides see the same
// load on a shared machine (docs/benchmarks.md, "Data path refactor"): the `dist/` of
// two builds (e.g. a `git worktree` of main, built, and this tree) imported side by
// side, many short rounds, order alternating each round; ratio = median of the
// per-round new/old ratios. Correctness first: each side reads back what the other
// wrote (device mode), fio verify=crc32c on each mount (--fuse).
//   node scripts/bench/datapath-ab.mjs --old OLD/dist --new NEW/dist [--fuse] [--rounds 8] [--ms 300] [--secs 1] [--only PREFIX]
// Device mode: EncryptedBlockDevice and PlainBlockDevice on one image, no FUSE.
// --fuse: each side's BlockFileSystem + FuseMount of an encrypted volume, fio
// libaio direct=1 (needs root, fio, /dev/fuse).
import { randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, mkdirSync, constants } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
const args = process.argv.slice(2);
const arg = (n, d) => (args.includes(`--${n}`) ? args[args.indexOf(`--${n}`) + 1] : d);
const OLD_DIST = resolve(arg('old', 'dist')), NEW_DIST = resolve(arg('new', 'dist'));
const ROUNDS = Number(arg('rounds', '8')), MS = Number(arg('ms', '300')), SECS = arg('secs', '1');

async function deviceAb() {
  const SIZE = 128 << 20, SS = 4096;

  const loadDev = async (d) => ({
    eng: await import(`${d}/crypto/xts-engine.js`), j: await import(`${d}/volume/luks2-json.js`), h: await import(`${d}/volume/luks2-header.js`),
    b: await import(`${d}/volume/backing-file.js`), e: await import(`${d}/volume/encrypted-block-device.js`), p: await import(`${d}/volume/plain-block-device.js`),
  });
  const OLD = await loadDev(OLD_DIST), NEW = await loadDev(NEW_DIST);
  const dir = mkdtempSync(join(tmpdir(), 'ebsd-ab-')); const img = join(dir, 'i.img'); const key = randomBytes(64);
  const volumeId = 'vol-0ab00000000000000';
  await NEW.h.createLuks2(img, { json: NEW.j.buildLuks2Json({ size: SIZE, volumeKey: key, token: { key_arn: 'arn:aws:kms:us-east-1:111122223333:key/ab', ciphertext_blob: '', encryption_context: { 'aws:ebs:id': volumeId }, volume_id: volumeId } }), size: SIZE, dataOffset: NEW.j.LUKS2_DATA_OFFSET });
  const off = NEW.j.LUKS2_DATA_OFFSET;
  async function devs(M) {
    const engine = M.eng.selectXtsEngine('native');
    return {
      enc: new M.e.EncryptedBlockDevice({ volumeId, size: SIZE, dataOffset: off, backing: await M.b.openBackingFile(img, constants.O_RDWR), xts: engine.createContext(key) }),
      plain: new M.p.PlainBlockDevice({ volumeId, size: SIZE, dataOffset: off, backing: await M.b.openBackingFile(img, constants.O_RDWR) }),
    };
  }
  const D = { old: await devs(OLD), new: await devs(NEW) };
  // correctness: new writes, old reads back, and vice versa
  const probe = randomBytes(1 << 20);
  await D.new.enc.write(3 << 20, probe); const back = Buffer.alloc(1 << 20); await D.old.enc.read(3 << 20, 1 << 20, back);
  if (!back.equals(probe)) throw new Error('old cannot read what new wrote');
  await D.old.enc.write(5 << 20, probe); await D.new.enc.read(5 << 20, 1 << 20, back);
  if (!back.equals(probe)) throw new Error('new cannot read what old wrote');
  // fill so reads hit ciphertext everywhere
  const fill = randomBytes(8 << 20); for (let p = 0; p < SIZE; p += fill.length) await D.new.enc.write(p, fill);
  const W = [
    ['4 KiB rand read QD32', 4096, 32, 'read', true], ['4 KiB rand write QD32', 4096, 32, 'write', true],
    ['128 KiB seq read QD1', 131072, 1, 'read', false], ['128 KiB seq write QD1', 131072, 1, 'write', false],
    ['1 MiB seq read QD8', 1 << 20, 8, 'read', false], ['1 MiB seq write QD8', 1 << 20, 8, 'write', false],
  ];
  async function run(dev, [_, bs, qd, op, rand], ms) {
    const end = performance.now() + ms; let n = 0; let seq = 0;
    const bufs = Array.from({ length: qd }, () => (op === 'write' ? randomBytes(bs) : Buffer.alloc(bs)));
    await Promise.all(bufs.map(async (b) => {
      while (performance.now() < end) {
        const pos = rand ? Math.floor(Math.random() * (SIZE / bs)) * bs : ((seq++ * bs) % SIZE);
        if (op === 'read') await dev.read(pos, bs, b); else await dev.write(pos, b);
        n++;
      }
    }));
    return (n * bs) / (ms / 1000);
  }
  const med = (a) => { const s = [...a].sort((x, y) => x - y); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
  console.log(`# device A/B old=${OLD_DIST} new=${NEW_DIST}, ${ROUNDS} rounds × ${MS} ms per target, load at start ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
  console.log('| Workload | device | old (median) | new (median) | new/old median | min–max per round |');
  console.log('|---|---|--:|--:|--:|--:|');
  for (const w of W) for (const kind of ['enc', 'plain']) {
    const r = [], o = [], nn = [];
    await run(D.old[kind], w, 100); await run(D.new[kind], w, 100); // warm
    for (let i = 0; i < ROUNDS; i++) {
      const first = i % 2 ? 'new' : 'old';
      const a = await run(D[first][kind], w, MS), b = await run(D[first === 'old' ? 'new' : 'old'][kind], w, MS);
      const vo = first === 'old' ? a : b, vn = first === 'old' ? b : a; o.push(vo); nn.push(vn); r.push(vn / vo);
    }
    const u = w[1] === 4096 ? (x) => `${(x / 4096 / 1000).toFixed(1)}k IOPS` : (x) => `${(x / 1e6).toFixed(0)} MB/s`;
    console.log(`| ${w[0]} | ${kind === 'enc' ? 'encrypted' : 'passthrough'} | ${u(med(o))} | ${u(med(nn))} | ${med(r).toFixed(2)} | ${Math.min(...r).toFixed(2)}–${Math.max(...r).toFixed(2)} |`);
  }
  console.log(`# load at end ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
  for (const k of ['old', 'new']) { await D[k].enc.close(); await D[k].plain.close(); }
  rmSync(dir, { recursive: true, force: true });

}

async function fuseAb() {
  const SIZE = 256 << 20;

  const loadFuse = async (d) => ({
    eng: await import(`${d}/crypto/xts-engine.js`), j: await import(`${d}/volume/luks2-json.js`), h: await import(`${d}/volume/luks2-header.js`),
    b: await import(`${d}/volume/backing-file.js`), e: await import(`${d}/volume/encrypted-block-device.js`),
    f: await import(`${d}/fuse/index.js`), l: await import(`${d}/util/logger.js`),
  });
  const V = { old: await loadFuse(OLD_DIST), new: await loadFuse(NEW_DIST) };
  const dir = mkdtempSync('/var/tmp/ebsd-fab-');
  const sh = (cmd, args) => new Promise((res, rej) => execFile(cmd, args, { maxBuffer: 64 << 20 }, (e, out, err) => (e ? rej(new Error(`${e.message}\n${err}`)) : res(out))));
  const T = {};
  try {
    for (const who of ['old', 'new']) {
      const M = V[who]; const key = randomBytes(64); const img = join(dir, `${who}.img`); const volumeId = who === 'old' ? 'vol-0000000000000000a' : 'vol-0000000000000000b';
      await M.h.createLuks2(img, { json: M.j.buildLuks2Json({ size: SIZE, volumeKey: key, token: { key_arn: 'arn:aws:kms:us-east-1:111122223333:key/ab', ciphertext_blob: '', encryption_context: { 'aws:ebs:id': volumeId }, volume_id: volumeId } }), size: SIZE, dataOffset: M.j.LUKS2_DATA_OFFSET });
      const dev = new M.e.EncryptedBlockDevice({ volumeId, size: SIZE, dataOffset: M.j.LUKS2_DATA_OFFSET, backing: await M.b.openBackingFile(img, constants.O_RDWR), xts: M.eng.selectXtsEngine('native').createContext(key) });
      const log = M.l.createLogger({ level: 'silent' });
      const bfs = new M.f.BlockFileSystem({ logger: log });
      const mnt = join(dir, `mnt-${who}`); mkdirSync(mnt);
      const mount = new M.f.FuseMount(mnt, bfs.ops(), { logger: log });
      await mount.mount(); bfs.add(dev);
      T[who] = { file: join(mnt, volumeId), mount, dev, mnt };
    }
    // verify: fio writes with crc32c and reads back on both
    for (const who of ['old', 'new']) await sh('fio', ['--name=v', `--filename=${T[who].file}`, '--size=32m', '--rw=write', '--bs=128k', '--direct=1', '--ioengine=libaio', '--iodepth=8', '--verify=crc32c', '--do_verify=1', '--output-format=terse']);
    // fill
    for (const who of ['old', 'new']) await sh('fio', ['--name=f', `--filename=${T[who].file}`, `--size=${SIZE}`, '--rw=write', '--bs=1m', '--direct=1', '--ioengine=libaio', '--iodepth=8']);
    const W = [
      ['1 MiB seq read QD8 (MB/s)', ['--rw=read', '--bs=1m', '--iodepth=8'], 'read', 'bw'],
      ['1 MiB seq write QD8 (MB/s)', ['--rw=write', '--bs=1m', '--iodepth=8'], 'write', 'bw'],
      ['4 KiB rand read 4×QD32 (IOPS)', ['--rw=randread', '--bs=4k', '--iodepth=32', '--numjobs=4', '--group_reporting'], 'read', 'iops'],
      ['4 KiB rand write 4×QD32 (IOPS)', ['--rw=randwrite', '--bs=4k', '--iodepth=32', '--numjobs=4', '--group_reporting'], 'write', 'iops'],
      ['4 KiB rand read QD1 (1/mean lat)', ['--rw=randread', '--bs=4k', '--iodepth=1'], 'read', 'lat'],
    ];
    const ONLY = arg('only', '');
    const run = async (who, w) => {
      const out = JSON.parse(await sh('fio', ['--name=t', `--filename=${T[who].file}`, `--size=${SIZE}`, '--direct=1', '--ioengine=libaio', '--time_based=1', `--runtime=${SECS}`, '--norandommap=1', '--randrepeat=0', '--invalidate=0', '--output-format=json', ...w[1]]));
      const j = out.jobs[0][w[2]];
      return w[3] === 'bw' ? j.bw_bytes / 1e6 : w[3] === 'iops' ? j.iops : 1e3 / (j.lat_ns.mean / 1e3);
    };
    const med = (a) => { const s = [...a].sort((x, y) => x - y); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
    console.log(`# FUSE A/B in one process, old=${OLD_DIST} new=${NEW_DIST}, ${ROUNDS} rounds × ${SECS} s, order alternating; load at start ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
    console.log('| Workload (encrypted, through FUSE) | old (median) | new (median) | new/old median | per round |');
    console.log('|---|--:|--:|--:|--:|');
    for (const w of W) {
      if (ONLY && !w[0].startsWith(ONLY)) continue;
      const o = [], n = [], r = [];
      for (let i = 0; i < ROUNDS; i++) {
        const first = i % 2 ? 'new' : 'old'; const second = first === 'old' ? 'new' : 'old';
        const a = await run(first, w), b = await run(second, w);
        const vo = first === 'old' ? a : b, vn = first === 'old' ? b : a; o.push(vo); n.push(vn); r.push(vn / vo);
      }
      console.log(`| ${w[0]} | ${med(o).toFixed(w[3] === 'lat' ? 2 : 0)} | ${med(n).toFixed(w[3] === 'lat' ? 2 : 0)} | ${med(r).toFixed(2)} | ${r.map((x) => x.toFixed(2)).join(', ')} |`);
    }
    console.log(`# load at end ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
  } finally {
    for (const who of Object.keys(T)) { await T[who].mount.unmount().catch(() => {}); await sh('fusermount', ['-uz', T[who].mnt]).catch(() => {}); await T[who].dev.close().catch(() => {}); }
    rmSync(dir, { recursive: true, force: true });
  }

}

if (args.includes('--fuse')) await fuseAb();
else await deviceAb();
