/**
 * PR_SET_IO_FLUSHER on the daemon's threads (src/daemon/process-hardening.ts):
 * a loop device and file system on a volume file write back through the
 * daemon, so its threads must not wait on that write-back in memory reclaim or
 * balance_dirty_pages. Observed from outside on a real daemon serving a loop
 * device: the flags of every thread in /proc/<pid>/task/<tid>/stat (field 9),
 * PF_MEMALLOC_NOIO 0x00080000 and PF_LOCAL_THROTTLE 0x00100000.
 *
 * prctl(PR_SET_IO_FLUSHER) needs CAP_SYS_RESOURCE: where this test runs
 * without it (a container that drops it), the daemon must say it was refused,
 * and no thread has the flags; with it, every thread but the V8 platform ones
 * Node starts before any JS runs has them.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { Env, ensureBuilt, run } from '../e2e/helpers.js';

const PF_MEMALLOC_NOIO = 0x0008_0000;
const PF_LOCAL_THROTTLE = 0x0010_0000;
const IO_FLUSHER = PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE;
const CAP_SYS_RESOURCE = 24;

/** tid -> flags (field 9 of /proc/<pid>/task/<tid>/stat; comm may hold spaces and parentheses). */
function threadFlags(pid: number): Map<number, number> {
  const out = new Map<number, number>();
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    let stat: string;
    try { stat = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8'); } catch { continue; } // thread gone
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // from field 3 on
    out.set(Number(t), Number(rest[9 - 3]));
  }
  return out;
}

const capEff = BigInt(`0x${/^CapEff:\s+([0-9a-f]+)/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]}`);
const canFlush = (capEff >> BigInt(CAP_SYS_RESOURCE)) & 1n ? true : false;

/** Threads a bare node has before any JS runs (main + V8 platform): those cannot inherit the flag. */
function threadsBeforeJs(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(require("fs").readdirSync("/proc/self/task").length))'], { encoding: 'utf8' });
  return Number(r.stdout);
}

describe('PR_SET_IO_FLUSHER on a daemon serving a loop device (root, FUSE)', () => {
  const env = new Env('ioflusher');
  let vol = '';

  beforeAll(async () => {
    ensureBuilt();
    await env.start(['--log-level', 'debug']);
    vol = (await env.api('ebsd.CreateVolume', { Size: '16MiB' })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    const loop = await env.losetup(vol);
    // Some I/O through the loop device, so the FUSE and pool threads are all there.
    const w = await run('dd', ['if=/dev/urandom', `of=${loop}`, 'bs=1M', 'count=4', 'oflag=direct', 'status=none']);
    expect(w.code, w.stderr).toBe(0);
  }, 60_000);
  afterAll(() => env.cleanup(), 60_000);

  // One case whichever way this machine is: with CAP_SYS_RESOURCE (a systemd unit with it in its bounding
  // set) the flags are on every thread the daemon's JS started; without it (a container's root, as CI's
  // machine) the kernel refuses, and the daemon says so, claims nothing and serves.
  it(`${canFlush ? 'with' : 'without'} CAP_SYS_RESOURCE: ${canFlush ? 'every thread started by or after the daemon\'s JS has PF_MEMALLOC_NOIO and PF_LOCAL_THROTTLE' : 'the daemon warns that PR_SET_IO_FLUSHER was refused, claims nothing, and serves'}`, async () => {
    if (canFlush) {
      const said = 'PR_SET_IO_FLUSHER set';
      expect(await env.untilLog(said)).toContain(said);
      const flags = threadFlags(env.pid!);
      expect(flags.get(env.pid!)! & IO_FLUSHER).toBe(IO_FLUSHER); // the JS thread
      const without = [...flags].filter(([, f]) => (f & IO_FLUSHER) !== IO_FLUSHER).map(([tid]) => tid);
      expect(flags.size).toBeGreaterThan(threadsBeforeJs());
      expect(without.length, `threads without the flags: ${without.join(', ')} of ${flags.size}`).toBeLessThanOrEqual(threadsBeforeJs() - 1);
      return;
    }
    const said = 'PR_SET_IO_FLUSHER refused (needs CAP_SYS_RESOURCE)';
    expect(await env.untilLog(said)).toContain(said);
    expect(env.daemonLog()).not.toContain('PR_SET_IO_FLUSHER set');
    for (const [, f] of threadFlags(env.pid!)) expect(f & IO_FLUSHER).toBe(0);
    const st = await env.api('ebsd.Status');
    expect(st.Volumes.find((x: { VolumeId: string }) => x.VolumeId === vol)).toMatchObject({ Attached: true });
  });
});

describe('PR_SET_IO_FLUSHER is not asked for by a KMS-only daemon (no volume file writes back through it)', () => {
  const env = new Env('ioflusher-kms');
  afterAll(() => env.cleanup(), 60_000);

  it('--kms-only: no prctl, so neither "set" nor a warning about loop devices, and no thread has the flags', async () => {
    ensureBuilt();
    await env.start(['--kms-only', '--kms-listen', '127.0.0.1:0', '--log-level', 'debug']);
    await env.untilLog('ebsd daemon ready');
    expect(env.daemonLog()).not.toContain('PR_SET_IO_FLUSHER');
    for (const [, f] of threadFlags(env.pid!)) expect(f & IO_FLUSHER).toBe(0);
  }, 60_000);
});
