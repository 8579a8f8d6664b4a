import promClient, { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { LATENCY_SAMPLE, type IoObserver } from '../fuse/block-file-system.js';
import type { Caller, KmsCore, KmsRequest, KmsResponse } from '../kms/types.js';
import type { Logger } from '../util/logger.js';
import type { KeyService } from '../volume/key-service.js';
import { VERSION } from './config.js';
import { MetricsListener } from './metrics-listener.js';
import { REFUSAL_REASONS } from './connection-guard.js';
import type { KmsListenerUsage } from './kms-listener.js';

/**
 * Prometheus metrics of one daemon (`ebsd daemon --metrics-listen HOST:PORT`,
 * README "Running in production"). Names are `ebsd_<subsystem>_<what>_<unit>`;
 * labels are bounded: `volume_id` (attached volumes only), `operation` (a
 * known operation name, else `other`), `outcome` / `result` (`ok`, `denied`
 * or the AWS exception name), `errno`, `state`.
 *
 * The FUSE data path does not touch prom-client: a prom-client child still
 * builds a label hash per observation. Each attached volume gets one
 * VolumeIoStats (plain numbers and Float64Array buckets, bound at attach),
 * and the registry reads them at scrape time.
 */

/**
 * Request latency bucket bounds, seconds: 10 µs .. 10 s (a page-cache hit is ~20 µs, a flush ~ms).
 * Past 1 s on purpose: a flush (fdatasync of the backing file) under heavy write-back, or a write
 * held by dirty-page throttling, takes seconds, and a stalled backing disk is exactly what an
 * operator looks for; with a last bound of 1 s all of that sat in +Inf and a p99 read "1".
 */
export const LATENCY_BUCKETS_SECONDS: readonly number[] = [
  0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];
/**
 * KMS call latency bucket bounds, seconds: 100 µs .. 30 s. An embedded-core
 * call takes ~0.1-1 ms; a remote one tens of ms, and when the KMS does not
 * answer up to 3 attempts of 2 s connect + 5 s request plus back-off
 * (src/volume/aws-key-service.ts DEFAULTS): those land in the 10-30 s buckets, not +Inf.
 */
export const KMS_LATENCY_BUCKETS_SECONDS: readonly number[] = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
];
const BUCKETS_MICROS = Float64Array.from(LATENCY_BUCKETS_SECONDS, (s) => s * 1e6);
const OPS = ['read', 'write', 'flush'] as const;
type IoOp = (typeof OPS)[number];

/** Most label values kept per label before new ones become `other` (a caller can send any operation name). */
const MAX_LABEL_VALUES = 256;

/** Linux errno names for the values the FUSE layer replies (src/fuse/errno.ts); others are `E<n>`. */
const ERRNO_NAMES: Record<number, string> = { 1: 'EPERM', 2: 'ENOENT', 5: 'EIO', 9: 'EBADF', 12: 'ENOMEM', 13: 'EACCES', 16: 'EBUSY', 21: 'EISDIR', 22: 'EINVAL', 28: 'ENOSPC', 30: 'EROFS' };

/** One volume's data-path counters; written by the FUSE layer, read at scrape. */
export class VolumeIoStats {
  readonly ops = new Float64Array(3);
  readonly bytes = new Float64Array(3);
  readonly latencySum = new Float64Array(3);
  /** Requests timed (the histogram's count). */
  readonly timed = new Float64Array(3);
  /** Per operation: one count per bucket bound, then +Inf (not cumulative; summed at scrape). */
  readonly buckets = [new Float64Array(BUCKETS_MICROS.length + 1), new Float64Array(BUCKETS_MICROS.length + 1), new Float64Array(BUCKETS_MICROS.length + 1)];
  /** `op errno` -> count; errors are rare, a Map lookup there is fine. */
  readonly errors = new Map<string, number>();

  constructor(readonly volumeId: string) {
    // The EIO series exist from attach at 0: rate() needs a sample before the first error to see it.
    // So does write ENOSPC: the backing filesystem (the state dir's) full, as the alert rules watch.
    for (const op of OPS) this.errors.set(`${op} EIO`, 0);
    this.errors.set('write ENOSPC', 0);
  }

