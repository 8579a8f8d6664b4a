import { isIP } from 'node:net';
import { resolve, sep } from 'node:path';
import { ArgRangeError } from '../util/errors.js';
import { isRegionName, parseIamPrincipalArn } from '../util/aws-names.js';
import { MAX_TIMER_MS } from '../util/clock.js';
import { DEFAULT_KEY_CACHE_TTL_MS } from '../volume/key-cache.js';
import { isLoopback } from '../util/loopback.js';
import { endpointUserinfo, shownEndpoint } from '../util/endpoint-url.js';

export interface DaemonConfig {
  /** Default /var/lib/ebsd. */
  stateDir: string;
  /** Default /mnt/ebsd. */
  mountDir: string;
  /** Region used when the state dir is initialised; must match it afterwards. */
  region?: string;
  /** Key cache TTL in ms (docs/architecture.md §6.3); 0 holds keys until detach. */
  keyCacheTtlMs?: number;
  keyCacheMaxStaleMs?: number;
  logLevel: string;
  /**
   * Accept measurement-only plaintext volumes (`ebsd volume create --cipher none`).
   * Off by default: CreateVolume and AttachVolume of such a volume are refused.
   */
  allowUnencrypted: boolean;
  /**
   * Write-behind on the FUSE data path (default true): an aligned write of up to
   * 128 KiB is acknowledged once copied and written to the backing file right
   * after the reply, like a disk with a volatile write cache (flush/fsync is the
   * barrier). false: every write is in the backing file before it is
   * acknowledged, so a daemon killed with SIGKILL loses no acknowledged write
   * even without fsync (README, "Durability and the data path").
   */
  writeBehind?: boolean;
  /** Serve Prometheus `/metrics` on this HOST:PORT (src/daemon/metrics.ts); off when absent. */
  metricsListen?: string;
  /** KMS rotation/deletion tick (ms); default 60 s. */
  tickMs?: number;
  /**
   * How long refusals of one caller are summed before they are audited as one event
   * (connection limits, unauthenticated and denied requests; README "Refused callers in the
   * audit log"). Default 10 s; 1 s to 10 min.
   */
  refusalWindowMs?: number;
  /**
   * Serve the KMS and STS over HTTP(S) on this address (README.md, "KMS over the network").
   * Plain HTTP only on a loopback address; anything else needs `tls`.
   */
  kmsListen?: { host: string; port: number };
  /** PEM files of the listener's certificate (chain) and private key. */
  tls?: { certFile: string; keyFile: string };
  /** Run the KMS alone: no FUSE mount, no volume service. */
  kmsOnly?: boolean;
  /**
   * Threads running the listener's TLS and HTTP (src/daemon/kms-front.ts): 0 the main thread,
   * 1 a front-end worker. Default 1: on the main thread a loaded listener took the FUSE data path's loop (docs/benchmarks.md, "The data path while the KMS is loaded").
   */
  kmsFrontThreads?: 0 | 1;
  /** Callers' KMS and EBS direct calls admitted per second while the volume data path is busy; 0: no limit (data-path-first.ts). */
  kmsRateWhileIoBusy?: number;
  /**
   * Volume keys from this KMS (AWS KMS, another host's `--kms-only` daemon) over
   * the AWS protocol, as the host's principal from the standard AWS credential
   * chain (README.md, "A fleet"); absent: the embedded KMS core.
   */
  kmsEndpoint?: string;
  /** Region of `kmsEndpoint`; default: AWS_REGION or the profile's `region`. */
  kmsRegion?: string;
  /**
   * How long the host goes without a request to `kmsEndpoint` before it sends one probe
   * (AwsKeyService.startIdleProbe), so that an outage of its KMS shows while it is idle
   * (ebsd_kms_remote_reachable, `ebsd status`); default 30 s, 0: never.
   */
  kmsProbeIntervalMs?: number;
  /**
   * Each HTTP attempt's whole-request timeout at `kmsEndpoint` (AwsKeyService requestTimeoutMs):
   * how long an attempt waits for an answer before the SDK retries it; default 5 s.
   */
  kmsRequestTimeoutMs?: number;
  /**
   * The host's principal for grants at `kmsEndpoint`, when STS's answer does not name it as
   * written: a role with a path (README.md, "A fleet"). Checked against STS at start.
   */
  hostPrincipalArn?: string;
  /**
   * Where snapshots live (src/snapshot/open-store.ts): `s3://bucket/prefix` for
   * an S3-compatible store shared by hosts; absent: `<state>/snapshots`.
   */
  snapshotStore?: string;
  /**
   * A key id, ARN or alias of an HMAC_256 KMS key (GENERATE_VERIFY_MAC): every snapshot manifest
   * is signed with it and verified on read (src/snapshot/manifest-mac.ts, docs/architecture.md §13.5).
   * Absent: manifests are neither signed nor checked.
   */
  snapshotManifestKey?: string;
  /**
   * Grace period of the snapshot store's collector (gc.ts): unreferenced blocks
   * younger than this are kept; default one hour. Tests set 0 to see a delete free blocks.
   */
  snapshotGcGraceMs?: number;
  /**
   * Memory for the sectors snapshots capture, shared by all of them
   * (src/snapshot/cow-memory.ts, docs/architecture.md §12.2); absent: min(2 GiB,
   * MemTotal/16, the cgroup memory limit/8). Past it, captures spill to a file.
   */
  snapshotCowMemoryBytes?: number;
  /**
   * The rolling window in which a volume may be modified at most four times
   * (ModifyVolume, EC2's limit; README "How often a volume can be modified"); default 24 h. Shorter for
   * tests, or for an operator who wants volumes to grow more often than EC2 allows.
   */
  volumeModificationWindowMs?: number;
  /**
   * How long a stop (SIGTERM, SIGINT, SIGHUP) may take before the daemon gives up on it, logs the
   * step it was stuck at and exits non-zero (src/daemon/stop-deadline.ts); default 90 s, under the
   * unit's TimeoutStopSec (contrib/systemd/ebsd.service).
   */
  stopTimeoutMs?: number;
}

