import { ServiceError } from './client.js';

/** What one poll of a resource says: its state and, while it runs, how far it has come (0-100). */
export interface PolledState {
  state: string;
  progress?: number;
  /** Why it failed, when it did. */
  message?: string;
}

export interface WaitOptions {
  /** e.g. `vol-… from snap-…`: names the resource in the bar and in errors. */
  label: string;
  /** States that end the wait successfully. */
  done: readonly string[];
  /** States that end it with a failure. */
  failed: readonly string[];
  /** Between polls; default 250 ms. */
  intervalMs?: number;
  /** Where the bar goes: stderr, so stdout stays the command's answer. */
  out?: NodeJS.WriteStream;
}

/**
 * `--wait` for a long operation (volume create --snapshot-id, snapshot copy):
 * poll until a done or failed state; on a terminal a progress bar redrawn in
 * place, otherwise one line per change of progress (a log stays readable).
 * A failed state is EC2's IncorrectState (exit 6), with the reason the resource gives.
 */
export async function waitWithProgress(poll: () => Promise<PolledState>, o: WaitOptions): Promise<PolledState> {
  const out = o.out ?? process.stderr;
  const tty = out.isTTY === true;
  let last = -1;
  for (;;) {
    const s = await poll();
    const pct = s.progress ?? (o.done.includes(s.state) ? 100 : 0);
    if (pct !== last || o.done.includes(s.state) || o.failed.includes(s.state)) {
      last = pct;
      if (tty) {
        const width = 30;
        const fill = Math.round((pct / 100) * width);
        out.write(`\r${o.label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${String(pct).padStart(3)}% ${s.state}   `);
      } else {
        out.write(`${o.label}: ${s.state} ${pct}%\n`);
      }
    }
    if (o.done.includes(s.state) || o.failed.includes(s.state)) {
      if (tty) out.write('\n');
      if (o.failed.includes(s.state)) throw new ServiceError('IncorrectState', `${o.label} ended in state '${s.state}'${s.message ? `: ${s.message}` : ''}`, 409);
      return s;
    }
    await new Promise((r) => setTimeout(r, o.intervalMs ?? 250));
  }
}
