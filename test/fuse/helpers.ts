import { execFile, spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import type { BlockDevice } from '../../src/volume/types.js';
import { tempDir as makeTempDir } from '../helpers/temp-dir.js';

/** A BlockDevice in a Buffer: the smallest thing that honours the contract, for FUSE tests. */
export class MemoryBlockDevice implements BlockDevice {
  readonly unencrypted = true;
  readonly mem: Buffer;
  flushes = 0;
  /** When set, every I/O fails with this error (simulates an impaired volume). */
  failWith: Error | undefined;

  constructor(readonly volumeId: string, readonly size: number) {
    this.mem = Buffer.alloc(size);
  }

  async read(offset: number, length: number, into: Buffer, intoOffset = 0): Promise<number> {
    if (this.failWith) throw this.failWith;
    if (offset < 0 || offset + length > this.size) throw new RangeError('out of range');
    return this.mem.copy(into, intoOffset, offset, offset + length);
  }

  async write(offset: number, data: Buffer): Promise<number> {
    if (this.failWith) throw this.failWith;
    if (offset < 0 || offset + data.length > this.size) throw new RangeError('out of range');
    return data.copy(this.mem, offset);
  }

  async flush(): Promise<void> {
    if (this.failWith) throw this.failWith;
    this.flushes++;
  }
}

/** A fresh `ebsd-<prefix>-XXXXXX` (test/helpers/temp-dir.ts); the caller removes it once its mount is gone. */
export function tempDir(prefix: string): string {
  return makeTempDir(`ebsd-${prefix}-`).dir;
}

/**
 * Run a command asynchronously. Never use the *Sync child/fs APIs against a FUSE
 * mount served by this same process: they block the event loop that answers
 * the FUSE requests, and the process deadlocks in the kernel (state D).
 */
export function sh(cmd: string, args: string[], opts: { timeoutMs?: number } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { encoding: 'utf8', timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      if (err) reject(Object.assign(new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${stderr}`), { stdout, stderr }));
      else resolve(stdout);
    });
  });
}

/** Best-effort cleanup steps (sync: only when no FUSE mount of this process is involved, or it is already gone). */
export function quietly(cmd: string, args: string[]): void {
  spawnSync(cmd, args, { stdio: 'ignore' });
}

/** Undo everything a test may have set up on top of a FUSE file: fs mount, loop device. */
export function cleanupStack(opts: { fsMount?: string; loop?: string; dir?: string }): void {
  if (opts.fsMount) { quietly('umount', [opts.fsMount]); quietly('umount', ['-l', opts.fsMount]); }
  if (opts.loop) quietly('losetup', ['-d', opts.loop]);
  if (opts.dir) rmSync(opts.dir, { recursive: true, force: true });
}