/**
 * A port's digits: at most 5 (so `000000000080` is no port 80, as a listen address of main never took
 * it) and at most 65535.
 */
function portInRange(digits: string): boolean {
  return digits.length <= 5 && Number(digits) <= 65535;
}

/** `HOST:PORT`, `[::1]:PORT` -> host and port; a RangeError naming the flag otherwise. */
export function parseListenAddress(v: string, name = '--kms-listen'): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]]+)):(\d+)$/.exec(v);
  if (!m) throw new ArgRangeError(name, `"${v}" is not HOST:PORT (e.g. 127.0.0.1:4599, [::1]:0)`);
  const port = Number(m[3]);
  if (!portInRange(m[3]!)) throw new ArgRangeError(name, `"${v}": port ${m[3]} is out of range (0 to 65535, at most 5 digits)`);
  return { host: m[1] ?? m[2]!, port };
}

/**
 * `--metrics-listen HOST:PORT`: an IP address (or `localhost`) and a port, `[::1]:9464` for IPv6;
 * src/daemon/metrics-listener.ts binds it.
 */
export function parseMetricsListen(spec: string): { host: string; port: number } {
  // Any run of digits is taken as the port, so that one too long (127.0.0.1:123456) is said to be out of range below.
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s]+)):(\d+)$/.exec(spec);
  const host = m?.[1] ?? m?.[2];
  const port = Number(m?.[3]);
  if (!m || !host || (isIP(host) === 0 && host !== 'localhost')) {
    throw new ArgRangeError('--metrics-listen', `must be HOST:PORT with an IP address (127.0.0.1:9464, [::1]:9464), got "${spec}"`);
  }
  // Said as such: "must be HOST:PORT with an IP address" of 0.0.0.0:99999 named neither what was wrong nor the limit.
  if (!portInRange(m[3]!)) throw new ArgRangeError('--metrics-listen', `"${spec}": port ${m[3]} is out of range (0 to 65535, at most 5 digits)`);
  return { host, port };
}

/** `s3://BUCKET[/PREFIX]`, the one form --snapshot-store takes (src/snapshot/open-store.ts). */
const S3_STORE_RE = /^s3:\/\/([^/]+)(?:\/(.*))?$/;

export const VERSION = '0.1.0';

