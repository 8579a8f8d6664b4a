import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { BlockFileSystem } from '../../src/fuse/block-file-system.js';
import { EINVAL, EIO, ENOMEM, ENOSPC, toErrno } from '../../src/fuse/errno.js';
import { ArgRangeError, ArgTypeError } from '../../src/util/errors.js';
import { createLogger } from '../../src/util/logger.js';
import { MemoryBlockDevice } from './helpers.js';

function call(fn: (...a: any[]) => void, ...args: unknown[]): Promise<[number, ...any[]]> {
  return new Promise((resolve) => fn(...args, (...r: [number, ...any[]]) => resolve(r)));
}

describe('toErrno: EINVAL only for the explicit range/argument codes', () => {
  it('maps a failed allocation to ENOMEM, not EINVAL', () => {
    let oom: unknown;
    try {
      new ArrayBuffer(2 ** 52); // V8 cannot: RangeError "Array buffer allocation failed", no code
    } catch (e) { oom = e; }
    expect(oom).toBeInstanceOf(RangeError);
    expect(toErrno(oom)).toBe(ENOMEM);
    expect(toErrno(new Error('read failed', { cause: oom }))).toBe(ENOMEM);
    expect(toErrno(Object.assign(new Error('x'), { code: 'ERR_MEMORY_ALLOCATION_FAILED' }))).toBe(ENOMEM);
    expect(toErrno(Object.assign(new Error('pread'), { code: 'ENOMEM' }))).toBe(ENOMEM);
  });

  it('a RangeError without a code is not a bad argument: EIO', () => {
    expect(toErrno(new RangeError('into must hold at least len (4096) bytes, has 512'))).toBe(EIO);
  });

  it('keeps EINVAL for ours and Node\'s range/argument codes, ENOSPC for no room', () => {
    expect(toErrno(new ArgRangeError('offset', 'out of range'))).toBe(EINVAL);
    expect(toErrno(new ArgTypeError('data', 'a Buffer', 1))).toBe(EINVAL);
    let nodeRange: unknown;
    try { Buffer.alloc(8).readUInt32LE(100); } catch (e) { nodeRange = e; }
    expect((nodeRange as { code?: string }).code).toBe('ERR_OUT_OF_RANGE');
    expect(toErrno(nodeRange)).toBe(EINVAL);
    expect(toErrno(Object.assign(new Error('w'), { code: 'VOLUME_OUT_OF_RANGE' }))).toBe(EINVAL);
    expect(toErrno(new Error('w', { cause: Object.assign(new Error('disk'), { code: 'ENOSPC' }) }))).toBe(ENOSPC);
    expect(toErrno(new Error('anything else'))).toBe(EIO);
  });
});

describe('BlockFileSystem after a forced detach', () => {
  it('warns once per volume at removal, not once per request on a surviving handle; the requests still get EIO', async () => {
    const lines: { level: number; msg: string; volumeId?: string; refused?: number }[] = [];
    const logger = createLogger({ level: 'debug', destination: new Writable({ write: (c, _e, cb) => { lines.push(JSON.parse(String(c))); cb(); } }) });
    const a = new MemoryBlockDevice('vol-0aaaaaaaaaaaaaaaa', 64 * 1024);
    const b = new MemoryBlockDevice('vol-0bbbbbbbbbbbbbbbb', 64 * 1024);
    const bfs = new BlockFileSystem({ logger });
    bfs.add(a);
    bfs.add(b);
    const ops = bfs.ops();
    const [, fhA] = await call(ops.open!, `/${a.volumeId}`, 2);
    const [, fhA2] = await call(ops.open!, `/${a.volumeId}`, 2);
    const [, fhB] = await call(ops.open!, `/${b.volumeId}`, 2);
    await bfs.remove(a.volumeId, { force: true });
    await bfs.remove(b.volumeId, { force: true });

    const buf = Buffer.alloc(4096);
    for (let i = 0; i < 300; i++) {
      expect((await call(ops.read!, `/${a.volumeId}`, i % 2 ? fhA : fhA2, buf, 4096, i * 4096 % 65536))[0]).toBe(EIO);
      expect((await call(ops.write!, `/${a.volumeId}`, fhA, buf, 4096, 0))[0]).toBe(EIO);
      expect((await call(ops.flush!, `/${a.volumeId}`, fhA))[0]).toBe(EIO);
    }
    expect((await call(ops.read!, `/${b.volumeId}`, fhB, buf, 4096, 0))[0]).toBe(EIO);

    const WARN = 40;
    const warns = lines.filter((l) => l.level >= WARN);
    expect(warns.map((l) => l.volumeId).sort()).toEqual([a.volumeId, b.volumeId]);
    expect(warns.every((l) => /forced detach/.test(l.msg))).toBe(true);
    // At debug: the first refused request per volume, then a count once the last handle closes.
    expect(lines.filter((l) => l.level < WARN && l.volumeId === a.volumeId)).toHaveLength(1);
    await call(ops.release!, `/${a.volumeId}`, fhA);
    await call(ops.release!, `/${a.volumeId}`, fhA2);
    const summary = lines.filter((l) => l.volumeId === a.volumeId && l.refused !== undefined);
    expect(summary.map((l) => l.refused)).toEqual([900]);
    await call(ops.release!, `/${b.volumeId}`, fhB);
  });

  it('a detach of a closed volume says nothing', async () => {
    const lines: string[] = [];
    const logger = createLogger({ level: 'debug', destination: new Writable({ write: (c, _e, cb) => { lines.push(String(c)); cb(); } }) });
    const a = new MemoryBlockDevice('vol-0aaaaaaaaaaaaaaaa', 64 * 1024);
    const bfs = new BlockFileSystem({ logger });
    bfs.add(a);
    await bfs.remove(a.volumeId, { force: true });
    expect(lines).toEqual([]);
  });
});
