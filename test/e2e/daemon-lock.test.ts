import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, Env, ensureBuilt, run } from './helpers.js';

/**
 * One daemon per state dir (issue 13, defect 8): the lock is a flock(2) on
 * <state>/ebsd.lock held for the daemon's life, so a second daemon is refused
 * whatever the pid file says, and it removes nothing of the first's.
 */
describe('daemon lock: one daemon per state dir', () => {
  let env: Env;
  let mnt2: string;

  beforeAll(async () => {
    ensureBuilt();
    env = new Env('lock');
    mnt2 = join(env.dir, 'mnt2');
    await env.start();
  }, 60_000);

  afterAll(async () => {
    // A second daemon that wrongly started (old code) is SIGKILLed by run()'s timeout and may leave its mount.
    spawnSync('fusermount', ['-uz', mnt2]);
    await env?.cleanup();
  }, 60_000);

  const socket = (): string => join(env.state, 'ebsd.sock');
  const pidFile = (): string => join(env.state, 'ebsd.pid');

  /** A second daemon on the same state dir (own mount dir, so only the state dir is shared). */
  const second = () => run(process.execPath, [CLI, 'daemon', '--state-dir', env.state, '--mount', mnt2], { timeoutMs: 30_000 });

  it('a second daemon exits 9 and leaves the first one\'s socket and pid file in place', async () => {
    const r = await second();
    expect(r.code).toBe(9);
    expect(r.stderr).toMatch(/already running/);
    expect(r.stderr).toContain(`pid ${env.pid}`);
    expect(statSync(socket()).isSocket()).toBe(true);
    expect(readFileSync(pidFile(), 'utf8').trim()).toBe(String(env.pid));
    const st = await env.ok(['status']);
    expect(st).toBeTypeOf('object');
  }, 60_000);

  it('an empty pid file (a pid write not yet done) does not let a second daemon in', async () => {
    truncateSync(pidFile(), 0);
    const r = await second();
    expect(r.code).toBe(9);
    expect(r.stderr).toMatch(/already running/);
    expect(statSync(socket()).isSocket()).toBe(true);
    expect(existsSync(pidFile())).toBe(true);
    expect((await env.cli(['status'])).code).toBe(0);
    // The first daemon still serves and still removes its own pid file when it stops.
    writeFileSync(pidFile(), `${env.pid}\n`);
  }, 60_000);

  it('the lock file a SIGKILLed daemon leaves does not block the next start; interrupted-write temp files are removed', async () => {
    const firstPid = env.pid;
    await env.kill9();
    expect(existsSync(join(env.state, 'ebsd.lock'))).toBe(true);
    // Temp files as atomicWrite names them, as a crash between write and rename leaves them.
    const temps = [join(env.state, '.identities.json.0123456789ab.tmp'), join(env.state, 'kms', 'keys', '.alias.json.abcdef012345.tmp')];
    for (const t of temps) writeFileSync(t, 'half-written');
    const keep = join(env.state, 'kms', 'keys', 'notes.tmp'); // not an atomicWrite name: left alone
    writeFileSync(keep, 'x');
    await env.start();
    expect(env.pid).not.toBe(firstPid);
    expect(readFileSync(pidFile(), 'utf8').trim()).toBe(String(env.pid));
    for (const t of temps) expect(existsSync(t)).toBe(false);
    expect(existsSync(keep)).toBe(true);
    expect((await env.cli(['status'])).code).toBe(0);
    // And the restarted daemon holds the lock just as the first did.
    expect((await second()).code).toBe(9);
  }, 90_000);

  it('a --state-dir or --mount that names a file exits 9 naming it, and leaves the file as it was (no chmod 0711)', async () => {
    const file = join(env.dir, 'not-a-dir');
    writeFileSync(file, 'x', { mode: 0o644 });
    const mode = (): number => statSync(file).mode & 0o7777;
    const asState = await run(process.execPath, [CLI, 'daemon', '--state-dir', file, '--mount', mnt2], { timeoutMs: 30_000 });
    expect(asState.code, asState.stderr).toBe(9);
    expect(asState.stderr).toContain(`the state dir ${file} (--state-dir, EBSD_STATE_DIR) is not a directory; nothing was changed`);
    expect(mode()).toBe(0o644); // it was made 0711 on the way to "ENOTDIR: not a directory, mkdir '…/kms'"
    const below = await run(process.execPath, [CLI, 'daemon', '--state-dir', join(env.dir, 'no-parent', 'state'), '--mount', mnt2], { timeoutMs: 30_000 });
    expect(below.code).toBe(9);
    expect(below.stderr).toMatch(/cannot create the state dir .*no-parent\/state \(--state-dir, EBSD_STATE_DIR\): its parent directory does not exist/);
    const asMount = await run(process.execPath, [CLI, 'daemon', '--state-dir', join(env.dir, 'state-m'), '--mount', file], { timeoutMs: 30_000 });
    expect(asMount.code, asMount.stderr).toBe(9);
    expect(asMount.stderr).toContain(`cannot mount FUSE at ${file} (--mount): it is not a directory`);
    expect(readFileSync('/proc/self/mounts', 'utf8')).not.toContain(` ${file} `);
    expect(mode()).toBe(0o644);
  }, 90_000);

  it('an orderly stop removes the pid file and the socket, and keeps the lock file', async () => {
    expect(await env.stop()).toBe(0);
    expect(existsSync(pidFile())).toBe(false);
    expect(existsSync(socket())).toBe(false);
    expect(existsSync(join(env.state, 'ebsd.lock'))).toBe(true);
  }, 60_000);
});
