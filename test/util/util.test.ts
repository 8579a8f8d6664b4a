import { describe, test, expect } from 'vitest';
import { mkdtempSync, readFileSync, readdirSync, statSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { atomicWrite, atomicWriteSync } from '../../src/util/atomic-write.js';
import { createLogger } from '../../src/util/logger.js';
import { EbsdError, ArgTypeError, ArgRangeError, checkBytes, checkSafeInt } from '../../src/util/errors.js';
import { KeyedMutex } from '../../src/util/lock.js';
import { isLoopback } from '../../src/util/loopback.js';
import { wipe } from '../../src/util/wipe.js';

describe('atomicWrite', () => {
  test('replaces content, leaves no temp file, mode 0600', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ebsd-aw-'));
    try {
      const p = join(dir, 'state.json');
      writeFileSync(p, 'old');
      await atomicWrite(p, 'new');
      expect(readFileSync(p, 'utf8')).toBe('new');
      expect(readdirSync(dir)).toEqual(['state.json']);
      await atomicWrite(join(dir, 'fresh'), Buffer.from([1, 2, 3]));
      expect(statSync(join(dir, 'fresh')).mode & 0o777).toBe(0o600);
      atomicWriteSync(p, 'sync');
      expect(readFileSync(p, 'utf8')).toBe('sync');
      expect(readdirSync(dir).sort()).toEqual(['fresh', 'state.json']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a failed write leaves the old content and no temp file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ebsd-aw-'));
    try {
      const p = join(dir, 'x');
      writeFileSync(p, 'old');
      // renaming a file over a non-empty directory fails: the target must survive
      const sub = join(dir, 'sub');
      await import('node:fs').then((fs) => { fs.mkdirSync(sub); fs.writeFileSync(join(sub, 'f'), ''); });
      await expect(atomicWrite(sub, 'zzz')).rejects.toThrow();
      expect(readFileSync(p, 'utf8')).toBe('old');
      expect(readdirSync(dir).sort()).toEqual(['sub', 'x']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('logger', () => {
  test('redacts secret-named fields at any of the listed depths', () => {
    const lines: string[] = [];
    const sink = new Writable({ write(chunk, _enc, cb) { lines.push(String(chunk)); cb(); } });
    const log = createLogger({ destination: sink, level: 'info' });
    const secret = 'deadbeefcafebabe00112233445566778899';
    log.info({ key: secret, volume: 'vol-1', req: { Plaintext: secret }, a: { b: { ciphertext: secret } } }, 'hello');
    const out = lines.join('');
    expect(out).toContain('vol-1');
    expect(out).toContain('[redacted]');
    expect(out).not.toContain(secret);
  });
});

describe('errors', () => {
  test('EbsdError carries a stable code and AWS name', () => {
    const e = new EbsdError('KMS_NOT_FOUND', 'Key not found', { awsName: 'NotFoundException' });
    expect(e).toBeInstanceOf(Error);
    expect(e.code).toBe('KMS_NOT_FOUND');
    expect(e.awsName).toBe('NotFoundException');
    expect(e.toJSON()).toEqual({ code: 'KMS_NOT_FOUND', awsName: 'NotFoundException', message: 'Key not found' });
  });
  test('argument checkers name the argument', () => {
    expect(() => checkBytes('key', 'nope')).toThrow(ArgTypeError);
    expect(() => checkBytes('key', new Uint8Array(3), 64)).toThrow(/key must be 64 bytes, got 3/);
    expect(() => checkSafeInt('offset', -1)).toThrow(ArgRangeError);
    expect(() => checkSafeInt('offset', 1.5)).toThrow(/offset must be an integer/);
  });
});

describe('KeyedMutex', () => {
  test('serialises work per key, not across keys', async () => {
    const m = new KeyedMutex();
    const order: string[] = [];
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    await Promise.all([
      m.run(1, async () => { order.push('a1'); await sleep(20); order.push('a2'); }),
      m.run(1, async () => { order.push('b1'); order.push('b2'); }),
      m.run(2, async () => { order.push('c'); }),
    ]);
    expect(order.indexOf('b1')).toBeGreaterThan(order.indexOf('a2'));
    expect(order.indexOf('c')).toBeLessThan(order.indexOf('a2'));
    expect(m.size).toBe(0);
  });
});

test('wipe zeroes every buffer it is given', () => {
  const a = Buffer.from('secret'), b = new Uint8Array([1, 2, 3]);
  wipe(a, undefined, b);
  expect([...a, ...b].every((x) => x === 0)).toBe(true);
});

describe('isLoopback', () => {
  test('127/8, ::1 and localhost, bracketed as a URL hostname keeps them; IPv4-mapped only when the IPv4 part is 127/8', () => {
    const hostname = (u: string) => new URL(u).hostname;
    for (const h of ['localhost', '127.0.0.1', '127.255.0.9', '::1', '[::1]', '::ffff:127.0.0.1', '[::ffff:127.1.2.3]', hostname('http://[::ffff:127.0.0.1]/'), '[::ffff:7fff:ffff]', '::ffff:7f00:1']) {
      expect([h, isLoopback(h)]).toEqual([h, true]);
    }
    // ::ffff:7f:1 is 0.127.0.1; ::ffff:7f0:1 is 7.240.0.1.
    for (const h of ['[::ffff:7f:1]', '::ffff:7f:1', '[::ffff:7f0:1]', hostname('http://[::ffff:0.127.0.1]/'), '[::ffff:10.0.0.1]', '10.0.0.1', '0.127.0.1', '[::2]', '::', 'example.com', '[::ffff:7f00:1', '128.0.0.1']) {
      expect([h, isLoopback(h)]).toEqual([h, false]);
    }
  });
});
