/**
 * Durations that feed a timer are at most 2^31-1 ms (src/util/clock.ts,
 * MAX_TIMER_MS): Node fires a longer setTimeout after 1 ms, so a max-stale of
 * 597 h impaired a volume at the first failed refresh and a TTL that long
 * refreshed in a loop. The flags are refused at parse (exit 2, the flag and
 * the limit named); the key cache refuses them too, and caps its own refresh
 * period (4 TTLs with a shared check) at the limit.
 */
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { checkDaemonConfig, keyCacheMaxStaleRaised, MAX_MODIFICATION_WINDOW_MS, MIN_SNAPSHOT_COW_MEMORY, parseByteSize, parseDuration, refusalWindow } from '../../src/daemon/config.js';
import { COW_SECTOR } from '../../src/snapshot/cow-spill.js';
import { MAX_TIMER_MS, type Clock, type TimerHandle } from '../../src/util/clock.js';
import { KeyCache, type KeyCheckMembership } from '../../src/volume/key-cache.js';
import { Env, ensureBuilt } from '../e2e/helpers.js';

const H = 3_600_000;

describe('--refusal-window', () => {
  it('takes 1 s to 10 min in parseDuration\'s forms and refuses the rest, naming the flag', () => {
    expect(refusalWindow('3s')).toBe(3000);
    expect(refusalWindow('10m')).toBe(600_000);
    expect(refusalWindow(1)).toBe(1000);
    expect(() => refusalWindow('500ms')).toThrow(/--refusal-window.*at least 1s/);
    expect(() => refusalWindow('11m')).toThrow(/--refusal-window/);
    expect(() => refusalWindow('soon')).toThrow(/--refusal-window/);
    // A config built in code is held to the same range.
    const base = { stateDir: '/tmp/x', mountDir: '/tmp/m', logLevel: 'info', allowUnencrypted: false };
    expect(() => checkDaemonConfig({ ...base, refusalWindowMs: 0 })).toThrow(/--refusal-window.*from 1s to 10m/);
    expect(() => checkDaemonConfig({ ...base, refusalWindowMs: 2 ** 31 })).toThrow(/--refusal-window/);
    expect(() => checkDaemonConfig({ ...base, refusalWindowMs: 3000 })).not.toThrow();
  });
});

describe('fractions of the unit a flag is kept in', () => {
  it('parseDuration is exact in decimal: whole milliseconds are taken, a fraction of one is refused (it rounded, 0.0001s to 0)', () => {
    expect(parseDuration('0.3s', '--x')).toBe(300);
    expect(parseDuration('1.001s', '--x')).toBe(1001);
    expect(parseDuration('0.5', '--x')).toBe(500);
    expect(parseDuration('1.5m', '--x')).toBe(90_000);
    expect(parseDuration('0', '--key-cache-ttl')).toBe(0);
    for (const v of ['0.0001s', '1.5ms', '0.0000001h', '1.0005']) expect(() => parseDuration(v, '--x')).toThrow(`--x ${v} is not a whole number of milliseconds`);
    expect(() => parseDuration('0', '--stop-timeout', undefined, 1)).toThrow('--stop-timeout 0 is too short: at least 1 ms');
  });

  it('parseByteSize is exact in decimal: a fraction of a byte is refused; limits name the flag and the value', () => {
    expect(parseByteSize('1.5GiB', '--x')).toBe(1.5 * 2 ** 30);
    expect(parseByteSize('0.5KiB', '--x')).toBe(512);
    expect(parseByteSize('4096', '--x')).toBe(4096);
    expect(() => parseByteSize('1.5', '--x')).toThrow('--x 1.5 is not a whole number of bytes (a number without a unit is bytes)');
    expect(() => parseByteSize('1.0001KiB', '--x')).toThrow('--x 1.0001KiB is not a whole number of bytes');
    expect(() => parseByteSize('2K', '--x', 4096)).toThrow('--x 2K is too small: at least 4096 bytes');
    expect(() => parseByteSize('2G', '--x', 0, 2 ** 30, "this host's memory")).toThrow("--x 2G is too large: at most 1073741824 bytes (this host's memory)");
    expect(() => parseByteSize('99999999999999999999T', '--x')).toThrow(/--x 99999999999999999999T is too large/);
  });

  it('--snapshot-cow-memory is at least one copy-on-write slot; a config built in code is held to it', () => {
    expect(MIN_SNAPSHOT_COW_MEMORY).toBe(COW_SECTOR);
    const base = { stateDir: '/tmp/x', mountDir: '/tmp/m', logLevel: 'info', allowUnencrypted: false };
    for (const v of [0, 1.5, 4095, Number.NaN]) expect(() => checkDaemonConfig({ ...base, snapshotCowMemoryBytes: v })).toThrow(/--snapshot-cow-memory must be a whole number of bytes, at least 4096/);
    expect(() => checkDaemonConfig({ ...base, snapshotCowMemoryBytes: 4096 })).not.toThrow();
  });
});

