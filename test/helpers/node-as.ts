/**
 * `node -e code` run as local user `uid` (setpriv, no supplementary groups): a client whose socket the
 * kernel credits to that user. Resolves with its stdout once it exits 0; rejects naming `what`, the uid,
 * the exit status and its stderr otherwise, or once `timeoutMs` has passed (the child killed).
 */
import { spawn } from 'node:child_process';

export function nodeAs(uid: number, code: string, o: { what?: string; timeoutMs?: number } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', process.execPath, '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const timer = o.timeoutMs !== undefined ? setTimeout(() => child.kill(), o.timeoutMs) : undefined;
    child.on('exit', (c) => {
      clearTimeout(timer);
      if (c === 0) resolve(out);
      else reject(new Error(`${o.what ?? 'node'} as uid ${uid}: exit ${c}: ${err}`));
    });
  });
}