export const DEFAULT_STATE_DIR = '/var/lib/ebsd';
export const DEFAULT_MOUNT_DIR = '/mnt/ebsd';
/** The longest --volume-modification-window: a year (a window past JavaScript's dates could not name when the volume may be modified again). */
export const MAX_MODIFICATION_WINDOW_MS = 365 * 24 * 3_600_000;
/**
 * The smallest --snapshot-cow-memory: one 4 KiB slot (COW_SECTOR, src/snapshot/cow-spill.ts, not
 * imported: the CLI loads this file for every command). The budget is rounded down to whole slots,
 * so less was a budget of 0, every capture spilled to the file.
 */
export const MIN_SNAPSHOT_COW_MEMORY = 4096;
/** Default of DaemonConfig.kmsProbeIntervalMs. */
export const DEFAULT_KMS_PROBE_INTERVAL_MS = 30_000;
/** Range of DaemonConfig.kmsRequestTimeoutMs (--kms-request-timeout): 100 ms to 10 min. */
export const MIN_KMS_REQUEST_TIMEOUT_MS = 100;
export const MAX_KMS_REQUEST_TIMEOUT_MS = 10 * 60_000;

/**
 * What is wrong with the command line by itself: a flag's value not of its form or out of its range,
 * or a flag without the one it needs. `ebsd daemon` checks this before it touches anything and exits 2
 * (usage, src/cli/exit-codes.ts); checkDaemonConfig checks it again for a config built in code.
 * Pure: no file, socket or lookup.
 */
