/**
 * Append-only audit log: CloudTrail events as NDJSON in `<audit>/events.ndjson`.
 * Each line carries `sequenceNumber` and `previousEventHash` (SHA-256 hex of the
 * previous line's bytes; 64 zeros for the first), so editing, removing or
 * reordering a line breaks the chain. Every `digestEvery` events, on `seal()`
 * and on close, a digest naming the last sealed event and its hash, chained to
 * the previous digest, is signed by the HSM's Ed25519 audit key and written to
 * `<audit>/digests/`; a digest also catches truncation of the sealed part.
 *
 * Durability (docs/kms-format.md §Audit): `append` resolves once the event was
 * written to the file (page cache) — it survives SIGKILL of the daemon. With
 * `fsync: 'event'` it resolves only after fdatasync, so it also survives power
 * loss; concurrent events share one fdatasync (group commit).
 */
import { createHash } from 'node:crypto';
import { promises as fsp, mkdirSync, openSync, readSync, fstatSync, closeSync, ftruncateSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { atomicWrite } from '../../util/atomic-write.js';
import type { Logger } from '../../util/logger.js';
import type { Hsm } from '../hsm/hsm-client.js';

export const EVENTS_FILE = 'events.ndjson';
export const DIGEST_DIR = 'digests';
export const PUBLIC_KEY_FILE = 'digest-public-key.pem';
export const GENESIS_HASH = '0'.repeat(64);

export interface AuditOptions {
  dir: string;
  hsm: Hsm;
  log: Logger;
  fsync?: 'none' | 'event';
  /** Seal a digest after this many events (default 1000). */
  digestEvery?: number;
  clock?: () => number;
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

export const sha256hex = (s: string | Uint8Array): string => createHash('sha256').update(s).digest('hex');
export const digestName = (lastSeq: number): string => `${String(lastSeq).padStart(12, '0')}.json`;
/** The bytes a digest signature covers: the digest without its signature, as written. */
export function digestPayload(d: DigestFile): string {
  const { signature: _s, ...rest } = d;
  return JSON.stringify(rest);
}

export class AuditLog {
  private fh!: fsp.FileHandle;
  private nextSeq = 0;
  private lastHash = GENESIS_HASH;
  private flushedSeq = -1;
  private flushedHash = GENESIS_HASH;
  private sealedThrough = -1;
  private prevDigestHash: string | null = null;
  private sealStartTime: number;
  private pending: string[] = [];
  private waiters: { resolve: () => void; reject: (e: unknown) => void }[] = [];
  private scheduled = false;
  private flushing: Promise<void> | null = null;
  private sealing: Promise<void> = Promise.resolve();
  private autoSealing = false;
  private fingerprint = '';
  private readonly fsyncMode: 'none' | 'event';
  private readonly digestEvery: number;
  private readonly clock: () => number;

  private constructor(private readonly o: AuditOptions) {
    this.fsyncMode = o.fsync ?? 'none';
    this.digestEvery = o.digestEvery ?? 1000;
    this.clock = o.clock ?? Date.now;
    this.sealStartTime = this.clock();
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
    this.fingerprint = sha256hex(pem);
    const pkPath = join(dir, PUBLIC_KEY_FILE);
    let old = '';
    try { old = readFileSync(pkPath, 'utf8'); } catch { /* first start */ }
    if (old !== pem) await atomicWrite(pkPath, pem);

    const path = join(dir, EVENTS_FILE);
    this.recoverTail(path);
    this.fh = await fsp.open(path, 'a', 0o600);
    const digests = readdirSync(join(dir, DIGEST_DIR)).filter((f) => /^\d{12}\.json$/.test(f)).sort();
    const last = digests[digests.length - 1];
    if (last) {
      const d = JSON.parse(readFileSync(join(dir, DIGEST_DIR, last), 'utf8')) as DigestFile;
      this.sealedThrough = d.lastSequence;
      this.prevDigestHash = sha256hex(digestPayload(d));
    }
  }

  /** Find the last complete line; drop a torn tail (possible only after power loss without fsync). */
  private recoverTail(path: string): void {
    let fd: number;
    try { fd = openSync(path, 'r+'); } catch { return; }
    try {
      const size = fstatSync(fd).size;
      if (size === 0) return;
      const n = Math.min(size, 1 << 20); // an event is far smaller than 1 MiB
      const buf = Buffer.alloc(n);
      readSync(fd, buf, 0, n, size - n);
      const cut = buf.lastIndexOf(0x0a) + 1;
      if (cut !== n) {
        this.o.log.warn({ file: path, bytes: n - cut }, 'audit log ends in a torn line; truncating it');
        ftruncateSync(fd, size - n + cut);
      }
      if (cut === 0) return;
      const body = buf.subarray(0, cut - 1);
      const line = body.subarray(body.lastIndexOf(0x0a) + 1).toString('utf8');
      const ev = JSON.parse(line) as { sequenceNumber: number };
      this.nextSeq = ev.sequenceNumber + 1;
      this.lastHash = this.flushedHash = sha256hex(line);
      this.flushedSeq = ev.sequenceNumber;
    } finally {
      closeSync(fd);
    }
  }

  /** Append one event; resolves when it is durable per the fsync mode. */
  append(event: Record<string, unknown>): Promise<void> {
    const { sequenceNumber: _s, previousEventHash: _p, ...rest } = event;
    return this.appendJson(JSON.stringify(rest).slice(0, -1));
  }

  /**
   * Append an event given as its JSON text without the closing brace
   * (event.ts, buildEventJson); the chain fields `sequenceNumber` and
   * `previousEventHash` and the brace are added here, as `append` does.
   */
  appendJson(open: string): Promise<void> {
    const line = open + (open.length > 1 ? ',' : '') + '"sequenceNumber":' + this.nextSeq++ + ',"previousEventHash":"' + this.lastHash + '"}';
    this.lastHash = sha256hex(line);
    this.pending.push(line + '\n');
    return new Promise((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => { this.scheduled = false; void this.flush(); });
      }
    });
  }

  private flush(): Promise<void> {
    if (this.flushing) return this.flushing;
    if (this.pending.length === 0) return Promise.resolve();
    const run = async (): Promise<void> => {
      await Promise.resolve(); // never finish synchronously: `flushing` must be set before it is cleared
      while (this.pending.length) {
        const data = this.pending.join('');
        const waiters = this.waiters;
        const seq = this.nextSeq - 1;
        const hash = this.lastHash;
        this.pending = [];
        this.waiters = [];
        try {
          await this.fh.write(data);
          if (this.fsyncMode === 'event') await this.fh.datasync();
          this.flushedSeq = seq;
          this.flushedHash = hash;
          for (const w of waiters) w.resolve();
        } catch (e) {
          this.o.log.error({ err: e }, 'audit log write failed');
          for (const w of waiters) w.reject(e);
        }
      }
    };
    this.flushing = run().finally(() => {
      this.flushing = null;
      if (!this.autoSealing && this.flushedSeq - this.sealedThrough >= this.digestEvery) {
        this.autoSealing = true;
        this.seal().catch((e) => this.o.log.error({ err: e }, 'audit seal failed')).finally(() => { this.autoSealing = false; });
      }
    });
    return this.flushing;
  }

  /** Write and sign a digest covering every event written so far, if any is unsealed. */
  seal(): Promise<void> {
    this.sealing = this.sealing.then(async () => {
      await this.flush();
      if (this.flushedSeq <= this.sealedThrough) return;
      if (this.fsyncMode === 'none') await this.fh.datasync(); // a digest never names events that are not on disk
      const now = this.clock();
      const d: DigestFile = {
        digestVersion: 1,
        logFile: EVENTS_FILE,
        firstSequence: this.sealedThrough + 1,
        lastSequence: this.flushedSeq,
        lastEventHash: this.flushedHash,
        previousDigestHash: this.prevDigestHash,
        digestStartTime: new Date(this.sealStartTime).toISOString(),
        digestEndTime: new Date(now).toISOString(),
        signatureAlgorithm: 'Ed25519',
        publicKeyFingerprint: this.fingerprint,
      };
      const payload = digestPayload(d);
      const { signature } = await this.o.hsm.call({ op: 'signAudit', data: Buffer.from(payload) });
      d.signature = Buffer.from(signature).toString('base64');
      await atomicWrite(join(this.o.dir, DIGEST_DIR, digestName(d.lastSequence)), JSON.stringify(d, null, 2) + '\n');
      this.sealedThrough = d.lastSequence;
      this.prevDigestHash = sha256hex(payload);
      this.sealStartTime = now;
    });
    return this.sealing;
  }

  async close(): Promise<void> {
    await this.seal();
    await this.fh.close();
  }
}
