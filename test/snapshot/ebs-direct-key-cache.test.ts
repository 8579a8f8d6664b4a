import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { XtsContext, XtsEngine } from '../../src/crypto/xts.js';
import { selectXtsEngine } from '../../src/crypto/xts-engine.js';
import { SnapshotKeyCache, type KeyCacheTimer } from '../../src/snapshot/ebs-direct-key-cache.js';
import { SnapshotThrottle } from '../../src/snapshot/ebs-direct-throttle.js';
import { EbsDirectError } from '../../src/snapshot/ebs-direct-errors.js';

/**
 * The EBS direct APIs' data-key cache and per-snapshot rate, with time as an
 * input (a timer the test fires, a clock it sets). The XTS engine is the real
 * one, wrapped to count the contexts made and destroyed.
 */
function countingEngine(): { engine: XtsEngine; made: number; live: Set<XtsContext>; keys: Uint8Array[] } {
  const real = selectXtsEngine('auto');
  const s = { made: 0, live: new Set<XtsContext>(), keys: [] as Uint8Array[] };
  const engine = {
    ...real,
    createContext(key: Uint8Array): XtsContext {
      s.made++;
      s.keys.push(key);
      const ctx = real.createContext(key);
      s.live.add(ctx);
      return { ...ctx, engine: ctx.engine, encryptSync: ctx.encryptSync.bind(ctx), decryptSync: ctx.decryptSync.bind(ctx), encrypt: ctx.encrypt.bind(ctx), decrypt: ctx.decrypt.bind(ctx), destroy: () => { s.live.delete(ctx); ctx.destroy(); } } as XtsContext;
    },
  } as XtsEngine;
  return Object.assign(s, { engine });
}

function manualTimers(): { schedule: (fn: () => void, ms: number) => KeyCacheTimer; fireAll: () => void; pending: () => number } {
  const timers = new Set<{ fn: () => void; ms: number }>();
  return {
    schedule: (fn, ms) => {
      const t = { fn, ms };
      timers.add(t);
      return { cancel: () => timers.delete(t) };
    },
    fireAll: () => { for (const t of [...timers]) { timers.delete(t); t.fn(); } },
    pending: () => timers.size,
  };
}

const key = (): Uint8Array => new Uint8Array(randomBytes(64));

