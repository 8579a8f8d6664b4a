import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { closeSync, mkdtempSync, openSync, readSync, rmdirSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { seededBytes, printSeedOnFailure } from '../crypto/seeded.js';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { nativeIo, EAGAIN, EOPNOTSUPP, SyncWriteGuard, syncWriteSafe, streamPoller } from '../../src/volume/native-io.js';
import { tmpDir } from './helpers/image.js';
import { evictFromPageCache } from './helpers/page-cache.js';
import { readNowaitSupported } from './helpers/fs-caps.js';
/** Random payloads replay under EBSD_TEST_SEED (test/crypto/seeded.ts); a failure prints the seed. */
const randomBytes = seededBytes('volume/native-io');
printSeedOnFailure();

let t: ReturnType<typeof tmpDir>;
beforeEach(() => { t = tmpDir('ebsd-nio-'); });
afterEach(() => t.cleanup());

/** Leave `data` in `path` on disk but not in the page cache. */
function dropFromPageCache(path: string, data: Buffer): void {
  writeFileSync(path, data);
  evictFromPageCache(path);
}

describe.skipIf(nativeIo === null)('native io.c', () => {
  const io = nativeIo!;

  test.skipIf(!readNowaitSupported)('preadNowait returns page-cache data, 0 at EOF', () => {
    const p = join(t.dir, 'f');
    const data = randomBytes(3 * 4096);
    writeFileSync(p, data); // buffered: in the page cache now
    const fd = openSync(p, 'r');
    try {
      const b = Buffer.alloc(8192 + 7);
      expect(io.preadNowait(fd, b, 7, 8192, 4096)).toBe(8192);
      expect(b.subarray(7).equals(data.subarray(4096, 3 * 4096))).toBe(true);
      expect(io.preadNowait(fd, b, 0, 4096, 3 * 4096)).toBe(0);
      // 64-bit position as a double (docs/architecture.md §11.13), past EOF.
      expect(io.preadNowait(fd, b, 0, 16, 2 ** 40)).toBe(0);
    } finally {
      closeSync(fd);
    }
  });

  test('preadNowait answers EOPNOTSUPP where the filesystem has no RWF_NOWAIT reads (a tmpfs this test mounts)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ebsd-nio-tmpfs-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m,mode=0700', 'tmpfs', dir]);
    try {
      const p = join(dir, 'f');
      writeFileSync(p, randomBytes(4096));
      const fd = openSync(p, 'r');
      try {
        expect(io.preadNowait(fd, Buffer.alloc(4096), 0, 4096, 0)).toBe(EOPNOTSUPP);
      } finally {
        closeSync(fd);
      }
    } finally {
      execFileSync('umount', [dir]);
      rmdirSync(dir);
    }
  });

  test.skipIf(!readNowaitSupported)('preadNowait answers -EAGAIN instead of waiting for the disk', () => {
    const p = join(t.dir, 'f');
    const data = randomBytes(64 * 1024);
    const fd = openSync(p, 'w+');
    try {
      const b = Buffer.alloc(data.length);
      // Dropping pages is best effort on the kernel's side (seen: 1 run in ~40 still had
      // them cached), so the set-up is repeated; the answer for uncached data must be EAGAIN.
      let r = 0;
      for (let attempt = 0; attempt < 5 && r !== EAGAIN; attempt++) {
        dropFromPageCache(p, data);
        r = io.preadNowait(fd, b, 0, b.length, 0);
      }
      expect(r).toBe(EAGAIN);
      // After an ordinary read the same range is a hit.
      readSync(fd, b, 0, b.length, 0);
      expect(io.preadNowait(fd, b.fill(0), 0, b.length, 0)).toBe(b.length);
      expect(b.equals(data)).toBe(true);
    } finally {
      closeSync(fd);
    }
  });

  test('pwriteNowait writes, or says it cannot (EOPNOTSUPP on ext4, EAGAIN)', () => {
    const p = join(t.dir, 'f');
    writeFileSync(p, Buffer.alloc(8192));
    const fd = openSync(p, 'r+');
    try {
      const d = randomBytes(4096);
      const n = io.pwriteNowait(fd, d, 0, 4096, 4096);
      expect([4096, EOPNOTSUPP, EAGAIN]).toContain(n);
      if (n === 4096) {
        const b = Buffer.alloc(4096);
        readSync(fd, b, 0, 4096, 4096);
        expect(b.equals(d)).toBe(true);
      }
    } finally {
      closeSync(fd);
    }
  });

  test('pwriteTimed writes and reports wall time and voluntary context switches', () => {
    const p = join(t.dir, 'f');
    writeFileSync(p, Buffer.alloc(8192));
    const fd = openSync(p, 'r+');
    try {
      const d = randomBytes(4096);
      const stats = new Float64Array(2).fill(-1);
      expect(io.pwriteTimed(fd, d, 0, 4096, 4096, stats)).toBe(4096);
      expect(stats[0]).toBeGreaterThan(0);
      expect(stats[1]).toBeGreaterThanOrEqual(0);
      const b = Buffer.alloc(4096);
      readSync(fd, b, 0, 4096, 4096);
      expect(b.equals(d)).toBe(true);
      expect(() => io.pwriteTimed(fd, d, 0, 16, 0, new Float64Array(1))).toThrow(expect.objectContaining({ code: 'ERR_ARG_TYPE' }));
      expect(() => io.pwriteTimed(fd, d, 0, 16, 0, new Float32Array(2) as unknown as Float64Array)).toThrow(expect.objectContaining({ code: 'ERR_ARG_TYPE' }));
    } finally {
      closeSync(fd);
    }
    const ro = openSync(p, 'r');
    try {
      expect(() => io.pwriteTimed(ro, Buffer.alloc(1), 0, 1, 0, new Float64Array(2))).toThrow(expect.objectContaining({ code: 'EBADF', syscall: 'pwrite' }));
    } finally {
      closeSync(ro);
    }
  });

  test('awaitLoopEvent: times out on an idle loop, returns 1 when another thread wakes the loop, and loses no wake-up', async () => {
    // Idle: nothing wakes this loop during 300 µs (retried: a stray pool completion may).
    let idle = 0;
    for (let i = 0; i < 10 && idle !== -1; i++) {
      await new Promise((r) => setImmediate(r));
      idle = io.awaitLoopEvent!(300);
    }
    expect(idle).toBe(-1);
    // A worker's message reaches this loop as a uv_async_send: the poll sees it.
    const w = new Worker("require('node:worker_threads').parentPort.once('message', (p) => setTimeout(() => p.postMessage('hi'), 200))", { eval: true });
    try {
      await once(w, 'online');
      const { port1, port2 } = new MessageChannel();
      const got = once(port1, 'message');
      w.postMessage(port2, [port2]);
      // A loop turn before each poll, so wake-ups already pending (the worker starting up, another
      // thread of this process) are run: a poll that finds one pending answers 0 at once, and the
      // next turn runs it. The worker answers 200 ms after it got the port, long after those.
      let woke = 0;
      for (let i = 0; i < 20 && woke === 0; i++) {
        await new Promise((r) => setImmediate(r));
        woke = io.awaitLoopEvent!(1_000_000);
      }
      expect(woke).toBe(1);
      // The poll consumed nothing: the message is still delivered.
      expect((await got)[0]).toBe('hi');
      port1.close();
    } finally {
      await w.terminate();
    }
    expect(() => io.awaitLoopEvent!(-1)).toThrow(/maxUs/);
  });

  test('streamPoller: at most one poll per loop turn; after a timeout it skips 2, then 4 chances', async () => {
    const turn = (): Promise<void> => new Promise((r) => setImmediate(r));
    await turn();
    const polls = (): number => streamPoller.outcomes.reduce((a, b) => a + b, 0);
    // Reach a known state: poll until one times out on this idle loop.
    let before = streamPoller.outcomes[0];
    for (let i = 0; i < 600 && streamPoller.outcomes[0] === before; i++) {
      streamPoller.request();
      await turn();
    }
    expect(streamPoller.outcomes[0]).toBe(before + 1);
    // The backoff is now 2 (fresh) or more (earlier timeouts in this process); count the skips.
    const skipsUntilPoll = async (): Promise<number> => {
      const start = polls();
      let skipped = 0;
      while (polls() === start) {
        streamPoller.request();
        streamPoller.request(); // twice in one turn: still one poll (or one skip)
        await turn();
        if (polls() === start) skipped++;
      }
      return skipped;
    };
    before = streamPoller.outcomes[0];
    const first = await skipsUntilPoll();
    expect(first).toBeGreaterThanOrEqual(2);
    const timedOutAgain = streamPoller.outcomes[0] > before; // near certain on an idle loop
    const second = await skipsUntilPoll();
    // Timed out again: the skips double; an event arrived: the backoff resets (none).
    expect(second).toBe(timedOutAgain ? Math.min(first * 2, 256) : 0);
  });

  test('errors: bad fd throws like node:fs, arguments are range-checked', () => {
    const b = Buffer.alloc(16);
    expect(() => io.preadNowait(0x7ffffff0, b, 0, 16, 0)).toThrow(expect.objectContaining({ code: 'EBADF', errno: -9, syscall: 'preadv2' }));
    const p = join(t.dir, 'f');
    writeFileSync(p, b);
    const fd = openSync(p, 'r');
    try {
      expect(() => io.preadNowait(fd, b, 1, 16, 0)).toThrow(expect.objectContaining({ code: 'ERR_ARG_RANGE' }));
      expect(() => io.preadNowait(fd, b, 17, 0, 0)).toThrow(expect.objectContaining({ code: 'ERR_ARG_RANGE' }));
      expect(() => io.preadNowait(fd, b, 0, 1, -1)).toThrow(expect.objectContaining({ code: 'ERR_ARG_RANGE' }));
      expect(() => io.preadNowait(fd, b, 0, 1, 0.5)).toThrow(expect.objectContaining({ code: 'ERR_ARG_RANGE' }));
      expect(() => io.preadNowait(fd, 'x' as unknown as Buffer, 0, 1, 0)).toThrow(expect.objectContaining({ code: 'ERR_ARG_TYPE' }));
      expect(() => io.pwriteNowait(fd, new Uint16Array(4) as unknown as Buffer, 0, 1, 0)).toThrow(expect.objectContaining({ code: 'ERR_ARG_TYPE' }));
      // Read-only fd: a real error, thrown (not a soft negative).
      expect(() => io.pwriteNowait(fd, b, 0, 16, 0)).toThrow(expect.objectContaining({ code: 'EBADF' }));
    } finally {
      closeSync(fd);
    }
  });
});