  /** The FUSE IoObserver: no allocation on success. */
  readonly observe: IoObserver = (op, bytes, micros, errno) => {
    const i = op === 'read' ? 0 : op === 'write' ? 1 : 2;
    if (errno !== 0) {
      const k = `${op} ${ERRNO_NAMES[-errno] ?? `E${-errno}`}`;
      this.errors.set(k, (this.errors.get(k) ?? 0) + 1);
      return;
    }
    this.ops[i]!++;
    this.bytes[i]! += bytes;
    if (micros < 0) return; // not timed (1 in LATENCY_SAMPLE is)
    this.timed[i]!++;
    this.latencySum[i]! += micros;
    const b = this.buckets[i]!;
    let j = 0;
    while (j < BUCKETS_MICROS.length && micros > BUCKETS_MICROS[j]!) j++;
    b[j]!++;
  };
}

/** What the daemon lets metrics read at scrape time (nothing is copied on the way). */
export interface MetricsSources {
  /** Volumes served under the mount now. */
  attached(): string[];
  openHandles(volumeId: string): number;
  inflight(volumeId: string): number;
  /** Key-cache state per attached volume, as `ebsd status` shows it. */
  keyCaches(): { VolumeId: string; State: string; LastUnwrapTime?: string; ExpiryTime?: string }[];
  /** Audit events written by this daemon since it started. */
  auditEventsWritten(): number;
  /**
   * The audit log's health, as `ebsd status` shows it (src/kms/audit/audit-log.ts AuditLog.health):
   * its disk state, refused callers' events dropped while the disk was short, whether it was found
   * tampered at start, and events whose write failed (the audited calls failed with them).
   */
  auditHealth?(): { state: string; droppedRefusalEvents: number; tampered: boolean; failedEvents: number };
  /** KMS calls in the core and waiting for a turn (src/kms/fair-gate.ts); absent when the KMS is on another host. */
  kmsCallLoad?(): { active: number; waiting: number; callers: number };
  /**
   * With --kms-endpoint only: the endpoint, and whether it answers (false while the host waits
   * for it at start, host-resolver.ts, and while its last call or idle probe went unanswered).
   */
  remoteKms?(): { endpoint: string; reachable: boolean };
  /** This daemon's snapshot creates under way, each with the share of its blocks copied (snapshot-manager.ts inProgress). */
  snapshotsInProgress?(): { volumeId: string; copiedRatio: number }[];
  /** Volumes recorded in-use on this host but not served (waiting for the KMS at start, or a failed resume). */
  volumesUnserved(): number;
  /**
   * What still holds a file of a volume that is no longer served, every request on it failing with EIO:
   * loop devices bound to a previous daemon's file, handles this daemon cut off while open (`ebsd status`:
   * StaleLoopDevices, CutOffHandles). Every attached volume, and any other with either.
   */
  staleUsers?(): Promise<{ volumeId: string; loopDevices: number; cutOffHandles: number }[]>;
  /** The FUSE mount was unmounted from outside (`ebsd status`: Daemon.Problem); absent on a --kms-only daemon. */
  mountLost?(): boolean;
  /** With --kms-listen: its connections and refusals (KmsListener.usage); undefined when its front-end worker does not answer. */
  kmsListener?(): Promise<KmsListenerUsage | undefined>;
  /** Callers' KMS and EBS direct calls that waited for a turn while the volume data path was busy, since start, and waiting now (data-path-first.ts); absent under --kms-only. */
  callsHeldForIo?(): { held: number; waiting: number } | undefined;
}

/** A result label: `ok`, `denied`, or the AWS exception name (a bounded set of classes). */
export function outcomeOf(err: unknown): string {
  if (err === undefined) return 'ok';
  const name = (err as { awsName?: unknown })?.awsName;
  if (name === 'AccessDeniedException' || name === 'UnauthorizedOperation') return 'denied';
  return typeof name === 'string' ? name : 'InternalError';
}