describe('SnapshotKeyCache', () => {
  it('Postcondition: concurrent first uses of one id unwrap once; the plaintext key is wiped once the context holds it', async () => {
    const e = countingEngine();
    const t = manualTimers();
    const cache = new SnapshotKeyCache({ xts: e.engine, ttlMs: 60_000, schedule: t.schedule });
    let unwraps = 0;
    const unwrap = async (): Promise<Uint8Array> => { unwraps++; return key(); };
    const data = randomBytes(4096);
    const out = await Promise.all(Array.from({ length: 8 }, () => cache.use('caller|snap', unwrap, (x) => { const d = Buffer.from(data); x.encryptSync(d, 0, { unitSize: 4096, tweakStep: 8 }); return d; })));
    expect(unwraps).toBe(1);
    expect(e.made).toBe(1);
    for (const d of out) expect(d.equals(out[0]!)).toBe(true);
    expect(out[0]!.equals(data)).toBe(false);
    expect(e.keys[0]!.every((b) => b === 0)).toBe(true);
    // Another caller (another id) unwraps for itself.
    await cache.use('other|snap', unwrap, () => undefined);
    expect(unwraps).toBe(2);
    cache.close();
    expect(e.live.size).toBe(0);
  });

  it('Postcondition: past the TTL (the timer fires) the context is destroyed and the next use asks KMS again', async () => {
    const e = countingEngine();
    const t = manualTimers();
    const cache = new SnapshotKeyCache({ xts: e.engine, ttlMs: 60_000, schedule: t.schedule });
    let unwraps = 0;
    const unwrap = async (): Promise<Uint8Array> => { unwraps++; return key(); };
    await cache.use('a', unwrap, () => undefined);
    await cache.use('a', unwrap, () => undefined);
    expect(unwraps).toBe(1);
    expect(t.pending()).toBe(1);
    t.fireAll();
    expect(e.live.size).toBe(0);
    expect(cache.size).toBe(0);
    await cache.use('a', unwrap, () => undefined);
    expect(unwraps).toBe(2);
    cache.close();
  });

  it('Postcondition: a context dropped while a call uses it is destroyed when that call ends, not before', async () => {
    const e = countingEngine();
    const t = manualTimers();
    const cache = new SnapshotKeyCache({ xts: e.engine, ttlMs: 60_000, schedule: t.schedule });
    let release!: () => void;
    const held = cache.use('a', async () => key(), () => new Promise<void>((r) => { release = r; }));
    for (let i = 0; i < 100 && !release; i++) await new Promise((r) => setImmediate(r));
    cache.close();
    expect(e.live.size).toBe(1);
    release();
    await held;
    expect(e.live.size).toBe(0);
    await expect(cache.use('a', async () => key(), () => undefined)).rejects.toThrow(/closed/);
  });

  it('Postcondition: bounded: past `max` entries the least recently used goes; a failed unwrap caches nothing; TTL 0 keeps nothing', async () => {
    const e = countingEngine();
    const t = manualTimers();
    const cache = new SnapshotKeyCache({ xts: e.engine, ttlMs: 60_000, max: 2, schedule: t.schedule });
    const unwraps: string[] = [];
    const unwrapAs = (id: string) => async (): Promise<Uint8Array> => { unwraps.push(id); return key(); };
    await cache.use('a', unwrapAs('a'), () => undefined);
    await cache.use('b', unwrapAs('b'), () => undefined);
    await cache.use('a', unwrapAs('a'), () => undefined); // a is now the most recent
    await cache.use('c', unwrapAs('c'), () => undefined); // b goes
    expect(cache.size).toBe(2);
    expect(e.live.size).toBe(2);
    await cache.use('a', unwrapAs('a'), () => undefined);
    await cache.use('b', unwrapAs('b'), () => undefined);
    expect(unwraps).toEqual(['a', 'b', 'c', 'b']);

    const refusal = Object.assign(new Error('key is disabled'), { awsName: 'DisabledException' });
    await expect(cache.use('d', async () => { throw refusal; }, () => undefined)).rejects.toBe(refusal);
    let asked = 0;
    await cache.use('d', async () => { asked++; return key(); }, () => undefined);
    expect(asked).toBe(1);
    cache.close();
    expect(e.live.size).toBe(0);

    const none = new SnapshotKeyCache({ xts: e.engine, ttlMs: 0, schedule: t.schedule });
    let n = 0;
    await none.use('a', async () => { n++; return key(); }, () => undefined);
    await none.use('a', async () => { n++; return key(); }, () => undefined);
    expect(n).toBe(2);
    expect(e.live.size).toBe(0);
  });
});

describe('SnapshotThrottle', () => {
  it('a full bucket holds one second of requests per snapshot and operation, refills with time, and refuses with RESOURCE_LEVEL_THROTTLE', () => {
    let now = 1_000_000;
    const th = new SnapshotThrottle(3, () => now);
    for (let i = 0; i < 3; i++) th.take('GetSnapshotBlock', 'snap-a');
    let e: unknown;
    try { th.take('GetSnapshotBlock', 'snap-a'); } catch (x) { e = x; }
    expect(e).toBeInstanceOf(EbsDirectError);
    expect((e as EbsDirectError).awsName).toBe('RequestThrottledException');
    expect((e as EbsDirectError).httpStatus).toBe(400);
    expect((e as EbsDirectError).reason).toBe('RESOURCE_LEVEL_THROTTLE');
    expect((e as Error).message).toMatch(/GetSnapshotBlock on snap-a/);
    // Another snapshot, another operation: their own buckets.
    th.take('GetSnapshotBlock', 'snap-b');
    th.take('PutSnapshotBlock', 'snap-a');
    // A third of a second gives one token back, no more.
    now += 334;
    th.take('GetSnapshotBlock', 'snap-a');
    expect(() => th.take('GetSnapshotBlock', 'snap-a')).toThrow(EbsDirectError);
    // Idle for long: full again, never more than the rate.
    now += 60_000;
    for (let i = 0; i < 3; i++) th.take('GetSnapshotBlock', 'snap-a');
    expect(() => th.take('GetSnapshotBlock', 'snap-a')).toThrow(EbsDirectError);
    expect(() => new SnapshotThrottle(0)).toThrow(RangeError);
  });
});
