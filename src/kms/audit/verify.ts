/**
 * `verifyAuditLog(dir)`: checks the hash chain across the sealed log files
 * (`events.<first sequence>.ndjson`, oldest first) and the live
 * `events.ndjson`, read as one stream, and the signed digests in `digests/`, and names every event that was modified,
 * removed, reordered or is missing (truncation of the sealed part), the first
 * `MAX_AUDIT_PROBLEMS` of them listed and the rest counted.
 * The seal high-water mark (`<kms>/audit-mark.json`, seal-mark.ts) names the
 * last digest the daemon signed: digests that end before it are reported
 * `missing-digest` (deleted digests, however consistent what remains is).
 * Events written after the last digest are chained but not yet signed: a
 * truncation of that tail is undetectable until the next seal (see docs).
 */
import { createPublicKey, verify as edVerify } from 'node:crypto';
import { closeSync, existsSync, fstatSync, openSync, readdirSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { devLoaderUrl } from '../hsm/hsm-client.js';
import { markPathOf, readSealMark, type SealMark } from './seal-mark.js';
import { readPruneRecord } from './prune-record.js';
import { DIGEST_DIR, GENESIS_HASH, PUBLIC_KEY_FILE, auditLogFiles, digestPayload, sha256hex, type DigestFile } from './audit-log.js';
import { DIGEST_FILE, EVENTS_FILE, digestSeqOf, sealedFirstSeq } from './log-files.js';

export type AuditProblemKind = 'modified' | 'removed' | 'reordered' | 'missing' | 'bad-digest' | 'missing-digest' | 'bad-mark' | 'bad-prune-record';

export interface AuditProblem {
  kind: AuditProblemKind;
  /** Sequence number of the event concerned (for digests: of the digest's last event). */
  sequence: number;
  eventID?: string;
  /** 1-based line in `file`, when the event is there. */
  line?: number;
  /** The log file holding the event (events.ndjson or a sealed events.<seq>.ndjson), or the digest (digests/<seq>.json). */
  file?: string;
  detail: string;
}

export interface AuditVerifyResult {
  ok: boolean;
  events: number;
  digests: number;
  /** Log files read, oldest first. */
  files: string[];
  /**
   * Last sequence number covered by the valid signed digests, contiguous from
   * the first (-1: none); a digest past a broken link does not count.
   */
  sealedThrough: number;
  /** Last sequence the seal high-water mark says was signed (absent: no mark). */
  markThrough?: number;
  /** The last event `ebsd audit prune` removed, from its signed record: the log is checked from the next (absent: none). */
  prunedThrough?: number;
  /** The first problem found (`problems[0]`); absent when `ok`. */
  problem?: AuditProblem;
  /** Every problem found, in the order found, the first `MAX_AUDIT_PROBLEMS` of them. */
  problems: AuditProblem[];
  /** How many problems were found in all (more than `problems.length` past the bound). */
  problemCount: number;
}

/** How many problems one verification lists; past it they are only counted. */
export const MAX_AUDIT_PROBLEMS = 100;

/**
 * `markPath`: the seal high-water mark (default: `audit-mark.json` beside `dir`).
 * Verification goes on past a problem, so a damaged log is described in one
 * pass: after each problem it takes up the chain again at the next line it
 * can (a removed range is reported once, a reordered run once, a modified
 * event once however many checks it fails).
 */
export function verifyAuditLog(dir: string, opts: { publicKeyPem?: string; markPath?: string } = {}): AuditVerifyResult {
  const pem = opts.publicKeyPem ?? readFileSync(join(dir, PUBLIC_KEY_FILE), 'utf8');
  const pub = createPublicKey(pem);
  const fp = sha256hex(pem);

  const problems: AuditProblem[] = [];
  let problemCount = 0;
  const report = (p: AuditProblem): void => {
    problemCount++;
    if (problems.length < MAX_AUDIT_PROBLEMS) problems.push(p);
  };

  // 0. A signed prune record: the log begins after the last event it removed (prune-record.ts).
  const pr = readPruneRecord(dir, pub, fp);
  if (pr.error) report({ kind: 'bad-prune-record', sequence: -1, detail: `${pr.error}: the log is checked as if nothing had been pruned` });
  const pruned = pr.record;
  const start = pruned ? pruned.prunedThrough : -1;

  // 1. Digests: signatures, chain, contiguous coverage.
  const ddir = join(dir, DIGEST_DIR);
  // Named by their last sequence: those a prune removed (left by a crash during one) are not read.
  const names = existsSync(ddir) ? readdirSync(ddir).filter((f) => DIGEST_FILE.test(f) && digestSeqOf(f) > start).sort() : [];
  const digests: DigestFile[] = [];
  const all = auditLogFiles(dir);
  // Sealed files a crash left after a prune's record (events at or before `start` only): by the next file's
  // name, or for the last sealed one by its own last event. Any other line at or before `start` is reordered.
  const files = all.filter((f, i) => {
    if (f === EVENTS_FILE || start < 0) return true;
    const next = all[i + 1];
    if (next !== undefined && next !== EVENTS_FILE) return sealedFirstSeq(next) > start + 1;
    const last = lastSequenceOf(join(dir, f));
    return last === undefined || last > start;
  });
  let prevHash: string | null = pruned ? pruned.lastDigestHash : null;
  let covered = start;
  let sealedThrough: number | undefined; // set at the first broken link
  // After an unreadable digest the next one cannot follow it: that break is the one already reported.
  let afterBadDigest = false;
  for (const n of names) {
    let d: DigestFile;
    try { d = JSON.parse(readFileSync(join(ddir, n), 'utf8')) as DigestFile; } catch {
      report({ kind: 'bad-digest', sequence: digestSeqOf(n), file: join(DIGEST_DIR, n), detail: `digest ${n} is not valid JSON` });
      sealedThrough ??= covered;
      afterBadDigest = true;
      continue;
    }
    const sigOk = typeof d.signature === 'string' && d.publicKeyFingerprint === fp &&
      edVerify(null, Buffer.from(digestPayload(d)), pub, Buffer.from(d.signature, 'base64'));
    if (!sigOk) {
      report({ kind: 'bad-digest', sequence: d.lastSequence, file: join(DIGEST_DIR, n), detail: `digest ${n} has an invalid signature` });
      sealedThrough ??= covered;
      afterBadDigest = true;
      continue;
    }
    if (d.previousDigestHash !== prevHash || d.firstSequence !== covered + 1) {
      if (!afterBadDigest) report({ kind: 'bad-digest', sequence: d.lastSequence, file: join(DIGEST_DIR, n), detail: `digest ${n} does not follow the previous digest (a digest was removed or replaced)` });
      sealedThrough ??= covered;
    }
    // Signed by the HSM's key, so its anchor is checked whatever came before it.
    afterBadDigest = false;
    prevHash = sha256hex(digestPayload(d));
    // A duplicated (older) digest does not take the coverage back.
    covered = Math.max(covered, d.lastSequence);
    digests.push(d);
  }
  const digestAt = new Map(digests.map((d) => [d.lastSequence, d]));

  // 1b. The seal high-water mark: the digests must reach the last one signed.
  const markPath = opts.markPath ?? markPathOf(dir);
  const m = readSealMark(markPath, pub, fp);
  if (m.error) report({ kind: 'bad-mark', sequence: -1, detail: m.error });
  const mark: SealMark | undefined = m.error ? undefined : m.mark;
  if (mark && mark.lastSequence > covered) {
    report({ kind: 'missing-digest', sequence: covered + 1,
      detail: `digests sealing events ${covered + 1}..${mark.lastSequence} are missing: the seal high-water mark ${markPath} records digest ${mark.digestFile} as signed` });
  } else if (mark) {
    const d = digestAt.get(mark.lastSequence);
    if (!d || sha256hex(digestPayload(d)) !== mark.digestHash) {
      report({ kind: 'bad-digest', sequence: mark.lastSequence, detail: `digest ${mark.digestFile} is not the one the seal high-water mark ${markPath} records` });
    }
  }

  // 2. Events: sequence, chain, digest anchors; one file in memory at a time.
  let expected = start + 1;
  /** Hash of the last event taken in order; undefined: the line before it is lost (removed or unreadable), nothing to check against. */
  let prevLineHash: string | undefined = pruned ? pruned.lastEventHash : GENESIS_HASH;
  let prevId: string | undefined;
  let prevAt: { file: string; line: number } | undefined;
  /** The last event already reported as modified: the next event's link to it is not reported again. */
  let modifiedSeq = -1;
  /** Unreadable lines since the last event read: each may stand for one event (a modified line) or none (an inserted one). */
  let junk = 0;
  let count = 0;
  /** One event read as a line: its checks against the chain and its digest. */
  type Line = { seq: number; hash: string; prevHash: unknown; eventID?: string; at: { file: string; line: number } };
  const take = (e: Line): void => {
    if (prevLineHash !== undefined && e.prevHash !== prevLineHash && modifiedSeq !== e.seq - 1) {
      report(e.seq === 0
        ? { kind: 'modified', sequence: 0, ...e.at, eventID: e.eventID, detail: 'first event does not start the chain' }
        : pruned && e.seq === start + 1
        ? { kind: 'modified', sequence: e.seq, ...e.at, eventID: e.eventID, detail: `event ${e.seq} does not follow event ${start}, the last one pruned (its hash is in the prune record)` }
        : { kind: 'modified', sequence: e.seq - 1, ...(prevAt ?? {}), ...(prevId ? { eventID: prevId } : {}), detail: `event ${e.seq - 1} does not match the hash recorded in event ${e.seq}` });
    }
    const d = digestAt.get(e.seq);
    if (d && d.lastEventHash !== e.hash) {
      report({ kind: 'modified', sequence: e.seq, ...e.at, eventID: e.eventID, detail: `event ${e.seq} does not match the hash sealed in its digest` });
      modifiedSeq = e.seq;
    }
    prevLineHash = e.hash;
    prevId = e.eventID;
    prevAt = e.at;
    expected = e.seq + 1;
  };
  for (const file of files) {
    const text = readFileSync(join(dir, file), 'utf8');
    const lines = text.length ? text.replace(/\n$/, '').split('\n') : [];
    // Each sequence number's last line in this file, built only when one is out of place (to tell
    // reordered from removed) and then once: a search of the lines after each out-of-place event
    // would make a log with every other event removed cost quadratic time.
    let lastLine: Map<number, number> | undefined;
    const laterLine = (seq: number, i: number): boolean => {
      if (!lastLine) {
        lastLine = new Map();
        for (let j = 0; j < lines.length; j++) {
          let s: unknown;
          try { s = (JSON.parse(lines[j]!) as { sequenceNumber?: unknown }).sequenceNumber; } catch { continue; }
          if (typeof s === 'number') lastLine.set(s, j);
        }
      }
      return (lastLine.get(seq) ?? -1) > i;
    };
    /** Events read ahead of `expected` (a reordered run), checked once the chain reaches them. */
    const early = new Map<number, Line>();
    for (let i = 0; i < lines.length; i++, count++) {
      const line = lines[i]!;
      const at = { file, line: i + 1 };
      let ev: { sequenceNumber?: unknown; previousEventHash?: unknown; eventID?: string } | undefined;
      try { ev = JSON.parse(line); } catch { /* reported below */ }
      const s = ev?.sequenceNumber;
      if (typeof s !== 'number') {
        // Not yet marked as `modifiedSeq`: if it was inserted, the event after it is checked in full (below).
        report({ kind: 'modified', sequence: expected + junk, ...at, detail: `${file} line ${i + 1} ${ev === undefined ? 'is not valid JSON' : 'has no sequence number'}` });
        junk++;
        continue;
      }
      const e: Line = { seq: s, hash: sha256hex(line), prevHash: ev!.previousEventHash, eventID: ev!.eventID, at };
      if (junk > 0 && s > expected) {
        // The unreadable lines were (up to `junk` of) the events expected..s-1, each reported: nothing to link this one to.
        expected = Math.min(s, expected + junk);
        prevLineHash = undefined;
        modifiedSeq = expected - 1;
      }
      // Otherwise they were inserted (or stand for an event out of place): the chain goes on from the
      // event before them, and the link to this event is still checked, so a modification of this
      // event is reported too, not hidden behind the junk.
      junk = 0;
      if (s < expected || early.has(s)) {
        report({ kind: 'reordered', sequence: s, ...at, eventID: e.eventID, detail: `event ${s} found after event ${expected - 1}${early.has(s) ? ' (twice)' : ''}` });
        continue; // the chain goes on from the event before it
      }
      if (s > expected) {
        if (early.size > 0 || laterLine(expected, i)) {
          if (early.size === 0) report({ kind: 'reordered', sequence: expected, ...at, eventID: e.eventID, detail: `event ${s} found where event ${expected} belongs` });
          early.set(s, e);
          continue;
        }
        report({ kind: 'removed', sequence: expected, ...at, detail: s === expected + 1 ? `event ${expected} is absent (next present: ${s})` : `events ${expected}..${s - 1} are absent (next present: ${s})` });
        expected = s;
        prevLineHash = undefined;
      }
      take(e);
      for (let next = early.get(expected); next; next = early.get(expected)) {
        early.delete(next.seq);
        take(next);
      }
    }
    // A run read ahead whose place never came (only with unreadable lines among it): taken in order, its gaps reported.
    for (const e of [...early.values()].sort((a, b) => a.seq - b.seq)) {
      if (e.seq > expected) {
        report({ kind: 'removed', sequence: expected, ...e.at, detail: `events ${expected}..${e.seq - 1} are absent (next present: ${e.seq})` });
        prevLineHash = undefined;
      }
      take(e);
    }
  }
  if (junk > 0) expected += 1; // a last unreadable line stands for the event it was (reported)
  if (covered >= expected) {
    report({ kind: 'missing', sequence: expected, detail: `events ${expected}..${covered} are sealed by a digest but absent from the log (truncated)` });
  }
  return {
    ok: problemCount === 0, events: count, digests: digests.length, files, sealedThrough: sealedThrough ?? covered,
    ...(mark ? { markThrough: mark.lastSequence } : {}),
    ...(pruned ? { prunedThrough: start } : {}),
    ...(problems.length ? { problem: problems[0] } : {}),
    problems, problemCount,
  };
}

/**
 * `verifyAuditLog` on a worker thread. It reads every log file, 64 MiB each
 * kept until `ebsd audit prune` removes them, and hashes and parses every line: on the daemon's main
 * thread that would stop FUSE requests and key refreshes for as long (2.4 s
 * for 100,000 events on a loaded machine; docs/benchmarks.md, "Audit
 * verification off the main thread"). The worker reads only the log; a
 * failure to read is thrown here with its message.
 */
export function verifyAuditLogOffThread(dir: string, opts: { markPath?: string; publicKeyPem?: string; signal?: AbortSignal } = {}): Promise<AuditVerifyResult> {
  if (opts.signal?.aborted) return Promise.reject(new Error(`audit verification of ${dir} stopped: ${String(opts.signal.reason)}`));
  const dev = import.meta.url.endsWith('.ts');
  const url = new URL(dev ? './verify-thread.ts' : './verify-thread.js', import.meta.url);
  const worker = new Worker(url, {
    workerData: { dir, ...(opts.markPath !== undefined ? { markPath: opts.markPath } : {}), ...(opts.publicKeyPem !== undefined ? { publicKeyPem: opts.publicKeyPem } : {}) },
    execArgv: dev ? ['--import', devLoaderUrl()] : [],
    name: 'audit-verify',
  });
  return new Promise<AuditVerifyResult>((resolve, reject) => {
    worker.once('message', (m: { result?: AuditVerifyResult; error?: string; code?: string }) => {
      if (m.result) resolve(m.result);
      else reject(Object.assign(new Error(`audit verification of ${dir} failed: ${m.error}`), m.code ? { code: m.code } : {}));
    });
    worker.once('error', (e) => reject(e));
    worker.once('exit', (code) => reject(new Error(`the audit verification thread exited (code ${code}) without a result`)));
    // A daemon stopping does not wait for a read of the whole log: the thread is ended.
    opts.signal?.addEventListener('abort', () => reject(new Error(`audit verification of ${dir} stopped: ${String(opts.signal!.reason)}`)), { once: true });
  }).finally(() => void worker.terminate());
}

/** The sequence number of a log file's last line (its last 1 MiB read); undefined when it has none readable. */
function lastSequenceOf(path: string): number | undefined {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    const n = Math.min(size, 1 << 20);
    const buf = Buffer.alloc(n);
    readSync(fd, buf, 0, n, size - n);
    const text = buf.toString('utf8').replace(/\n$/, '');
    const s = (JSON.parse(text.slice(text.lastIndexOf('\n') + 1)) as { sequenceNumber?: unknown }).sequenceNumber;
    return typeof s === 'number' ? s : undefined;
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}
