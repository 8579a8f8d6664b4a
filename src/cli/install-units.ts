import { spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, readdirSync, readFileSync, realpathSync, renameSync, statSync, writeFileSync, fsyncSync, openSync, closeSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Argv } from 'yargs';
import { ServiceError } from './client.js';
import { UsageError } from './kms-args.js';

/** Where the unit files ship: contrib/systemd/ next to dist/. */
export const UNITS_SOURCE = resolve(import.meta.dirname, '..', '..', 'contrib', 'systemd');
/** The path the shipped units run ebsd from (scripts/setup.sh links it there). */
export const UNITS_BIN = '/usr/local/bin/ebsd';

export interface InstallUnitsResult {
  Directory: string;
  Installed: string[];
  DaemonReload: 'done' | 'skipped' | 'systemd-not-running';
}

/**
 * `ebsd install-units`: copy contrib/systemd/*.service into `dir` (0644,
 * each written to a temp file, fsynced and renamed), with ExecStart pointing
 * at `bin`, then `systemctl daemon-reload` if systemd is the running init
 * (sd_booted(3): /run/systemd/system exists).
 */
export function installUnits(opts: { dir: string; bin?: string; reload: boolean }): InstallUnitsResult {
  const bin = opts.bin ?? UNITS_BIN;
  if (!bin.startsWith('/')) throw new UsageError(`--bin must be an absolute path (systemd runs ExecStart= without a PATH search), got "${bin}"`);
  checkExecutable(bin);
  if (!existsSync(opts.dir)) throw new UsageError(`--dir ${opts.dir} does not exist`);
  const names = readdirSync(UNITS_SOURCE).filter((n) => n.endsWith('.service')).sort();
  for (const name of names) {
    const text = readFileSync(join(UNITS_SOURCE, name), 'utf8').split(UNITS_BIN).join(bin);
    const to = join(opts.dir, name);
    const tmp = `${to}.ebsd-tmp`;
    writeFileSync(tmp, text, { mode: 0o644 });
    const fd = openSync(tmp, 'r');
    try { fsyncSync(fd); } finally { closeSync(fd); }
    renameSync(tmp, to);
  }
  let reload: InstallUnitsResult['DaemonReload'] = 'skipped';
  if (opts.reload) {
    if (!existsSync('/run/systemd/system')) reload = 'systemd-not-running';
    else {
      const r = spawnSync('systemctl', ['daemon-reload'], { encoding: 'utf8' });
      if (r.status !== 0) throw new ServiceError('InternalFailure', `units installed in ${opts.dir}, but systemctl daemon-reload failed (exit ${r.status}): ${(r.stderr || r.error?.message || '').trim()}`, 500);
      reload = 'done';
    }
  }
  return { Directory: opts.dir, Installed: names, DaemonReload: reload };
}

/**
 * The units run `bin` as ExecStart=: one that is missing (no /usr/local/bin/ebsd link: ebsd built
 * without scripts/setup.sh, or the link left dangling) or not executable would install fine and fail
 * only at `systemctl start` (status=203/EXEC), so it is refused here, naming the path and the one
 * this command runs from.
 */
function checkExecutable(bin: string): void {
  let why: string | undefined;
  try {
    if (!statSync(bin).isFile()) why = 'is not a file';
    else accessSync(bin, constants.X_OK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    why = code === 'ENOENT' ? 'does not exist (or is a dangling link)' : code === 'EACCES' ? 'is not executable' : `cannot be run (${code ?? (e as Error).message})`;
  }
  if (why === undefined) return;
  let self = process.argv[1] ?? '';
  try { self = realpathSync(self); } catch { /* shown as given */ }
  throw new UsageError(`--bin ${bin} ${why}: the units would fail to start (203/EXEC). Give --bin the ebsd executable (this command runs ${self}; scripts/setup.sh makes it executable and links it to ${UNITS_BIN})`);
}

/** `ebsd install-units [--dir D] [--bin PATH] [--no-reload]` (local, no daemon). */
export function installUnitsCommand(y: Argv): Argv {
  return y.command(
    'install-units',
    'Install the systemd units (ebsd.service, ebsd-attach@.service, ebsd-loop@.service) and run systemctl daemon-reload',
    (b) =>
      b
        .option('dir', { type: 'string', default: '/etc/systemd/system', describe: 'where to put the unit files' })
        .option('bin', { type: 'string', default: UNITS_BIN, describe: 'absolute path of the ebsd executable the units run' })
        .option('reload', { type: 'boolean', default: true, describe: '--no-reload: do not run systemctl daemon-reload' }),
    (a) => {
      const res = installUnits({ dir: a.dir, bin: a.bin, reload: a.reload });
      const out = (a as { output?: string }).output ?? (process.stdout.isTTY ? 'table' : 'json');
      if (out === 'json') process.stdout.write(JSON.stringify(res, null, 4) + '\n');
      else {
        process.stdout.write(`installed in ${res.Directory}: ${res.Installed.join(' ')}\n`);
        process.stdout.write(res.DaemonReload === 'done' ? 'systemctl daemon-reload: done\n'
          : res.DaemonReload === 'systemd-not-running' ? 'systemd is not the running init here: no daemon-reload\n' : 'daemon-reload skipped (--no-reload)\n');
        process.stdout.write('next: systemctl enable --now ebsd.service; systemctl enable --now ebsd-attach@vol-….service\n');
      }
    },
  );
}