export function checkDaemonFlags(c: DaemonConfig): void {
  if (!c.kmsOnly) {
    // Judged on the paths as given (a symlink between them goes unseen): a mount over the state dir
    // hides the daemon's own files from it, one under it is a directory of the daemon's own.
    const state = resolve(c.stateDir);
    const mount = resolve(c.mountDir);
    const within = (inner: string, outer: string): boolean => inner === outer || inner.startsWith(outer.endsWith(sep) ? outer : outer + sep);
    if (within(mount, state)) throw new ArgRangeError('--mount', `${c.mountDir} is the state dir or inside it (${c.stateDir}): give the FUSE mount a directory of its own`);
    if (within(state, mount)) throw new ArgRangeError('--state-dir', `${c.stateDir} is inside the FUSE mount directory ${c.mountDir}: the mount would hide it`);
  }
  if (c.region !== undefined && !isRegionName(c.region)) throw new ArgRangeError('--region', `"${c.region}" is not a region name (e.g. us-east-1, eu-west-2)`);
  if (c.kmsRegion !== undefined && !isRegionName(c.kmsRegion)) throw new ArgRangeError('--kms-region', `"${c.kmsRegion}" is not a region name (e.g. us-east-1, eu-west-2)`);
  if (c.metricsListen !== undefined) parseMetricsListen(c.metricsListen);
  if (c.snapshotStore !== undefined && !S3_STORE_RE.test(c.snapshotStore)) {
    throw new ArgRangeError('--snapshot-store', `"${c.snapshotStore}" is not a snapshot store: give s3://BUCKET[/PREFIX], or leave it out for STATE_DIR/snapshots`);
  }
  if (c.snapshotManifestKey !== undefined && (c.snapshotManifestKey === '' || c.snapshotManifestKey.length > 2048)) {
    throw new ArgRangeError('--snapshot-manifest-key', `must be a key id, key ARN, alias name or alias ARN of 1 to 2048 characters, got ${c.snapshotManifestKey.length} characters`);
  }
  if (c.snapshotManifestKey !== undefined && c.kmsOnly) throw new ArgRangeError('--snapshot-manifest-key', 'is for a daemon that keeps snapshots; a --kms-only daemon keeps none');
  if (c.kmsEndpoint !== undefined) {
    let u: URL | undefined;
    try {
      u = new URL(c.kmsEndpoint);
    } catch {
      u = undefined;
    }
    // Not repeated as given: a user:password@ in it stays out of the message (src/util/endpoint-url.ts).
    const shown = shownEndpoint(c.kmsEndpoint);
    if (!u) throw new ArgRangeError('--kms-endpoint', `"${shown}" is not a URL (e.g. https://10.0.0.1:4599)`);
    if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new ArgRangeError('--kms-endpoint', `"${shown}": only http(s) URLs`);
  }
  if (c.hostPrincipalArn !== undefined && !parseIamPrincipalArn(c.hostPrincipalArn)) {
    throw new ArgRangeError('--host-principal-arn', `"${c.hostPrincipalArn}" is not an IAM role or user ARN (arn:aws:iam::111122223333:role/fleet/host-a)`);
  }
  if (c.kmsOnly && !c.kmsListen) throw new ArgRangeError('--kms-only', 'needs --kms-listen: a KMS-only daemon serves nothing else');
  if (c.kmsRateWhileIoBusy !== undefined && c.kmsOnly) throw new ArgRangeError('--kms-rate-while-io-busy', 'paces callers while the volume data path is busy; a --kms-only daemon serves no volumes');
  if (c.kmsEndpoint !== undefined && c.kmsOnly) throw new ArgRangeError('--kms-endpoint', 'a --kms-only daemon serves the KMS; it does not use a remote one');
  if (c.kmsRegion !== undefined && c.kmsEndpoint === undefined) throw new ArgRangeError('--kms-region', 'needs --kms-endpoint');
  if (c.hostPrincipalArn !== undefined && c.kmsEndpoint === undefined) throw new ArgRangeError('--host-principal-arn', 'needs --kms-endpoint');
  if (c.kmsProbeIntervalMs !== undefined && c.kmsEndpoint === undefined) throw new ArgRangeError('--kms-probe-interval', 'needs --kms-endpoint');
  if (c.kmsRequestTimeoutMs !== undefined && c.kmsEndpoint === undefined) throw new ArgRangeError('--kms-request-timeout', 'needs --kms-endpoint');
  if (c.tls && !c.kmsListen) throw new ArgRangeError('--tls-cert', 'needs --kms-listen');
  if (c.kmsFrontThreads !== undefined && c.kmsFrontThreads !== 0 && c.kmsFrontThreads !== 1) throw new ArgRangeError('--kms-front-threads', `must be 0 or 1, got ${String(c.kmsFrontThreads)}`);
  if (c.kmsRateWhileIoBusy !== undefined && (!Number.isSafeInteger(c.kmsRateWhileIoBusy) || c.kmsRateWhileIoBusy < 0 || c.kmsRateWhileIoBusy > 1_000_000)) throw new ArgRangeError('--kms-rate-while-io-busy', `must be a whole number of calls per second from 0 (no limit) to 1000000, got ${String(c.kmsRateWhileIoBusy)}`);
  // A config built in code, not through the CLI's parse, is held to the same ranges.
  if (c.refusalWindowMs !== undefined && (!Number.isSafeInteger(c.refusalWindowMs) || c.refusalWindowMs < 1000 || c.refusalWindowMs > 10 * 60_000)) {
    throw new ArgRangeError('--refusal-window', `must be from 1s to 10m, got ${String(c.refusalWindowMs)} ms`);
  }
  if (c.volumeModificationWindowMs !== undefined && (!Number.isSafeInteger(c.volumeModificationWindowMs) || c.volumeModificationWindowMs < 0 || c.volumeModificationWindowMs > MAX_MODIFICATION_WINDOW_MS)) {
    throw new ArgRangeError('--volume-modification-window', `must be a duration from 0 to ${durationLimit(MAX_MODIFICATION_WINDOW_MS)}, got ${String(c.volumeModificationWindowMs)} ms`);
  }
  if (c.kmsRequestTimeoutMs !== undefined && (!Number.isSafeInteger(c.kmsRequestTimeoutMs) || c.kmsRequestTimeoutMs < MIN_KMS_REQUEST_TIMEOUT_MS || c.kmsRequestTimeoutMs > MAX_KMS_REQUEST_TIMEOUT_MS)) {
    throw new ArgRangeError('--kms-request-timeout', `must be a duration from ${MIN_KMS_REQUEST_TIMEOUT_MS} ms to ${durationLimit(MAX_KMS_REQUEST_TIMEOUT_MS)}, got ${String(c.kmsRequestTimeoutMs)} ms`);
  }
  if (c.stopTimeoutMs !== undefined && (!Number.isSafeInteger(c.stopTimeoutMs) || c.stopTimeoutMs < 1 || c.stopTimeoutMs > MAX_TIMER_MS)) {
    throw new ArgRangeError('--stop-timeout', `must be a duration from 1 ms to ${durationLimit(MAX_TIMER_MS)}, got ${String(c.stopTimeoutMs)} ms`);
  }
  if (c.snapshotCowMemoryBytes !== undefined && (!Number.isSafeInteger(c.snapshotCowMemoryBytes) || c.snapshotCowMemoryBytes < MIN_SNAPSHOT_COW_MEMORY)) {
    throw new ArgRangeError('--snapshot-cow-memory', `must be a whole number of bytes, at least ${MIN_SNAPSHOT_COW_MEMORY}, got ${String(c.snapshotCowMemoryBytes)}`);
  }
  for (const [name, v] of [['keyCacheTtlMs', c.keyCacheTtlMs], ['keyCacheMaxStaleMs', c.keyCacheMaxStaleMs]] as const) {
    if (v !== undefined && (!Number.isSafeInteger(v) || v < 0)) throw new ArgRangeError(name, `must be a non-negative integer, got ${v}`);
    // Both feed timers (src/volume/key-cache.ts): past MAX_TIMER_MS Node fires them after 1 ms.
    if (v !== undefined && v > MAX_TIMER_MS) throw new ArgRangeError(name, `must be at most ${durationLimit(MAX_TIMER_MS)}, got ${v}`);
  }
}

