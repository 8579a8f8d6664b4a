import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, fdatasyncSync, openSync, readSync, writeSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt, run } from './helpers.js';

const MiB = 1024 * 1024;

function fioArgs(file: string, extra: string[]): string[] {
  return [
    '--name=ebsd-verify', `--filename=${file}`, '--direct=1', '--ioengine=libaio', '--rw=randwrite', '--bs=4k',
    '--size=32m', '--iodepth=16', '--verify=crc32c', '--randrepeat=1', '--verify_state_save=0', '--output-format=json', ...extra,
  ];
}

/** What block i of the crash test holds: deterministic, distinct per block. */
function pattern(i: number): Buffer {
  const h = createHash('sha256').update(`ebsd-block-${i}`).digest();
  return Buffer.concat(Array.from({ length: 4096 / 32 }, () => h));
}

// A writer in its own process: write block i, fdatasync (unless argv[2] is
// "nosync"), then print "ack i".
const WRITER = `
const fs = require('fs'); const { createHash } = require('crypto');
const pat = (i) => { const h = createHash('sha256').update('ebsd-block-' + i).digest(); return Buffer.concat(Array.from({ length: 128 }, () => h)); };
const fd = fs.openSync(process.argv[1], 'r+');
const sync = process.argv[2] !== 'nosync';
for (let i = 0; i < 4096; i++) {
  try { fs.writeSync(fd, pat(i), 0, 4096, i * 4096); if (sync) fs.fdatasyncSync(fd); } catch (e) { process.exit(3); }
  process.stdout.write('ack ' + i + '\\n');
}`;

/**
 * Run a writer script (node -e `script` ...args) that prints "ack i" after
 * each write it considers done, SIGKILL the daemon once `after` writes are
 * acknowledged, and return the highest acknowledged i.
 */
