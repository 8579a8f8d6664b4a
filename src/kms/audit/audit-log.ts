/**
 * Append-only audit log: CloudTrail events as NDJSON in `<audit>/events.ndjson`.
 * Each line carries `sequenceNumber` and `previousEventHash` (SHA-256 hex of the
 * previous line's bytes; 64 zeros for the first), so editing, removing or
 * reordering a line breaks the chain. Every `digestEvery` events, on `seal()`,
 * on close and, from the daemon's tick, once the last digest is an hour old
 * (`sealIfDue`), a digest naming the last sealed event and its hash, chained to
 * the previous digest, is signed by the HSM's Ed25519 audit key and written to
 * `<audit>/digests/`; a digest also catches truncation of the sealed part.
 *
 * Rotation: when the live file passes `rotateBytes` it is renamed
 * `events.<first sequence, 12 digits>.ndjson` and sealed (a digest naming
 * it); a new live file continues the same chain (sequence numbers and hashes
 * run on across files), so `verifyAuditLog` and `tail` read the sealed files
 * and the live one as one stream.
 *
 * Seal high-water mark (seal-mark.ts): each digest is also recorded, signed,
 * in `<kms>/audit-mark.json`, outside the audit directory. At start, digests
 * on disk that end before the mark (deleted), a digest that is not the one
 * the mark names (replaced) or a last sealed event whose hash is not the
 * mark's (re-chained) put the log in the tampered state: events are still
 * written, but no digest is signed until an operator has dealt with it, so
 * the daemon never puts its signature on history it cannot vouch for.
 *
 * Refused callers (an unmapped uid, a throttled connection) are written
 * through `appendRefusal`: aggregated per (caller, operation, reason) and
 * window (refusal-aggregator.ts), and their events are the first dropped when
 * the disk is short.
 *
 * Full disk (disk-reserve.ts): on ENOSPC the log gives up its reserve file
 * and writes on, dropping refused callers' events first, so the calls that
 * must be audited (the host's grant Decrypt on key refresh above all) keep
 * working while the operator is told; only when the reserve is used up too
 * do audited calls fail: a KMS call that cannot be audited must not take effect.
 *
 * Durability (docs/kms-format.md §Audit): `append` resolves once the event was
 * written to the file (page cache) — it survives SIGKILL of the daemon. With
 * `fsync: 'event'` it resolves only after fdatasync, so it also survives power
 * loss; concurrent events share one fdatasync (group commit).
 */
