import { afterEach, describe, expect, it, vi } from 'vitest';
import { BUSY_WINDOW_MS, DataPathFirst } from '../../src/daemon/data-path-first.js';

/**
 * The pacing of callers' KMS calls while the volume data path is busy, on a
 * clock the test moves (vitest's fake timers drive both the gate's timer and
 * its `now`). The daemon-level behaviour (FUSE I/O beside a KMS flood, both
 * answered) is test/e2e/data-path-first.test.ts.
 */
describe('DataPathFirst', () => {
  afterEach(() => { vi.useRealTimers(); });

  /** `io()`: a FUSE request arrives; `running(n)`: n requests run now. */
  function setup(rate: number): { gate: DataPathFirst; io: () => void; running: (n: number) => void; order: string[]; call: (source: string, tag: string) => void } {
    vi.useFakeTimers();
    let requests = 0;
    let inFlight = 0;
    const gate = new DataPathFirst({ requests: () => requests, inFlight: () => inFlight, ratePerSecond: rate, now: () => Date.now() });
    const order: string[] = [];
    const call = (source: string, tag: string): void => {
      const w = gate.admit(source);
      if (w === undefined) order.push(tag);
      else void w.then(() => order.push(tag));
    };
    return { gate, io: () => { requests++; }, running: (n) => { inFlight = n; }, order, call };
  }

  it('with the data path idle every call goes at once, without a promise', () => {
    const { gate, order, call } = setup(1000);
    for (let i = 0; i < 100; i++) call('a', `a${i}`);
    expect(order).toHaveLength(100);
    expect(gate.held).toBe(0);
  });

  it('while FUSE requests arrive, calls pass at the rate: a tick\'s worth (10 ms) at once', async () => {
    const { gate, io, running, order, call } = setup(1000);
    io();
    gate.busy(); // the count is seen to move
    io();
    running(4);
    for (let i = 0; i < 40; i++) call('a', `a${i}`);
    // The burst: one tick's worth, 10 calls at 1,000/s; the other 30 wait.
    expect(order).toHaveLength(10);
    expect(gate.held).toBe(30);
    expect(gate.waitingCalls).toBe(30);
    for (let tick = 1; tick <= 3; tick++) {
      for (let ms = 0; ms < 10; ms++) { io(); await vi.advanceTimersByTimeAsync(1); } // the data path stays busy
      expect(order).toHaveLength(10 + 10 * tick);
    }
    expect(gate.waitingCalls).toBe(0);
  });

  it('a FUSE request running holds calls without new ones arriving (a deep queue, a slow backing file)', async () => {
    const { gate, running, order, call } = setup(100);
    running(1);
    for (let i = 0; i < 5; i++) call('a', `a${i}`);
    expect(order).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(BUSY_WINDOW_MS * 3);
    expect(order).toHaveLength(4);
    running(0);
    await vi.advanceTimersByTimeAsync(BUSY_WINDOW_MS);
    expect(order).toHaveLength(5);
  });

  it('requests counted long before, none running: idle (a change seen late is not taken for a recent one)', async () => {
    const { gate, io, order, call } = setup(100);
    gate.busy();
    io(); io();
    await vi.advanceTimersByTimeAsync(BUSY_WINDOW_MS * 5);
    for (let i = 0; i < 5; i++) call('a', `a${i}`);
    expect(order).toHaveLength(5);
    expect(gate.held).toBe(0);
  });

  it('once no FUSE request came for BUSY_WINDOW_MS, every waiting call goes', async () => {
    const { gate, io, order, call } = setup(100);
    io(); gate.busy(); io();
    for (let i = 0; i < 50; i++) call('a', `a${i}`);
    expect(order.length).toBeLessThan(50);
    await vi.advanceTimersByTimeAsync(BUSY_WINDOW_MS + 2);
    expect(order).toHaveLength(50);
    expect(gate.waitingCalls).toBe(0);
  });

  it('turns go to the sources in rotation: one source\'s queue does not hold back another\'s call', async () => {
    const { gate, io, running, order, call } = setup(100); // one call a tick
    io(); gate.busy(); io(); running(2);
    call('flood', 'burst');
    for (let i = 0; i < 100; i++) call('flood', `f${i}`);
    call('other', 'o0');
    for (let ms = 0; ms < 20; ms++) { io(); await vi.advanceTimersByTimeAsync(1); }
    // After the burst: flood's first waiting call, then other's, not behind 100 of flood's.
    expect(order).toEqual(['burst', 'f0', 'o0']);
    gate.close();
    await vi.advanceTimersByTimeAsync(0);
    expect(order).toHaveLength(102);
  });

  it('rate 0 never holds a call', () => {
    const { gate, io, order, call } = setup(0);
    io(); gate.busy(); io();
    for (let i = 0; i < 1000; i++) call('a', `a${i}`);
    expect(order).toHaveLength(1000);
    expect(gate.held).toBe(0);
  });

  it('refuses a rate that is not a whole number >= 0', () => {
    expect(() => new DataPathFirst({ requests: () => 0, inFlight: () => 0, ratePerSecond: -1 })).toThrow(/whole number/);
    expect(() => new DataPathFirst({ requests: () => 0, inFlight: () => 0, ratePerSecond: 1.5 })).toThrow(/whole number/);
  });
});
