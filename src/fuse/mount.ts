import { execFile } from 'node:child_process';
import { promises as fsp, readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';
import { promisify } from 'node:util';
import Fuse from 'fuse-native';
import type { FuseOps, FuseOptions } from 'fuse-native';
import { EbsdError } from '../util/errors.js';
import { childEnv } from '../util/child-env.js';
import type { Logger } from '../util/logger.js';
import { appendMountOptions, EXTRA_MOUNT_OPTIONS, fuseNativeOptions, MAX_IO } from './mount-options.js';

const run = promisify(execFile);

/**
 * fuse-native's own addon: node-gyp-build requires the same file fuse-native loaded, so this is
 * the module instance its mount made (require's cache), not a second copy.
 */
interface FuseNativeBinding { fuse_native_unmount(mnt: string, thread: Buffer): void }
function fuseNativeBinding(): FuseNativeBinding {
  const req = createRequire(import.meta.url);
  const fuseNativeMain = req.resolve('fuse-native');
  return (createRequire(fuseNativeMain)('node-gyp-build') as (dir: string) => FuseNativeBinding)(dirname(fuseNativeMain));
}

export { MAX_IO };

/**
 * fuse-native builds its `-o` string only from the keys it knows about, so
 * the options a block file wants (big_writes, max_write, ...) are appended here.
 */
class BlockFuse extends Fuse {
  constructor(mnt: string, ops: FuseOps, opts: FuseOptions, private readonly extra: readonly string[]) {
    super(mnt, ops, opts);
  }

  override _fuseOptions(): string {
    return appendMountOptions(super._fuseOptions(), this.extra);
  }

  /**
   * fuse-native 2.2.6's own close step (its static `Fuse.unmount`) runs `fusermount -uz` through
   * a shell with the daemon's whole environment: AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN,
   * which the daemon keeps for its SDK clients, would reach a dumpable child
   * (docs/architecture.md §5.10). Done here instead, with childEnv(), as lazyUnmount does.
   *
   * And fuse-native releases its native handle (fuse_native_unmount: the uv_async its mount
   * keeps referenced) only when its `fusermount -uz` succeeds. When the mount is already gone
   * (unmounted from outside, its directory removed) fusermount fails, the handle stays, and the
   * event loop never empties: the daemon logged "stopped" and never exited. Released here
   * whatever fusermount answered: the process is done with this mount either way (FuseMount.unmount
   * still tries a lazy umount when fusermount failed).
   */
  override _close(cb: (err: Error | null) => void): void {
    execFile('fusermount', ['-uz', this.mnt], { env: childEnv() }, (unmountErr) => {
      const err = unmountErr ? Object.assign(unmountErr, { unmountFailure: true }) : null;
      if (!this._thread) return cb(err);
      try {
        fuseNativeBinding().fuse_native_unmount(this.mnt, this._thread);
      } catch (e) {
        return cb(err ? new AggregateError([err, e], `${err.message}; and the native handle could not be released`) : (e as Error));
      }
      cb(err);
    });
  }
}

export interface MountOptions {
  logger: Logger;
  /** Let other local users reach the files (still 0600, judged by default_permissions). Default: when root. */
  allowOther?: boolean;
}

/**
 * A mounted FUSE endpoint. mount() recovers a stale endpoint left by a crashed
 * daemon first; unmount() is lazy (`fusermount -uz`) so a loop device or shell
 * still holding the old files cannot wedge shutdown.
 */
export class FuseMount {
  private fuse: BlockFuse | undefined;
  private readonly log: Logger;
  /** Where the kernel lists the mount (the directory with symlinks resolved), its device and source, once mounted and found there. */
  private entry: MountEntry | undefined;
  /** Once lost() saw the mount gone: it cannot come back for this process (nothing mounts it again). */
  private gone = false;

  constructor(readonly mountDir: string, private readonly ops: FuseOps, private readonly opts: MountOptions) {
    this.log = opts.logger;
  }

  get mounted(): boolean {
    return this.fuse !== undefined;
  }

  /** Where the mount was made (the directory with symlinks resolved: the path the kernel gives its files), once mounted. */
  get mountedAt(): string | undefined {
    return this.fuse?.mnt;
  }

  /** The mount's device (major:minor, as mountinfo lists it), once mounted and found there. */
  get device(): string | undefined {
    return this.entry?.device;
  }

  /** The mount's source (`ebsd:<nonce>`, its own: mountSource), once mounted and found there. */
  get source(): string | undefined {
    return this.entry?.source;
  }

  async mount(): Promise<void> {
    if (this.fuse) return;
    await recoverStaleMount(this.mountDir, this.log);
    // mkdir of an existing file said only "EEXIST: file already exists, mkdir '…'".
    await fsp.mkdir(this.mountDir, { recursive: true, mode: 0o755 }).catch((e: NodeJS.ErrnoException) => {
      const why = e.code === 'EEXIST' ? 'it is not a directory' : e.code === 'ENOTDIR' ? 'a path component is not a directory' : e.code === 'EACCES' ? 'permission denied' : String(e.code ?? e.message);
      throw new EbsdError('FUSE_MOUNT_FAILED', `cannot mount FUSE at ${this.mountDir} (--mount): ${why}`, { cause: e });
    });
    // Resolved before the mount covers it (afterwards a stat of it would be a FUSE request to this
    // thread), and mounted there: fusermount refuses to unmount through a symlink ("Invalid
    // argument"), and the kernel lists the mount under this path, never the one given.
    const at = await fsp.realpath(this.mountDir);
    // libfuse refuses a directory that holds anything ("fuse failed", its reason only on stderr):
    // said here with what is in it. A mount point (another daemon's mount) is left to the mount's
    // own refusal, "Mountpoint in use".
    if (!(await isMountPoint(at))) {
      const held = await fsp.readdir(at).catch(() => [] as string[]);
      if (held.length) {
        const shown = held.slice(0, 3).join(', ') + (held.length > 3 ? `, … (${held.length} entries)` : '');
        throw new EbsdError('FUSE_MOUNT_FAILED', `cannot mount FUSE at ${this.mountDir} (--mount): the directory is not empty (${shown}); give an empty directory`);
      }
    }
    const allowOther = this.opts.allowOther ?? process.getuid?.() === 0;
    const source = mountSource();
    const fuse = new BlockFuse(
      at,
      this.ops,
      fuseNativeOptions(allowOther, source),
      EXTRA_MOUNT_OPTIONS, // mount-options.ts: shared with the benchmark scripts
    );
    await new Promise<void>((resolve, reject) => {
      fuse.mount((err) => (err ? reject(err) : resolve()));
    }).catch((err: Error) => {
      throw new EbsdError('FUSE_MOUNT_FAILED', `cannot mount FUSE at ${this.mountDir}: ${err.message}`, { cause: err });
    });
    this.fuse = fuse;
    // Found by its source, which no other mount has; none found: lost() never says so.
    this.entry = mountEntries(await fsp.readFile('/proc/self/mountinfo', 'utf8')).find((e) => e.at === at && e.type === 'fuse.ebsd' && e.source === source);
    this.gone = false;
    this.log.info({ mount: this.mountDir, maxWrite: MAX_IO }, 'FUSE mounted');
  }

  /**
   * Whether the mount was taken away from outside (`fusermount -u`, `umount`, a lazy umount):
   * mounted by this process, and its entry no longer in /proc/self/mountinfo. The kernel tells
   * the daemon nothing when that happens, and a file attached afterwards would be served nowhere.
   * Reads only mountinfo, never the mount itself, whose requests this thread serves; and only
   * until the mount is seen gone: an entry once gone never comes back (a new mount would be a new
   * entry, and this process makes none), so lost() answers true from then on without reading.
   */
  lost(): boolean {
    const entry = this.entry;
    if (!this.fuse || entry === undefined) return false;
    if (this.gone) return true;
    this.gone = !mountEntries(readFileSync('/proc/self/mountinfo', 'utf8')).some((e) => sameMount(e, entry));
    return this.gone;
  }

  async unmount(): Promise<void> {
    const fuse = this.fuse;
    if (!fuse) return;
    this.fuse = undefined;
    this.entry = undefined;
    try {
      await new Promise<void>((resolve, reject) => fuse.unmount((err) => (err ? reject(err) : resolve())));
      this.log.info({ mount: this.mountDir }, 'FUSE unmounted');
    } catch (err) {
      // Unmounted from outside (fusermount -uz, umount -l), its directory removed: nothing left to unmount.
      if (!(await isMountPoint(fuse.mnt))) {
        this.log.warn({ mount: this.mountDir, err: (err as Error).message }, 'FUSE mount already gone (unmounted or removed from outside)');
        return;
      }
      this.log.warn({ mount: this.mountDir, err }, 'FUSE unmount failed; trying a lazy umount');
      await lazyUnmount(fuse.mnt, this.log);
    }
  }
}

/**
 * A daemon killed with SIGKILL leaves its endpoint mounted but dead: every
 * stat of it fails with ENOTCONN ("Transport endpoint is not connected").
 * Detach it lazily so a new mount can take the directory.
 */
export async function recoverStaleMount(dir: string, log: Logger): Promise<boolean> {
  try {
    await fsp.stat(dir);
    return false;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return false;
    if (code !== 'ENOTCONN' && code !== 'ECONNABORTED' && code !== 'EIO') throw err;
  }
  log.warn({ mount: dir }, 'stale FUSE mount from a previous daemon; unmounting it');
  await lazyUnmount(dir, log);
  await fsp.stat(dir); // throws if still dead: better a clear failure than a second stale layer
  return true;
}

/**
 * Whether `dir` is a mount point in this mount namespace (a line of /proc/self/mountinfo names it).
 */
export async function isMountPoint(dir: string): Promise<boolean> {
  const want = resolve(dir);
  return mountEntries(await fsp.readFile('/proc/self/mountinfo', 'utf8')).some((e) => e.at === want);
}

/**
 * A source no other mount has, for a mount of this process: `ebsd:` and 16 random hex digits.
 * Device numbers and mount ids are handed out lowest-free first, so another daemon mounting later
 * at the same path gets the same ones; only the source tells the two apart (mount-record.ts).
 */
export function mountSource(): string {
  return `ebsd:${randomBytes(8).toString('hex')}`;
}

/** A line of /proc/self/mountinfo: the device (major:minor), the mount point, the filesystem type and the source. */
export interface MountEntry { device: string; at: string; type: string; source: string }

/** Whether two entries are one mount: the same point, device and source (a fuse.ebsd source is unique: mountSource). */
export function sameMount(a: Omit<MountEntry, 'type'>, b: Omit<MountEntry, 'type'>): boolean {
  return a.at === b.at && a.device === b.device && a.source === b.source;
}

/**
 * The lines of /proc/self/mountinfo (proc(5)): field 3 the device (major:minor), field 5 the mount
 * point, where a space, tab, newline or backslash is written as \ooo, and after the `-` separator
 * the filesystem type and the mount source (escaped the same way).
 */
export function mountEntries(info: string): MountEntry[] {
  const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const out: MountEntry[] = [];
  for (const line of info.split('\n')) {
    const f = line.split(' ');
    const sep = f.indexOf('-', 6);
    if (f.length < 5 || sep < 0) continue;
    out.push({ device: f[2]!, at: unescape(f[4]!), type: f[sep + 1] ?? '', source: unescape(f[sep + 2] ?? '') });
  }
  return out;
}

async function lazyUnmount(dir: string, log: Logger): Promise<void> {
  try {
    await run('fusermount', ['-uz', dir], { env: childEnv() });
    return;
  } catch (err) {
    log.debug({ mount: dir, err: (err as Error).message }, 'fusermount -uz failed');
  }
  await run('umount', ['-l', dir], { env: childEnv() });
}