/** Audit batch write (and fdatasync) bounds, seconds: 50 µs (page cache) .. 10 s (a disk that stalls). */
export const AUDIT_WRITE_BUCKETS_SECONDS: readonly number[] = [
  0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];
/**
 * Snapshot create bounds, seconds: 0.1 s (a small incremental) .. 6 h (a first full copy of a large
 * volume to a slow store); EBS snapshots of large volumes take hours too.
 */
export const SNAPSHOT_BUCKETS_SECONDS: readonly number[] = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600];
/** How long one answer of the listener's usage serves the metrics: the series of one scrape are collected together. */
const LISTENER_USAGE_REUSE_MS = 250;
/** AuditLog's disk states (src/kms/audit/disk-reserve.ts DiskState), each a series from start. */
const AUDIT_STATES = ['ok', 'reserve-in-use', 'failing'] as const;

/** The KMS calls of the volume-key path (create, attach, key refresh), counted from 0 per outcome below. */
const ZEROED_KMS_OPERATIONS = ['GenerateDataKeyWithoutPlaintext', 'CreateGrant', 'Decrypt'] as const;
/**
 * Outcomes meaning the KMS could not serve the call now (aws-key-service.ts: the ones that do not
 * close its circuit), and `InternalError`: what an unanswered remote call counts as (`outcomeOf`).
 */
const ZEROED_KMS_OUTCOMES = ['InternalError', 'KMSInternalException', 'KeyUnavailableException', 'DependencyTimeoutException', 'ThrottlingException'] as const;

/** KeyService method -> the KMS operation it is (metric label). */
const KEY_SERVICE_OPERATIONS: ReadonlyMap<string, string> = new Map([
  ['generateDataKeyWithoutPlaintext', 'GenerateDataKeyWithoutPlaintext'],
  ['createGrant', 'CreateGrant'],
  ['decrypt', 'Decrypt'],
  ['reEncrypt', 'ReEncrypt'],
  ['retireGrant', 'RetireGrant'],
  ['describeKey', 'DescribeKey'],
  ['listRetirableGrants', 'ListRetirableGrants'],
  ['generateMac', 'GenerateMac'],
  ['verifyMac', 'VerifyMac'],
]);

export class DaemonMetrics {
  readonly registry = new Registry();
  private readonly volumes = new Map<string, VolumeIoStats>();
  private readonly kmsCalls: Counter<'operation' | 'outcome'>;
  private readonly kmsLatency: Histogram<'operation'>;
  private readonly controlCalls: Counter<'operation' | 'result'>;
  private readonly auditWrite: Histogram<'result'>;
  private readonly snapshotDuration: Histogram<'state'>;
  private readonly labelSeen = new Map<string, Set<string>>();
  private sources: MetricsSources | undefined;
  private usageRead: { at: number; u: Promise<KmsListenerUsage | undefined> } | undefined;
  private staleRead: Promise<{ volumeId: string; loopDevices: number; cutOffHandles: number }[]> | undefined;
  private listener: MetricsListener | undefined;