/**
 * A --key-cache-max-stale shorter than the TTL (the default one included): the key cache never holds a key
 * to less than one TTL (src/volume/key-cache.ts takes the larger of the two), so it is raised to the TTL.
 * Said at start (the daemon logs it) rather than refused: command lines that ran before keep running, and
 * `ebsd status` shows the max-stale the volumes use. Undefined when nothing is raised.
 */
export function keyCacheMaxStaleRaised(c: Pick<DaemonConfig, 'keyCacheTtlMs' | 'keyCacheMaxStaleMs'>): string | undefined {
  const ttl = c.keyCacheTtlMs ?? DEFAULT_KEY_CACHE_TTL_MS;
  const maxStale = c.keyCacheMaxStaleMs;
  if (maxStale === undefined || maxStale >= ttl) return undefined;
  const ttlShown = c.keyCacheTtlMs === undefined ? `the default --key-cache-ttl (${ttl} ms)` : `--key-cache-ttl (${ttl} ms)`;
  return `--key-cache-max-stale (${maxStale} ms) is shorter than ${ttlShown}: a volume key is confirmed by its KMS once a TTL, so it cannot go stale sooner; the volumes use a max-stale of ${ttl} ms (ebsd status shows it)`;
}

/**
 * checkDaemonFlags, then what the daemon refuses to run with although the command line is well
 * formed: plain HTTP off loopback, credentials in --kms-endpoint. Those are "refused configuration",
 * exit 9 (src/cli/exit-codes.ts), as the daemon refuses them at start.
 */
export function checkDaemonConfig(c: DaemonConfig): void {
  checkDaemonFlags(c);
  // Checked before anything starts; the listener checks again (it may be built without a config).
  if (c.kmsListen && !c.tls && !isLoopback(c.kmsListen.host)) {
    throw new ArgRangeError('--kms-listen', `${c.kmsListen.host}: plain HTTP is allowed only on a loopback address; give --tls-cert and --tls-key`);
  }
  // Checked before anything starts; the KMS client checks again (src/volume/aws-key-service.ts).
  if (c.kmsEndpoint !== undefined) {
    let u: URL | undefined;
    try {
      u = new URL(c.kmsEndpoint);
    } catch {
      u = undefined; // checkDaemonFlags refused it
    }
    if (u && (u.username || u.password)) throw endpointUserinfo(u);
    if (u?.protocol === 'http:' && !isLoopback(u.hostname)) {
      throw new ArgRangeError('--kms-endpoint', `"${c.kmsEndpoint}": plain HTTP is allowed only to a loopback address (KMS answers carry plaintext volume keys); use https://`);
    }
  }
}


/** `--refusal-window`: a duration from 1 s to 10 min (parseDuration's forms). */
export function refusalWindow(v: string | number): number {
  return parseDuration(v, '--refusal-window', 10 * 60_000, 1000);
}

