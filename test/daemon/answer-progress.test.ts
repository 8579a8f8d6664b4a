/**
 * The idle rule on answers (src/daemon/answer-writer.ts): while a connection owes answer bytes, the kernel
 * must take ANSWER_SLICE_BYTES of them (or all that is left) in each idle period, or the connection is cut.
 * Time is vitest's fake timers; the kernel's progress is told as the transport tells it (`took`).
 * transport-slow-clients and transport-unread-answers test the same on real sockets.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ANSWER_SLICE_BYTES, AnswerProgress } from '../../src/daemon/answer-writer.js';

const IDLE = 30_000;
const BLOCK = 512 * 1024;

describe('AnswerProgress', () => {
  let cut = 0;
  let p: AnswerProgress;
  beforeEach(() => {
    vi.useFakeTimers();
    cut = 0;
    p = new AnswerProgress(IDLE, () => cut++);
  });
  afterEach(() => vi.useRealTimers());

  it('nothing owed: never cut, however long', () => {
    vi.advanceTimersByTime(10 * IDLE);
    expect(cut).toBe(0);
  });

  it('an answer nothing of which is taken: cut after one idle period, not before', () => {
    p.owe(BLOCK);
    vi.advanceTimersByTime(IDLE - 1);
    expect(cut).toBe(0);
    vi.advanceTimersByTime(1);
    expect(cut).toBe(1);
  });

  it('a slice taken in each period: kept for as long as it takes (here 32 periods for a 512 KiB block), then stopped', () => {
    p.owe(BLOCK);
    for (let i = 0; i < BLOCK / ANSWER_SLICE_BYTES; i++) {
      vi.advanceTimersByTime(IDLE - 1);
      p.took(ANSWER_SLICE_BYTES);
    }
    expect(p.owing).toBe(false);
    vi.advanceTimersByTime(10 * IDLE);
    expect(cut).toBe(0);
  });

  it('a trickle, less than a slice per period (1 KiB every 29 s): cut within the second period', () => {
    p.owe(BLOCK);
    for (let i = 0; i < 4 && cut === 0; i++) {
      vi.advanceTimersByTime(29_000);
      p.took(1024);
    }
    // 1 KiB per 29 s: 16 KiB would take 8 minutes; the first period ends with 1 KiB taken, and it is cut then.
    expect(cut).toBe(1);
  });

  it('the rest of what is owed, less than a slice, counts as progress: a small last piece is not held to a whole slice', () => {
    p.owe(ANSWER_SLICE_BYTES + 100);
    vi.advanceTimersByTime(IDLE - 1);
    p.took(ANSWER_SLICE_BYTES);
    vi.advanceTimersByTime(IDLE - 1);
    p.took(100);
    expect(p.owing).toBe(false);
    vi.advanceTimersByTime(10 * IDLE);
    expect(cut).toBe(0);
  });

  it('owing again after a pause: a new period starts with the new answer', () => {
    p.owe(100);
    p.took(100);
    vi.advanceTimersByTime(5 * IDLE);
    p.owe(BLOCK);
    vi.advanceTimersByTime(IDLE - 1);
    expect(cut).toBe(0);
    vi.advanceTimersByTime(1);
    expect(cut).toBe(1);
  });

  it('closed (its connection gone): no timer left, nothing owed from then on', () => {
    p.owe(BLOCK);
    p.close();
    p.owe(BLOCK);
    expect(p.owing).toBe(false);
    vi.advanceTimersByTime(10 * IDLE);
    expect(cut).toBe(0);
  });
});
