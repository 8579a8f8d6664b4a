import { spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, type WriteStream } from 'node:fs';
import { CLI, pipesFlushed, run, startDaemonChild, untilClosed, untilText, type CliResult, type LogPattern } from '../e2e/helpers.js';
import { callDaemon, socketPathFor } from '../../src/cli/client.js';

/**
 * Network namespaces joined by a bridge inside the first one, with 10.x
 * addresses that exist only inside them: nothing is routed to or from the
 * test machine's own namespace. Names carry the test's pid, so parallel runs
 * never share one; destroy() removes everything create() made, and is safe to
 * call after a partial create().
 */
export class NetnsFleet {
  readonly ns: Record<string, string> = {};
  readonly ip: Record<string, string> = {};
  private readonly links: string[] = [];

  constructor(private readonly names: string[], private readonly subnet = '10.77.0') {}

  create(): void {
    const [hub, ...spokes] = this.names;
    const tag = process.pid.toString(36);
    for (const n of this.names) {
      this.ns[n] = `ebsd-${n}-${tag}`;
      ip(['netns', 'add', this.ns[n]!]);
      ip(['-n', this.ns[n]!, 'link', 'set', 'lo', 'up']);
    }
    const k = this.ns[hub!]!;
    ip(['-n', k, 'link', 'add', 'br0', 'type', 'bridge']);
    ip(['-n', k, 'addr', 'add', `${this.subnet}.1/24`, 'dev', 'br0']);
    ip(['-n', k, 'link', 'set', 'br0', 'up']);
    this.ip[hub!] = `${this.subnet}.1`;
    spokes.forEach((n, i) => {
      // Both ends are born in this namespace (names unique by pid) and moved out at once.
      const host = `eh${i}${tag}`.slice(0, 15);
      const peer = `ek${i}${tag}`.slice(0, 15);
      this.links.push(host, peer);
      ip(['link', 'add', host, 'type', 'veth', 'peer', 'name', peer]);
      ip(['link', 'set', host, 'netns', this.ns[n]!]);
      ip(['link', 'set', peer, 'netns', k]);
      ip(['-n', k, 'link', 'set', peer, 'master', 'br0', 'up']);
      this.ip[n] = `${this.subnet}.${i + 2}`;
      ip(['-n', this.ns[n]!, 'addr', 'add', `${this.ip[n]}/24`, 'dev', host]);
      ip(['-n', this.ns[n]!, 'link', 'set', host, 'up']);
    });
  }

  destroy(): void {
    for (const ns of Object.values(this.ns)) spawnSync('ip', ['netns', 'del', ns]);
    // A veth still in this namespace (create() failed between add and move).
    for (const l of this.links) spawnSync('ip', ['link', 'del', l], { stdio: 'ignore' });
  }

  /** What is left of this fleet: namespaces and links (empty after destroy()). */
  leftovers(): string[] {
    const nss = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout;
    const links = spawnSync('ip', ['-o', 'link'], { encoding: 'utf8' }).stdout;
    return [...Object.values(this.ns).filter((n) => nss.includes(n)), ...this.links.filter((l) => links.includes(`${l}@`) || links.includes(`${l}:`))];
  }
}

function ip(args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')} -> ${r.status}: ${r.stderr}`);
}

/**
 * One `ebsd daemon` inside a network namespace (nsenter --net only: its FUSE
 * mount stays visible to the test, where `ip netns exec` would put it in a
 * mount namespace of its own). nsenter execs node, so the pid is the daemon's.
 */
export class NsDaemon {
  private proc: ChildProcess | undefined;
  /** Where the running daemon's output is copied; ended (and flushed) when the daemon is gone. */
  private out: WriteStream | undefined;

  constructor(
    readonly netns: () => string,
    readonly stateDir: string,
    readonly logFile: string,
    private readonly args: string[],
    private readonly env: NodeJS.ProcessEnv,
  ) {}

  async start(): Promise<void> {
    await startDaemonChild(this.logFile, 'nsenter', [`--net=/run/netns/${this.netns()}`, process.execPath, CLI, 'daemon', '--state-dir', this.stateDir, ...this.args], this.env,
      (p, out) => { this.proc = p; this.out = out; }, (p) => this.flushed(p));
  }

  get running(): boolean {
    return this.proc !== undefined && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** SIGKILL; resolves once the process is gone and the log file has all it wrote. */
  async kill9(): Promise<void> {
    const p = this.proc;
    this.proc = undefined;
    if (!p) return;
    if (p.exitCode === null && p.signalCode === null) {
      const done = new Promise<void>((r) => p.once('exit', () => r()));
      p.kill('SIGKILL');
      await done;
    }
    await this.flushed(p);
  }

  /** SIGTERM (SIGKILL after 20 s); resolves once the process is gone and the log file has all it wrote. */
  async stop(): Promise<void> {
    const p = this.proc;
    if (!p) return;
    if (p.exitCode === null && p.signalCode === null) {
      const done = new Promise<void>((r) => p.once('exit', () => r()));
      p.kill('SIGTERM');
      const t = setTimeout(() => p.kill('SIGKILL'), 20_000);
      await done;
      clearTimeout(t);
    }
    this.proc = undefined;
    await this.flushed(p);
  }

  /** The daemon's output reaches logFile through a pipe and a write stream: end it once the process is gone. */
  private async flushed(p: ChildProcess): Promise<void> {
    const out = this.out;
    this.out = undefined;
    await pipesFlushed(p, out);
  }

  cli(args: string[]): Promise<CliResult> {
    return run(process.execPath, [CLI, ...args, '--output', 'json'], { env: { EBSD_STATE_DIR: this.stateDir } });
  }

  async ok(args: string[]): Promise<any> {
    const r = await this.cli(args);
    if (r.code !== 0) throw new Error(`ebsd ${args.join(' ')} -> exit ${r.code}: ${r.stderr}`);
    return r.stdout.trim() ? r.json() : {};
  }

  /**
   * One control-API call as root through the daemon's socket (a file: no namespace between), for set-up a
   * test does not check the CLI of; the answer is what `ok()` returns for the command sending `target`
   * (Env.api in ../e2e/helpers.ts). No CLI process (~0.4 s of CPU each).
   */
  api(target: string, body: Record<string, unknown> = {}): Promise<any> {
    return callDaemon(socketPathFor(this.stateDir), target, body);
  }

  /** Until the daemon counts no open handle on these volumes (FUSE RELEASE comes after close() returns). */
  untilClosed(...volumeIds: string[]): Promise<void> {
    return untilClosed(this.stateDir, volumeIds);
  }

  log(): string {
    return existsSync(this.logFile) ? readFileSync(this.logFile, 'utf8') : '';
  }

  /**
   * A line the daemon wrote before it answered may not be in logFile yet when the answer arrives
   * (pipe, write stream): poll (10 s) until `pattern` holds; returns the log either way.
   */
  untilLog(pattern: LogPattern, ms = 10_000): Promise<string> {
    return untilText(() => this.log(), pattern, ms);
  }
}

/** Poll `probe` until it returns something other than undefined; the bound is a safety net, not a measurement. */
export async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, boundMs = 30_000): Promise<T> {
  const end = Date.now() + boundMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`gave up waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
