import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { callDaemon, socketPathFor } from '../../src/cli/client.js';
import { chmodSync, createWriteStream, type WriteStream, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, utimesSync } from 'node:fs';
import { request } from 'node:http';
import { join, resolve } from 'node:path';

/**
 * End-to-end helpers: the real daemon as a child process (node dist/cli/main.js),
 * the real CLI, real FUSE/loop/ext4. The daemon serves FUSE from another
 * process, so this test process may use *Sync calls on the mount freely.
 * Everything started is recorded and torn down by cleanup(), even on failure.
 */
export const ROOT = resolve(import.meta.dirname, '..', '..');
export const CLI = join(ROOT, 'dist', 'cli', 'main.js');

/** Build dist/ if it is missing or older than any source file (npm test builds it first anyway). */
export function ensureBuilt(): void {
  const newest = (dir: string): number => {
    let t = 0;
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
    }
    return t;
  };
  // tsc is incremental (tsconfig.json): it rewrites only changed outputs, so the build info,
  // touched after every successful build here, is what says when dist/ was last brought up to date.
  const info = join(ROOT, 'dist', '.tsbuildinfo');
  if (existsSync(CLI) && existsSync(info) && statSync(info).mtimeMs >= newest(join(ROOT, 'src'))) return;
  const r = spawnSync('npx', ['tsc', '-p', '.'], { cwd: ROOT, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`tsc failed:\n${r.stdout}\n${r.stderr}`);
  const now = new Date();
  utimesSync(info, now, now);
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  json: () => any;
}