/**
 * A decimal number (`12`, `1.5`) times an integer unit, exactly: `1.0001KiB` is 1024.1024
 * bytes and `0.0001s` 0.1 ms, which floating point would round to a whole number (or to 0,
 * which several flags read as "never" or "no limit") without a word.
 */
function _decimalTimes(int: string, frac: string, unit: number): { value: bigint; whole: boolean } {
  const scale = 10n ** BigInt(frac.length);
  const scaled = BigInt(int + frac) * BigInt(unit);
  return { value: scaled / scale, whole: scaled % scale === 0n };
}

/**
 * `300`, `300s`, `5m`, `1h`, `250ms` -> milliseconds, from `minMs` to `maxMs`; an
 * ArgRangeError naming the flag and the value otherwise. A fraction of a millisecond
 * (`0.0001s`, `1.5ms`) is refused: it used to round, and `0.0001s` became 0, which
 * --key-cache-ttl reads as "until detach" and --kms-probe-interval as "never".
 * The default maximum, MAX_TIMER_MS, is for a value that feeds a timer
 * (src/util/clock.ts): a longer key-cache max-stale would expire at once, a longer
 * TTL would refresh in a loop. A number is seconds (a config built in code).
 */
export function parseDuration(v: string | number, name: string, maxMs: number = MAX_TIMER_MS, minMs = 0): number {
  const s = String(v);
  const m = /^\s*(\d+)(?:\.(\d+))?\s*(ms|s|m|h)?\s*$/.exec(s);
  if (!m) throw new ArgRangeError(name, `"${s}" is not a duration (e.g. 300, 300s, 5m, 1h, 250ms)`);
  const mult = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[3] ?? 's') as 'ms' | 's' | 'm' | 'h'];
  const { value, whole } = _decimalTimes(m[1]!, m[2] ?? '', mult);
  if (value > BigInt(maxMs)) throw new ArgRangeError(name, `${s} is too long: at most ${durationLimit(maxMs)}`);
  if (!whole) throw new ArgRangeError(name, `${s} is not a whole number of milliseconds`);
  if (value < BigInt(minMs)) throw new ArgRangeError(name, `${s} is too short: at least ${minMs % 1000 === 0 ? `${minMs / 1000}s` : `${minMs} ms`}`);
  return Number(value);
}

function durationLimit(ms: number): string {
  return ms === MAX_TIMER_MS ? `${MAX_TIMER_MS} ms (2^31-1 ms, about 596 h: the longest timer Node keeps)` : `${ms} ms`;
}

const SIZE_UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, kib: 1024, m: 1024 ** 2, mib: 1024 ** 2, g: 1024 ** 3, gib: 1024 ** 3, t: 1024 ** 4, tib: 1024 ** 4 };

/**
 * `1073741824`, `64MiB`, `1.5GiB`, `512K` -> bytes (binary units), from `minBytes` to
 * `maxBytes` (`maxIs` says what that is); an ArgRangeError naming the flag and the value otherwise. A fraction of a
 * byte is refused: `1.5` (no unit: bytes) used to become 1 byte, below any budget's unit.
 */
export function parseByteSize(v: string | number, name: string, minBytes = 0, maxBytes = Number.MAX_SAFE_INTEGER, maxIs?: string): number {
  const s = String(v);
  const m = /^\s*(\d+)(?:\.(\d+))?\s*([A-Za-z]{0,3})\s*$/.exec(s);
  const unit = m ? SIZE_UNITS[m[3]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new ArgRangeError(name, `"${s}" is not a size (bytes, or a number with KiB, MiB, GiB or TiB, e.g. 64MiB, 1.5GiB)`);
  const { value, whole } = _decimalTimes(m[1]!, m[2] ?? '', unit);
  if (value > BigInt(maxBytes)) throw new ArgRangeError(name, `${s} is too large: at most ${maxBytes} bytes${maxIs ? ` (${maxIs})` : ''}`);
  if (!whole) throw new ArgRangeError(name, `${s} is not a whole number of bytes${m[3] ? '' : ' (a number without a unit is bytes)'}`);
  if (value < BigInt(minBytes)) throw new ArgRangeError(name, `${s} is too small: at least ${minBytes} bytes`);
  return Number(value);
}