describe('--volume-modification-window', () => {
  it('is a duration from 0 to a year (no timer: compared with start times; longer could not be named as a date); a config built in code is held to it', () => {
    expect(parseDuration('24h', '--volume-modification-window', MAX_MODIFICATION_WINDOW_MS)).toBe(24 * H);
    expect(parseDuration('8760h', '--volume-modification-window', MAX_MODIFICATION_WINDOW_MS)).toBe(8760 * H);
    expect(() => parseDuration('8761h', '--volume-modification-window', MAX_MODIFICATION_WINDOW_MS)).toThrow(/--volume-modification-window .* is too long/);
    expect(() => parseDuration('soon', '--volume-modification-window', MAX_MODIFICATION_WINDOW_MS)).toThrow(/--volume-modification-window/);
    const base = { stateDir: '/tmp/x', mountDir: '/tmp/m', logLevel: 'info', allowUnencrypted: false };
    expect(() => checkDaemonConfig({ ...base, volumeModificationWindowMs: -1 })).toThrow(/--volume-modification-window.*from 0 to/);
    expect(() => checkDaemonConfig({ ...base, volumeModificationWindowMs: 1.5 })).toThrow(/--volume-modification-window/);
    expect(() => checkDaemonConfig({ ...base, volumeModificationWindowMs: 2400000000 * H })).toThrow(/--volume-modification-window.*from 0 to/);
    expect(() => checkDaemonConfig({ ...base, volumeModificationWindowMs: 0 })).not.toThrow();
  });
});

describe('durations that feed a timer', () => {
  it('parseDuration takes up to 2^31-1 ms and refuses more, naming the flag and the limit', () => {
    expect(parseDuration('596h', '--key-cache-max-stale')).toBe(596 * H);
    expect(parseDuration(`${MAX_TIMER_MS}ms`, '--key-cache-ttl')).toBe(MAX_TIMER_MS);
    for (const v of ['597h', `${MAX_TIMER_MS + 1}ms`, '99999999999999999999h', 2_147_484]) {
      expect(() => parseDuration(v, '--key-cache-max-stale')).toThrow(/--key-cache-max-stale .* is too long: at most 2147483647 ms/);
    }
    // A duration that feeds no timer may be longer (the snapshot GC grace is compared with ages).
    expect(parseDuration('1000h', '--snapshot-gc-grace', Number.MAX_SAFE_INTEGER)).toBe(1000 * H);
  });

  it('checkDaemonConfig refuses a key-cache TTL or max-stale past the limit', () => {
    const base = { stateDir: '/x', mountDir: '/y', logLevel: 'info', allowUnencrypted: false };
    expect(() => checkDaemonConfig({ ...base, keyCacheMaxStaleMs: MAX_TIMER_MS })).not.toThrow();
    expect(() => checkDaemonConfig({ ...base, keyCacheMaxStaleMs: MAX_TIMER_MS + 1 })).toThrow(/keyCacheMaxStaleMs.*at most 2147483647 ms/);
    expect(() => checkDaemonConfig({ ...base, keyCacheTtlMs: 600 * H })).toThrow(/keyCacheTtlMs.*at most/);
  });

  it('ebsd daemon --key-cache-max-stale 597h / --key-cache-ttl 600h: exit 2 before anything starts', () => {
    ensureBuilt();
    for (const [flag, v] of [['--key-cache-max-stale', '597h'], ['--key-cache-ttl', '600h']]) {
      const r = spawnSync(process.execPath, ['dist/cli/main.js', 'daemon', flag!, v!, '--state-dir', '/nonexistent/ebsd-duration-test'], { encoding: 'utf8', timeout: 30_000 });
      expect(r.status, r.stderr).toBe(2);
      expect(r.stderr).toContain(`${flag} ${v} is too long: at most 2147483647 ms`);
    }
  });

  it('the key cache refuses a max-stale past the limit, and caps a refresh period of 4 long TTLs at it', () => {
    const delays: number[] = [];
    const clock: Clock = {
      now: () => 0,
      setTimeout: (_fn: () => unknown, ms: number): TimerHandle => { delays.push(ms); return {}; },
      clearTimeout: () => {},
    };
    const device = { fail: async () => {}, wipeKey: () => {} };
    const o = { volumeId: 'vol-0123456789abcdef0', refresh: async () => new Uint8Array(64), verify: () => {}, clock, random: () => 0.999 };
    expect(() => new KeyCache(device, { ...o, ttlMs: H, maxStaleMs: 597 * H })).toThrow(RangeError);
    // 500 h TTL with a shared check: full refreshes about every 4 TTLs (2000 h), above the limit.
    const check: KeyCheckMembership = { keyArn: 'arn', grantId: 'g', join: () => ({ leave: () => {}, nextRoundAt: () => null }) };
    const kc = new KeyCache(device, { ...o, ttlMs: 500 * H, maxStaleMs: 596 * H, check });
    kc.start();
    expect(delays.length).toBeGreaterThan(0);
    for (const d of delays) expect(d).toBeLessThanOrEqual(MAX_TIMER_MS);
    expect(delays[0]).toBe(MAX_TIMER_MS);
  });
});