export function run(cmd: string, args: string[], opts: { uid?: number; gid?: number; env?: NodeJS.ProcessEnv; timeoutMs?: number; input?: string } = {}): Promise<CliResult> {
  return new Promise((resolveP, reject) => {
    const p = spawn(cmd, args, {
      env: { ...process.env, ...opts.env },
      ...(opts.uid !== undefined ? { uid: opts.uid, gid: opts.gid ?? opts.uid } : {}),
      stdio: [opts.input !== undefined ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    p.stdout!.on('data', (c) => (stdout += c));
    p.stderr!.on('data', (c) => (stderr += c));
    const t = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    p.on('error', reject);
    p.on('close', (code) => {
      clearTimeout(t);
      resolveP({ code: code ?? -1, stdout, stderr, json: () => JSON.parse(stdout) });
    });
    if (p.stdin) {
      p.stdin.on('error', () => {}); // the child may exit without reading its input
      p.stdin.end(opts.input);
    }
  });
}

/**
 * fn over items, at most `width` at a time (a new one starts as soon as one ends), answers in the
 * items' order. For independent CLI calls of one test: each is a process of its own (~0.35 s of
 * start-up), so four at a time shorten the test, and on a 2-core machine more would only queue.
 */
export async function pooled<T, U>(items: readonly T[], fn: (t: T) => Promise<U>, width = 4): Promise<U[]> {
  const out: U[] = new Array(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, worker));
  return out;
}

/** Pairs of a[i] and b[i], to check each answer of pooled() against its case; lengths must agree. */
export function zip<A, B>(a: readonly A[], b: readonly B[]): [A, B][] {
  if (a.length !== b.length) throw new Error(`zip: ${a.length} cases, ${b.length} answers`);
  return a.map((x, i) => [x, b[i]!]);
}

export async function sh(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} -> ${r.code}\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

export class Env {
  /**
   * The directory, made at first use (not in the constructor): most files make their Env at
   * collection, and a run filtered with `-t` that skips a describe runs neither its beforeAll
   * nor its afterAll, so a directory made at collection was left behind in /tmp.
   */
  private made: string | undefined;
  get dir(): string {
    if (this.made === undefined) {
      this.made = mkdtempSync(join('/tmp', `ebsd-e2e-${this.name}-`));
      chmodSync(this.made, 0o755); // other uids must reach the socket below it
    }
    return this.made;
  }
  get state(): string {
    return join(this.dir, 'state');
  }
  get mnt(): string {
    return join(this.dir, 'mnt');
  }
  get log(): string {
    return join(this.dir, 'daemon.log');
  }
  /** Every CLI output, for the known-key test. */
  readonly outputs: string[] = [];
  private daemon: ChildProcess | undefined;
  /** Where the running daemon's output is copied; ended (and flushed) when the daemon is gone. */
  private out: WriteStream | undefined;
  private readonly loops = new Set<string>();
  private readonly fsMounts = new Set<string>();

  constructor(private readonly name: string) {}

  file(volumeId: string): string {
    return join(this.mnt, volumeId);
  }

  get pid(): number | undefined {
    return this.daemon?.pid;
  }

  /**
   * Start the daemon and wait for its "ready" log line. `opts.wrap`: a command the daemon runs
   * under (`['prlimit', '--fsize=N']`), its arguments before node's. `opts.mount`: another --mount than `mnt`
   * (the caller unmounts it at the end).
   */
  async start(extra: string[] = [], opts: { wrap?: string[]; mount?: string } = {}): Promise<void> {
    // A daemon that died on its own (a fault point) and was not stopped: its last lines go in before the new one's.
    const prev = this.daemon;
    // Still running (a test that failed before its stop()): refused here, so cleanup() still holds it and stops it,
    // instead of the new child replacing it and the old one outliving the run.
    if (prev && prev.exitCode === null && prev.signalCode === null) throw new Error(`Env.start: this Env's daemon (pid ${prev.pid}) is still running; stop() it first`);
    if (prev) await this.flushed(prev);
    const argv = [CLI, 'daemon', '--state-dir', this.state, '--mount', opts.mount ?? this.mnt, ...extra];
    const [cmd, ...args] = opts.wrap?.length ? [...opts.wrap, process.execPath, ...argv] : [process.execPath, ...argv];
    await startDaemonChild(this.log, cmd!, args, undefined,
      (p, out) => { this.daemon = p; this.out = out; }, (p) => this.flushed(p));
  }

  /**
   * The daemon's output reaches the log file through a pipe and a write stream, so a line the daemon
   * wrote before it answered may not be in the file yet when the answer arrives. Poll (10 s) until
   * `pattern` is there; returns the log either way, for the caller's assertion to name what is missing.
   */
  untilLog(pattern: LogPattern, ms = 10_000): Promise<string> {
    return untilText(() => this.daemonLog(), pattern, ms);
  }

  /** Once the process has exited: wait for its pipes to close and the log file to take all it wrote. */
  private async flushed(p: ChildProcess): Promise<void> {
    const out = this.out;
    this.out = undefined;
    await pipesFlushed(p, out);
  }

  /** SIGTERM and wait; returns the exit code. */
  async stop(): Promise<number | null> {
    const p = this.daemon;
    // Gone already (exited, or killed by a signal: a fault point's SIGKILL): no 'exit' is coming to wait for.
    const gone = p !== undefined && (p.exitCode !== null || p.signalCode !== null);
    if (gone) await this.flushed(p);
    if (!p || gone) return p?.exitCode ?? null;
    const done = new Promise<number | null>((r) => p.once('exit', (c) => r(c)));
    p.kill('SIGTERM');
    const code = await Promise.race([done, new Promise<null>((r) => setTimeout(() => r(null), 20_000))]);
    if (p.exitCode === null) { p.kill('SIGKILL'); await done; }
    this.daemon = undefined;
    await this.flushed(p);
    return code;
  }

  /** SIGKILL; resolves once the process is gone (a restart must wait for that: the pid lock). */
  kill9(): Promise<void> {
    const p = this.daemon;
    if (!p) return Promise.resolve();
    this.daemon = undefined;
    // Already gone (a fault point's SIGKILL): its last lines may still be in the pipe.
    if (p.exitCode !== null || p.signalCode !== null) return this.flushed(p);
    const done = new Promise<void>((r) => p.once('exit', () => r()));
    p.kill('SIGKILL');
    return done.then(() => this.flushed(p));
  }

  async cli(args: string[], opts: { uid?: number } = {}): Promise<CliResult> {
    const r = await run(process.execPath, [CLI, ...args], { env: { EBSD_STATE_DIR: this.state }, ...opts });
    this.outputs.push(r.stdout, r.stderr);
    return r;
  }

  /** CLI call that must succeed; returns parsed JSON output. */
  async ok(args: string[]): Promise<any> {
    const r = await this.cli([...args, '--output', 'json']);
    if (r.code !== 0) throw new Error(`ebsd ${args.join(' ')} -> exit ${r.code}: ${r.stderr}`);
    return r.stdout.trim() ? r.json() : {};
  }

  /**
   * One control-API call as root (this process), for set-up a test does not check the CLI of:
   * `target` is the X-Amz-Target the CLI sends (ebsd.CreateVolume, TrentService.CreateKey, ebs.StartSnapshot;
   * src/cli/main.ts), and the answer is what `ok()` returns for that command (`--output json` prints it
   * as is). A CLI process costs ~0.4 s of CPU (Node start-up and yargs), this a few ms. A refusal
   * throws ServiceError (src/cli/client.ts). The answer joins `outputs`, as a CLI call's does.
   */
  async api(target: string, body: Record<string, unknown> = {}): Promise<any> {
    const r = await callDaemon(socketPathFor(this.state), target, body);
    this.outputs.push(JSON.stringify(r));
    return r;
  }

  async losetup(volumeId: string): Promise<string> {
    const dev = (await sh('losetup', ['-f', '--show', this.file(volumeId)])).trim();
    this.loops.add(dev);
    return dev;
  }

  async detachLoop(dev: string): Promise<void> {
    await sh('losetup', ['-d', dev]);
    this.loops.delete(dev);
  }

  async mountFs(dev: string, name: string): Promise<string> {
    const at = join(this.dir, name);
    await sh('mkdir', ['-p', at]);
    await sh('mount', [dev, at]);
    this.fsMounts.add(at);
    return at;
  }

  async umountFs(at: string): Promise<void> {
    await sh('umount', [at]);
    this.fsMounts.delete(at);
  }

  /** Tear down in dependency order; every step runs even if one fails. */
  async cleanup(): Promise<void> {
    for (const m of this.fsMounts) { spawnSync('umount', [m]); spawnSync('umount', ['-l', m]); }
    for (const l of this.loops) spawnSync('losetup', ['-d', l]);
    await this.stop().catch(() => {});
    if (this.made === undefined) return; // never used: nothing was made
    spawnSync('fusermount', ['-uz', this.mnt]);
    rmSync(this.made, { recursive: true, force: true });
  }

  /**
   * Poll (no fixed sleep) until the daemon counts no open handle on these
   * volumes: the kernel sends FUSE RELEASE after close() returns, so a
   * just-closed file may still count for a moment. See untilClosed below.
   */
  untilClosed(...volumeIds: string[]): Promise<void> {
    return untilClosed(this.state, volumeIds);
  }

  daemonLog(): string {
    return existsSync(this.log) ? readFileSync(this.log, 'utf8') : '';
  }

  auditText(): string {
    const p = join(this.state, 'kms', 'audit', 'events.ndjson');
    return existsSync(p) ? readFileSync(p, 'utf8') : '';
  }
}

/**
 * Poll the daemon of `stateDir` until it counts no open handle on these volumes: the kernel sends FUSE
 * RELEASE after close() returns (also after a dd child exits), so a just-closed file may still count
 * for a moment, and a detach without --force then fails with VolumeInUse. Straight to the socket, no
 * CLI process per poll; bounded.
 */
export async function untilClosed(stateDir: string, volumeIds: string[]): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    const st = (await callDaemon(socketPathFor(stateDir), 'ebsd.Status', {})) as { Volumes: { VolumeId: string; OpenHandles?: number }[] };
    if (!st.Volumes.some((v) => volumeIds.includes(v.VolumeId) && v.OpenHandles)) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`${volumeIds.join(', ')}: still open after 1000 polls of ebsd status`);
}

