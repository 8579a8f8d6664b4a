import { createHash } from 'node:crypto';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  CopyObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { ArgRangeError } from '../util/errors.js';
import { caBundleAgent } from '../util/ca-bundle.js';
import { SnapshotError } from './errors.js';
import { MANIFEST_MAX_BYTES, checkBlockHash, checkManifestBytes, checkSnapshotId, isBlockHash, isSnapshotId, parseManifest, readListedManifests, summaryOf } from './manifest-check.js';
import type { BlockWithAge, CollectableStore } from './gc.js';
import { SNAPSHOT_BLOCK_BYTES, type BlockHash, type RawManifest, type SnapshotManifest, type SnapshotSummary } from './types.js';
import { DEFAULT_DELETE_WINDOWS, formatStoreSettings, parseStoreSettings, type DeleteWindows, type StoreSettings } from './store-settings.js';

export interface S3SnapshotStoreOptions {
  bucket: string;
  /** Key prefix without leading or trailing `/`; '' puts `blocks/` and `manifests/` at the bucket's root. */
  prefix: string;
  /** Default: the SDK's resolution (AWS_REGION, the profile's `region`), else `us-east-1` (S3-compatible stores rarely care). */
  region?: string;
  /**
   * Default: the SDK's configured endpoint (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL,
   * the profile's `endpoint_url` or its `services` section), else AWS S3.
   */
  endpoint?: string;
  /** Path-style requests (`http://host/bucket/key`); default: true when an endpoint is given or configured, as S3-compatible servers expect. */
  forcePathStyle?: boolean;
  /** Default: the standard credential chain (environment, profiles, SSO, process, IMDS). */
  credentials?: S3ClientConfig['credentials'];
  /** Per HTTP attempt: the TCP/TLS connect, then the whole request (a 512 KiB block). */
  connectionTimeoutMs?: number;
  requestTimeoutMs?: number;
  /** The SDK's standard retry mode (exponential backoff, full jitter): attempts per call. */
  maxAttempts?: number;
  /** Keys per ListObjectsV2 page (MaxKeys); S3's own limit, 1000, by default. */
  listPageSize?: number;
}

// 30 s per attempt lets a 512 KiB block through a link as slow as ~20 KiB/s;
// three attempts ride out a store's restart or a dropped connection without
// holding a snapshot for minutes behind a dead endpoint.
const DEFAULTS = { connectionTimeoutMs: 3_000, requestTimeoutMs: 30_000, maxAttempts: 3 };

/** A bucket HeadBucket found is not asked for again, on a HEAD's 404, for this long. */
const BUCKET_SEEN_MS = 60_000;
/** The store's settings object is a few dozen bytes; more is not read. */
const SETTINGS_MAX_BYTES = 4096;

/**
 * The object metadata (`x-amz-meta-ebsd-sha256`) in which a manifest's put records the SHA-256 of
 * its bytes (hex), checked at every read (getObjectWithMeta): a store that keeps no checksum of its
 * own (s3rver) still lets a GET tell a body damaged in transfer from the object.
 */
const DIGEST_META = 'ebsd-sha256';

/** Manifest reads in flight at once while listing. */
const LIST_READERS = 16;

// S3 bucket naming rules (general purpose buckets): 3-63 characters, lowercase
// letters, digits, dots and hyphens, beginning and ending with a letter or digit.
const BUCKET = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

/**
 * CopyObject's `x-amz-copy-source`: bucket and key URL-encoded (S3 decodes
 * it), each path segment on its own so the '/' stay. Unencoded, a prefix with
 * a non-ASCII character is not a valid header and one with a '%' names
 * another key.
 */
export function copySource(bucket: string, key: string): string {
  return `${bucket}/${key}`.split('/').map(encodeURIComponent).join('/');
}

