import { describe, expect, it } from 'vitest';
import { ConnectionGuard, ConnectionThrottledError, type RefusalSummary } from '../../src/daemon/connection-guard.js';
import { EbsdError } from '../../src/util/errors.js';

describe('ConnectionGuard', () => {
  it('caps connections per caller and overall; the exempt caller (root) is never counted nor refused', () => {
    let t = 1000;
    const reports: RefusalSummary[][] = [];
    const g = new ConnectionGuard({ maxPerCaller: 2, maxTotal: 3 }, { exemptKey: '0', now: () => t, onRefusals: (r) => reports.push(r) });
    const a1 = g.admit(65534);
    const a2 = g.admit(65534);
    expect(a1).not.toBeInstanceOf(ConnectionThrottledError);
    expect(a2).not.toBeInstanceOf(ConnectionThrottledError);
    const a3 = g.admit(65534);
    expect(a3).toBeInstanceOf(ConnectionThrottledError);
    expect((a3 as ConnectionThrottledError).reason).toBe('per-caller-limit');
    expect((a3 as ConnectionThrottledError).awsName).toBe('ThrottlingException');
    expect((a3 as ConnectionThrottledError).httpStatus).toBe(503);
    const b1 = g.admit(1000);
    expect(b1).not.toBeInstanceOf(ConnectionThrottledError);
    t = 2000;
    expect((g.admit(1001) as ConnectionThrottledError).reason).toBe('total-limit');
    // Root gets in whatever the others hold, and is not counted.
    for (let i = 0; i < 100; i++) expect(g.admit(0)).not.toBeInstanceOf(ConnectionThrottledError);
    expect(g.usage()).toMatchObject({ connections: 3, callers: 2 });

    // Released connections make room; releasing twice changes nothing.
    (a1 as { release(): void }).release();
    (a1 as { release(): void }).release();
    expect(g.usage().connections).toBe(2);
    expect(g.admit(65534)).not.toBeInstanceOf(ConnectionThrottledError);

    // Refusals come out in aggregate: one row per (caller, reason) with its count and times.
    for (let i = 0; i < 50; i++) g.admit(65534);
    g.flushRefusals();
    expect(reports).toHaveLength(1);
    const rows = reports[0]!.sort((x, y) => x.caller.localeCompare(y.caller));
    expect(rows).toEqual([
      { caller: '1001', reason: 'total-limit', count: 1, firstTime: 2000, lastTime: 2000 },
      { caller: '65534', reason: 'per-caller-limit', count: 51, firstTime: 1000, lastTime: 2000 },
    ]);
    g.flushRefusals();
    expect(reports).toHaveLength(1); // nothing new, no report
  });

  it('bounds buffered body bytes over all connections, except for the exempt caller', () => {
    const g = new ConnectionGuard({ maxBufferedBodyBytes: 100, maxBufferedBodyBytesPerCaller: 100 }, { exemptKey: '0' });
    expect(g.reserveBody(1000, 60)).toBe(true);
    expect(g.reserveBody(1001, 60)).toBe(false);
    expect(g.reserveBody(0, 60)).toBe(true);
    g.releaseBody(1000, 60);
    g.releaseBody(0, 60);
    expect(g.usage().bufferedBodyBytes).toBe(0);
    expect(g.reserveBody(1001, 60)).toBe(true);
  });

  it('bounds each caller\'s buffered body bytes to its share (default: three eighths of the total), so one caller cannot take the budget', () => {
    const reports: RefusalSummary[][] = [];
    const g = new ConnectionGuard({ maxBufferedBodyBytes: 800 }, { exemptKey: '0', onRefusals: (r) => reports.push(r) });
    // The first caller's reservation past 300 bytes would pass the total but not its share.
    expect(g.reserveBody('10.0.0.1', 300)).toBe(true);
    expect(g.reserveBody('10.0.0.1', 1)).toBe(false);
    expect(g.reserveBody('10.0.0.2', 300)).toBe(true);
    expect(g.reserveBody('10.0.0.3', 200)).toBe(true);
    expect(g.usage().bufferedBodyBytes).toBe(800);
    g.releaseBody('10.0.0.1', 300);
    expect(g.reserveBody('10.0.0.1', 300)).toBe(true); // its share is back
    expect(g.reserveBody(0, 1000)).toBe(true); // the exempt caller: no share, no total
    g.flushRefusals();
    expect(reports.flat()).toEqual([expect.objectContaining({ caller: '10.0.0.1', reason: 'body-budget', count: 1 })]);
    // The default is what the KMS listener runs with: 48 MiB of the 128 MiB, below 128 connections x 1 MiB and
    // above an EBS direct uploader's 64 x 512 KiB.
    const d = new ConnectionGuard();
    expect(d.reserveBody('a', 48 << 20)).toBe(true);
    expect(d.reserveBody('a', 1)).toBe(false);
    expect(d.reserveBody('b', 48 << 20)).toBe(true);
  });

  it('refuses a limit that is not a positive integer with a typed error naming it', () => {
    expect(() => new ConnectionGuard({ maxPerCaller: 0 })).toThrow(EbsdError);
    expect(() => new ConnectionGuard({ maxBodyBytes: 1.5 })).toThrow(/maxBodyBytes/);
  });
});