import { createPublicKey, hash, type KeyObject } from 'node:crypto';
import { promises as fsp, mkdirSync, openSync, readSync, fstatSync, closeSync, ftruncateSync, readdirSync, readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { atomicWrite, fsyncDir } from '../../util/atomic-write.js';
import { RefusalAggregator, type RefusalParty } from './refusal-aggregator.js';
import { DIGEST_FILE, EVENTS_FILE, auditLogFiles, digestSeqOf, readLastLines, sealedFirstSeq, sealedName } from './log-files.js';
import { DEFAULT_RESERVE_BYTES, DiskReserve, isNoSpace, type DiskState } from './disk-reserve.js';
import { markPathOf, readSealMark, writeSealMark, type SealMark } from './seal-mark.js';
import { PRUNE_FILE, readPruneRecord, writePruneRecord } from './prune-record.js';
import type { AuditVerifyResult } from './verify.js';
import { EbsdError } from '../../util/errors.js';
import type { Logger } from '../../util/logger.js';
import type { Hsm } from '../hsm/hsm-client.js';

export { EVENTS_FILE, SEALED_FILE, auditLogFiles, sealedName } from './log-files.js';
export const DIGEST_DIR = 'digests';
export const PUBLIC_KEY_FILE = 'digest-public-key.pem';
export const GENESIS_HASH = '0'.repeat(64);
export const DEFAULT_ROTATE_BYTES = 64 << 20;
/** `sealIfDue` (the daemon's tick) seals once the last digest is this old (CloudTrail delivers digests hourly). */
export const DEFAULT_SEAL_INTERVAL_MS = 3_600_000;
/**
 * A digest due by count (`digestEvery`) is signed at most this often: a busy KMS (thousands of calls a
 * second) would otherwise sign a digest, and keep its file for good, every few hundred milliseconds.
 */
export const DEFAULT_DIGEST_MIN_INTERVAL_MS = 60_000;
/** While tampered, the "not signing" warning repeats at most this often (the start-up error is the first). */
export const TAMPERED_WARN_MS = 3_600_000;
export interface AuditOptions {
  dir: string;
  hsm: Hsm;
  log: Logger;
  fsync?: 'none' | 'event';
  /** Seal a digest after this many events (default 1000), at most once per `digestMinIntervalMs`. */
  digestEvery?: number;
  /** The least time between two digests due by count (default 60 s; 0: none). */
  digestMinIntervalMs?: number;
  clock?: () => number;
  /** Rotate the live file once it passes this many bytes (default 64 MiB). */
  rotateBytes?: number;
  /** Size of the full-disk reserve (default 4 MiB; 0: none). */
  reserveBytes?: number;
  /** Window over which repeated refusals become one event (default 10 s). */
  refusalWindowMs?: number;
  /** The seal high-water mark (default `<dir>/../audit-mark.json`, seal-mark.ts). */
  markPath?: string;
  /** `sealIfDue` seals once the last digest is this old (default 1 hour). */
  sealIntervalMs?: number;
}

/** Disk state of the audit log, for `ebsd status`. */
export interface AuditHealth {
  /** ok | reserve-in-use (disk full; refused callers' events dropped) | failing (audited calls fail). */
  State: DiskState;
  ReserveBytes: number;
  DroppedRefusalEvents: number;
  LiveFileBytes: number;
  SealedFiles: number;
  LastError?: string;
  Since?: string;
  /** tampered: the log does not reach the seal high-water mark (IntegrityProblem says how); nothing is signed. */
  Integrity: 'ok' | 'tampered';
  IntegrityProblem?: string;
  /** The last event `ebsd audit prune` removed (the log begins after it); absent: nothing was pruned. */
  PrunedThroughSequence?: number;
}

/** What `AuditLog.prune` removed. */
export interface PruneResult {
  /** The last event removed, by this prune or an earlier one (-1: none ever). */
  PrunedThroughSequence: number;
  /** The sealed log files removed, oldest first. */
  FilesRemoved: string[];
  DigestsRemoved: number;
  BytesFreed: number;
}

export interface DigestFile {
  digestVersion: 1;
  logFile: string;
  firstSequence: number;
  lastSequence: number;
  lastEventHash: string;
  previousDigestHash: string | null;
  digestStartTime: string;
  digestEndTime: string;
  signatureAlgorithm: 'Ed25519';
  publicKeyFingerprint: string;
  signature?: string;
}

/** One-shot `crypto.hash` (a third of createHash's cost): one per audit line. */
export const sha256hex = (s: string | Uint8Array): string => hash('sha256', s, 'hex');
export const digestName = (lastSeq: number): string => `${String(lastSeq).padStart(12, '0')}.json`;
/** The bytes a digest signature covers: the digest without its signature, as written. */
export function digestPayload(d: DigestFile): string {
  const { signature: _s, ...rest } = d;
  return JSON.stringify(rest);
}

interface Pending {
  /** The event's JSON without its closing brace; chain fields are added when written. */
  open: string;
  /** A refused caller's event: dropped first when the disk is short. */
  droppable: boolean;
  resolve: () => void;
  reject: (e: unknown) => void;
}

export class AuditLog {
  private fh!: fsp.FileHandle;
  /** Last event written (its sequence number and line hash): the chain continues from here. */
  private flushedSeq = -1;
  /** Events written since open (not a difference of sequence numbers: a truncated log's sequence jumps past a digest). */
  private writtenEvents = 0;
  private flushedHash = GENESIS_HASH;
  private sealedThrough = -1;
  private prevDigestHash: string | null = null;
  private sealStartTime: number;
  /** When the last digest was signed (from the newest digest at open; the open time when there is none). */
  private lastSealAt: number;
  private pending: Pending[] = [];
  private scheduled = false;
  private flushing: Promise<void> | null = null;
  /** Writes, seals and rotations run one at a time, in order. */
  private queue: Promise<void> = Promise.resolve();
  /**
   * Digests are signed one at a time, in order (each names the one before it), whether due by count
   * (off the write queue: events go on being written while one is signed) or asked for under `queue`.
   */
  private sealChain: Promise<void> = Promise.resolve();
  /** The digest due by count being signed, if one is: one at a time. */
  private countSeal: Promise<void> | undefined;
  /** After a digest due by count failed (disk, HSM), the next is not tried before this (clock ms). */
  private countSealRetryAt = -Infinity;
  /** The last event pruned (prune-record.ts); -1: none. */
  private prunedThrough = -1;
  private fingerprint = '';
  /**
   * The HSM's audit public key (derived from its sealed private key). `ebsd audit verify` checks
   * against this one, not the PEM file beside the log, which anyone able to write the state dir
   * could replace while the daemon runs.
   */
  publicKeyPem = '';
  /** `publicKeyPem` as a key object, for the signed records' checks (seal mark, prune record). */
  private publicKey!: KeyObject;
  private markPath = '';
  /** Why the log cannot be vouched for (seal-mark.ts); set at start, never cleared while running. */
  private integrityProblem: string | undefined;
  /** When the tampered state was last logged (rate limit: TAMPERED_WARN_MS). */
  private tamperedWarnedAt = -Infinity;
  private liveBytes = 0;
  private liveFirstSeq = 0;
  private sealedFiles = 0;
  private readonly disk: DiskReserve;
  private readonly refusals: RefusalAggregator;
  private readonly fsyncMode: 'none' | 'event';
  private readonly digestEvery: number;
  private readonly digestMinIntervalMs: number;
  private readonly rotateBytes: number;
  private readonly sealIntervalMs: number;
  private readonly clock: () => number;
  /** While short of disk: tries the reserve again with no event to write (diskRecheck). */
  private diskRecheck: NodeJS.Timeout | undefined;
  /**
   * Called once per batch written, or failed, with its events and the seconds its write (and
   * fdatasync, with `fsync: 'event'`) took: the daemon's metrics (src/daemon/metrics.ts). A batch
   * that failed failed every audited call in it, so that is what an operator must see first.
   */
  onBatchWritten: ((events: number, seconds: number, ok: boolean) => void) | undefined;
  /** Events whose write failed since open (their calls failed with them). */
  private failedEvents = 0;

  private constructor(private readonly o: AuditOptions) {
    this.fsyncMode = o.fsync ?? 'none';
    this.digestEvery = o.digestEvery ?? 1000;
    this.digestMinIntervalMs = o.digestMinIntervalMs ?? DEFAULT_DIGEST_MIN_INTERVAL_MS;
    this.rotateBytes = o.rotateBytes ?? DEFAULT_ROTATE_BYTES;
    this.clock = o.clock ?? Date.now;
    this.sealStartTime = this.clock();
    this.lastSealAt = this.sealStartTime;
    this.sealIntervalMs = o.sealIntervalMs ?? DEFAULT_SEAL_INTERVAL_MS;
    this.disk = new DiskReserve({ dir: o.dir, bytes: o.reserveBytes ?? DEFAULT_RESERVE_BYTES, log: o.log, clock: this.clock });
    this.refusals = new RefusalAggregator({
      ...(o.refusalWindowMs ? { windowMs: o.refusalWindowMs } : {}),
      clock: this.clock,
      write: (ev) => this.enqueue(openJson(ev), true),
    });
  }

  static async open(o: AuditOptions): Promise<AuditLog> {
    const a = new AuditLog(o);
    await a.init();
    return a;
  }

  private async init(): Promise<void> {
    const { dir } = this.o;
    mkdirSync(join(dir, DIGEST_DIR), { recursive: true, mode: 0o700 });
    const pem = (await this.o.hsm.call({ op: 'auditPublicKey' })).pem;
    this.publicKeyPem = pem;
    this.fingerprint = sha256hex(pem);
    const pkPath = join(dir, PUBLIC_KEY_FILE);
    let old = '';
    try { old = readFileSync(pkPath, 'utf8'); } catch { /* first start */ }
    if (old !== pem) await atomicWrite(pkPath, pem);

    const path = join(dir, EVENTS_FILE);
    const files = auditLogFiles(dir);
    this.sealedFiles = files.filter((f) => f !== EVENTS_FILE).length;
    // The chain continues from the last event of the newest file that holds one.
    let tail: { first: number; last: number; hash: string } | undefined;
    for (let i = files.length - 1; i >= 0 && !tail; i--) tail = this.recoverTail(join(dir, files[i]!), files[i] === EVENTS_FILE);
    if (tail) {
      this.flushedSeq = tail.last;
      this.flushedHash = tail.hash;
    }
    const digests = readdirSync(join(dir, DIGEST_DIR)).filter((f) => DIGEST_FILE.test(f)).sort();
    const last = digests[digests.length - 1];
    let lastDigest: DigestFile | undefined;
    if (last) {
      lastDigest = JSON.parse(readFileSync(join(dir, DIGEST_DIR, last), 'utf8')) as DigestFile;
      this.sealedThrough = lastDigest.lastSequence;
      this.prevDigestHash = sha256hex(digestPayload(lastDigest));
      // A digest dated in the future (clock stepped back) counts as just signed.
      const end = Date.parse(lastDigest.digestEndTime);
      if (Number.isFinite(end)) this.lastSealAt = Math.min(end, this.lastSealAt);
    }
    this.publicKey = createPublicKey(pem);
    const pruned = readPruneRecord(dir, this.publicKey, this.fingerprint);
    if (pruned.record) this.prunedThrough = pruned.record.prunedThrough;
    else if (pruned.error) this.o.log.warn({ dir, problem: pruned.error }, 'audit: the prune record is not valid; ebsd audit verify will report the events it names as removed');
    this.markPath = this.o.markPath ?? markPathOf(dir);
    const { mark, error } = readSealMark(this.markPath, this.publicKey, this.fingerprint);
    const problem = error ?? (mark ? this.checkMark(mark, lastDigest, files, tail) : undefined);
    if (problem) {
      this.integrityProblem = problem;
      this.tamperedWarnedAt = this.clock();
      this.o.log.error({ dir, mark: this.markPath, problem },
        'audit log does not match its seal high-water mark (tampered?); events are still written, but no digest is signed');
    } else if (!mark && lastDigest) {
      // Digests from before the mark existed: the mark starts from them.
      // (Or the mark write after the last digest failed: a disk that was full at the stop.)
      this.o.log.warn({ dir, mark: this.markPath, lastSequence: lastDigest.lastSequence }, 'audit: no seal high-water mark; starting one from the last digest on disk');
      try {
        await this.writeMark(lastDigest, last!);
      } catch (e) {
        // A full disk must not keep the daemon (and its volumes) down: the next digest writes the mark.
        if (!isNoSpace(e)) throw e;
        this.o.log.warn({ dir, mark: this.markPath, err: e }, 'audit: no room to write the seal high-water mark now (disk full); the next digest writes it');
      }
    }
    if (lastDigest && this.flushedSeq < lastDigest.lastSequence) {
      // The files end before events a signed digest covers: the log was
      // truncated or files removed. Never reuse those sequence numbers (their
      // signatures stand): continue after the digest, in the same file, so
      // the intact prefix stays where verify reads it and `audit verify`
      // names the gap where it is (not at sequence 0), and sealing goes on.
      this.o.log.error({ dir, lastWritten: this.flushedSeq, sealedThrough: lastDigest.lastSequence },
        'audit log is missing events a signed digest covers (truncated?); continuing the sequence after the digest');
      this.flushedSeq = lastDigest.lastSequence;
      this.flushedHash = lastDigest.lastEventHash;
    }
    this.fh = await fsp.open(path, 'a', 0o600);
    this.liveBytes = (await this.fh.stat()).size;
    this.liveFirstSeq = this.liveBytes > 0 && tail && files[files.length - 1] === EVENTS_FILE ? tail.first : this.flushedSeq + 1;
    await this.disk.open();
    // The reserve is re-created on the way to writing an event; a daemon with nothing to audit
    // (no volume, no caller) would stay reserve-in-use or failing, its alert firing, long after
    // the operator freed the space. So it is also tried on a timer, in the write queue, while not
    // ok (DiskReserve rate-limits the tries and checks statfs first: cheap when nothing changed).
    this.diskRecheck = setInterval(() => {
      if (this.disk.state !== 'ok') void this.exclusive(() => this.disk.maybeRecover()).catch(() => {});
    }, DISK_RECHECK_MS);
    this.diskRecheck.unref();
  }

  /** Why the files on disk do not reach `mark`, or undefined when they do. */
  private checkMark(mark: SealMark, lastDigest: DigestFile | undefined, files: string[], tail: { last: number; hash: string } | undefined): string | undefined {
    const { dir } = this.o;
    if (!lastDigest || lastDigest.lastSequence < mark.lastSequence) {
      return `digests are missing: the last signed digest sealed events through ${mark.lastSequence} (${this.markPath}), ` +
        `but the digests in ${join(dir, DIGEST_DIR)} ${lastDigest ? `end at ${lastDigest.lastSequence}` : 'are gone'}`;
    }
    const name = digestName(mark.lastSequence);
    let d: DigestFile | undefined;
    try { d = JSON.parse(readFileSync(join(dir, DIGEST_DIR, name), 'utf8')) as DigestFile; } catch { /* reported below */ }
    if (!d || sha256hex(digestPayload(d)) !== mark.digestHash) return `digest ${name} is missing or is not the one signed (${this.markPath})`;
    const h = tail && tail.last === mark.lastSequence ? tail.hash : lineHashAt(dir, files, mark.lastSequence);
    // An absent line is a truncation: handled (and reported by verify) as such below.
    if (h !== undefined && h !== mark.lastEventHash) return `event ${mark.lastSequence} does not match the hash of the last signed digest (${this.markPath})`;
    return undefined;
  }

  private async writeMark(d: DigestFile, file: string): Promise<void> {
    await writeSealMark(this.markPath, this.o.hsm, {
      lastSequence: d.lastSequence, lastEventHash: d.lastEventHash, digestFile: file,
      digestHash: sha256hex(digestPayload(d)), publicKeyFingerprint: this.fingerprint,
    });
  }

  /**
   * First and last sequence and the last line's hash of one log file; for
   * the live file, a torn tail (possible only after power loss without fsync)
   * is cut off first. Undefined when the file holds no complete event.
   */
  private recoverTail(path: string, live: boolean): { first: number; last: number; hash: string } | undefined {
    let fd: number;
    try { fd = openSync(path, live ? 'r+' : 'r'); } catch { return undefined; }
    try {
      const size = fstatSync(fd).size;
      if (size === 0) return undefined;
      const n = Math.min(size, 1 << 20); // an event is far smaller than 1 MiB (fields are bounded, event.ts)
      const buf = Buffer.alloc(n);
      readSync(fd, buf, 0, n, size - n);
      const cut = buf.lastIndexOf(0x0a) + 1;
      if (cut !== n && live) {
        this.o.log.warn({ file: path, bytes: n - cut }, 'audit log ends in a torn line; truncating it');
        ftruncateSync(fd, size - n + cut);
      }
      if (cut === 0) return undefined;
      const body = buf.subarray(0, cut - 1);
      const line = body.subarray(body.lastIndexOf(0x0a) + 1).toString('utf8');
      const ev = JSON.parse(line) as { sequenceNumber: number };
      const head = Buffer.alloc(Math.min(size, 1 << 20));
      readSync(fd, head, 0, head.length, 0);
      const nl = head.indexOf(0x0a);
      const first = (JSON.parse(head.subarray(0, nl < 0 ? head.length : nl).toString('utf8')) as { sequenceNumber: number }).sequenceNumber;
      return { first, last: ev.sequenceNumber, hash: sha256hex(line) };
    } finally {
      closeSync(fd);
    }
  }

  /** Sequence number of the last event written to the log file (-1: none yet). */
  get writtenThrough(): number {
    return this.flushedSeq;
  }

  /** Events written to the log file since it was opened (metrics: ebsd_audit_events_written_total). */
  get eventsWritten(): number {
    return this.writtenEvents;
  }

  /** Events whose write failed since the log was opened. */
  get failedWrites(): number {
    return this.failedEvents;
  }

  /** onBatchWritten, if set; an observer that throws must not fail the events just written. */
  private observeBatch(events: number, t0: number, ok: boolean): void {
    try {
      this.onBatchWritten?.(events, (performance.now() - t0) / 1000, ok);
    } catch (e) {
      this.o.log.warn({ err: e }, 'audit: the batch observer threw');
    }
  }

  /** Append one event; resolves when it is durable per the fsync mode. */
  append(event: Record<string, unknown>): Promise<void> {
    return this.appendJson(openJson(event));
  }

  /**
   * Append an event given as its JSON text without the closing brace
   * (event.ts, buildEventJson); the chain fields `sequenceNumber` and
   * `previousEventHash` and the brace are added when it is written.
   */
  appendJson(open: string): Promise<void> {
    return this.enqueue(open, false);
  }

  /**
   * A refused caller's event (unmapped uid, throttled connection): aggregated
   * per `key` — say caller, operation and reason — within the refusal window,
   * and dropped (counted) while the disk is short. Resolves when written or counted.
   * `party`: whose refusal it is, the budget its key takes (none: unauthenticated; refusal-aggregator.ts).
   */
  appendRefusal(key: string, event: () => Record<string, unknown>, party?: RefusalParty): Promise<void> {
    return this.refusals.add(key, event, party);
  }

  /** The log's directory (`<kms>/audit`). */
  get dir(): string {
    return this.o.dir;
  }

  /** The seal high-water mark's file (seal-mark.ts), for a verification of this log. */
  get markFile(): string {
    return this.markPath;
  }

  /** Disk state, for `ebsd status`. */
  health(): AuditHealth {
    return {
      State: this.disk.state,
      ReserveBytes: this.disk.held,
      DroppedRefusalEvents: this.disk.dropped,
      LiveFileBytes: this.liveBytes,
      SealedFiles: this.sealedFiles,
      Integrity: this.integrityProblem ? 'tampered' : 'ok',
      ...(this.integrityProblem ? { IntegrityProblem: this.integrityProblem } : {}),
      ...(this.prunedThrough >= 0 ? { PrunedThroughSequence: this.prunedThrough } : {}),
      ...(this.disk.lastError ? { LastError: this.disk.lastError } : {}),
      ...(this.disk.state !== 'ok' ? { Since: new Date(this.disk.since).toISOString() } : {}),
    };
  }

  /**
   * The last `limit` events, newest last, read backwards from the live file
   * and then from the sealed files, so a rotation does not hide recent history.
   */
  async tail(limit: number): Promise<Record<string, unknown>[]> {
    await this.flush();
    const files = auditLogFiles(this.o.dir).reverse();
    let out: string[] = [];
    for (const f of files) {
      if (out.length >= limit) break;
      const lines = await readLastLines(join(this.o.dir, f), limit - out.length);
      out = [...lines, ...out];
    }
    return out.map((l) => JSON.parse(l) as Record<string, unknown>);
  }

  private enqueue(open: string, droppable: boolean): Promise<void> {
    return new Promise((resolve, reject) => {
      this.pending.push({ open, droppable, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => { this.scheduled = false; void this.flush(); });
      }
    });
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn);
    this.queue = run.then(() => {}, () => {});
    return run;
  }

  private flush(): Promise<void> {
    if (this.flushing) return this.flushing;
    this.flushing = this.exclusive(async () => {
      this.flushing = null; // events appended from here on need another pass
      await this.writePending();
    });
    return this.flushing;
  }

  /** Write every pending event (under `exclusive`). */
  private async writePending(): Promise<void> {
    while (this.pending.length) {
      let batch = this.pending.splice(0);
      if (this.disk.state !== 'ok') {
        await this.disk.maybeRecover();
        if ((this.disk.state as DiskState) !== 'ok') {
          // Short of disk: refused callers' events go first (counted), audited calls keep the space.
          const keep: Pending[] = [];
          for (const p of batch) {
            if (p.droppable) { this.disk.dropped++; p.resolve(); } else keep.push(p);
          }
          batch = keep;
          if (batch.length === 0) continue;
        }
      }
      let seq = this.flushedSeq;
      let hash = this.flushedHash;
      const lines: string[] = [];
      for (const p of batch) {
        const line = p.open + (p.open.length > 1 ? ',' : '') + '"sequenceNumber":' + ++seq + ',"previousEventHash":"' + hash + '"}';
        hash = sha256hex(line);
        lines.push(line + '\n');
      }
      const t0 = performance.now();
      try {
        const start = this.liveBytes;
        await this.writeAll(Buffer.from(lines.join('')));
        if (this.fsyncMode === 'event') await this.syncBatch(start, seq, hash);
        this.flushedSeq = seq;
        this.flushedHash = hash;
        this.writtenEvents += batch.length;
        this.disk.wrote();
        this.observeBatch(batch.length, t0, true);
        this.sealIfCounted();
        for (const p of batch) p.resolve();
      } catch (e) {
        this.o.log.error({ err: e, file: join(this.o.dir, EVENTS_FILE) }, 'audit log write failed');
        this.failedEvents += batch.length;
        this.observeBatch(batch.length, t0, false);
        for (const p of batch) p.reject(e);
      }
      if (this.liveBytes >= this.rotateBytes) await this.rotate().catch((e) => this.o.log.error({ err: e }, 'audit log rotation failed'));
    }
  }

  /**
   * Write all of `buf` at the end of the live file. ENOSPC: release the
   * reserve and go on; still ENOSPC: cut the file back to where this batch
   * began (no torn line, the chain stays whole) and fail.
   */
  private async writeAll(buf: Buffer): Promise<void> {
    const start = this.liveBytes;
    let off = 0;
    try {
      while (off < buf.length) {
        try {
          off += (await this.fh.write(buf, off, buf.length - off)).bytesWritten;
        } catch (e) {
          if (!isNoSpace(e) || !(await this.disk.release(e))) throw e;
        }
      }
      this.liveBytes = start + off;
    } catch (e) {
      await this.fh.truncate(start).catch(() => {});
      this.liveBytes = start;
      if (isNoSpace(e)) this.disk.failed(e);
      throw e;
    }
  }

  /**
   * fdatasync the batch just written (from byte `start`, ending at `seq`, `hash`). If that
   * fails the batch fails, and its lines must not stay behind with sequence
   * numbers the next batch would use again: cut the file back to where the
   * batch began, as writeAll does. If even that fails, the lines are still
   * in the file: the chain moves past them, so no number is reused.
   */
  private async syncBatch(start: number, seq: number, hash: string): Promise<void> {
    try {
      await this.fh.datasync();
    } catch (e) {
      try {
        await this.fh.truncate(start);
        this.liveBytes = start;
      } catch (te) {
        this.o.log.error({ err: te, file: join(this.o.dir, EVENTS_FILE) }, 'audit: could not cut back a batch whose fdatasync failed; its events stay in the log');
        this.flushedSeq = seq;
        this.flushedHash = hash;
      }
      throw e;
    }
  }

  /** Seal the live file under its sealed name and continue the chain in a new live file (under `exclusive`). */
  private async rotate(): Promise<void> {
    if (this.flushedSeq < this.liveFirstSeq) return;
    // A digest being signed names the live file: it ends before the file takes its sealed name.
    await this.sealChain;
    const name = sealedName(this.liveFirstSeq);
    await this.fh.datasync();
    await this.fh.close();
    renameSync(join(this.o.dir, EVENTS_FILE), join(this.o.dir, name));
    await fsyncDir(this.o.dir);
    this.fh = await fsp.open(join(this.o.dir, EVENTS_FILE), 'a', 0o600);
    this.liveBytes = 0;
    this.liveFirstSeq = this.flushedSeq + 1;
    this.sealedFiles++;
    // A failed seal (disk, HSM) leaves these events for the next digest to cover.
    await this.sealInTurn(name).catch((e) => this.o.log.error({ err: e, file: name }, 'audit seal of a rotated file failed'));
    this.o.log.info({ file: name, lastSequence: this.flushedSeq }, 'audit log rotated');
  }

  /** Write and sign a digest covering every event written so far, if any is unsealed. */
  seal(): Promise<void> {
    return this.exclusive(async () => {
      // Refusals counted so far are written (enqueued synchronously) and sealed with the rest.
      const summaries = this.refusals.flush();
      await this.writePending();
      await summaries.catch(() => {});
      await this.sealInTurn(EVENTS_FILE);
    });
  }

  /**
   * Seal if events are unsealed and the last digest is `sealIntervalMs` old
   * (or `digestEvery` events behind); for the daemon's periodic tick, so a
   * quiet daemon does not write a digest (two HSM signatures, fsyncs, one file
   * kept for good) every tick. Short of disk, the tick also tries to re-create
   * the reserve: otherwise only the next event written does, and a quiet
   * daemon would report a full disk (`ebsd status`, the metrics) long after
   * space came back.
   */
  sealIfDue(): Promise<void> {
    return this.exclusive(async () => {
      if (this.disk.state !== 'ok') await this.disk.maybeRecover();
      await this.writePending();
      if (this.integrityProblem || this.flushedSeq <= this.sealedThrough) return;
      const now = this.clock();
      if (now - this.lastSealAt < this.sealIntervalMs && !this.dueByCount(now)) return;
      const summaries = this.refusals.flush();
      await this.writePending();
      await summaries.catch(() => {});
      await this.sealInTurn(EVENTS_FILE);
    });
  }

  /**
   * Start a digest if `digestEvery` events are unsealed and the last digest is at least
   * `digestMinIntervalMs` old. Not awaited: the calls whose events were just written answer now,
   * not after two HSM signatures and the fdatasyncs of a digest (which covers what is written when
   * it starts; later events wait for the next one). While tampered nothing is signed and
   * sealedThrough never moves, so nothing starts.
   */
  private sealIfCounted(): void {
    if (this.integrityProblem || this.countSeal) return;
    const now = this.clock();
    if (!this.dueByCount(now) || now < this.countSealRetryAt) return;
    this.countSeal = this.sealInTurn(EVENTS_FILE)
      .catch((e) => {
        // Not again with every batch written: a full disk or a failing HSM would be asked as often as calls come.
        this.countSealRetryAt = this.clock() + this.digestMinIntervalMs;
        this.o.log.error({ err: e }, 'audit seal failed');
      })
      .finally(() => { this.countSeal = undefined; });
  }

  /** `digestEvery` events unsealed, and the last digest at least `digestMinIntervalMs` old. */
  private dueByCount(now: number): boolean {
    return this.flushedSeq - this.sealedThrough >= this.digestEvery && now - this.lastSealAt >= this.digestMinIntervalMs;
  }

  /** Resolves once every digest started so far is signed and written (or has failed, which is logged). */
  sealsSettled(): Promise<void> {
    return this.sealChain;
  }

  /** sealNow after every digest already asked for (sealChain). */
  private sealInTurn(logFile: string): Promise<void> {
    const run = this.sealChain.then(() => this.sealNow(logFile));
    this.sealChain = run.catch(() => {});
    return run;
  }

  /**
   * Sign a digest of every event written when it starts. Run through sealInTurn only: it may run
   * beside writePending (a digest due by count), so it reads the chain's end once, before the
   * fdatasync that makes those events durable, and later events wait for the next digest.
   */
  private async sealNow(logFile: string): Promise<void> {
    const lastSequence = this.flushedSeq;
    const lastEventHash = this.flushedHash;
    if (lastSequence <= this.sealedThrough) return;
    if (this.integrityProblem) {
      // Said at start (error) and then at most hourly: a seal on close, rotation or request is refused quietly in between.
      const now = this.clock();
      if (now - this.tamperedWarnedAt >= TAMPERED_WARN_MS) {
        this.tamperedWarnedAt = now;
        this.o.log.warn({ problem: this.integrityProblem, unsignedFrom: this.sealedThrough + 1, unsignedThrough: lastSequence },
          'audit log is in the tampered state; not signing a digest');
      }
      return;
    }
    if (this.fsyncMode === 'none') await this.fh.datasync(); // a digest never names events that are not on disk
    const now = this.clock();
    const d: DigestFile = {
      digestVersion: 1,
      logFile,
      firstSequence: this.sealedThrough + 1,
      lastSequence,
      lastEventHash,
      previousDigestHash: this.prevDigestHash,
      digestStartTime: new Date(this.sealStartTime).toISOString(),
      digestEndTime: new Date(now).toISOString(),
      signatureAlgorithm: 'Ed25519',
      publicKeyFingerprint: this.fingerprint,
    };
    const payload = digestPayload(d);
    const { signature } = await this.o.hsm.call({ op: 'signAudit', data: Buffer.from(payload) });
    d.signature = Buffer.from(signature).toString('base64');
    const name = digestName(d.lastSequence);
    await atomicWrite(join(this.o.dir, DIGEST_DIR, name), JSON.stringify(d, null, 2) + '\n');
    this.sealedThrough = d.lastSequence;
    this.prevDigestHash = sha256hex(payload);
    this.sealStartTime = now;
    this.lastSealAt = now;
    // After the digest: a mark never runs ahead of the digests on disk.
    await this.writeMark(d, name);
  }

  async close(): Promise<void> {
    clearInterval(this.diskRecheck);
    await this.seal();
    await this.fh.close();
  }

  /**
   * Remove the oldest sealed log files whose every event is older than `before` (ms), with the
   * digests that cover only them (docs/kms-format.md, Retention). Only whole sealed files go, oldest
   * first and without a gap, the last of them ending where a digest ends (so the kept log starts at
   * a signed link); never the live file, nor the newest digest (the seal mark names it) or what it
   * covers. Only over a log that verifies whole (`verify`, run first on a worker): a prune must not
   * launder a removal or an edit by taking the evidence with it, nor be steered by forged times.
   * In order: the call's own event (`eventFor`, with what is to go), made durable and signed by a
   * digest (a removal that cannot be audited does not happen), the signed prune record naming the
   * last event removed (what verify starts from), then the deletions; files a crash left after
   * the record are removed by the next prune. Refused (IncorrectState) while the log is tampered
   * or does not verify.
   */
  async prune(before: number, verify: () => Promise<AuditVerifyResult>, eventFor: (plan: { prunedThrough: number; files: string[] }) => Record<string, unknown>): Promise<PruneResult> {
    const { dir } = this.o;
    const refused = (why: string): EbsdError => new EbsdError('AUDIT_PRUNE_REFUSED', `${why}: nothing was pruned`, { awsName: 'IncorrectState' });
    if (this.integrityProblem) throw refused(`the audit log ${join(dir, EVENTS_FILE)} is in the tampered state (${this.integrityProblem})`);
    await this.seal(); // what verify reads is then signed to its last event
    const v = await verify();
    if (!v.ok) {
      const p = v.problem!;
      throw refused(`ebsd audit verify reports ${v.problemCount} problem${v.problemCount === 1 ? '' : 's'} in the log (the first: ${p.kind} at event ${p.sequence}${p.file ? `, ${p.file}` : ''}: ${p.detail})`);
    }
    return this.exclusive(async () => {
      await this.writePending();
      await this.sealChain;
      const prior = readPruneRecord(dir, this.publicKey, this.fingerprint);
      if (prior.error) throw refused(prior.error);
      const prunedSoFar = prior.record?.prunedThrough ?? -1;
      // Digests by their name (their last sequence, 12 digits); only the one at the cut is read.
      const digestNames = (await fsp.readdir(join(dir, DIGEST_DIR))).filter((f) => DIGEST_FILE.test(f));
      const digestSeqs = new Set(digestNames.map(digestSeqOf));
      const newest = Math.max(-1, ...digestSeqs);
      type Planned = { file: string; bytes: number; last: number; hash: string };
      const leftovers: Planned[] = [];
      const plan: Planned[] = [];
      let pending: Planned[] = [];
      let next = prunedSoFar + 1;
      for (const file of auditLogFiles(dir).filter((f) => f !== EVENTS_FILE)) {
        const last = await lastEventOf(join(dir, file));
        if (!last) break;
        const p = { file, bytes: last.bytes, last: last.seq, hash: last.hash };
        if (last.seq <= prunedSoFar) { leftovers.push(p); continue; } // left by a crash after the record
        // Verified above; the names are checked again here, so a gap can never be cut across.
        if (sealedFirstSeq(file) !== next || !(Date.parse(last.time) < before) || last.seq >= newest) break;
        next = last.seq + 1;
        pending.push(p);
        // A file whose end no digest marks (its rotation's seal failed) goes only with a later one that has one.
        if (digestSeqs.has(last.seq)) { plan.push(...pending); pending = []; }
      }
      const through = plan.at(-1);
      if (through) {
        const d = JSON.parse(await fsp.readFile(join(dir, DIGEST_DIR, digestName(through.last)), 'utf8')) as DigestFile;
        if (d.lastEventHash !== through.hash) throw refused(`event ${through.last} in ${through.file} does not match the hash its digest sealed`);
        const written = this.enqueue(openJson(eventFor({ prunedThrough: through.last, files: plan.map((x) => x.file) })), false);
        await this.writePending();
        await written;
        // Durable and signed before anything goes: a removal whose record could be lost or cut off unsigned does not happen.
        await this.sealInTurn(EVENTS_FILE);
        await writePruneRecord(dir, this.o.hsm, {
          prunedThrough: through.last, lastEventHash: through.hash, lastDigestHash: sha256hex(digestPayload(d)),
          before: new Date(before).toISOString(), time: new Date(this.clock()).toISOString(), publicKeyFingerprint: this.fingerprint,
        });
        this.prunedThrough = through.last;
      }
      const gone = [...leftovers, ...plan];
      if (gone.length === 0) return { PrunedThroughSequence: prunedSoFar, FilesRemoved: [], DigestsRemoved: 0, BytesFreed: 0 };
      const cut = through?.last ?? prunedSoFar;
      // On the pool, not the event loop: a year's prune is thousands of files, and FUSE requests wait on the loop.
      try {
        let removed = 0;
        for (const n of digestNames) {
          if (digestSeqOf(n) > cut) continue;
          await fsp.unlink(join(dir, DIGEST_DIR, n));
          removed++;
        }
        await fsyncDir(join(dir, DIGEST_DIR));
        for (const x of gone) {
          await fsp.unlink(join(dir, x.file));
          this.sealedFiles--;
        }
        await fsyncDir(dir);
        this.o.log.info({ prunedThrough: cut, files: gone.length, digests: removed }, 'audit log pruned');
        return { PrunedThroughSequence: cut, FilesRemoved: gone.map((x) => x.file), DigestsRemoved: removed, BytesFreed: gone.reduce((a, x) => a + x.bytes, 0) };
      } catch (e) {
        throw new EbsdError('AUDIT_PRUNE_PARTIAL', `the audit log is pruned through event ${cut} (recorded in ${join(dir, PRUNE_FILE)}), but not every file went: ${(e as Error)?.message ?? String(e)}; run ebsd audit prune again to finish`, { awsName: 'InternalFailure', cause: e });
      }
    });
  }
}