  constructor() {
    const registers = [this.registry];
    // The standard process and runtime metrics under their standard names (process_cpu_seconds_total,
    // process_open_fds, process_start_time_seconds, nodejs_*), not ebsd_-prefixed: they are what generic
    // dashboards and alerts (open fds near the limit, restarts) query, and the job label says whose they are.
    promClient.collectDefaultMetrics({ register: this.registry });
    // Except prom-client's nodejs_active_{handles,requests,resources}_total: gauges named as counters, which
    // `promtool check metrics` refuses and rate() misreads. Their per-type gauges of the same names without
    // _total stay, and sum() of those is the total.
    for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) this.registry.removeSingleMetric(name);
    new Gauge({
      name: 'ebsd_build_info', help: 'Always 1; the running ebsd version as a label (which hosts run which release)',
      labelNames: ['version'], registers,
      collect() { this.set({ version: VERSION }, 1); },
    });
    const self = this;
    const vols = (): VolumeIoStats[] => self.liveVolumes();
    new Counter({
      name: 'ebsd_volume_operations_total', help: 'FUSE requests completed without error, per volume and operation (read, write, flush)',
      labelNames: ['volume_id', 'operation'], registers,
      collect() {
        this.reset();
        for (const v of vols()) for (let i = 0; i < 3; i++) this.inc({ volume_id: v.volumeId, operation: OPS[i]! }, v.ops[i]!);
      },
    });
    new Counter({
      name: 'ebsd_volume_bytes_total', help: 'Plaintext bytes read and written through the volume file',
      labelNames: ['volume_id', 'operation'], registers,
      collect() {
        this.reset();
        for (const v of vols()) for (let i = 0; i < 2; i++) this.inc({ volume_id: v.volumeId, operation: OPS[i]! }, v.bytes[i]!);
      },
    });
    new Counter({
      name: 'ebsd_volume_io_errors_total', help: 'FUSE requests answered with an errno, per volume, operation and errno',
      labelNames: ['volume_id', 'operation', 'errno'], registers,
      collect() {
        this.reset();
        for (const v of vols()) {
          for (const [k, n] of v.errors) {
            const [operation, errno] = k.split(' ') as [string, string];
            this.inc({ volume_id: v.volumeId, operation, errno }, n);
          }
        }
      },
    });
    new Gauge({
      name: 'ebsd_volume_requests_in_flight', help: 'FUSE requests running against the volume now (a write-behind completion counts until it is in the backing file)',
      labelNames: ['volume_id'], registers,
      collect() {
        this.reset();
        for (const v of vols()) this.set({ volume_id: v.volumeId }, self.sources?.inflight(v.volumeId) ?? 0);
      },
    });
    new Gauge({
      name: 'ebsd_volume_open_handles', help: 'Open file handles on the volume file',
      labelNames: ['volume_id'], registers,
      collect() {
        this.reset();
        for (const v of vols()) this.set({ volume_id: v.volumeId }, self.sources?.openHandles(v.volumeId) ?? 0);
      },
    });
    this.registry.registerMetric(new _SnapshotHistogram(
      'ebsd_volume_request_duration_seconds', `FUSE request latency, request to reply, per volume and operation; one request in ${LATENCY_SAMPLE} per volume is timed (all are counted in ebsd_volume_operations_total)`, vols,
    ) as never);

    const states = ['cached', 'refreshing', 'stale', 'impaired', 'held-until-detach', 'unencrypted'];
    new Gauge({
      name: 'ebsd_key_cache_state', help: `1 for the key-cache state each attached volume is in (${states.join(', ')})`,
      labelNames: ['volume_id', 'state'], registers,
      collect() {
        this.reset();
        for (const kc of self.sources?.keyCaches() ?? []) for (const s of states) this.set({ volume_id: kc.VolumeId, state: s }, kc.State === s ? 1 : 0);
      },
    });
    // Points in time as Unix timestamps (the exposition convention): an alert or a dashboard subtracts time(),
    // and a scrape's age does not skew them as 'seconds since' would.
    new Gauge({
      name: 'ebsd_key_cache_last_unwrap_timestamp_seconds', help: 'When KMS last confirmed the volume key (attach or refresh), as a Unix time (status: LastUnwrapTime)',
      labelNames: ['volume_id'], registers,
      collect() {
        this.reset();
        for (const kc of self.sources?.keyCaches() ?? []) {
          if (kc.LastUnwrapTime) this.set({ volume_id: kc.VolumeId }, Date.parse(kc.LastUnwrapTime) / 1000);
        }
      },
    });
    new Gauge({
      name: 'ebsd_key_cache_expiry_timestamp_seconds', help: 'When the volume is impaired unless KMS confirms its key first, as a Unix time (status: ExpiryTime; absent: held until detach)',
      labelNames: ['volume_id'], registers,
      collect() {
        this.reset();
        for (const kc of self.sources?.keyCaches() ?? []) {
          if (kc.ExpiryTime) this.set({ volume_id: kc.VolumeId }, Date.parse(kc.ExpiryTime) / 1000);
        }
      },
    });

