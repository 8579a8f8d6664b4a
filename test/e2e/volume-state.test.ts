import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, fdatasyncSync, mkdirSync, openSync, readFileSync, readSync, renameSync, statSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { exitCodeFor } from '../../src/cli/exit-codes.js';
import { Env, ensureBuilt, rawControlCall } from './helpers.js';

/**
 * Crash- and race-safety of volume state through the real daemon: parallel
 * attach/detach, SIGKILL at named points (src/util/fault-point.ts, armed by
 * EBSD_TEST_FAULT in the daemon's environment), an image replaced by a
 * symlink, a forced detach with the file open.
 *
 * Calls whose only job is to set up or look (create, describe, status, list
 * grants) and the 20-way race go straight to the control socket as root:
 * a CLI process costs ~0.4 s of CPU to start, which made the race test
 * mostly node start-up (≈ 34 s of its time on a loaded machine), and
 * parallel requests on the socket race inside the daemon at least as hard
 * as 20 processes did. The CLI stays where its answer is under test (exit
 * codes, messages) and at the fault points.
 */
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

function pattern(tag: string): Buffer {
  const h = createHash('sha256').update(`ebsd-volstate-${tag}`).digest();
  return Buffer.concat(Array.from({ length: 4096 / 32 }, () => h));
}

function writeBlock(file: string, pos: number, data: Buffer): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, data, 0, data.length, pos);
    fdatasyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function readBlock(file: string, pos: number): Buffer {
  const fd = openSync(file, 'r');
  try {
    const b = Buffer.alloc(4096);
    readSync(fd, b, 0, 4096, pos);
    return b;
  } finally {
    closeSync(fd);
  }
}

type Answer = { status: number; body: any };

/** One control-API call as root through the daemon's socket (what the CLI sends, without its start-up). */
function call(env: Env, target: string, body: Record<string, unknown> = {}): Promise<Answer> {
  return rawControlCall(env.state, target, body);
}