async function writeThenKill(env: Env, script: string, args: string[], after: number): Promise<number> {
  const acked: number[] = [];
  const writer = spawn(process.execPath, ['-e', script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let killed = false;
  let gone: Promise<void> = Promise.resolve();
  const done = new Promise<void>((r) => writer.once('exit', () => r()));
  let rest = '';
  writer.stdout.on('data', (c: Buffer) => {
    rest += c.toString();
    const lines = rest.split('\n');
    rest = lines.pop()!;
    for (const l of lines) if (l.startsWith('ack ')) acked.push(Number(l.slice(4)));
    if (!killed && acked.length >= after) {
      killed = true;
      gone = env.kill9();
    }
  });
  await Promise.race([done, new Promise((r) => setTimeout(r, 60_000))]);
  if (writer.exitCode === null) writer.kill('SIGKILL');
  expect(killed).toBe(true);
  await gone;
  const last = Math.max(...acked);
  expect(last).toBeGreaterThanOrEqual(after - 1);
  return last;
}

/** Every block 0..last of the volume file holds pattern(i). */
function expectBlocks(file: string, last: number, what: string): void {
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.alloc(4096);
    for (let i = 0; i <= last; i++) {
      readSync(fd, buf, 0, 4096, i * 4096);
      if (!buf.equals(pattern(i))) throw new Error(`${what} block ${i} (of ${last}) lost after SIGKILL`);
    }
  } finally {
    closeSync(fd);
  }
}

describe('durability through the real daemon', () => {
  const env = new Env('durability');
  let vol = '';

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    vol = (await env.api('ebsd.CreateVolume', { Size: '64MiB', Name: 'dur' })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
  });
  afterAll(() => env.cleanup());

  it('fio --verify=crc32c random writes; detach, re-attach, --verify_only passes', async () => {
    const w = await run('fio', fioArgs(env.file(vol), ['--do_verify=1']));
    expect(w.code, w.stderr).toBe(0);
    const job = JSON.parse(w.stdout.slice(w.stdout.indexOf('{'))).jobs[0];
    expect(job.error).toBe(0);
    await env.untilClosed(vol);
    await env.api('ebsd.DetachVolume', { VolumeId: vol, Force: false });
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    const v = await run('fio', fioArgs(env.file(vol), ['--verify_only']));
    expect(v.code, v.stderr + v.stdout).toBe(0);
    expect(JSON.parse(v.stdout.slice(v.stdout.indexOf('{'))).jobs[0].error).toBe(0);
  });

  it('every fsync-acknowledged write survives SIGKILL of the daemon; restart recovers the stale mount and re-attaches', async () => {
    const last = await writeThenKill(env, WRITER, [env.file(vol), 'sync'], 300);

    // The old endpoint is dead ("Transport endpoint is not connected"); the daemon must recover it.
    await env.start();
    const st = await env.api('ebsd.Status');
    expect(st.Volumes.find((x: { VolumeId: string }) => x.VolumeId === vol)).toMatchObject({ Attached: true });
    expect(st.Daemon.WriteBehind).toBe(true);
    expectBlocks(env.file(vol), last, 'fsync-acknowledged');
  });

  it('ext4 is clean after journal replay when the daemon is killed under fsync-ing file writes', async () => {
    const vol2 = (await env.api('ebsd.CreateVolume', { Size: '64MiB', Name: 'ext4crash' })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: vol2 });
    const loop = await env.losetup(vol2);
    await run('mkfs.ext4', ['-q', '-F', loop]);
    const fs = await env.mountFs(loop, 'crashfs');
    const script = `
      const fs = require('fs');
      for (let i = 0; i < 100000; i++) {
        try {
          const fd = fs.openSync(process.argv[1] + '/f' + i, 'w');
          fs.writeSync(fd, Buffer.alloc(8192, i % 251)); fs.fsyncSync(fd); fs.closeSync(fd);
          const d = fs.openSync(process.argv[1], 'r'); fs.fsyncSync(d); fs.closeSync(d);
        } catch (e) { process.exit(3); }
        process.stdout.write('ack ' + i + '\\n');
      }`;
    const max = await writeThenKill(env, script, [fs], 50);
    // Tear down the dead stack: lazy unmount (the loop's backing file is gone), drop the loop.
    await run('umount', ['-l', fs]);
    await run('losetup', ['-d', loop]);

    await env.start();
    const loop2 = await env.losetup(vol2);
    const fix = await run('e2fsck', ['-fy', loop2]); // replays the journal
    expect([0, 1]).toContain(fix.code);
    const check = await run('e2fsck', ['-fn', loop2]);
    expect(check.code, check.stdout).toBe(0);
    const fs2 = await env.mountFs(loop2, 'crashfs2');
    for (let i = 0; i <= max; i++) {
      const fd = openSync(`${fs2}/f${i}`, 'r');
      const b = Buffer.alloc(8192);
      readSync(fd, b, 0, 8192, 0);
      closeSync(fd);
      if (!b.equals(Buffer.alloc(8192, i % 251))) throw new Error(`fsync-acknowledged file f${i} damaged`);
    }
    await env.umountFs(fs2);
    await env.detachLoop(loop2);
  });

  it('--no-write-behind: every acknowledged write survives SIGKILL of the daemon without any fsync', async () => {
    await env.stop();
    await env.start(['--no-write-behind']);
    expect((await env.api('ebsd.Status')).Daemon.WriteBehind).toBe(false);

    // Overwrite the first blocks with a different pattern first, so a write
    // that was acknowledged but lost would leave the old pattern behind.
    const old = openSync(env.file(vol), 'r+');
    try {
      for (let i = 0; i < 2000; i++) writeSync(old, pattern(i + 100_000), 0, 4096, i * 4096);
      fdatasyncSync(old);
    } finally {
      closeSync(old);
    }
    const last = await writeThenKill(env, WRITER, [env.file(vol), 'nosync'], 1500);
    await env.start(['--no-write-behind']);
    expectBlocks(env.file(vol), last, 'acknowledged (no fsync)');
  });
});