    this.kmsCalls = new Counter({
      name: 'ebsd_kms_requests_total', help: 'KMS calls (control API and the daemon\'s own grant/decrypt calls) by operation and outcome',
      labelNames: ['operation', 'outcome'], registers,
    });
    this.kmsLatency = new Histogram({
      name: 'ebsd_kms_request_duration_seconds', help: 'KMS call latency, authorization and audit included',
      labelNames: ['operation'], buckets: [...KMS_LATENCY_BUCKETS_SECONDS], registers,
    });
    new Gauge({
      name: 'ebsd_kms_calls_active', help: 'KMS calls in the core now (authorizing, in the HSM, or waiting for their audit record)',
      registers,
      collect() {
        const l = self.sources?.kmsCallLoad?.();
        if (l) this.set(l.active);
      },
    });
    new Gauge({
      name: 'ebsd_kms_calls_waiting', help: 'KMS calls waiting for a turn in the core, which goes to the waiting callers in rotation',
      registers,
      collect() {
        const l = self.sources?.kmsCallLoad?.();
        if (l) this.set(l.waiting);
      },
    });
    new Gauge({
      name: 'ebsd_kms_remote_reachable', help: '1 while the --kms-endpoint answers, 0 while it does not (waiting for it at start, or its last call or probe unanswered; an idle host probes it every --kms-probe-interval, ±20 %); absent with the embedded KMS',
      labelNames: ['endpoint'], registers,
      collect() {
        this.reset();
        const r = self.sources?.remoteKms?.();
        if (r) this.set({ endpoint: r.endpoint }, r.reachable ? 1 : 0);
      },
    });
    new Gauge({
      name: 'ebsd_kms_listener_connections', help: 'Connections open to --kms-listen (each counted against its source\'s cap and the overall one); 0 without a listener',
      registers,
      async collect() {
        // Kept as last read when the front-end worker does not answer (0 would read as "no connections").
        const u = await self.listenerUsage();
        if (u) this.set(u.Connections);
      },
    });
    new Counter({
      name: 'ebsd_kms_listener_refusals_total', help: 'Connections and requests --kms-listen refused by its limits since start, per reason (gave-slot: an open connection closed to make room for another source\'s); each is audited as a KmsConnection event',
      labelNames: ['reason'], registers,
      async collect() {
        const u = await self.listenerUsage();
        if (!u) return;
        this.reset();
        for (const reason of REFUSAL_REASONS) this.inc({ reason }, u.RefusedSinceStart[reason] ?? 0);
      },
    });
    new Counter({
      name: 'ebsd_kms_calls_held_for_io_total', help: 'Callers\' KMS and EBS direct calls (network listener and control socket) that waited for a turn because the volume data path was busy (--kms-rate-while-io-busy), since start',
      registers,
      collect() {
        const h = self.sources?.callsHeldForIo?.();
        if (!h) return;
        this.reset();
        this.inc(h.held);
      },
    });
    new Gauge({
      name: 'ebsd_kms_calls_waiting_for_io', help: 'Callers\' KMS and EBS direct calls waiting now for a turn while the volume data path is busy',
      registers,
      collect() {
        const h = self.sources?.callsHeldForIo?.();
        if (h) this.set(h.waiting);
      },
    });
    new Gauge({
      name: 'ebsd_volumes_unserved', help: 'Volumes recorded in-use on this host but not served under the mount (waiting for the KMS at start, or a re-attach that failed)',
      registers,
      collect() {
        this.set(self.sources?.volumesUnserved() ?? 0);
      },
    });
    new Gauge({
      name: 'ebsd_volume_stale_loop_devices', help: 'Loop devices still bound to a file of the volume that a previous daemon served (it stopped or was killed under them): every request on them fails with EIO until they are detached (losetup -d)',
      labelNames: ['volume_id'], registers,
      async collect() {
        this.reset();
        for (const u of await self.staleUsersRead()) this.set({ volume_id: u.volumeId }, u.loopDevices);
      },
    });
    new Gauge({
      name: 'ebsd_volume_cut_off_handles', help: 'Handles still open on a file of the volume removed while open (a forced detach): every request on them fails with EIO until they are closed',
      labelNames: ['volume_id'], registers,
      async collect() {
        this.reset();
        for (const u of await self.staleUsersRead()) this.set({ volume_id: u.volumeId }, u.cutOffHandles);
      },
    });
    new Gauge({
      name: 'ebsd_fuse_mount_lost', help: '1 when the daemon\'s FUSE mount was unmounted from outside: no volume file can be opened until the daemon is restarted',
      registers,
      collect() {
        this.set(self.sources?.mountLost?.() ? 1 : 0);
      },
    });
    new Counter({
      name: 'ebsd_audit_events_written_total', help: 'Audit events written to the hash-chained log by this daemon',
      registers,
      collect() {
        this.reset();
        this.inc(self.sources?.auditEventsWritten() ?? 0);
      },
    });
    new Gauge({
      name: 'ebsd_audit_log_state', help: `1 for the audit log's disk state (${AUDIT_STATES.join(', ')}: past the reserve, audited KMS calls fail)`,
      labelNames: ['state'], registers,
      collect() {
        this.reset();
        const h = self.sources?.auditHealth?.();
        if (h) for (const st of AUDIT_STATES) this.set({ state: st }, h.state === st ? 1 : 0);
      },
    });
    new Gauge({
      name: 'ebsd_audit_log_tampered', help: '1 when the audit log did not reach its seal high-water mark at start (nothing is signed until an operator looks), else 0',
      registers,
      collect() {
        const h = self.sources?.auditHealth?.();
        if (h) this.set(h.tampered ? 1 : 0);
      },
    });
    new Counter({
      name: 'ebsd_audit_events_failed_total', help: 'Audit events whose write failed; the KMS calls they recorded failed with them',
      registers,
      collect() {
        this.reset();
        this.inc(self.sources?.auditHealth?.().failedEvents ?? 0);
      },
    });
    new Counter({
      name: 'ebsd_audit_refusal_events_dropped_total', help: 'Refused callers\' audit events dropped (counted, not written) while the audit disk was short',
      registers,
      collect() {
        this.reset();
        this.inc(self.sources?.auditHealth?.().droppedRefusalEvents ?? 0);
      },
    });
    new Gauge({
      name: 'ebsd_snapshots_in_progress', help: 'Snapshot creates of this daemon under way (pending: from their pending manifest to completed or error)',
      registers,
      collect() {
        this.set(self.sources?.snapshotsInProgress?.().length ?? 0);
      },
    });
    new Gauge({
      name: 'ebsd_snapshot_copied_ratio', help: 'Share (0..1) of the blocks copied by the volume\'s snapshot under way; absent when none is (one at a time per volume)',
      labelNames: ['volume_id'], registers,
      collect() {
        this.reset();
        for (const r of self.sources?.snapshotsInProgress?.() ?? []) this.set({ volume_id: r.volumeId }, r.copiedRatio);
      },
    });
    this.snapshotDuration = new Histogram({
      name: 'ebsd_snapshot_create_duration_seconds', help: 'Snapshot creates, CreateSnapshot to completed or error, by the state they ended in (its _count: creates ended)',
      labelNames: ['state'], buckets: [...SNAPSHOT_BUCKETS_SECONDS], registers,
    });
    this.snapshotDuration.zero({ state: 'completed' });
    this.snapshotDuration.zero({ state: 'error' });
    this.auditWrite = new Histogram({
      name: 'ebsd_audit_write_duration_seconds', help: 'Audit log batch writes (events written together, fdatasync included when the log syncs each event), by result',
      labelNames: ['result'], buckets: [...AUDIT_WRITE_BUCKETS_SECONDS], registers,
    });
    this.auditWrite.zero({ result: 'ok' });
    this.auditWrite.zero({ result: 'failed' });
    // The failures EbsdKmsErrors (contrib/prometheus/ebsd-alerts.yml) watches, at 0 from start on the
    // volume-key path: a series created at its first error has no earlier sample, and rate() misses that burst.
    for (const operation of ZEROED_KMS_OPERATIONS) {
      for (const outcome of ZEROED_KMS_OUTCOMES) this.kmsCalls.inc({ operation, outcome: this.bounded('kms_outcome', outcome) }, 0);
    }
    this.controlCalls = new Counter({
      name: 'ebsd_control_requests_total', help: 'Control-API requests by operation (X-Amz-Target) and result',
      labelNames: ['operation', 'result'], registers,
    });
  }

  /**
   * What holds stale volume files, for one collect: its two series from one read of sysfs, not two
   * (the registry collects every metric at once; the read is shared while it runs, then dropped, so
   * the next collect reads afresh and a loop device detached since is not counted).
   */
  private staleUsersRead(): Promise<{ volumeId: string; loopDevices: number; cutOffHandles: number }[]> {
    if (!this.staleRead) {
      const u = this.sources?.staleUsers?.() ?? Promise.resolve([]);
      this.staleRead = u;
      const drop = (): void => { if (this.staleRead === u) this.staleRead = undefined; };
      u.then(drop, drop);
    }
    return this.staleRead;
  }

  /** The listener's usage for one scrape: its two series from one answer of the front-end worker, not two. */
  private listenerUsage(): Promise<KmsListenerUsage | undefined> {
    const now = Date.now();
    if (!this.usageRead || now - this.usageRead.at > LISTENER_USAGE_REUSE_MS) {
      this.usageRead = { at: now, u: this.sources?.kmsListener?.() ?? Promise.resolve(undefined) };
    }
    return this.usageRead.u;
  }

  /** Connect the daemon's live state; until then the gauges are empty. */
  bind(sources: MetricsSources): void {
    this.sources = sources;
  }

  /** AuditLog.onBatchWritten: one observation per batch written or failed. */
  readonly observeAuditBatch = (_events: number, seconds: number, ok: boolean): void => {
    this.auditWrite.observe({ result: ok ? 'ok' : 'failed' }, seconds);
  };

  /** SnapshotManager's onCreateEnded: one observation per create ended. */
  readonly observeSnapshotEnd = (state: 'completed' | 'error', seconds: number): void => {
    this.snapshotDuration.observe({ state }, seconds);
  };

  /** The BlockFileSystem `observe` option: one stats object per volume, kept across detach/attach. */
  readonly observeVolume = (volumeId: string): IoObserver => {
    let s = this.volumes.get(volumeId);
    if (!s) { s = new VolumeIoStats(volumeId); this.volumes.set(volumeId, s); }
    return s.observe;
  };

  /** Stats of attached volumes; those of volumes no longer attached are dropped (their series end). */
  private liveVolumes(): VolumeIoStats[] {
    const live = new Set(this.sources?.attached() ?? []);
    for (const id of this.volumes.keys()) if (!live.has(id)) this.volumes.delete(id);
    return [...this.volumes.values()];
  }

  /** `value`, or `other` once `label` has seen MAX_LABEL_VALUES distinct values. */
  private bounded(label: string, value: string): string {
    let seen = this.labelSeen.get(label);
    if (!seen) this.labelSeen.set(label, (seen = new Set()));
    if (seen.has(value)) return value;
    if (seen.size >= MAX_LABEL_VALUES) return 'other';
    seen.add(value);
    return value;
  }

  /** A KmsCore that counts and times every call made through it. */
  meterKms(core: KmsCore, known: (operation: string) => boolean): KmsCore {
    return {
      call: async (operation: string, request: KmsRequest, caller: Caller, requestId?: string): Promise<KmsResponse> => {
        const op = known(operation) ? operation : 'other';
        const t0 = performance.now();
        let err: unknown;
        try {
          return await core.call(operation, request, caller, requestId);
        } catch (e) {
          err = e ?? new Error('undefined thrown');
          throw e;
        } finally {
          this.kmsCalls.inc({ operation: op, outcome: this.bounded('kms_outcome', outcomeOf(err)) });
          this.kmsLatency.observe({ operation: op }, (performance.now() - t0) / 1000);
        }
      },
      close: () => core.close(),
    };
  }

  /**
   * A KeyService (the volume layer's door to a KMS; a remote endpoint's is
   * `AwsKeyService`) whose KMS operations are counted and timed like the
   * embedded core's, under the same metric names.
   */
  meterKeyService<T extends KeyService>(ks: T): T {
    return new Proxy(ks, {
      get: (target, prop, receiver) => {
        const v = Reflect.get(target, prop, receiver) as unknown;
        const operation = typeof prop === 'string' ? KEY_SERVICE_OPERATIONS.get(prop) : undefined;
        if (operation === undefined || typeof v !== 'function') return v;
        return async (...args: unknown[]): Promise<unknown> => {
          const t0 = performance.now();
          let err: unknown;
          try {
            return await (v as (...a: unknown[]) => Promise<unknown>).apply(target, args);
          } catch (e) {
            err = e ?? new Error('undefined thrown');
            throw e;
          } finally {
            this.kmsCalls.inc({ operation, outcome: this.bounded('kms_outcome', outcomeOf(err)) });
            this.kmsLatency.observe({ operation }, (performance.now() - t0) / 1000);
          }
        };
      },
    });
  }

  /**
   * Count one control-API request (the daemon's handler wraps itself with this). `known`: the
   * target is one the daemon dispatches; any other is `other` and never takes a place among the
   * label's values, so a caller (refused or not) cannot fill the set and push the daemon's own
   * operations out to `other`.
   */
  controlRequest(target: string, known: boolean, err: unknown): void {
    const operation = known ? this.bounded('control_operation', target) : 'other';
    this.controlCalls.inc({ operation, result: this.bounded('control_result', outcomeOf(err)) });
  }

  /** Serve `GET /metrics` on HOST:PORT (metrics-listener.ts); resolves with the bound address (PORT 0: a free port). */
  async listen(spec: string, log: Logger, opts: { stalledAnswerMs?: number } = {}): Promise<{ host: string; port: number }> {
    const l = new MetricsListener(this.registry, opts.stalledAnswerMs);
    const at = await l.listen(spec, log);
    this.listener = l;
    return at;
  }

  async close(): Promise<void> {
    const l = this.listener;
    this.listener = undefined;
    await l?.close();
  }
}

