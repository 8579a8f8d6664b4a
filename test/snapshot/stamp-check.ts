import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { ROOT, type Env } from '../e2e/helpers.js';
import { callDaemon, socketPathFor } from '../../src/cli/client.js';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';

/**
 * Point in time under write load (docs/architecture.md §12.2): while a
 * stamp writer (one O_DIRECT 4 KiB write at a time, each stamped with its
 * sequence number) and a fio random-write job run on an attached volume,
 * CreateSnapshot is called. The snapshot must equal the volume after exactly
 * the first C writes, for one C with every write acknowledged before the
 * request (C >= lo) and none issued after the answer (C <= hi). A snapshot
 * that mixed blocks or sectors from before and after a copy-on-write, or
 * that missed an acknowledged write, has no such C.
 *
 * The volume must be a measurement-only plaintext one (at least 128 MiB:
 * stamps in the first 64 MiB, fio in the next) so the stored blocks can be
 * read; an encrypted volume takes the same path with ciphertext (the copy's
 * own read handle, openImageDataReader).
 * `whileRunning` is called while the snapshot is pending (polled with it).
 */
const SECTORS = 16384; // the stamp writer's 64 MiB
const B = 512 * 1024;

interface W { seq: number; s: number; t0: bigint; t1: bigint }

export interface StampOptions {
  /** Called at each poll while the snapshot is pending. */
  whileRunning?: () => void;
  /**
   * Stop the writers once the snapshot's Progress reaches this percentage
   * (default 30) or the stamp writer has written `stopAfterWrites` (default
   * 1000) more after the answer, whichever comes first: writes race the
   * copier over its first blocks, then the copier, no longer paced by writes
   * (cow-pacer.ts), finishes at full speed.
   */
  stopWritersAt?: number;
  stopAfterWrites?: number;
}

export async function stampPointInTime(env: Env, vol: string, seed: number, children: ChildProcess[], o: StampOptions = {}): Promise<{ snapshotId: string; completedLine: string | undefined }> {
  const log = join(env.dir, `stamps-${vol}.log`);
  const fio = spawn('fio', ['--name=load', `--filename=${env.file(vol)}`, '--rw=randwrite', '--bs=4k', '--direct=1', '--ioengine=psync',
    '--offset=64M', '--size=64M', '--time_based', '--runtime=120', '--fallocate=none', `--randseed=${seed}`], { stdio: 'ignore' });
  children.push(fio);
  const writer = spawn('python3', [join(ROOT, 'test/snapshot/stamp-writer.py'), env.file(vol), String(SECTORS), String(seed), log], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(writer);
  let out = '';
  /** The stamp writer's count, from its `wrote N` lines. */
  let wrote = 0;
  writer.stdout!.on('data', (c) => {
    out += c;
    const m = /wrote (\d+)\n(?![^]*wrote)/.exec(out); // the last complete one
    if (m) wrote = Number(m[1]);
  });
  while (!out.includes('ready')) {
    if (writer.exitCode !== null) throw new Error('stamp writer exited early');
    await new Promise((r) => setTimeout(r, 20));
  }

  const tSend = process.hrtime.bigint();
  const snap = await callDaemon(socketPathFor(env.state), 'ebsd.CreateSnapshot', { VolumeId: vol });
  const tAnswer = process.hrtime.bigint();
  const wroteAtAnswer = wrote;
  expect(snap.State).toBe('pending');
  const id = String(snap.SnapshotId);
  const stopAt = o.stopWritersAt ?? 30;
  const stopWriters = (): void => {
    if (writer.exitCode === null) writer.kill('SIGTERM');
    if (fio.exitCode === null && fio.signalCode === null) fio.kill('SIGTERM');
  };
  for (;;) {
    o.whileRunning?.();
    const d = await callDaemon(socketPathFor(env.state), 'ebsd.DescribeSnapshots', { SnapshotIds: [id] });
    const { State: st, Progress: progress } = (d.Snapshots as { State: string; Progress: string }[])[0]!;
    if (st !== 'pending') {
      expect(st).toBe('completed');
      break;
    }
    if (parseInt(progress, 10) >= stopAt || wrote >= wroteAtAnswer + (o.stopAfterWrites ?? 1000)) stopWriters();
    await new Promise((r) => setTimeout(r, 50));
  }
  stopWriters();
  // A child killed by SIGTERM has exitCode null and its signalCode set: its 'exit' may already be past.
  const exited = (c: ChildProcess): Promise<void> => new Promise<void>((r) => (c.exitCode !== null || c.signalCode !== null ? r() : c.once('exit', () => r())));
  await exited(writer);
  await exited(fio);

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
  // Logged once the manifest says completed, and it reaches the log file behind that (pipe, write stream): polled for.
  const isCompleted = (l: string): boolean => l.includes(id) && l.includes('snapshot completed');
  const completedLine = (await env.untilLog((log) => log.split('\n').some(isCompleted))).split('\n').find(isCompleted);
  console.log(`writes ${writes.length}, request/answer window [${lo}, ${hi}], cut [${cutLo}, ${cutHi}]; ${completedLine?.match(/"cowSectors":\d+,"cowSpilledSectors":\d+/)?.[0]}`);
  return { snapshotId: id, completedLine };
}
