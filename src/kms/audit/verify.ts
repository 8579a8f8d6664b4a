/**
 * `verifyAuditLog(dir)`: checks the hash chain across the sealed log files
 * (`events.<first sequence>.ndjson`, oldest first) and the live
 * `events.ndjson`, read as one stream, and the signed digests in `digests/`, and names the first event that was modified,
 * removed, reordered or is missing (truncation of the sealed part).
 * The seal high-water mark (`<kms>/audit-mark.json`, seal-mark.ts) names the
 * last digest the daemon signed: digests that end before it are reported
 * `missing-digest` (deleted digests, however consistent what remains is).
 * Events written after the last digest are chained but not yet signed: a
 * truncation of that tail is undetectable until the next seal (see docs).
 */
import { createPublicKey, verify as edVerify } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { devLoaderUrl } from '../hsm/hsm-client.js';
import { markPathOf, readSealMark, type SealMark } from './seal-mark.js';
import { DIGEST_DIR, GENESIS_HASH, PUBLIC_KEY_FILE, auditLogFiles, digestPayload, sha256hex, type DigestFile } from './audit-log.js';

export type AuditProblemKind = 'modified' | 'removed' | 'reordered' | 'missing' | 'bad-digest' | 'missing-digest' | 'bad-mark';

export interface AuditProblem {
  kind: AuditProblemKind;
  /** Sequence number of the event concerned (for digests: of the digest's last event). */
  sequence: number;
  eventID?: string;
  /** 1-based line in `file`, when the event is there. */
  line?: number;
  /** The log file holding the event (events.ndjson or a sealed events.<seq>.ndjson). */
  file?: string;
  detail: string;
}

export interface AuditVerifyResult {
  ok: boolean;
  events: number;
  digests: number;
  /** Log files read, oldest first. */
  files: string[];
  /** Last sequence number covered by a valid signed digest (-1: none). */
  sealedThrough: number;
  /** Last sequence the seal high-water mark says was signed (absent: no mark). */
  markThrough?: number;
  problem?: AuditProblem;
}

