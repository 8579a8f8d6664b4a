import { describe, expect, it } from 'vitest';
import { BlockFileSystem, FH_MAX } from '../../src/fuse/block-file-system.js';
import { createLogger } from '../../src/util/logger.js';
import { MemoryBlockDevice } from './helpers.js';

// The FUSE operation table driven directly, without a mount: file handle
// numbers across the wrap after FH_MAX.

const log = createLogger({ level: 'silent' });
const KiB = 1024;

function call<T extends unknown[]>(fn: (...a: [...T, (err: number, ...r: any[]) => void]) => void, ...args: T): Promise<[number, ...any[]]> {
  return new Promise((resolve) => fn(...args, (...r: [number, ...any[]]) => resolve(r)));
}

describe('BlockFileSystem file handles', () => {
  it('after the wrap, skips a number a long-lived handle still holds: its I/O stays on its own volume', async () => {
    const a = new MemoryBlockDevice('vol-0aaaaaaaaaaaaaaaa', 64 * KiB);
    const b = new MemoryBlockDevice('vol-0bbbbbbbbbbbbbbbb', 64 * KiB);
    const bfs = new BlockFileSystem({ logger: log, firstFh: 1 });
    bfs.add(a);
    bfs.add(b);
    const ops = bfs.ops();

    // Handle 1 on volume A, held for good (a loop device's).
    const [err1, fhA] = await call(ops.open!, `/${a.volumeId}`, 2);
    expect(err1).toBe(0);
    expect(fhA).toBe(1);

    // Bring the counter to the wrap: the next open after FH_MAX gets 1 again unless 1 is skipped.
    (bfs as unknown as { nextFh: number }).nextFh = FH_MAX;
    const [, fhLast] = await call(ops.open!, `/${b.volumeId}`, 2);
    expect(fhLast).toBe(FH_MAX);
    const [, fhB] = await call(ops.open!, `/${b.volumeId}`, 2);
    expect(fhB).not.toBe(fhA);
    expect(fhB).toBe(2);
    expect(bfs.openCount(a.volumeId)).toBe(1);
    expect(bfs.openCount(b.volumeId)).toBe(2);

    // A write through A's handle lands on A, not on B.
    const data = Buffer.from('volume A only');
    const [put] = await call(ops.write!, `/${a.volumeId}`, fhA, data, data.length, 4096);
    expect(put).toBe(data.length);
    expect(a.mem.subarray(4096, 4096 + data.length)).toEqual(data);
    expect(b.mem.subarray(4096, 4096 + data.length)).toEqual(Buffer.alloc(data.length));

    // Releasing B's handles leaves A's count alone.
    await call(ops.release!, `/${b.volumeId}`, fhB);
    await call(ops.release!, `/${b.volumeId}`, fhLast);
    expect(bfs.openCount(a.volumeId)).toBe(1);
    expect(bfs.openCount(b.volumeId)).toBe(0);
    await call(ops.release!, `/${a.volumeId}`, fhA);
    expect(bfs.openCount(a.volumeId)).toBe(0);
  });

  it('firstFh starts the counter (for tests) and is checked', async () => {
    const a = new MemoryBlockDevice('vol-0aaaaaaaaaaaaaaaa', 64 * KiB);
    const bfs = new BlockFileSystem({ logger: log, firstFh: FH_MAX });
    bfs.add(a);
    const ops = bfs.ops();
    expect((await call(ops.open!, `/${a.volumeId}`, 2))[1]).toBe(FH_MAX);
    expect((await call(ops.open!, `/${a.volumeId}`, 2))[1]).toBe(1);
    expect(() => new BlockFileSystem({ logger: log, firstFh: 0 })).toThrow(RangeError);
    expect(() => new BlockFileSystem({ logger: log, firstFh: FH_MAX + 1 })).toThrow(RangeError);
  });
});