/**
 * A histogram whose buckets live in VolumeIoStats; prom-client formats it
 * (the registry takes any object with `name` and `get()` in its own shape).
 */
class _SnapshotHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  constructor(readonly name: string, readonly help: string, private readonly vols: () => VolumeIoStats[]) {}

  get(): { name: string; help: string; type: string; aggregator: string; values: { labels: Record<string, string | number>; value: number; metricName: string }[] } {
    const values: { labels: Record<string, string | number>; value: number; metricName: string }[] = [];
    for (const v of this.vols()) {
      for (let i = 0; i < 3; i++) {
        const labels = { volume_id: v.volumeId, operation: OPS[i]! };
        const b = v.buckets[i]!;
        let acc = 0;
        for (let j = 0; j < BUCKETS_MICROS.length; j++) {
          acc += b[j]!;
          values.push({ labels: { ...labels, le: LATENCY_BUCKETS_SECONDS[j]! }, value: acc, metricName: `${this.name}_bucket` });
        }
        acc += b[BUCKETS_MICROS.length]!;
        values.push({ labels: { ...labels, le: '+Inf' }, value: acc, metricName: `${this.name}_bucket` });
        values.push({ labels, value: v.latencySum[i]! / 1e6, metricName: `${this.name}_sum` });
        values.push({ labels, value: v.timed[i]!, metricName: `${this.name}_count` });
      }
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  reset(): void {}
}

export type { IoOp };
