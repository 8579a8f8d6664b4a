import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Env, ensureBuilt, ROOT, sh } from '../e2e/helpers.js';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { api, settled } from './helpers.js';
import { callDaemon, socketPathFor } from '../../src/cli/client.js';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';

/**
 * Point in time under write load (docs/architecture.md §12.2): while a
 * stamp writer (one O_DIRECT 4 KiB write at a time, each stamped with its
 * sequence number) and a fio random-write job run on an attached volume,
 * CreateSnapshot is called. The snapshot must equal the volume after exactly
 * the first C writes, for one C with every write acknowledged before the
 * request (C >= lo) and none issued after the answer (C <= hi). A snapshot
 * that mixed blocks from before and after a copy-on-write, or that missed an
 * acknowledged write, has no such C.
 *
 * The volume is a measurement-only plaintext one so the test can read the
 * stored blocks; an encrypted volume takes the same path with ciphertext
 * (readRaw), checked in snapshot-incremental.test.ts.
 */
const SECTORS = 16384; // the stamp writer's 64 MiB
const B = 512 * 1024;
const SEED = Number(process.env.SNAP_TEST_SEED ?? Date.now() % 100000);

interface W { seq: number; s: number; t0: bigint; t1: bigint }

describe('snapshot of an attached volume under write load', () => {
  const env = new Env('snap-pit');
  const children: ChildProcess[] = [];
  let vol = '';

  beforeAll(async () => {
    ensureBuilt();
    await env.start(['--allow-unencrypted']);
    vol = (await env.ok(['volume', 'create', '--size', '128MiB', '--cipher', 'none'])).VolumeId;
    await env.ok(['attach', vol]);
  }, 60_000);

  afterAll(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await env.cleanup();
  });

  it(`holds exactly the writes before one cut inside [request, answer] (seed ${SEED})`, async () => {
    const log = join(env.dir, 'stamps.log');
    const fio = spawn('fio', ['--name=load', `--filename=${env.file(vol)}`, '--rw=randwrite', '--bs=4k', '--direct=1', '--ioengine=psync',
      '--offset=64M', '--size=64M', '--time_based', '--runtime=120', '--fallocate=none', `--randseed=${SEED}`], { stdio: 'ignore' });
    children.push(fio);
    const writer = spawn('python3', [join(ROOT, 'test/snapshot/stamp-writer.py'), env.file(vol), String(SECTORS), String(SEED), log], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(writer);
    let out = '';
    writer.stdout!.on('data', (c) => (out += c));
    while (!out.includes('ready')) {
      if (writer.exitCode !== null) throw new Error('stamp writer exited early');
      await new Promise((r) => setTimeout(r, 20));
    }

    const tSend = process.hrtime.bigint();
    const snap = await callDaemon(socketPathFor(env.state), 'ebsd.CreateSnapshot', { VolumeId: vol });
    const tAnswer = process.hrtime.bigint();
    expect(snap.State).toBe('pending');
    const id = String(snap.SnapshotId);
    for (;;) {
      const d = await callDaemon(socketPathFor(env.state), 'ebsd.DescribeSnapshots', { SnapshotIds: [id] });
      const st = (d.Snapshots as { State: string }[])[0]!.State;
      if (st !== 'pending') {
        expect(st).toBe('completed');
        break;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    writer.kill('SIGTERM');
    fio.kill('SIGTERM');
    await new Promise<void>((r) => (writer.exitCode !== null ? r() : writer.once('exit', () => r())));
    await new Promise<void>((r) => (fio.exitCode !== null || fio.signalCode !== null ? r() : fio.once('exit', () => r())));

    const writes: W[] = readFileSync(log, 'utf8').trim().split('\n').map((l) => {
      const [seq, s, t0, t1] = l.split(' ');
      return { seq: Number(seq), s: Number(s), t0: BigInt(t0!), t1: BigInt(t1!) };
    });
    const lo = writes.filter((w) => w.t1 < tSend).reduce((m, w) => Math.max(m, w.seq), 0);
    const firstAfter = writes.find((w) => w.t0 > tAnswer);
    const hi = firstAfter ? firstAfter.seq - 1 : writes.length;
    // The check has teeth only if writes straddle the call on both sides.
    expect(lo).toBeGreaterThanOrEqual(100);
    expect(firstAfter, 'the writer kept writing after the answer').toBeDefined();

    // The snapshot's content of the stamp region, from the store.
    const m = JSON.parse(readFileSync(join(env.state, 'snapshots', 'manifests', `${id}.json`), 'utf8'));
    const store = await DirSnapshotStore.open(join(env.state, 'snapshots'));
    const byIndex = new Map<number, string>(m.blocks);
    const perSector = new Map<number, number[]>();
    for (const w of writes) (perSector.get(w.s) ?? perSector.set(w.s, []).get(w.s)!).push(w.seq);
    let cutLo = 0;
    let cutHi = Infinity;
    for (let b = 0; b < (SECTORS * 4096) / B; b++) {
      const h = byIndex.get(b);
      const data = h ? await store.getBlock(h) : Buffer.alloc(B);
      for (let k = 0; k < B / 4096; k++) {
        const s = b * (B / 4096) + k;
        const sec = data.subarray(k * 4096, (k + 1) * 4096);
        const seq = Number(sec.readBigUInt64LE(0));
        const seqs = perSector.get(s) ?? [];
        if (seq === 0) {
          expect(sec.equals(Buffer.alloc(4096)), `sector ${s} is neither zero nor a stamp`).toBe(true);
          if (seqs.length) cutHi = Math.min(cutHi, seqs[0]! - 1);
          continue;
        }
        // A whole stamp of a write to this very sector.
        const rec = Buffer.alloc(16);
        rec.writeBigUInt64LE(BigInt(seq), 0);
        rec.writeBigUInt64LE(BigInt(s), 8);
        expect(sec.equals(Buffer.concat(Array(256).fill(rec))), `sector ${s} holds a torn or misplaced stamp`).toBe(true);
        const at = seqs.indexOf(seq);
        expect(at, `sector ${s} holds write ${seq}, which the writer never sent there`).toBeGreaterThanOrEqual(0);
        cutLo = Math.max(cutLo, seq);
        if (at + 1 < seqs.length) cutHi = Math.min(cutHi, seqs[at + 1]! - 1);
      }
    }
    // One cut explains every sector, and it lies between the request and the answer.
    expect(cutLo, `no single point in time: sectors need a cut >= ${cutLo} and <= ${cutHi}`).toBeLessThanOrEqual(cutHi);
    expect(Math.max(cutLo, lo), `cut [${cutLo}, ${cutHi}] vs acknowledged-before-request ${lo}, issued-after-answer > ${hi}`).toBeLessThanOrEqual(Math.min(cutHi, hi));
    const done = env.daemonLog().split('\n').find((l) => l.includes(id) && l.includes('snapshot completed'));
    console.log(`writes ${writes.length}, request/answer window [${lo}, ${hi}], cut [${cutLo}, ${cutHi}]; ${done?.match(/"cowSectors":\d+/)?.[0]}`);
  }, 90_000);

  it('an ext4 frozen around create restores (same key) to a filesystem that passes e2fsck -fn and holds the files of that moment', async () => {
    const call = api(env);
    const v = (await call('CreateVolume', { Size: 64 * 1024 * 1024 })).VolumeId;
    await call('AttachVolume', { VolumeId: v });
    const loop = await env.losetup(v);
    await sh('mkfs.ext4', ['-q', loop]);
    const at = await env.mountFs(loop, 'fs');
    const data = randomBytes(3 * 1024 * 1024);
    writeFileSync(join(at, 'a'), data);
    writeFileSync(join(at, 'b'), 'before the snapshot\n');
    await sh('fsfreeze', ['-f', at]);
    let id = '';
    try {
      id = (await call('CreateSnapshot', { VolumeId: v })).SnapshotId;
    } finally {
      await sh('fsfreeze', ['-u', at]);
    }
    // Changes after the answer are not in the snapshot.
    writeFileSync(join(at, 'b'), 'after the snapshot\n');
    writeFileSync(join(at, 'c'), randomBytes(1024 * 1024));
    expect((await settled(env, id)).State).toBe('completed');
    await env.umountFs(at);
    await env.detachLoop(loop);

    const r = (await call('CreateVolume', { SnapshotId: id })).VolumeId;
    for (let st = ''; st !== 'available'; ) {
      st = (await call('DescribeVolumes', { VolumeIds: [r] })).Volumes[0].State;
      expect(st).not.toBe('error');
      if (st !== 'available') await new Promise((res) => setTimeout(res, 50));
    }
    await call('AttachVolume', { VolumeId: r });
    const fsck = await sh('e2fsck', ['-fn', env.file(r)]);
    expect(fsck).toMatch(/clean|files/);
    const loop2 = await env.losetup(r);
    const at2 = await env.mountFs(loop2, 'restored');
    expect(createHash('sha256').update(readFileSync(join(at2, 'a'))).digest('hex')).toBe(createHash('sha256').update(data).digest('hex'));
    expect(readFileSync(join(at2, 'b'), 'utf8')).toBe('before the snapshot\n');
    expect(() => readFileSync(join(at2, 'c'))).toThrow(/ENOENT/);
    await env.umountFs(at2);
    await env.detachLoop(loop2);
  }, 120_000);
});
