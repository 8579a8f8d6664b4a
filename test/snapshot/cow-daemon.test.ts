import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, Env, ensureBuilt, run } from '../e2e/helpers.js';
import { stampPointInTime } from './stamp-check.js';

/**
 * Sector-granular copy-on-write through the real daemon, with its memory cap
 * lowered to 64 KiB (EBSD_TEST_COW_MEMORY_BYTES) so captured sectors go to the
 * spill file (docs/architecture.md §12.2): the snapshot of a volume under a
 * stamp writer and fio still holds exactly one point in time, the spill file
 * never has a name while in use, and start-up sweeps one a crash left. The
 * budget (--snapshot-cow-memory, src/snapshot/cow-memory.ts) is logged at
 * start-up; a bad value is refused before anything starts.
 */
const SEED = Number(process.env.SNAP_TEST_SEED ?? Date.now() % 100000);

describe('copy-on-write spilling to a file, through the daemon', () => {
  const env = new Env('snap-cow');
  const children: ChildProcess[] = [];
  let vol = '';
  const cowDir = (): string => join(env.state, 'snapshots-local', 'cow');
  /** The start-up lines naming the budget, polled (the log file is written asynchronously). */
  const budgetLines = async (n: number): Promise<string[]> => {
    let lines: string[] = [];
    for (let i = 0; i < 200 && lines.length < n; i++) {
      lines = env.daemonLog().split('\n').filter((l) => l.includes('snapshot copy-on-write memory budget'));
      if (lines.length < n) await new Promise((r) => setTimeout(r, 25));
    }
    return lines;
  };

  beforeAll(async () => {
    ensureBuilt();
    process.env.EBSD_TEST_COW_MEMORY_BYTES = String(64 * 1024);
    try {
      await env.start(['--allow-unencrypted']);
    } finally {
      delete process.env.EBSD_TEST_COW_MEMORY_BYTES;
    }
    vol = (await env.api('ebsd.CreateVolume', { Size: '128MiB', Cipher: 'none' })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
  }, 60_000);

  afterAll(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await env.cleanup();
  });

  it(`one point in time with captured sectors spilled; the spill file is nameless while in use (seed ${SEED})`, async () => {
    const named: string[] = [];
    const { completedLine } = await stampPointInTime(env, vol, SEED, children, {
      whileRunning: () => {
        if (existsSync(cowDir())) named.push(...readdirSync(cowDir()));
      },
    });
    expect(named, 'no spill file visible by name while the snapshot ran').toEqual([]);
    const [budget] = await budgetLines(1);
    expect(budget, 'the test override lowered the budget, and the start-up log says so').toMatch(/"snapshotCowMemoryBytes":65536,"from":"EBSD_TEST_COW_MEMORY_BYTES"/);
    const spilled = Number(completedLine?.match(/"cowSpilledSectors":(\d+)/)?.[1]);
    expect(spilled, `the 64 KiB cap sent captured sectors to the spill file: ${completedLine}`).toBeGreaterThan(0);
    expect(existsSync(cowDir()) ? readdirSync(cowDir()) : []).toEqual([]);
  }, 90_000);

  it('a spill file a crash left (between its open and its unlink) is removed at start-up', async () => {
    mkdirSync(cowDir(), { recursive: true });
    writeFileSync(join(cowDir(), 'snap-0123456789abcdef0.spill'), Buffer.alloc(4096, 7));
    await env.kill9();
    await env.start(['--allow-unencrypted', '--snapshot-cow-memory', '1.5MiB']);
    expect(existsSync(cowDir())).toBe(false);
    const lines = await budgetLines(2);
    expect(lines[1], 'the flag sets the budget (1.5 MiB in bytes)').toMatch(/"snapshotCowMemoryBytes":1572864,"from":"--snapshot-cow-memory"/);
  }, 60_000);

  it('--snapshot-cow-memory: a bad value is refused naming the flag (usage exit code), before the state dir is touched; --help lists it', async () => {
    const state = join(env.dir, 'never');
    const r = await run(process.execPath, [CLI, 'daemon', '--state-dir', state, '--mount', join(env.dir, 'never-mnt'), '--snapshot-cow-memory', '2 lots']);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/--snapshot-cow-memory "2 lots" is not a size/);
    expect(existsSync(state)).toBe(false);
    const help = await run(process.execPath, [CLI, 'daemon', '--help']);
    expect(help.stdout).toMatch(/--snapshot-cow-memory/);
  }, 30_000);
});