/**
 * A SnapshotStore in any S3-compatible object store (docs/architecture.md §13.2),
 * through `@aws-sdk/client-s3` configured the standard way. Objects:
 * `PREFIX/blocks/<sha256>` and `PREFIX/manifests/<snap-id>.json`.
 *
 * An S3 PUT replaces an object whole or not at all, so nothing partial is ever
 * visible. Block PUTs carry `x-amz-checksum-sha256`: the block's hash is its
 * SHA-256, so S3 checks the bytes it stores against the very hash the manifest
 * names at no cost to us; a GET hashes the bytes again before handing them out.
 *
 * Failures are SnapshotError `SNAPSHOT_STORE` naming the operation, the object
 * and S3's error name; the SDK's error object is not kept as `cause`, so no
 * request detail travels further into logs (credentials never appear in S3's
 * error messages; the signature does not either).
 */
export class S3SnapshotStore implements CollectableStore {
  readonly location: string;
  readonly bucket: string;
  readonly prefix: string;
  /** The endpoint in use, when one was given or configured; undefined for AWS S3. */
  readonly endpoint: string | undefined;

  /** When HeadBucket last found the bucket (performance.now()), and the HeadBucket in flight (bucketBehind404). */
  private bucketSeenAt = Number.NEGATIVE_INFINITY;
  private bucketAsk: Promise<void> | undefined;
  /** deleteWindows(): the settings object's read, once it began (dropped when it fails). */
  private windowsRead: Promise<DeleteWindows> | undefined;

  private constructor(private readonly s3: S3Client, bucket: string, prefix: string, endpoint: string | undefined, private readonly pageSize: number, private readonly maxAttempts: number) {
    this.bucket = bucket;
    this.prefix = prefix;
    this.endpoint = endpoint;
    this.location = `s3://${bucket}${prefix ? `/${prefix}` : ''}`;
  }

  /** Resolves the configuration (region, endpoint); does not contact the store. */
  static async open(opts: S3SnapshotStoreOptions): Promise<S3SnapshotStore> {
    if (!BUCKET.test(opts.bucket) || opts.bucket.includes('..')) {
      throw new ArgRangeError('bucket', `"${opts.bucket}" is not an S3 bucket name (3-63 characters: a-z, 0-9, '.', '-')`);
    }
    const prefix = opts.prefix.replace(/^\/+|\/+$/g, '');
    if (prefix.split('/').some((p) => p === '' || p === '.' || p === '..') && prefix !== '') {
      throw new ArgRangeError('prefix', `"${opts.prefix}" has an empty, '.' or '..' path segment`);
    }
    const o = { ...DEFAULTS, ...Object.fromEntries(Object.entries(opts).filter(([k, v]) => k in DEFAULTS && v !== undefined)) };
    const requestHandler = { connectionTimeout: o.connectionTimeoutMs, requestTimeout: o.requestTimeoutMs, throwOnRequestTimeout: true, ...caBundleAgent() };
    const base: S3ClientConfig = {
      maxAttempts: o.maxAttempts,
      retryMode: 'standard',
      requestHandler,
      ...(opts.credentials ? { credentials: opts.credentials } : {}),
      ...(opts.endpoint ? { endpoint: opts.endpoint } : {}),
      ...(opts.region ? { region: opts.region } : {}),
    };
    let s3 = new S3Client(base);
    // The endpoint configured outside the code (environment, profile), which the SDK applies on its own.
    const configured = opts.endpoint ?? (await (s3.config as { serviceConfiguredEndpoint?: () => Promise<string | undefined> }).serviceConfiguredEndpoint?.());
    let region = opts.region;
    if (!region) {
      try {
        await s3.config.region();
      } catch {
        region = 'us-east-1';
      }
    }
    const forcePathStyle = opts.forcePathStyle ?? configured !== undefined;
    if (forcePathStyle || region) {
      s3.destroy();
      s3 = new S3Client({ ...base, ...(region ? { region } : {}), forcePathStyle });
    }
    return new S3SnapshotStore(s3, opts.bucket, prefix, configured, opts.listPageSize ?? 1000, o.maxAttempts);
  }