/**
 * The key cache holds a key at least one TTL (src/volume/key-cache.ts takes the larger of max-stale and
 * TTL). A --key-cache-max-stale shorter than the --key-cache-ttl given with it was raised to the TTL
 * without a word, and `ebsd status` (Daemon.KeyCacheMaxStaleSeconds) showed the value given, not the
 * one every volume used: now the start logs it, naming both, and status shows the max-stale the volumes
 * use (a refusal would stop command lines that ran before from starting the daemon).
 */
describe('--key-cache-max-stale against --key-cache-ttl', () => {
  it('a max-stale shorter than the TTL is taken (command lines that ran before still run) and named as raised to the TTL', () => {
    const base = { stateDir: '/x', mountDir: '/y', logLevel: 'info', allowUnencrypted: false };
    expect(() => checkDaemonConfig({ ...base, keyCacheTtlMs: 10 * H, keyCacheMaxStaleMs: H })).not.toThrow();
    expect(keyCacheMaxStaleRaised({ keyCacheTtlMs: 10 * H, keyCacheMaxStaleMs: H })).toMatch(/--key-cache-max-stale \(3600000 ms\) is shorter than --key-cache-ttl \(36000000 ms\).*use a max-stale of 36000000 ms/);
    expect(keyCacheMaxStaleRaised({ keyCacheTtlMs: H, keyCacheMaxStaleMs: H })).toBeUndefined();
    expect(keyCacheMaxStaleRaised({ keyCacheTtlMs: 10 * H })).toBeUndefined();
    // Alone, against the default TTL (5 min).
    expect(keyCacheMaxStaleRaised({ keyCacheMaxStaleMs: 60_000 })).toMatch(/--key-cache-max-stale \(60000 ms\) is shorter than the default --key-cache-ttl \(300000 ms\)/);
    expect(keyCacheMaxStaleRaised({ keyCacheTtlMs: 30_000, keyCacheMaxStaleMs: 60_000 })).toBeUndefined();
  });

  it('a TTL past the default max-stale alone: status shows the max-stale the volumes use', async () => {
    ensureBuilt();
    const env = new Env('max-stale-shown');
    try {
      await env.start(['--key-cache-ttl', '2h']);
      const vol = (await env.api('ebsd.CreateVolume', { Size: '4MiB' })).VolumeId;
      await env.api('ebsd.AttachVolume', { VolumeId: vol });
      const st = await env.api('ebsd.Status');
      const v = st.Volumes.find((x: { VolumeId: string }) => x.VolumeId === vol);
      expect(v.KeyCache.MaxStaleSeconds).toBe(7200);
      expect(st.Daemon.KeyCacheMaxStaleSeconds).toBe(v.KeyCache.MaxStaleSeconds);
      expect(st.Daemon.KeyCacheTtlSeconds).toBe(7200);
    } finally {
      await env.cleanup();
    }
  }, 60_000);
});
