/**
 * The native addon itself. This file must not skip: the test suite runs after
 * `npm run build:native` (scripts/setup.sh), and a missing addon is a failure.
 */
import { createServer, connect, type Socket } from 'node:net';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { isNativeAvailable, nativeAddon, nativeLoadError, peerCred, requireNative } from '../../src/native/addon.js';
import { randomKey } from './xts-suite.js';
import { printSeedOnFailure } from './seeded.js';

describe('native addon', () => {
  printSeedOnFailure();
  it('is built and loads (run `npm run build:native` if this fails)', () => {
    expect(nativeLoadError?.message ?? null).toBeNull();
    expect(isNativeAvailable()).toBe(true);
    expect(nativeAddon).not.toBeNull();
  });

  it('runs XTS on libgcrypt (the system library it was built against)', () => {
    expect(requireNative().cipherLibrary).toMatch(/^libgcrypt 1\.\d+\.\d+/);
    const header = readFileSync('/usr/include/gcrypt.h', 'latin1').match(/#define GCRYPT_VERSION "([^"]+)"/);
    expect(header).not.toBeNull();
    expect(requireNative().cipherLibrary).toBe(`libgcrypt ${header![1]}`);
  });

  describe('argument checks in C (the JS wrapper normally catches these first)', () => {
    const n = () => requireNative();
    const code = (fn: () => unknown): string | undefined => {
      try {
        fn();
      } catch (e) {
        return (e as { code?: string }).code;
      }
      return undefined;
    };
    it('createContext: key length, weak key, type', () => {
      expect(code(() => n().createContext(Buffer.alloc(32)))).toBe('XTS_BAD_KEY_LENGTH');
      expect(code(() => n().createContext(Buffer.alloc(64)))).toBe('XTS_WEAK_KEY');
      expect(code(() => n().createContext('k' as unknown as Uint8Array))).toBe('ERR_ARG_TYPE');
    });
    it('runs: ctx, data, tweak, unit, step, overflow, destroyed', () => {
      const ctx = n().createContext(randomKey());
      const b = Buffer.alloc(8192);
      expect(code(() => n().encryptSync({} as never, b, 0n, 4096, 8))).toBe('ERR_ARG_TYPE');
      expect(code(() => n().encryptSync(ctx, new Uint16Array(4) as never, 0n, 4096, 8))).toBe('ERR_ARG_TYPE');
      expect(code(() => n().encryptSync(ctx, b, 0 as never, 4096, 8))).toBe('ERR_ARG_TYPE');
      expect(code(() => n().encryptSync(ctx, b, -1n, 4096, 8))).toBe('XTS_TWEAK_OVERFLOW');
      expect(code(() => n().encryptSync(ctx, b, 2n ** 64n, 4096, 8))).toBe('XTS_TWEAK_OVERFLOW');
      expect(code(() => n().encryptSync(ctx, b, 2n ** 64n - 8n, 4096, 8))).toBe('XTS_TWEAK_OVERFLOW');
      expect(code(() => n().encryptSync(ctx, b, 0n, 4100, 8))).toBe('XTS_BAD_UNIT_SIZE');
      expect(code(() => n().encryptSync(ctx, b, 0n, 8, 8))).toBe('ERR_ARG_RANGE');
      expect(code(() => n().encryptSync(ctx, b.subarray(1), 0n, 4096, 8))).toBe('XTS_PARTIAL_UNIT');
      expect(code(() => n().encryptSync(ctx, b, 0n, 4096, -1))).toBe('ERR_ARG_RANGE');
      expect(code(() => n().encryptSync(ctx, b, 0n, 4096, 8))).toBeUndefined();
      n().destroyContext(ctx);
      n().destroyContext(ctx);
      expect(code(() => n().encryptSync(ctx, b, 0n, 4096, 8))).toBe('XTS_DESTROYED');
      expect(code(() => n().encrypt(ctx, b, 0n, 4096, 8))).toBe('XTS_DESTROYED');
    });
  });

  it('async runs keep their buffer alive until done, even if JS drops it (GC during the run)', async () => {
    // The test config does not pass --expose-gc; turning the flag on at run time
    // and reading `gc` from a fresh context gives the same full collection.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    expect(typeof gc).toBe('function');
    const n = requireNative();
    const ctx = n.createContext(randomKey());
    const RUNS = 16, SIZE = 1 << 20;
    const expected = Array.from({ length: RUNS }, (_, i) => {
      const b = Buffer.alloc(SIZE, i);
      n.encryptSync(ctx, b, BigInt(i) * 8n, 4096, 8);
      return b;
    });
    const freed = new Set<number>();
    const registry = new FinalizationRegistry<number>((i) => freed.add(i));
    const refs: WeakRef<Buffer>[] = [];
    // Each run's buffer is reachable from JS only through a WeakRef: the addon's
    // own reference is all that keeps it alive while the run is in flight.
    const runs = ((): Promise<boolean>[] => {
      const out: Promise<boolean>[] = [];
      for (let i = 0; i < RUNS; i++) {
        const b = Buffer.alloc(SIZE, i);
        refs.push(new WeakRef(b));
        registry.register(b, i);
        out.push(n.encrypt(ctx, b, BigInt(i) * 8n, 4096, 8).then(() => refs[i]!.deref()?.equals(expected[i]!) ?? false));
      }
      return out;
    })();
    await new Promise((r) => setImmediate(r)); // leave the job that created the WeakRefs (they hold their targets until it ends)
    gc();
    expect(freed.size).toBe(0);
    expect(await Promise.all(runs)).toEqual(Array(RUNS).fill(true)); // alive through gc, and holding the right ciphertext
    n.destroyContext(ctx);
    // Once done, the addon lets go: every buffer is collected (poll; finalizers run as later tasks).
    for (let i = 0; i < 100 && freed.size < RUNS; i++) {
      gc();
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(freed.size).toBe(RUNS);
  });

  it('an async run really leaves the event loop free', async () => {
    const n = requireNative();
    const ctx = n.createContext(randomKey());
    const big = Buffer.alloc(32 << 20);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 0);
    await n.encrypt(ctx, big, 0n, 4096, 8);
    clearInterval(timer);
    n.destroyContext(ctx);
    expect(ticks).toBeGreaterThan(0);
  });

  describe('peerCred', () => {
    it('reports this process as the peer of a Unix socket it connected', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'ebsd-peercred-'));
      const path = join(dir, 's.sock');
      const server = createServer();
      try {
        const accepted = new Promise<Socket>((res) => server.once('connection', res));
        await new Promise<void>((res) => server.listen(path, res));
        const client = connect(path);
        await new Promise<void>((res) => client.once('connect', () => res()));
        const s = await accepted;
        const fd = (s as unknown as { _handle: { fd: number } })._handle.fd;
        expect(fd).toBeGreaterThanOrEqual(0);
        const cred = peerCred(fd);
        expect(cred).toEqual({ pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
        client.destroy();
        s.destroy();
      } finally {
        await new Promise<void>((res) => server.close(() => res()));
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('throws ERR_PEERCRED with errno on a non-socket, ERR_ARG_* on bad fds', () => {
      let err: { code?: string; errno?: number; syscall?: string } | undefined;
      try {
        peerCred(0 + 1_000_000); // EBADF
      } catch (e) {
        err = e as typeof err;
      }
      expect(err?.code).toBe('ERR_PEERCRED');
      expect(err?.errno).toBe(9); // EBADF
      expect(err?.syscall).toBe('getsockopt');
      expect(() => peerCred(-1)).toThrow(expect.objectContaining({ code: 'ERR_ARG_RANGE' }));
      expect(() => peerCred('3' as unknown as number)).toThrow(expect.objectContaining({ code: 'ERR_ARG_TYPE' }));
    });
  });
});
