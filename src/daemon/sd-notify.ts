import { spawn } from 'node:child_process';
import { childEnv } from '../util/child-env.js';
import type { Logger } from '../util/logger.js';

/**
 * systemd readiness protocol (sd_notify(3)): one datagram of `KEY=VALUE`
 * lines to the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or an
 * abstract name written `@name`). Without $NOTIFY_SOCKET this does nothing.
 *
 * Node has no AF_UNIX datagram sockets, so the datagram is sent by
 * systemd-notify(1). That tool, run with privileges (ebsd runs as root: it
 * mounts FUSE), sends with SCM_CREDENTIALS naming the *invoking* process,
 * i.e. this daemon, so the service manager attributes the message to the
 * unit's main PID and `NotifyAccess=main` accepts it, with no race against
 * the helper's exit (systemd-notify(1), DESCRIPTION). The unit file in
 * contrib/systemd/ebsd.service relies on that. Unprivileged, the tool falls
 * back to its own PID, which only `NotifyAccess=all` accepts.
 */
export class SdNotify {
  private readonly socket: string | undefined;
  /**
   * The service manager's watchdog interval for this process (sd_watchdog_enabled(3)):
   * $WATCHDOG_USEC, if $WATCHDOG_PID is absent or names this process. Absent: no watchdog.
   */
  readonly watchdogUsec: number | undefined;
  private watchdog: NodeJS.Timeout | undefined;
  private pinging = false;

  constructor(private readonly log: Logger, env: NodeJS.ProcessEnv = process.env, private readonly bin = 'systemd-notify') {
    this.socket = env.NOTIFY_SOCKET || undefined;
    const usec = env.WATCHDOG_USEC ?? '';
    const pid = env.WATCHDOG_PID ?? '';
    this.watchdogUsec = this.socket && /^[1-9]\d{0,15}$/.test(usec) && (pid === '' || pid === String(process.pid)) ? Number(usec) : undefined;
  }

  /**
   * With a watchdog (`WatchdogSec=` in the unit): `WATCHDOG=1` every half interval
   * from the main event loop, so a daemon whose loop stops answering FUSE and the
   * control socket stops pinging and the service manager restarts it (ebsd.service:
   * Restart=on-failure; the volumes recorded attached come back on the next start).
   * A ping still on its way when the next is due is not doubled.
   */
  startWatchdog(): void {
    if (this.watchdogUsec === undefined || this.watchdog) return;
    const everyMs = Math.max(50, Math.floor(this.watchdogUsec / 2000));
    this.log.info({ watchdogUsec: this.watchdogUsec, everyMs }, 'systemd watchdog: WATCHDOG=1 every half interval');
    this.watchdog = setInterval(() => {
      if (this.pinging) return;
      this.pinging = true;
      void this.send(['WATCHDOG=1']).finally(() => { this.pinging = false; });
    }, everyMs);
    this.watchdog.unref();
  }

  stopWatchdog(): void {
    if (this.watchdog) clearInterval(this.watchdog);
    this.watchdog = undefined;
  }

  get enabled(): boolean {
    return this.socket !== undefined;
  }

  /** `READY=1` once the mount is up and recorded volumes are re-attached. */
  ready(status: string): Promise<void> {
    return this.send([`READY=1`, `STATUS=${status}`]);
  }

  /** `STOPPING=1` when the drain starts. */
  stopping(): Promise<void> {
    return this.send(['STOPPING=1', 'STATUS=draining volumes']);
  }

  /** Resolves when the datagram is sent (or failed: logged, never thrown; readiness is advisory). */
  private send(assignments: string[]): Promise<void> {
    if (!this.socket) return Promise.resolve();
    const socket = this.socket;
    return new Promise<void>((resolve) => {
      let err = '';
      // --no-block: no BARRIER=1 round trip; the message already carries our PID.
      const p = spawn(this.bin, ['--no-block', ...assignments], { env: childEnv({ NOTIFY_SOCKET: socket }), stdio: ['ignore', 'ignore', 'pipe'] });
      p.stderr!.on('data', (c: Buffer) => (err += c.toString()));
      const timer = setTimeout(() => p.kill('SIGKILL'), 10_000);
      timer.unref();
      p.on('error', (e) => {
        clearTimeout(timer);
        this.log.warn({ err: e, notifySocket: socket }, `sd_notify ${assignments[0]} not sent: ${this.bin} could not run`);
        resolve();
      });
      p.on('close', (code) => {
        clearTimeout(timer);
        if (code === 0) this.log.debug({ notifySocket: socket, message: assignments[0] }, 'sd_notify sent');
        else this.log.warn({ notifySocket: socket, exitCode: code, stderr: err.trim() }, `sd_notify ${assignments[0]} not sent`);
        resolve();
      });
    });
  }
}