/** How often a log short of disk tries its reserve again when no event comes to write. */
const DISK_RECHECK_MS = 10_000;

/** An event object as JSON without its closing brace and without chain fields. */
function openJson(event: Record<string, unknown>): string {
  const { sequenceNumber: _s, previousEventHash: _p, ...rest } = event;
  return JSON.stringify(rest).slice(0, -1);
}

/** SHA-256 hex of the line holding event `seq`, searching the files newest first; undefined when absent. */
function lineHashAt(dir: string, files: string[], seq: number): string | undefined {
  for (let i = files.length - 1; i >= 0; i--) {
    const text = readFileSync(join(dir, files[i]!), 'utf8');
    const lines = text.replace(/\n$/, '').split('\n');
    for (const l of lines) {
      let s: unknown;
      try { s = (JSON.parse(l) as { sequenceNumber?: unknown }).sequenceNumber; } catch { continue; }
      if (s === seq) return sha256hex(l);
    }
    let first: unknown;
    try { first = (JSON.parse(lines[0] ?? '') as { sequenceNumber?: unknown }).sequenceNumber; } catch { /* next file */ }
    if (typeof first === 'number' && first <= seq) return undefined;
  }
  return undefined;
}

/**
 * The last event of a log file: its sequence, time, line hash and the file's size; undefined when it
 * holds none. Reads the file's last 64 KiB (an event is rarely longer), then up to 1 MiB (fields are
 * bounded, event.ts), through the pool.
 */
async function lastEventOf(path: string): Promise<{ seq: number; time: string; hash: string; bytes: number } | undefined> {
  const fh = await fsp.open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    for (const want of [64 << 10, 1 << 20]) {
      const n = Math.min(size, want);
      const buf = Buffer.alloc(n);
      await fh.read(buf, 0, n, size - n);
      const text = buf.toString('utf8').replace(/\n$/, '');
      const cut = text.lastIndexOf('\n');
      if (cut < 0 && n < size && n < (1 << 20)) continue; // the last line starts further back
      const line = text.slice(cut + 1);
      if (!line) return undefined;
      const ev = JSON.parse(line) as { sequenceNumber?: unknown; eventTime?: unknown };
      if (typeof ev.sequenceNumber !== 'number' || typeof ev.eventTime !== 'string') return undefined;
      return { seq: ev.sequenceNumber, time: ev.eventTime, hash: sha256hex(line), bytes: size };
    }
    return undefined;
  } finally {
    await fh.close();
  }
}