/** A call that must succeed; its answer. */
async function ok(env: Env, target: string, body: Record<string, unknown> = {}): Promise<any> {
  const r = await call(env, target, body);
  if (r.status !== 200) throw new Error(`${target} ${JSON.stringify(body)} -> ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

/** A new encrypted volume under alias/vs. */
async function createVolume(env: Env, size: number): Promise<string> {
  return (await ok(env, 'ebsd.CreateVolume', { Size: size, KmsKeyId: 'alias/vs' })).VolumeId as string;
}

const attach = (env: Env, id: string): Promise<any> => ok(env, 'ebsd.AttachVolume', { VolumeId: id });
/**
 * An orderly detach. The kernel sends FUSE RELEASE after close() returns, so the
 * test's own just-closed handle may still count: poll OpenHandles to 0 first
 * (bounded), then detach without Force.
 */
async function detach(env: Env, id: string): Promise<any> {
  for (let i = 0; i < 500; i++) {
    const v = (await ok(env, 'ebsd.Status')).Volumes.find((x: { VolumeId: string }) => x.VolumeId === id);
    if (!v?.OpenHandles) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  return ok(env, 'ebsd.DetachVolume', { VolumeId: id, Force: false });
}

/** Start the daemon with the named fault point armed (inherited environment), or none. */
async function startWith(env: Env, fault?: string): Promise<void> {
  if (fault) process.env.EBSD_TEST_FAULT = fault;
  try {
    await env.start();
  } finally {
    delete process.env.EBSD_TEST_FAULT;
  }
}

/** Run a CLI call that hits an armed fault point: the daemon dies with SIGKILL; wait until it is gone. */
async function crashAt(env: Env, args: string[]): Promise<void> {
  const stops = env.daemonLog().split('"ebsd daemon stopped"').length;
  const r = await env.cli(args);
  expect(r.code).not.toBe(0);
  await env.kill9();
  // Killed at the fault point, not shut down in order.
  expect(env.daemonLog().split('"ebsd daemon stopped"').length).toBe(stops);
}

async function attachGrants(env: Env, keyArn: string): Promise<string[]> {
  const g = await ok(env, 'TrentService.ListGrants', { KeyId: keyArn });
  return (g.Grants as { GrantId: string; Name?: string }[]).filter((x) => x.Name?.startsWith('ebsd-attach-')).map((x) => x.GrantId);
}

describe('volume state under races and crashes (real daemon)', () => {
  const env = new Env('volstate');
  let keyArn = '';

  beforeAll(async () => {
    ensureBuilt();
    await startWith(env);
    keyArn = (await env.ok(['kms', 'create-key', '--description', 'volstate', '--alias', 'alias/vs'])).KeyMetadata.Arn;
  }, 120_000);
  afterAll(() => env.cleanup(), 60_000);
  // A test that failed between a crash and the restart must not take the next ones with it.
  beforeEach(async () => {
    if (env.pid === undefined) await startWith(env);
  }, 60_000);

  const image = (volumeId: string): string => join(env.state, 'volumes', `${volumeId}.img`);
  const state = async (volumeId: string): Promise<string> => (await ok(env, 'ebsd.DescribeVolumes', { VolumeIds: [volumeId] })).Volumes[0].State;
  const statusOf = async (volumeId: string): Promise<any> => (await ok(env, 'ebsd.Status')).Volumes.find((v: { VolumeId: string }) => v.VolumeId === volumeId);

  it('20 parallel attach/detach of one volume, then attach: the file serves I/O (3 rounds)', async () => {
    const id = await createVolume(env, 32 * MiB);
    for (let round = 0; round < 3; round++) {
      const calls = Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? call(env, 'ebsd.AttachVolume', { VolumeId: id }) : call(env, 'ebsd.DetachVolume', { VolumeId: id, Force: false })));
      const results = await Promise.all(calls);
      // Each call either did its job or was refused with a conflict (the CLI's exit 6); none failed otherwise.
      for (const r of results) expect([0, 6], JSON.stringify(r.body)).toContain(r.status === 200 ? 0 : exitCodeFor(r.body.__type, r.status));
      if ((await state(id)) !== 'in-use') await attach(env, id);
      const st = await statusOf(id);
      expect(st.Attached).toBe(true);
      expect(st.KeyCache.State).toBe('cached');
      const data = pattern(`race-${round}`);
      writeBlock(env.file(id), round * 4096, data);
      expect(readBlock(env.file(id), round * 4096).equals(data)).toBe(true);
      await detach(env, id);
      expect(await state(id)).toBe('available');
    }
    await attach(env, id);
    for (let round = 0; round < 3; round++) expect(readBlock(env.file(id), round * 4096).equals(pattern(`race-${round}`))).toBe(true);
    await detach(env, id);
  }, 300_000);

  it('SIGKILL after the header update of a modify: the restart completes it; a later 512MiB modify is refused and changes nothing', async () => {
    const id = await createVolume(env, 48 * MiB);
    await attach(env, id);
    writeBlock(env.file(id), 0, pattern('m0'));
    writeBlock(env.file(id), 40 * MiB, pattern('m40'));
    await detach(env, id);
    await env.stop();

    await startWith(env, 'modify.after-header');
    await crashAt(env, ['volume', 'modify', id, '--size', '1GiB']);
    await startWith(env);
    const v = (await ok(env, 'ebsd.DescribeVolumes', { VolumeIds: [id] })).Volumes[0];
    expect(v.SizeBytes).toBe(GiB);
    expect(v.State).toBe('available');
    // DescribeVolumesModifications tells the modify completed, from the intent's start.
    expect((await ok(env, 'ebsd.DescribeVolumesModifications', { VolumeIds: [id] })).VolumesModifications).toEqual([
      expect.objectContaining({ VolumeId: id, ModificationState: 'completed', OriginalSizeBytes: 48 * MiB, TargetSizeBytes: GiB, OriginalSize: 1, TargetSize: 1, Progress: 100, StartTime: expect.any(String), EndTime: expect.any(String) }),
    ]);
    await attach(env, id);
    expect(statSync(env.file(id)).size).toBe(GiB);
    writeBlock(env.file(id), 700 * MiB, pattern('m700'));
    await detach(env, id);

    const before = statSync(image(id));
    const r = await env.cli(['volume', 'modify', id, '--size', '512MiB']);
    expect(r.code).toBe(7); // InvalidParameterValue: volumes only grow
    const after = statSync(image(id));
    expect(after.size).toBe(before.size);
    expect(after.mtimeMs).toBe(before.mtimeMs);
    await attach(env, id);
    expect(readBlock(env.file(id), 0).equals(pattern('m0'))).toBe(true);
    expect(readBlock(env.file(id), 40 * MiB).equals(pattern('m40'))).toBe(true);
    expect(readBlock(env.file(id), 700 * MiB).equals(pattern('m700'))).toBe(true);
    await detach(env, id);
  }, 300_000);

  it('SIGKILL after a modify recorded its intent, before the image grew: the restart rolls it back, and DescribeVolumesModifications says failed', async () => {
    const id = await createVolume(env, 48 * MiB);
    await env.stop();
    await startWith(env, 'modify.after-intent');
    await crashAt(env, ['volume', 'modify', id, '--size', '64MiB']);
    await startWith(env);
    const v = (await ok(env, 'ebsd.DescribeVolumes', { VolumeIds: [id] })).Volumes[0];
    expect(v).toMatchObject({ SizeBytes: 48 * MiB, State: 'available' });
    const [m] = (await ok(env, 'ebsd.DescribeVolumesModifications', { VolumeIds: [id] })).VolumesModifications;
    expect(m).toMatchObject({ VolumeId: id, ModificationState: 'failed', OriginalSizeBytes: 48 * MiB, TargetSizeBytes: 64 * MiB, Progress: 100 });
    expect(m.StatusMessage).toContain(`rolled back to ${48 * MiB} bytes`);
    // The next modify replaces it.
    await ok(env, 'ebsd.ModifyVolume', { VolumeId: id, Size: '64MiB' });
    expect((await ok(env, 'ebsd.DescribeVolumesModifications', { VolumeIds: [id] })).VolumesModifications).toEqual([
      expect.not.objectContaining({ StatusMessage: expect.anything() }),
    ]);
    expect((await ok(env, 'ebsd.DescribeVolumesModifications', { VolumeIds: [id] })).VolumesModifications[0].ModificationState).toBe('completed');
  }, 300_000);

  it('a catalog smaller than the image header (a crash before intents were recorded): the header wins; a 512MiB modify never truncates', async () => {
    const id = await createVolume(env, 48 * MiB);
    await ok(env, 'ebsd.ModifyVolume', { VolumeId: id, Size: '1GiB' });
    await attach(env, id);
    writeBlock(env.file(id), 700 * MiB, pattern('h700'));
    await detach(env, id);
    await env.stop();
    // What a SIGKILL between header and catalog left on disk before modify recorded its intent.
    const catalog = join(env.state, 'volumes', 'catalog.json');
    const c = JSON.parse(readFileSync(catalog, 'utf8')) as { volumes: { volumeId: string; size: number }[] };
    c.volumes.find((v) => v.volumeId === id)!.size = 48 * MiB;
    writeFileSync(catalog, JSON.stringify(c));
    await startWith(env);
    const sizeBefore = statSync(image(id)).size;
    const r = await env.cli(['volume', 'modify', id, '--size', '512MiB']);
    expect(r.code).toBe(7);
    expect(statSync(image(id)).size).toBe(sizeBefore);
    expect((await ok(env, 'ebsd.DescribeVolumes', { VolumeIds: [id] })).Volumes[0].SizeBytes).toBe(GiB);
    await attach(env, id);
    expect(readBlock(env.file(id), 700 * MiB).equals(pattern('h700'))).toBe(true);
    await detach(env, id);
  }, 300_000);

  it('SIGKILL during attach after CreateGrant: the restart retires the grant; delete leaves none', async () => {
    const id = await createVolume(env, 32 * MiB);
    await env.stop();
    await startWith(env, 'attach.after-grant');
    await crashAt(env, ['attach', id]);
    await startWith(env);
    expect(await attachGrants(env, keyArn)).toEqual([]);
    expect(await state(id)).toBe('available');
    await attach(env, id);
    expect(await attachGrants(env, keyArn)).toHaveLength(1);
    await detach(env, id);
    await env.ok(['volume', 'delete', id]);
    expect(await attachGrants(env, keyArn)).toEqual([]);
  }, 300_000);

  it('SIGKILL during detach after RetireGrant: the restart finishes the detach; the volume attaches again with its data', async () => {
    const id = await createVolume(env, 32 * MiB);
    await env.stop();
    await startWith(env, 'detach.after-retire');
    await attach(env, id);
    writeBlock(env.file(id), 8192, pattern('d8'));
    await crashAt(env, ['detach', id]);
    await startWith(env);
    expect(await state(id)).toBe('available');
    expect(await attachGrants(env, keyArn)).toEqual([]);
    expect((await statusOf(id)).Problem).toBeUndefined();
    await attach(env, id);
    expect(readBlock(env.file(id), 8192).equals(pattern('d8'))).toBe(true);
    await detach(env, id);
  }, 300_000);

  it('an image replaced by a symlink to another volume\'s image is refused by modify and attach; the other image is untouched', async () => {
    const a = await createVolume(env, 32 * MiB);
    const b = await createVolume(env, 32 * MiB);
    const sizeB = statSync(image(b)).size;
    renameSync(image(a), `${image(a)}.moved`);
    symlinkSync(image(b), image(a));
    const m = await env.cli(['volume', 'modify', a, '--size', '64MiB']);
    expect(m.code).toBe(6);
    expect(m.stderr).toContain('symbolic link');
    const at = await env.cli(['attach', a]);
    expect(at.code).toBe(6);
    expect(at.stderr).toContain('symbolic link');
    expect(statSync(image(b)).size).toBe(sizeB);
    expect(await state(a)).toBe('available');
    await attach(env, b);
    await detach(env, b);
  }, 120_000);

  it('an attached volume is served again after an orderly stop and after SIGKILL (resume exposes it under the lock)', async () => {
    const id = await createVolume(env, 32 * MiB);
    await attach(env, id);
    writeBlock(env.file(id), 4096, pattern('r1'));
    await env.stop();
    await startWith(env);
    expect(readBlock(env.file(id), 4096).equals(pattern('r1'))).toBe(true);
    await env.kill9();
    await startWith(env);
    expect(readBlock(env.file(id), 4096).equals(pattern('r1'))).toBe(true);
    const again = await env.cli(['attach', id]);
    expect(again.code).toBe(6); // already attached: VolumeInUse
    await detach(env, id);
    expect(await attachGrants(env, keyArn)).toEqual([]);
  }, 300_000);

  it('a forced detach audits the open handles it cut off', async () => {
    const id = await createVolume(env, 32 * MiB);
    await attach(env, id);
    const fd1 = openSync(env.file(id), 'r');
    const fd2 = openSync(env.file(id), 'r');
    try {
      expect((await env.cli(['detach', id])).code).toBe(6);
      await env.ok(['detach', id, '--force']);
    } finally {
      // The forced detach cut these handles off: their close reports EIO.
      for (const fd of [fd1, fd2]) try { closeSync(fd); } catch { /* EIO expected */ }
    }
    const ev = env
      .auditText()
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l))
      .filter((e) => e.eventName === 'DetachVolume' && e.requestParameters?.volumeId === id);
    expect(ev).toHaveLength(1);
    expect(ev[0].additionalEventData).toMatchObject({ force: true, openHandles: 2 });
  }, 120_000);
});

describe('volume create on a full state dir (real daemon on a small tmpfs)', () => {
  const env = new Env('volstate-enospc');
  let mounted = false;

  beforeAll(async () => {
    ensureBuilt();
    mkdirSync(env.state, { recursive: true, mode: 0o711 });
    const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=24m,mode=0711', 'tmpfs', env.state]);
    if (r.status !== 0) throw new Error(`mount tmpfs: ${r.stderr}`);
    mounted = true;
    await env.start();
  }, 120_000);
  afterAll(async () => {
    await env.stop().catch(() => {});
    if (mounted) spawnSync('umount', ['-l', env.state]);
    await env.cleanup();
  }, 60_000);

  it('a create whose first catalog write fails with ENOSPC leaves no volume, before or after a restart', async () => {
    await env.ok(['kms', 'create-key', '--description', 'enospc', '--alias', 'alias/full']);
    const filler = join(env.state, 'filler');
    // Fill the tmpfs to the last block (dd stops with ENOSPC, status 1).
    spawnSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=64k'], { stdio: 'ignore' });
    const r = await env.cli(['volume', 'create', '--size', '32MiB', '--kms-key', 'alias/full']);
    expect(r.code).not.toBe(0);
    expect((await env.ok(['volume', 'ls'])).Volumes).toEqual([]);
    spawnSync('rm', ['-f', filler]);
    await env.stop();
    await env.start();
    expect((await env.ok(['volume', 'ls'])).Volumes).toEqual([]);
    const v = await env.ok(['volume', 'create', '--size', '32MiB', '--kms-key', 'alias/full']);
    expect(v.State).toBe('available');
  }, 120_000);
});
