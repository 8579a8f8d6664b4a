import { describe, expect, it } from 'vitest';
import { SharedRead } from '../../src/util/shared-read.js';

/** One read for every caller for a while (src/util/shared-read.ts): time is an injected clock, never slept on. */
describe('SharedRead', () => {
  const setup = () => {
    let t = 1_000;
    let reads = 0;
    const pending: { ok: (v: number) => void; fail: (e: Error) => void }[] = [];
    const r = new SharedRead(() => { reads++; return new Promise<number>((ok, fail) => { pending.push({ ok, fail }); }); }, 1_000, () => t);
    return { r, reads: () => reads, end: (v: number) => pending.shift()!.ok(v), fail: (e: Error) => pending.shift()!.fail(e), at: (ms: number) => { t = ms; } };
  };

  it('callers while a read runs share it; within reuseMs after it ended they get its answer; after that a new read', async () => {
    const s = setup();
    const a = s.r.get();
    const b = s.r.get();
    expect(s.reads()).toBe(1);
    s.end(7);
    expect(await a).toBe(7);
    expect(await b).toBe(7);
    s.at(1_999);
    expect(await s.r.get()).toBe(7);
    expect(s.reads()).toBe(1);
    s.at(2_000);
    const c = s.r.get();
    expect(s.reads()).toBe(2);
    s.end(8);
    expect(await c).toBe(8);
  });

  it('a failed read is not kept: the next caller reads again', async () => {
    const s = setup();
    const a = s.r.get();
    s.fail(new Error('sysfs gone'));
    await expect(a).rejects.toThrow('sysfs gone');
    const b = s.r.get();
    expect(s.reads()).toBe(2);
    s.end(1);
    expect(await b).toBe(1);
  });

  it('refuses a reuseMs that is not a finite number >= 0, naming it', () => {
    expect(() => new SharedRead(async () => 1, -1)).toThrow(RangeError);
    expect(() => new SharedRead(async () => 1, Number.NaN)).toThrow('reuseMs must be a finite number >= 0, got NaN');
  });
});