/** `markPath`: the seal high-water mark (default: `audit-mark.json` beside `dir`). */
export function verifyAuditLog(dir: string, opts: { publicKeyPem?: string; markPath?: string } = {}): AuditVerifyResult {
  const pem = opts.publicKeyPem ?? readFileSync(join(dir, PUBLIC_KEY_FILE), 'utf8');
  const pub = createPublicKey(pem);
  const fp = sha256hex(pem);

  // 1. Digests: signatures, chain, contiguous coverage.
  const ddir = join(dir, DIGEST_DIR);
  const names = existsSync(ddir) ? readdirSync(ddir).filter((f) => /^\d{12}\.json$/.test(f)).sort() : [];
  const digests: DigestFile[] = [];
  const files = auditLogFiles(dir);
  let prevHash: string | null = null;
  let covered = -1;
  let mark: SealMark | undefined;
  const res = (problem?: AuditProblem, events = 0): AuditVerifyResult => ({
    ok: !problem, events, digests: digests.length, files, sealedThrough: covered,
    ...(mark ? { markThrough: mark.lastSequence } : {}),
    ...(problem ? { problem } : {}),
  });
  for (const n of names) {
    let d: DigestFile;
    try { d = JSON.parse(readFileSync(join(ddir, n), 'utf8')) as DigestFile; } catch {
      return res({ kind: 'bad-digest', sequence: Number(n.slice(0, 12)), detail: `digest ${n} is not valid JSON` });
    }
    const sigOk = typeof d.signature === 'string' && d.publicKeyFingerprint === fp &&
      edVerify(null, Buffer.from(digestPayload(d)), pub, Buffer.from(d.signature, 'base64'));
    if (!sigOk) return res({ kind: 'bad-digest', sequence: d.lastSequence, detail: `digest ${n} has an invalid signature` });
    if (d.previousDigestHash !== prevHash || d.firstSequence !== covered + 1) {
      return res({ kind: 'bad-digest', sequence: d.lastSequence, detail: `digest ${n} does not follow the previous digest (a digest was removed or replaced)` });
    }
    prevHash = sha256hex(digestPayload(d));
    covered = d.lastSequence;
    digests.push(d);
  }
  const digestAt = new Map(digests.map((d) => [d.lastSequence, d]));

  // 1b. The seal high-water mark: the digests must reach the last one signed.
  const markPath = opts.markPath ?? markPathOf(dir);
  const m = readSealMark(markPath, pub, fp);
  if (m.error) return res({ kind: 'bad-mark', sequence: -1, detail: m.error });
  mark = m.mark;
  if (mark && mark.lastSequence > covered) {
    return res({ kind: 'missing-digest', sequence: covered + 1,
      detail: `digests sealing events ${covered + 1}..${mark.lastSequence} are missing: the seal high-water mark ${markPath} records digest ${mark.digestFile} as signed` });
  }
  if (mark) {
    const d = digestAt.get(mark.lastSequence);
    if (!d || sha256hex(digestPayload(d)) !== mark.digestHash) {
      return res({ kind: 'bad-digest', sequence: mark.lastSequence, detail: `digest ${mark.digestFile} is not the one the seal high-water mark ${markPath} records` });
    }
  }

  // 2. Events: sequence, chain, digest anchors; one file in memory at a time.
  let expected = 0;
  let prevLineHash = GENESIS_HASH;
  let prevId: string | undefined;
  let prevAt: { file: string; line: number } | undefined;
  let count = 0;
  for (const file of files) {
    const text = readFileSync(join(dir, file), 'utf8');
    const lines = text.length ? text.replace(/\n$/, '').split('\n') : [];
    // Every line's sequence number, parsed only when one is out of place (to tell reordered from removed).
    const seqsOf = (): (number | undefined)[] => lines.map((l) => { try { return (JSON.parse(l) as { sequenceNumber?: number }).sequenceNumber; } catch { return undefined; } });
    for (let i = 0; i < lines.length; i++, count++) {
      const line = lines[i]!;
      const at = { file, line: i + 1 };
      let ev: { sequenceNumber?: unknown; previousEventHash?: unknown; eventID?: string };
      try { ev = JSON.parse(line); } catch {
        return res({ kind: 'modified', sequence: expected, ...at, detail: `${file} line ${i + 1} is not valid JSON` }, count);
      }
      const s = ev.sequenceNumber;
      if (typeof s !== 'number') return res({ kind: 'modified', sequence: expected, ...at, detail: `${file} line ${i + 1} has no sequence number` }, count);
      if (s !== expected) {
        if (s < expected || seqsOf().indexOf(expected, i + 1) >= 0) {
          return res({ kind: 'reordered', sequence: Math.min(s, expected), ...at, eventID: ev.eventID, detail: `event ${s} found where event ${expected} belongs` }, count);
        }
        return res({ kind: 'removed', sequence: expected, ...at, detail: `event ${expected} is absent (next present: ${s})` }, count);
      }
      if (ev.previousEventHash !== prevLineHash) {
        return res(expected === 0
          ? { kind: 'modified', sequence: 0, ...at, eventID: ev.eventID, detail: 'first event does not start the chain' }
          : { kind: 'modified', sequence: expected - 1, ...(prevAt ?? {}), ...(prevId ? { eventID: prevId } : {}), detail: `event ${expected - 1} does not match the hash recorded in event ${expected}` }, count);
      }
      prevLineHash = sha256hex(line);
      const d = digestAt.get(s);
      if (d && d.lastEventHash !== prevLineHash) {
        return res({ kind: 'modified', sequence: s, ...at, eventID: ev.eventID, detail: `event ${s} does not match the hash sealed in its digest` }, count);
      }
      prevId = ev.eventID;
      prevAt = at;
      expected++;
    }
  }
  if (covered >= expected) {
    return res({ kind: 'missing', sequence: expected, detail: `events ${expected}..${covered} are sealed by a digest but absent from the log (truncated)` }, count);
  }
  return res(undefined, count);
}

/**
 * `verifyAuditLog` on a worker thread. It reads every log file, 64 MiB each
 * and never pruned, and hashes and parses every line: on the daemon's main
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
