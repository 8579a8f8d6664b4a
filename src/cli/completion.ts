import { readdirSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import yargs, { type Argv } from 'yargs';
import { DEFAULT_STATE_DIR } from '../daemon/config.js';
import { callDaemon, socketPathFor } from './client.js';
import { UsageError } from './kms-args.js';

/**
 * `ebsd completion bash|zsh`: the shell script is yargs' own; what it asks
 * (`ebsd --get-yargs-completions <words>`) is answered by yargs for commands
 * and flags, and here for live values from the running daemon: volume ids,
 * key ids and alias names, and paths after `file://` / `fileb://`.
 * A daemon that does not answer within LIVE_TIMEOUT_MS just adds nothing.
 */

const LIVE_TIMEOUT_MS = 1_500;
/** Commands whose next word is a volume id. */
const VOLUME_WORDS = new Set(['attach', 'detach', 'describe', 'modify', 'modifications', 'delete', '--volume-id']);
/** Flags whose value is a KMS key (id, ARN or alias). */
const KEY_FLAGS = new Set(['--key-id', '--kms-key', '--target-key-id', '--destination-key-id']);

type R = Record<string, unknown>;

/** Register `completion <shell>` and the live-value completer on the CLI's yargs. */
export function completionCommand(y: Argv): Argv {
  return y
    .completion('__completion-script', false, (current: string, argv: R, defaults: (cb: (err: Error | null, c?: string[]) => void) => void, done: (c: string[]) => void) => {
      defaults((_err, base) => {
        liveValues(current, argv).then(
          (live) => done([...live, ...(live.length ? [] : base ?? [])]),
          () => done(base ?? []),
        );
      });
    })
    .command(
      'completion <shell>',
      'Print a shell completion script (commands, flags, live volume ids, key ids and aliases): source <(ebsd completion bash)',
      (b) => b.positional('shell', { type: 'string', describe: 'bash or zsh', demandOption: true }),
      (a) => {
        const shell = String(a.shell);
        if (shell !== 'bash' && shell !== 'zsh') throw new UsageError(`completion: shell must be bash or zsh, got "${shell}"`);
        // yargs picks the template from $SHELL when its instance is made.
        const saved = process.env.SHELL;
        process.env.SHELL = `/bin/${shell}`;
        try {
          (yargs([]).scriptName('ebsd') as unknown as { showCompletionScript($0: string, cmd: string): void }).showCompletionScript('ebsd', `completion ${shell}`);
        } finally {
          if (saved === undefined) delete process.env.SHELL;
          else process.env.SHELL = saved;
        }
      },
    );
}

/** The words being completed, as the shell passed them after --get-yargs-completions. */
function words(): string[] {
  const at = process.argv.indexOf('--get-yargs-completions');
  return at < 0 ? [] : process.argv.slice(at + 1);
}

async function liveValues(current: string, argv: R): Promise<string[]> {
  if (current.startsWith('fileb://') || current.startsWith('file://')) return paths(current);
  const w = words();
  const prev = w.length >= 2 ? w[w.length - 2]! : '';
  const wantVolumes = VOLUME_WORDS.has(prev) || current.startsWith('vol-');
  const wantKeys = KEY_FLAGS.has(prev) || current.startsWith('alias/');
  if (!wantVolumes && !wantKeys) return [];
  const stateDir = typeof argv.stateDir === 'string' ? argv.stateDir : process.env.EBSD_STATE_DIR ?? DEFAULT_STATE_DIR;
  const call = (target: string): Promise<R> => withTimeout(callDaemon(socketPathFor(stateDir), target, {}));
  const out: string[] = [];
  if (wantVolumes) {
    const res = await call('ebsd.DescribeVolumes');
    for (const v of (res.Volumes as R[] | undefined) ?? []) if (typeof v.VolumeId === 'string') out.push(v.VolumeId);
  }
  if (wantKeys) {
    const [keys, aliases] = await Promise.all([call('TrentService.ListKeys'), call('TrentService.ListAliases')]);
    for (const a of (aliases.Aliases as R[] | undefined) ?? []) if (typeof a.AliasName === 'string' && a.TargetKeyId) out.push(a.AliasName);
    for (const k of (keys.Keys as R[] | undefined) ?? []) if (typeof k.KeyId === 'string') out.push(k.KeyId);
  }
  return out.filter((v) => v.startsWith(current));
}

/** `fileb://dir/pre` -> `fileb://dir/prefix…` entries (directories with a trailing /). */
function paths(current: string): string[] {
  const scheme = current.startsWith('fileb://') ? 'fileb://' : 'file://';
  const rest = current.slice(scheme.length);
  const base = rest.endsWith('/') ? '' : basename(rest);
  const prefix = rest.slice(0, rest.length - base.length); // what the user typed up to the last /
  const dir = prefix === '' ? '.' : prefix;
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  return names
    .filter((n) => n.startsWith(base))
    .slice(0, 200)
    .map((n) => {
      let slash = '';
      try { if (statSync(join(dir, n)).isDirectory()) slash = '/'; } catch { /* vanished */ }
      return `${scheme}${prefix}${n}${slash}`;
    });
}

function withTimeout<T>(p: Promise<T>): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('daemon did not answer in time')), LIVE_TIMEOUT_MS);
    t.unref();
    p.then((v) => { clearTimeout(t); resolve(v); }, (e) => { clearTimeout(t); reject(e); });
  });
}