/** What a log is polled for: a substring, a pattern, or a test of the whole text. */
export type LogPattern = string | RegExp | ((log: string) => boolean);

/**
 * Poll `read()` (every 25 ms, `ms` at most) until it holds `pattern`; returns the last text read either
 * way, for the caller's assertion to name what is missing. For a file written behind the event awaited.
 */
export async function untilText(read: () => string, pattern: LogPattern, ms = 10_000): Promise<string> {
  const has = (s: string): boolean => (typeof pattern === 'string' ? s.includes(pattern) : pattern instanceof RegExp ? pattern.test(s) : pattern(s));
  const end = Date.now() + ms;
  let text = read();
  while (!has(text) && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 25));
    text = read();
  }
  return text;
}

/**
 * Once `p` has exited: wait for its stdout and stderr pipes to close (5 s at most each: a grandchild
 * that kept one open must not hang the test), then end `out`, the stream its output was copied to,
 * and wait until the file has taken everything.
 */
export async function pipesFlushed(p: ChildProcess, out: WriteStream | undefined): Promise<void> {
  const closed = (s: NodeJS.ReadableStream & { closed?: boolean } | null): Promise<void> =>
    !s || s.closed ? Promise.resolve() : new Promise<void>((r) => { const t = setTimeout(r, 5_000); s.once('close', () => { clearTimeout(t); r(); }); });
  await Promise.all([closed(p.stdout), closed(p.stderr)]);
  if (out) await new Promise<void>((r) => out.end(() => r()));
}

