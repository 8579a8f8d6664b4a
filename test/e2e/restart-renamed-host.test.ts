import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, fdatasyncSync, openSync, readFileSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { poll } from '../helpers/poll.js';
import { CLI, Env, ensureBuilt, rawControlCall } from './helpers.js';

const block = (): Buffer => Buffer.alloc(4096, 0x3c);

/**
 * A daemon killed while it ran under another host name than its successor's: a container
 * started again under a new name (the default for many runtimes), or a renamed host. Its image
 * locks name that host. They were judged "another host's lock, never ours to judge", so every
 * volume stayed unserved after the restart and could never be attached again (VolumeInUse,
 * naming a dead process) until someone deleted the lock file by hand. A lock written under this
 * very kernel (its boot id) is this machine's, and is judged by its process as any other.
 */
describe('restart under another host name (UTS namespace)', () => {
  const env = new Env('renamed');
  let first: ChildProcess | undefined;
  let vol = '';
  const oldName = `ebsd-old-${process.pid}`;

  beforeAll(() => ensureBuilt());
  afterAll(async () => {
    if (first && first.exitCode === null && first.signalCode === null) first.kill('SIGKILL');
    await env.cleanup();
  });

  it('re-attaches the volumes whose image locks the old host name holds; attach after detach works', async () => {
    expect(hostname()).not.toBe(oldName);
    const log = openSync(join(env.dir, 'old-name-daemon.log'), 'a');
    first = spawn('unshare', ['--uts', 'bash', '-c', 'hostname "$1"; shift; exec "$@"', 'named', oldName, process.execPath, CLI, 'daemon',
      '--state-dir', env.state, '--mount', env.mnt], { stdio: ['ignore', log, log] });
    closeSync(log);
    const exited = new Promise<void>((r) => first!.once('exit', () => r()));
    // The first daemon answers.
    await poll(async () =>
      existsSync(join(env.state, 'ebsd.sock')) && (await rawControlCall(env.state, 'ebsd.Status', {}).then((a) => a.status === 200, () => false)), { tries: 600, everyMs: 50 });

    vol = (await rawControlCall(env.state, 'ebsd.CreateVolume', { Size: '4MiB', Name: 'renamed' })).body.VolumeId;
    expect((await rawControlCall(env.state, 'ebsd.AttachVolume', { VolumeId: vol })).status).toBe(200);
    const fd = openSync(env.file(vol), 'r+');
    try {
      writeSync(fd, block(), 0, 4096, 12288);
      fdatasyncSync(fd);
    } finally {
      closeSync(fd);
    }
    expect(readFileSync(join(env.state, 'volumes', `${vol}.img.lock`), 'utf8')).toContain(`"host":"${oldName}"`);
    first.kill('SIGKILL');
    await exited;

    await env.start();
    const v = (await rawControlCall(env.state, 'ebsd.Status', {})).body.Volumes.find((x: { VolumeId: string }) => x.VolumeId === vol);
    expect(v.Problem).toBeUndefined();
    expect(v).toMatchObject({ Attached: true });
    const back = Buffer.alloc(4096);
    const rd = openSync(env.file(vol), 'r');
    try {
      readSync(rd, back, 0, 4096, 12288);
    } finally {
      closeSync(rd);
    }
    expect(back.equals(block())).toBe(true);

    await env.untilClosed(vol);
    await env.api('ebsd.DetachVolume', { VolumeId: vol });
    expect((await rawControlCall(env.state, 'ebsd.AttachVolume', { VolumeId: vol })).status).toBe(200);
  });

  it('a lock of another host and another boot is left alone, and the refusal says how to free it', async () => {
    const other = (await env.api('ebsd.CreateVolume', { Size: '4MiB', Name: 'elsewhere' })).VolumeId;
    const lock = join(env.state, 'volumes', `${other}.img.lock`);
    writeFileSync(lock, JSON.stringify({ pid: 1, startTime: '1', bootId: '00000000-0000-4000-8000-000000000000', host: 'ebsd-elsewhere', volumeId: other, since: '2026-01-01T00:00:00.000Z' }), { mode: 0o600 });
    const refused = await rawControlCall(env.state, 'ebsd.AttachVolume', { VolumeId: other });
    expect(refused.body.__type).toBe('VolumeInUse');
    expect(refused.body.message).toBe(`volume ${other} is attached by pid 1 on ebsd-elsewhere since 2026-01-01T00:00:00.000Z; if ebsd-elsewhere no longer runs that daemon, remove ${lock}`);
    rmSync(lock);
    expect((await rawControlCall(env.state, 'ebsd.AttachVolume', { VolumeId: other })).status).toBe(200);
  });

  it('a re-attach at start refused by such a lock: ebsd status says why and how to free it', async () => {
    const other = (await env.api('ebsd.CreateVolume', { Size: '4MiB', Name: 'held' })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: other });
    await env.stop(); // the attachment stays recorded; the lock goes with the daemon
    const lock = join(env.state, 'volumes', `${other}.img.lock`);
    writeFileSync(lock, JSON.stringify({ pid: 1, startTime: '1', bootId: '00000000-0000-4000-8000-000000000000', host: 'ebsd-elsewhere', volumeId: other, since: '2026-01-01T00:00:00.000Z' }), { mode: 0o600 });
    await env.start();
    const v = (await env.api('ebsd.Status')).Volumes.find((x: { VolumeId: string }) => x.VolumeId === other);
    expect(v.Attached).toBe(false);
    expect(v.Problem).toBe(`recorded attached but not served: the re-attach failed (VolumeInUse: volume ${other} is attached by pid 1 on ebsd-elsewhere since 2026-01-01T00:00:00.000Z; if ebsd-elsewhere no longer runs that daemon, remove ${lock}); detach it`);
    rmSync(lock);
    await env.api('ebsd.DetachVolume', { VolumeId: other });
    await env.api('ebsd.AttachVolume', { VolumeId: other });
    expect(existsSync(env.file(other))).toBe(true);
  });
});
