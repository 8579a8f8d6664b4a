import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { promisify } from 'node:util';
import Fuse from 'fuse-native';
import type { FuseOps, FuseOptions } from 'fuse-native';
import { EbsdError } from '../util/errors.js';
import { childEnv } from '../util/child-env.js';
import type { Logger } from '../util/logger.js';
import { appendMountOptions, EXTRA_MOUNT_OPTIONS, fuseNativeOptions, MAX_IO } from './mount-options.js';

const run = promisify(execFile);

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

  constructor(readonly mountDir: string, private readonly ops: FuseOps, private readonly opts: MountOptions) {
    this.log = opts.logger;
  }

  get mounted(): boolean {
    return this.fuse !== undefined;
  }

  async mount(): Promise<void> {
    if (this.fuse) return;
    await recoverStaleMount(this.mountDir, this.log);
    // mkdir of an existing file said only "EEXIST: file already exists, mkdir '…'".
    await fsp.mkdir(this.mountDir, { recursive: true, mode: 0o755 }).catch((e: NodeJS.ErrnoException) => {
      const why = e.code === 'EEXIST' ? 'it is not a directory' : e.code === 'ENOTDIR' ? 'a path component is not a directory' : e.code === 'EACCES' ? 'permission denied' : String(e.code ?? e.message);
      throw new EbsdError('FUSE_MOUNT_FAILED', `cannot mount FUSE at ${this.mountDir} (--mount): ${why}`, { cause: e });
    });
    const allowOther = this.opts.allowOther ?? process.getuid?.() === 0;
    const fuse = new BlockFuse(
      this.mountDir,
      this.ops,
      fuseNativeOptions(allowOther),
      EXTRA_MOUNT_OPTIONS, // mount-options.ts: shared with the benchmark scripts
    );
    await new Promise<void>((resolve, reject) => {
      fuse.mount((err) => (err ? reject(err) : resolve()));
    }).catch((err: Error) => {
      throw new EbsdError('FUSE_MOUNT_FAILED', `cannot mount FUSE at ${this.mountDir}: ${err.message}`, { cause: err });
    });
    this.fuse = fuse;
    this.log.info({ mount: this.mountDir, maxWrite: MAX_IO }, 'FUSE mounted');
  }

  async unmount(): Promise<void> {
    const fuse = this.fuse;
    if (!fuse) return;
    this.fuse = undefined;
    try {
      await new Promise<void>((resolve, reject) => fuse.unmount((err) => (err ? reject(err) : resolve())));
      this.log.info({ mount: this.mountDir }, 'FUSE unmounted');
    } catch (err) {
      this.log.warn({ mount: this.mountDir, err }, 'FUSE unmount failed; trying a lazy umount');
      await lazyUnmount(this.mountDir, this.log);
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

async function lazyUnmount(dir: string, log: Logger): Promise<void> {
  try {
    await run('fusermount', ['-uz', dir], { env: childEnv() });
    return;
  } catch (err) {
    log.debug({ mount: dir, err: (err as Error).message }, 'fusermount -uz failed');
  }
  await run('umount', ['-l', dir], { env: childEnv() });
}
