import { afterEach, describe, expect, it, vi } from 'vitest';
import { BUSY_WINDOW_MS, DataPathFirst, STUCK_MS } from '../../src/daemon/data-path-first.js';

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

  it('a FUSE request running holds calls though no new one arrives (a slow backing file)', async () => {
    const { gate, io, running, order, call } = setup(100);
    io(); running(1);
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

  it('a tick that runs late (a saturated loop) with no request running at that instant still finds the data path busy', async () => {
    // Write-behind answers a write at once: between requests nothing runs. Requests arrive every ms.
    const { gate, io, order, call } = setup(100);
    io(); gate.busy(); io();
    for (let i = 0; i < 50; i++) call('a', `a${i}`);
    expect(order).toHaveLength(1);
    // The loop is held: the tick due at 10 ms runs at 25 ms; requests arrived meanwhile (none runs when it does).
    await vi.advanceTimersByTimeAsync(9);
    io();
    vi.setSystemTime(Date.now() + 15);
    await vi.advanceTimersByTimeAsync(1);
    expect(order.length).toBeLessThanOrEqual(3); // the burst and a tick's worth, not all 50
    expect(gate.waitingCalls).toBeGreaterThan(40);
    gate.close();
  });

  it('a request stuck in flight (requests no longer moving) paces callers for STUCK_MS at most', async () => {
    const { gate, io, running, order, call } = setup(100);
    io(); gate.busy(); io(); running(1);
    for (let i = 0; i < 300; i++) call('a', `a${i}`);
    await vi.advanceTimersByTimeAsync(STUCK_MS / 2);
    expect(order.length).toBeLessThan(100);
    await vi.advanceTimersByTimeAsync(STUCK_MS);
    expect(order).toHaveLength(300);
  });

  it('after close every call goes at once, and no timer is left', async () => {
    const { gate, io, running, order, call } = setup(100);
    io(); gate.busy(); io(); running(1);
    call('a', 'a0'); call('a', 'a1'); call('b', 'b0');
    gate.close();
    await vi.advanceTimersByTimeAsync(0);
    expect(order).toHaveLength(3);
    io(); call('a', 'late');
    expect(order).toHaveLength(4);
    expect(vi.getTimerCount()).toBe(0);
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