  private key(kind: 'blocks' | 'manifests', name: string): string {
    return `${this.prefix ? `${this.prefix}/` : ''}${kind}/${name}`;
  }

  /** `PREFIX/settings.json`: the settings every host sharing the store follows (src/snapshot/store-settings.ts). */
  private settingsKey(): string {
    return `${this.prefix ? `${this.prefix}/` : ''}settings.json`;
  }

  /**
   * The delete windows `PREFIX/settings.json` records, or the defaults without
   * it; read once, at the first snapshot or sweep after start (a store that
   * does not answer then is asked again at the next). Hosts read it at
   * different times, so it is changed only with every daemon sharing the
   * store stopped (docs/architecture.md §13.1).
   */
  deleteWindows(): Promise<DeleteWindows> {
    this.windowsRead ??= this.readWindows().catch((e: unknown) => {
      this.windowsRead = undefined;
      throw e;
    });
    return this.windowsRead;
  }

  private async readWindows(): Promise<DeleteWindows> {
    const key = this.settingsKey();
    const data = await this.getObject(key, SETTINGS_MAX_BYTES, (where, bytes) => new SnapshotError('SNAPSHOT_CORRUPT', `store settings ${where} are ${bytes} bytes, over the ${SETTINGS_MAX_BYTES}-byte limit`));
    return data ? parseStoreSettings(`s3://${this.bucket}/${key}`, data.toString('utf8')) : DEFAULT_DELETE_WINDOWS;
  }