describe('sync-write safety and watchdog', () => {
  test('a file on a real disk allows sync writes; /dev/null (devtmpfs, anonymous device) does not', () => {
    const p = join(t.dir, 'f');
    writeFileSync(p, 'x');
    const fd = openSync(p, 'r');
    const nul = openSync('/dev/null', 'r');
    try {
      expect(syncWriteSafe(nul)).toBe(false);
      expect(typeof syncWriteSafe(fd)).toBe('boolean');
      expect(syncWriteSafe(-1)).toBe(false);
    } finally {
      closeSync(fd);
      closeSync(nul);
    }
  });

  test('one slow write holds sync writes off, doubling while they stay slow, reset by a fast one', () => {
    let now = 0;
    const g = new SyncWriteGuard(1, 100, 350, () => now);
    expect(g.allowed()).toBe(true);
    g.record(0.01);
    expect(g.allowed()).toBe(true);
    g.record(5);
    expect(g.allowed()).toBe(false);
    now = 99;
    expect(g.allowed()).toBe(false);
    now = 100;
    expect(g.allowed()).toBe(true);
    g.record(5); // slow again: 100 ms more, next hold 200
    expect(g.allowed()).toBe(false);
    now = 200;
    g.record(5);
    now = 399;
    expect(g.allowed()).toBe(false);
    now = 400;
    g.record(5); // capped at 350
    now = 749;
    expect(g.allowed()).toBe(false);
    now = 750;
    g.record(0.1); // fast: back to normal
    expect(g.allowed()).toBe(true);
    g.record(5);
    now = 850;
    expect(g.allowed()).toBe(true); // hold reset to 100
    expect(g.trips).toBe(5);
  });

  test('a slow write that never slept (only preempted) does not trip it', () => {
    const g = new SyncWriteGuard(1, 100, 350, () => 0);
    g.record(50, false);
    expect(g.allowed()).toBe(true);
    expect(g.trips).toBe(0);
    g.record(50, true);
    expect(g.allowed()).toBe(false);
  });
});