/**
 * Spawn a daemon child whose output is copied to `logFile`, hand it to `keep` at once (so a
 * cleanup can kill it whatever happens next), and wait for its ready line. A start that fails
 * with the child gone leaves all it said in the file (`flush`) before the error is thrown.
 */
export async function startDaemonChild(
  logFile: string, cmd: string, args: string[], env: NodeJS.ProcessEnv | undefined,
  keep: (p: ChildProcess, out: WriteStream) => void, flush: (p: ChildProcess) => Promise<void>,
): Promise<void> {
  const out = createWriteStream(logFile, { flags: 'a' });
  const p = spawn(cmd, args, { ...(env ? { env } : {}), stdio: ['ignore', 'pipe', 'pipe'] });
  keep(p, out);
  try {
    await untilReady(p, out);
  } catch (e) {
    if (p.exitCode !== null || p.signalCode !== null) await flush(p);
    throw e;
  }
}

/** Wait for a daemon child's "ebsd daemon ready" line (30 s), copying its output to `out`; its early exit fails. */
export async function untilReady(p: ChildProcess, out: NodeJS.WritableStream): Promise<void> {
  let buf = '';
  await new Promise<void>((ok, fail) => {
    const t = setTimeout(() => fail(new Error(`daemon not ready in 30 s:\n${buf}`)), 30_000);
    const onData = (c: Buffer): void => {
      out.write(c);
      buf += c.toString();
      if (buf.includes('"ebsd daemon ready"')) { clearTimeout(t); ok(); }
    };
    p.stdout!.on('data', onData);
    p.stderr!.on('data', onData);
    p.on('exit', (code) => { clearTimeout(t); fail(new Error(`daemon exited ${code} before ready:\n${buf}`)); });
  });
  p.removeAllListeners('exit');
}

/** A control-API answer as a raw call sees it. */
export interface ControlAnswer { status: number; body: { __type?: string; message?: string; [k: string]: any } }

/**
 * One control-API call as any local program could send it: `body` as given (a string is sent as is,
 * so a test can send what the CLI never would), X-Amz-Target `target`, through the socket of the
 * daemon whose state dir is `stateDir`, on a connection of its own.
 */
export function rawControlCall(stateDir: string, target: string, body: string | unknown): Promise<ControlAnswer> {
  return new Promise((resolve, reject) => {
    const req = request(
      { socketPath: join(stateDir, 'ebsd.sock'), method: 'POST', path: '/', agent: false, headers: { 'X-Amz-Target': target, 'Content-Type': 'application/x-amz-json-1.1' } },
      (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text || '{}') }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(typeof body === 'string' ? body : JSON.stringify(body));
  });
}