  /** Writes `PREFIX/settings.json` (a new store's, or with every daemon sharing it stopped: deleteWindows()). */
  async putSettings(s: StoreSettings): Promise<void> {
    const key = this.settingsKey();
    const body = Buffer.from(formatStoreSettings(`s3://${this.bucket}/${key}`, s));
    try {
      await this.s3.send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentLength: body.length, ContentType: 'application/json' }));
    } catch (e) {
      throw this.fail('PutObject', key, e);
    }
    this.windowsRead = undefined;
  }

  private fail(op: string, key: string, e: unknown): SnapshotError {
    const err = e as { name?: string; code?: string; message?: string; $metadata?: { httpStatusCode?: number } };
    const name = err?.name && err.name !== 'Error' ? err.name : (err?.code ?? 'Error');
    const status = err?.$metadata?.httpStatusCode ? ` (HTTP ${err.$metadata.httpStatusCode})` : '';
    return new SnapshotError('SNAPSHOT_STORE', `S3 ${op} of s3://${this.bucket}/${key} failed: ${name}${status}: ${err?.message ?? String(e)}`);
  }

  async putBlock(hash: BlockHash, data: Uint8Array): Promise<void> {
    checkBlockHash(hash);
    const key = this.key('blocks', hash);
    try {
      // Put even when present: the object is identical (content-addressed),
      // and its LastModified becomes now, so a collector on another host
      // holds it for its grace period (src/snapshot/gc.ts) while our manifest is written.
      await this.s3.send(new PutObjectCommand({
        Bucket: this.bucket, Key: key, Body: data, ContentLength: data.length,
        ChecksumSHA256: Buffer.from(hash, 'hex').toString('base64'),
        ContentType: 'application/octet-stream',
      }));
    } catch (e) {
      if ((e as { name?: string }).name === 'BadDigest' || (e as { name?: string }).name === 'InvalidRequest' && /checksum/i.test((e as Error).message)) {
        throw new SnapshotError('SNAPSHOT_CORRUPT', `block ${hash}: the bytes given do not hash to it (S3 ${(e as Error).name} on s3://${this.bucket}/${key})`);
      }
      throw this.fail('PutObject', key, e);
    }
  }

  async getBlock(hash: BlockHash, maxBytes: number = SNAPSHOT_BLOCK_BYTES): Promise<Buffer> {
    checkBlockHash(hash);
    const data = await this.getObject(this.key('blocks', hash), maxBytes, (where, bytes) => new SnapshotError(
      'SNAPSHOT_CORRUPT', `block ${hash} ${where} is ${bytes} bytes, over the ${maxBytes} bytes this read accepts (a block is at most ${SNAPSHOT_BLOCK_BYTES}; a header area, its manifest's dataOffset): not read`,
    ), hash); // bytes not hashing to its name are read again (damaged in transfer) before they are called corrupt below
    if (!data) throw new SnapshotError('SNAPSHOT_BLOCK_NOT_FOUND', `block ${hash} is missing from the snapshot store ${this.location}`);
    const got = createHash('sha256').update(data).digest('hex');
    if (got !== hash) throw new SnapshotError('SNAPSHOT_CORRUPT', `block ${hash} in ${this.location} reads back as ${data.length} bytes hashing to ${got}`);
    return data;
  }

  async hasBlock(hash: BlockHash): Promise<boolean> {
    checkBlockHash(hash);
    const key = this.key('blocks', hash);
    try {
      await this.s3.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }));
      return true;
    } catch (e) {
      if ((e as { name?: string }).name === 'NotFound' || (e as { name?: string }).name === 'NoSuchKey') {
        await this.bucketBehind404(key);
        return false;
      }
      throw this.fail('HeadObject', key, e);
    }
  }

  /** A copy of the object onto itself (metadata replaced) is how S3 makes an object's LastModified now. */
  async touchBlock(hash: BlockHash): Promise<boolean> {
    checkBlockHash(hash);
    const key = this.key('blocks', hash);
    try {
      await this.s3.send(new CopyObjectCommand({
        Bucket: this.bucket, Key: key, CopySource: copySource(this.bucket, key), MetadataDirective: 'REPLACE', Metadata: { touched: String(Date.now()) },
      }));
      return true;
    } catch (e) {
      const name = (e as { name?: string }).name;
      if (name === 'NotFound' || name === 'NoSuchKey') return false;
      throw this.fail('CopyObject', key, e);
    }
  }

  async blockModifiedMs(hash: BlockHash): Promise<number | undefined> {
    checkBlockHash(hash);
    const key = this.key('blocks', hash);
    try {
      const r = await this.s3.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }));
      return r.LastModified?.getTime() ?? Number.POSITIVE_INFINITY;
    } catch (e) {
      if ((e as { name?: string }).name === 'NotFound' || (e as { name?: string }).name === 'NoSuchKey') {
        await this.bucketBehind404(key);
        return undefined;
      }
      throw this.fail('HeadObject', key, e);
    }
  }

  async deleteBlock(hash: BlockHash, opts: { signal?: AbortSignal } = {}): Promise<void> {
    checkBlockHash(hash);
    await this.deleteKey(this.key('blocks', hash), opts.signal);
  }

  async *listBlocks(): AsyncIterable<BlockHash> {
    for await (const b of this.listBlocksWithAge()) yield b.hash;
  }

  /** Every block with its LastModified (the store's clock), in key order: the collector's age (src/snapshot/gc.ts). */
  async *listBlocksWithAge(): AsyncIterable<BlockWithAge> {
    const dir = this.key('blocks', '');
    for await (const o of this.listKeys(dir)) {
      const name = o.key.slice(dir.length);
      // No LastModified (a server that omits it): taken as just written, so never swept on a guess.
      if (isBlockHash(name)) yield { hash: name, modifiedMs: o.lastModified?.getTime() ?? Number.POSITIVE_INFINITY };
    }
  }

  async putManifest(m: SnapshotManifest): Promise<void> {
    checkSnapshotId(m.snapshotId);
    const key = this.key('manifests', `${m.snapshotId}.json`);
    const body = Buffer.from(`${JSON.stringify(m)}\n`);
    // Never write what a reader would refuse.
    checkManifestBytes(`s3://${this.bucket}/${key}`, body.length, true);
    const digest = createHash('sha256').update(body);
    try {
      await this.s3.send(new PutObjectCommand({
        Bucket: this.bucket, Key: key, Body: body, ContentLength: body.length,
        ChecksumSHA256: digest.copy().digest('base64'),
        Metadata: { [DIGEST_META]: digest.digest('hex') },
        ContentType: 'application/json',
      }));
    } catch (e) {
      throw this.fail('PutObject', key, e);
    }
  }

  async getManifest(snapshotId: string): Promise<SnapshotManifest | undefined> {
    checkSnapshotId(snapshotId);
    const key = this.key('manifests', `${snapshotId}.json`);
    const data = await this.getObject(key, MANIFEST_MAX_BYTES, (where, bytes) => new SnapshotError(
      'SNAPSHOT_CORRUPT', `snapshot manifest ${where} is ${bytes} bytes, over the ${MANIFEST_MAX_BYTES}-byte limit`,
    ));
    if (!data) return undefined;
    const text = data.toString('utf8');
    return parseManifest(`s3://${this.bucket}/${key}`, snapshotId, text);
  }

  /** The object's bytes as they are, with its ETag and LastModified; over MANIFEST_MAX_BYTES its size only (Content-Length), unread. */
  async readManifestRaw(snapshotId: string): Promise<RawManifest | undefined> {
    checkSnapshotId(snapshotId);
    const key = this.key('manifests', `${snapshotId}.json`);
    let over: number | undefined;
    const got = await this.getObjectWithMeta(key, MANIFEST_MAX_BYTES, (where, bytes) => {
      over = bytes;
      return new SnapshotError('SNAPSHOT_CORRUPT', `snapshot manifest ${where} is ${bytes} bytes, over the ${MANIFEST_MAX_BYTES}-byte limit`);
    }).catch((e: unknown) => {
      if (over !== undefined) return 'over' as const;
      throw e;
    });
    if (got === 'over') {
      // Its ETag and LastModified without its body: one HEAD.
      try {
        const h = await this.s3.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }));
        return { bytes: h.ContentLength ?? over!, ...(h.ETag ? { etag: h.ETag } : {}), ...(h.LastModified ? { lastModified: h.LastModified.toISOString() } : {}) };
      } catch (e) {
        throw this.fail('HeadObject', key, e);
      }
    }
    if (!got) return undefined;
    return { data: got.data, bytes: got.data.length, ...(got.etag ? { etag: got.etag } : {}), ...(got.lastModified ? { lastModified: got.lastModified.toISOString() } : {}) };
  }

  async listManifestIds(): Promise<string[]> {
    const dir = this.key('manifests', '');
    const ids: string[] = [];
    for await (const o of this.listKeys(dir)) {
      const name = o.key.slice(dir.length);
      const id = name.endsWith('.json') ? name.slice(0, -5) : '';
      if (isSnapshotId(id)) ids.push(id);
    }
    return ids;
  }

  listManifests(opts: { onCorrupt?: (snapshotId: string, err: SnapshotError) => void } = {}): Promise<SnapshotManifest[]> {
    return this.readManifests(opts, (m) => m);
  }

  listManifestSummaries(opts: { onCorrupt?: (snapshotId: string, err: SnapshotError) => void } = {}): Promise<SnapshotSummary[]> {
    return this.readManifests(opts, summaryOf);
  }

  /** Every manifest, each through `keep` as soon as it is parsed; LIST_READERS at a time: one round trip each, so a store of many snapshots lists in a few. */
  private async readManifests<T>(opts: { onCorrupt?: (snapshotId: string, err: SnapshotError) => void }, keep: (m: SnapshotManifest) => T): Promise<T[]> {
    return readListedManifests(await this.listManifestIds(), LIST_READERS, (id) => this.getManifest(id), opts.onCorrupt, keep);
  }

  async deleteManifest(snapshotId: string): Promise<void> {
    checkSnapshotId(snapshotId);
    await this.deleteKey(this.key('manifests', `${snapshotId}.json`));
  }

  /**
   * One ListObjectsV2 of a single key under the prefix: proves the endpoint,
   * credentials and bucket answer, without writing. Throws like any call.
   */
  async check(): Promise<void> {
    const prefix = this.key('manifests', '');
    try {
      await this.s3.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, MaxKeys: 1 }));
    } catch (e) {
      throw this.fail('ListObjectsV2', prefix, e);
    }
  }

  /** Closes the HTTP connections. */
  close(): void {
    this.s3.destroy();
  }

  /** getObjectWithMeta's bytes only. */
  private async getObject(key: string, maxBytes: number, tooBig: (where: string, bytes: number) => SnapshotError, sha256?: string): Promise<Buffer | undefined> {
    return (await this.getObjectWithMeta(key, maxBytes, tooBig, sha256))?.data;
  }

  /**
   * An object's bytes (with its ETag and LastModified), undefined when absent; an object over
   * `maxBytes` is refused (the error `tooBig` makes, naming the key and its size) on its
   * Content-Length, before the body is read, or, without one (chunked), as soon as more than that
   * has arrived: one object in a shared store cannot make a reader allocate what it likes.
   *
   * What arrived is checked before anyone reads it (docs/architecture.md §13.2): a body of another
   * length than its Content-Length, one the SDK finds not matching the checksum S3 stored with the
   * object (ChecksumMode ENABLED; objects are put with their SHA-256), or one not hashing to the
   * SHA-256 this store recorded in the object's metadata at its put (DIGEST_META: servers that keep
   * no checksums, such as s3rver, keep metadata), or, given, `sha256` (a block's name), is a transfer failure, not the object: retried,
   * and after the last attempt SNAPSHOT_STORE (retryable), never SNAPSHOT_CORRUPT, which refuses a
   * manifest (a snapshot in `error`, deletable unread). Only the same wrong bytes read twice (the
   * same SHA-256, not the recorded one), with no attempt damaged otherwise (another wrong digest, a
   * wrong length, a body cut off), are taken as what the store holds (someone rewrote the object
   * keeping the old metadata): the caller judges them as such. Anything else is transfer damage.
   *
   * The SDK retries a request that fails before the response; a body cut off after the headers (a
   * dropped connection, a server restart) or failing these checks is retried here, as many times.
   */
  private async getObjectWithMeta(key: string, maxBytes: number, tooBig: (where: string, bytes: number) => SnapshotError, sha256?: string): Promise<{ data: Buffer; etag?: string; lastModified?: Date } | undefined> {
    const where = `s3://${this.bucket}/${key}`;
    /** Each wrong SHA-256 an attempt's body hashed to (not the recorded one), with how many attempts got it. */
    const wrong = new Map<string, number>();
    /** An attempt's body was damaged otherwise: cut off, of another length than its Content-Length, refused by the SDK's checksum. */
    let damagedOtherwise = false;
    for (let attempt = 1; ; attempt++) {
      let body: (AsyncIterable<Uint8Array> & { destroy?: () => void }) | undefined;
      let wrongDigest = false;
      try {
        const r = await this.s3.send(new GetObjectCommand({ Bucket: this.bucket, Key: key, ChecksumMode: 'ENABLED' }));
        body = r.Body as unknown as AsyncIterable<Uint8Array> & { destroy?: () => void };
        if ((r.ContentLength ?? 0) > maxBytes) {
          body?.destroy?.();
          throw tooBig(where, r.ContentLength!);
        }
        const chunks: Uint8Array[] = [];
        let bytes = 0;
        for await (const c of body) {
          bytes += c.length;
          if (bytes > maxBytes) {
            body.destroy?.();
            throw tooBig(where, bytes);
          }
          chunks.push(c);
        }
        const data = Buffer.concat(chunks, bytes);
        const meta = { data, ...(r.ETag ? { etag: r.ETag } : {}), ...(r.LastModified ? { lastModified: r.LastModified } : {}) };
        if (r.ContentLength !== undefined && r.ContentLength !== bytes) {
          throw new Error(`the body received is ${bytes} bytes, its Content-Length ${r.ContentLength}: cut off or padded in transfer`);
        }
        const recorded = sha256 ?? r.Metadata?.[DIGEST_META];
        if (recorded !== undefined) {
          const got = createHash('sha256').update(data).digest('hex');
          if (got !== recorded) {
            const seen = (wrong.get(got) ?? 0) + 1;
            wrong.set(got, seen);
            // The same wrong bytes twice, and no attempt damaged in any other way: what the store holds.
            if (seen >= 2 && wrong.size === 1 && !damagedOtherwise) return meta;
            wrongDigest = true;
            throw new Error(`the body received (${bytes} bytes) hashes to SHA-256 ${got}, not the ${recorded} recorded at its put: damaged in transfer`);
          }
        }
        return meta;
      } catch (e) {
        if ((e as { name?: string }).name === 'NoSuchKey') return undefined;
        if (e instanceof SnapshotError && e.code === 'SNAPSHOT_CORRUPT') throw e; // over the cap: not retried
        if (body !== undefined && !wrongDigest) damagedOtherwise = true;
        // A wrong digest seen once, nothing else wrong: read at least once more, to tell the stored object from transfer damage.
        const last = wrong.size === 1 && !damagedOtherwise ? Math.max(this.maxAttempts, 2) : this.maxAttempts;
        if (body === undefined || attempt >= last) throw this.fail('GetObject', key, e);
      }
    }
  }

  /**
   * A HEAD answers a bare 404 (`NotFound`, no body) for a missing bucket as
   * for a missing key: before a 404 is taken as "no such block", the bucket
   * is asked for (HeadBucket, once per BUCKET_SEEN_MS, shared by concurrent
   * callers), so a bucket deleted or misnamed is an error naming it, not
   * every block "missing" (a snapshot refused, a collector's age undefined).
   */
  private async bucketBehind404(key: string): Promise<void> {
    if (performance.now() - this.bucketSeenAt < BUCKET_SEEN_MS) return;
    this.bucketAsk ??= (async () => {
      try {
        await this.s3.send(new HeadBucketCommand({ Bucket: this.bucket }));
        this.bucketSeenAt = performance.now();
      } catch (e) {
        const name = (e as { name?: string }).name;
        if (name === 'NotFound' || name === 'NoSuchBucket') {
          throw new SnapshotError('SNAPSHOT_STORE', `S3 bucket ${this.bucket} does not exist (HeadBucket: HTTP 404), asked after HeadObject of s3://${this.bucket}/${key} answered 404; check the snapshot store's bucket (${this.location})`);
        }
        throw this.fail('HeadBucket', '', e);
      }
    })().finally(() => {
      this.bucketAsk = undefined;
    });
    await this.bucketAsk;
  }

  private async deleteKey(key: string, signal?: AbortSignal): Promise<void> {
    try {
      // S3 answers 204 for an absent key too. An aborted signal ends the attempt under way and the retries.
      await this.s3.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key }), signal ? { abortSignal: signal } : {});
    } catch (e) {
      throw this.fail('DeleteObject', key, e);
    }
  }

  /**
   * ListObjectsV2 pages chained with StartAfter (the last key of the page)
   * rather than ContinuationToken: the same walk on S3, and it also works on
   * servers whose continuation tokens are broken (s3rver's need a cipher
   * OpenSSL 3 no longer has).
   */
  private async *listKeys(prefix: string): AsyncIterable<{ key: string; lastModified: Date | undefined }> {
    let after: string | undefined;
    for (;;) {
      let r;
      try {
        r = await this.s3.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, MaxKeys: this.pageSize, ...(after ? { StartAfter: after } : {}) }));
      } catch (e) {
        throw this.fail('ListObjectsV2', prefix, e);
      }
      const contents = r.Contents ?? [];
      for (const o of contents) if (o.Key) yield { key: o.Key, lastModified: o.LastModified };
      if (!r.IsTruncated || contents.length === 0) return;
      after = contents[contents.length - 1]!.Key;
    }
  }
}

