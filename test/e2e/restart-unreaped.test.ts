import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, fdatasyncSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { poll } from '../helpers/poll.js';
import { CLI, Env, ensureBuilt, rawControlCall } from './helpers.js';

/** Field 3 (the state) of /proc/<pid>/stat, or undefined once the pid is gone. */
function procState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
  } catch {
    return undefined;
  }
}

const block = (): Buffer => Buffer.alloc(4096, 0x5a);

/**
 * A daemon killed with SIGKILL stays a zombie until its parent reaps it. Under
 * a parent that is slow to (a container's init, a shell script that went on to
 * something else), a daemon restarted at once finds the volumes' image locks
 * held by a pid that still answers kill(pid, 0): it must see that process has
 * exited (its lock is stale) and re-attach every volume, not leave them all
 * "recorded attached but not served" until an operator detaches them.
 */
describe('restart while the killed daemon is an unreaped zombie', () => {
  const env = new Env('unreaped');
  let holder: ChildProcess | undefined;
  let vol = '';

  beforeAll(() => ensureBuilt());
  afterAll(async () => {
    holder?.kill('SIGKILL'); // its zombie child goes to init, which reaps it
    await env.cleanup();
  });

  it('re-attaches the volumes whose image locks the zombie still names', async () => {
    // The first daemon's parent is bash turned into `sleep`: it never waits for its child.
    const log = openSync(join(env.dir, 'zombie-daemon.log'), 'a');
    holder = spawn('bash', ['-c', '"$@" & exec sleep 600', 'holder', process.execPath, CLI, 'daemon',
      '--state-dir', env.state, '--mount', env.mnt], { stdio: ['ignore', log, log] });
    closeSync(log);
    // The first daemon answers.
    await poll(async () =>
      existsSync(join(env.state, 'ebsd.sock')) && (await rawControlCall(env.state, 'ebsd.Status', {}).then((a) => a.status === 200, () => false)), { tries: 600, everyMs: 50 });

    vol = (await rawControlCall(env.state, 'ebsd.CreateVolume', { Size: '4MiB', Name: 'zombie' })).body.VolumeId;
    expect(vol).toMatch(/^vol-/);
    expect((await rawControlCall(env.state, 'ebsd.AttachVolume', { VolumeId: vol })).status).toBe(200);
    const fd = openSync(env.file(vol), 'r+');
    try {
      writeSync(fd, block(), 0, 4096, 8192);
      fdatasyncSync(fd);
    } finally {
      closeSync(fd);
    }

    const pid = Number(readFileSync(join(env.state, 'ebsd.pid'), 'utf8').trim());
    expect(readFileSync(join(env.state, 'volumes', `${vol}.img.lock`), 'utf8')).toContain(`"pid":${pid}`);
    process.kill(pid, 'SIGKILL');
    await poll(() => procState(pid) === 'Z', { tries: 600, everyMs: 50 }); // the killed daemon is a zombie

    await env.start();
    expect(procState(pid)).toBe('Z'); // still unreaped while the new daemon re-attached
    const st = (await rawControlCall(env.state, 'ebsd.Status', {})).body;
    const v = st.Volumes.find((x: { VolumeId: string }) => x.VolumeId === vol);
    expect(v.Problem).toBeUndefined();
    expect(v).toMatchObject({ Attached: true });
    expect(env.daemonLog()).not.toContain('could not resume attachment');

    const back = Buffer.alloc(4096);
    const rd = openSync(env.file(vol), 'r');
    try {
      readSync(rd, back, 0, 4096, 8192);
    } finally {
      closeSync(rd);
    }
    expect(back.equals(block())).toBe(true);
  });
});
