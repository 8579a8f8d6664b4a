import { describe, expect, it } from 'vitest';
import { ConnectionGuard, ConnectionThrottledError, callerKey, type RefusalSummary } from '../../src/daemon/connection-guard.js';
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

describe('IPv6 callers are counted by /64', () => {
  it('callerKey: uids and IPv4 as they are; IPv6 in any spelling as its /64; not an address: as it is', () => {
    expect(callerKey(1000)).toBe('1000');
    expect(callerKey('192.0.2.7')).toBe('192.0.2.7');
    expect(callerKey('2001:db8:1:2::7')).toBe('2001:db8:1:2::/64');
    expect(callerKey('2001:0DB8:0001:0002:aaaa:bbbb:cccc:dddd')).toBe('2001:db8:1:2::/64');
    expect(callerKey('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(callerKey('::1')).toBe('0:0:0:0::/64');
    expect(callerKey('fe80::1%eth0')).toBe('fe80::1%eth0'); // link-local: the same /64 on every link, so each address apart
    expect(callerKey('fe80::1%eth1')).toBe('fe80::1%eth1');
    expect(callerKey('64:ff9b::192.0.2.33')).toBe('192.0.2.33'); // NAT64: the IPv4 client behind it
    expect(callerKey('64:ff9b::c000:221')).toBe('192.0.2.33');
    expect(callerKey('::ffff:192.0.2.7')).toBe('192.0.2.7');
    expect(callerKey('unknown')).toBe('unknown');
    expect(callerKey('1:2:3')).toBe('1:2:3'); // not an IPv6 address: counted by its own text
    expect(callerKey('1::2::3')).toBe('1::2::3');
    // A local user on loopback, and a key made already: as they are (the guard is given keys on every request).
    expect(callerKey('uid:0')).toBe('uid:0');
    expect(callerKey('2001:db8:1:2::/64')).toBe('2001:db8:1:2::/64');
    expect(callerKey(callerKey('2001:db8::1'))).toBe(callerKey('2001:db8::1'));
    expect(callerKey('fe80::1%weird:zone')).toBe('fe80::1%weird:zone');
  });

  it('addresses of one /64 share the per-caller caps (connections, buffered bodies); another /64 does not', () => {
    const reports: RefusalSummary[][] = [];
    const g = new ConnectionGuard({ maxPerCaller: 2, maxTotal: 100, maxBufferedBodyBytes: 800, maxBufferedBodyBytesPerCaller: 300 }, { onRefusals: (r) => reports.push(r) });
    expect(g.admit('2001:db8:1:2::a')).not.toBeInstanceOf(ConnectionThrottledError);
    expect(g.admit('2001:db8:1:2::b')).not.toBeInstanceOf(ConnectionThrottledError);
    const third = g.admit('2001:db8:1:2:ffff::c');
    expect(third).toBeInstanceOf(ConnectionThrottledError);
    expect((third as ConnectionThrottledError).message).toContain('caller 2001:db8:1:2::/64 already holds 2 connections');
    expect(g.admit('2001:db8:1:3::a')).not.toBeInstanceOf(ConnectionThrottledError);
    // Bodies: 300 bytes for the whole /64.
    expect(g.reserveBody('2001:db8:1:2::a', 200)).toBe(true);
    expect(g.reserveBody('2001:db8:1:2::d', 200)).toBe(false);
    expect(g.reserveBody('2001:db8:1:3::d', 200)).toBe(true);
    g.releaseBody('2001:db8:1:2::e', 200); // released under another address of the same /64
    expect(g.reserveBody('2001:db8:1:2::d', 300)).toBe(true);
    g.flushRefusals();
    expect(reports.flat().map((r) => `${r.caller} ${r.reason} ${r.count}`).sort()).toEqual([
      '2001:db8:1:2::/64 body-budget 1',
      '2001:db8:1:2::/64 per-caller-limit 1',
    ]);
    // The audit needs an address: each row keeps the first one refused (KmsConnection's sourceIPAddress).
    expect(reports.flat().find((r) => r.reason === 'per-caller-limit')!.sourceAddress).toBe('2001:db8:1:2:ffff::c');
    expect(reports.flat().find((r) => r.reason === 'body-budget')!.sourceAddress).toBe('2001:db8:1:2::d');
  });
});
