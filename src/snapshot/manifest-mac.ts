import { createHash, type Hash } from 'node:crypto';
import type { Caller } from '../kms/types.js';
import type { KeyService } from '../volume/key-service.js';
import { ArgRangeError, EbsdError } from '../util/errors.js';
import { errInfo, KeyServiceError } from '../volume/errors.js';
import { backoffDelayMs } from '../util/backoff.js';
import type { Logger } from '../util/logger.js';
import { ManifestMacRefused, SnapshotError, type ManifestMacRefusal } from './errors.js';
import type { CollectableStore } from './gc.js';
import { quoted, readListedManifests, summaryOf } from './manifest-check.js';
import type { SnapshotManifest, SnapshotSummary } from './types.js';

/**
 * Signed snapshot manifests (`ebsd daemon --snapshot-manifest-key`, docs/architecture.md §13.5):
 * every manifest written carries `manifestMac`, a KMS GenerateMac (HMAC_SHA_256) under an HMAC
 * KMS key, and every manifest read is checked with VerifyMac before anything trusts it. A
 * manifest without it, or with one that does not verify, is SNAPSHOT_CORRUPT, the path every
 * unreadable manifest takes (the snapshot is in state `error`: DescribeSnapshots shows it so and
 * logs why; restore, copy, the EBS direct APIs refuse it; the collector stops its sweep until a
 * DeleteSnapshot removes it, unread). ManifestMacRefused says which check failed.
 *
 * What is MACed is a short message (GenerateMac takes at most 4096 bytes, a manifest up to
 * 64 MiB): a domain label, the snapshot id, and the SHA-256 of the manifest's canonical JSON
 * without `manifestMac` (canonicalDigest). The id is in both, so a manifest moved to another
 * snapshot id does not verify. Nothing MACed is secret: the manifest holds no key material (its
 * wrapped key is a KMS ciphertext), and neither the MAC nor the message is logged.
 */

/** The manifest member that holds the MAC; never part of what is MACed. */
export const MANIFEST_MAC_FIELD = 'manifestMac';
export const MANIFEST_MAC_ALGORITHM = 'HMAC_SHA_256';
/** Separates this MAC's messages from any other use of the same key. */
const DOMAIN = 'ebsd snapshot manifest MAC v1';

/** `manifestMac` as stored: the key that made it (for the reader's message; the reader verifies with its own key) and the MAC in base64. */
export interface ManifestMac {
  keyArn: string;
  mac: string;
}

/**
 * How long a create or copy whose blocks are all stored keeps trying to write its `completed` manifest
 * while the KMS does not answer for its MAC (putCompletedWaitingForKms):
 * a KMS host's restart, not an outage that outlasts it. Well within the hour a block put is kept from
 * any collector (gc.ts); each try asks again for the blocks first.
 */
export const COMPLETED_WRITE_KMS_WAIT_MS = 120_000;
/** Verified (digest, MAC) pairs kept: one per manifest of a large store. */
const VERIFIED_MAX = 65536;
/** Refused (digest, MAC) pairs kept: enough for every bad manifest a listing meets, bounded so a store writer cannot grow it without end. */
const FAILED_MAX = 4096;
/** Manifests verified at once while listing (a KMS call each, the first time). */
const LIST_VERIFIERS = 16;

/**
 * SHA-256 (hex) of the manifest's canonical JSON: members sorted by name (UTF-16 order, as
 * Array#sort), no whitespace, a member whose value is undefined left out (as JSON.stringify
 * does), and at the top level `manifestMac` left out. Streamed into the hash in chunks, so a
 * block list of 850 Ki entries is never one string.
 */
export function canonicalDigest(m: SnapshotManifest): string {
  const h = createHash('sha256');
  const out = new ChunkedHash(h);
  const top = m as unknown as Record<string, unknown>;
  out.push('{');
  let first = true;
  for (const k of Object.keys(top).sort()) {
    if (k === MANIFEST_MAC_FIELD || top[k] === undefined) continue;
    out.push(first ? '' : ',');
    first = false;
    out.push(JSON.stringify(k));
    out.push(':');
    canonicalInto(top[k], out);
  }
  out.push('}');
  out.flush();
  return h.digest('hex');
}

class ChunkedHash {
  private parts: string[] = [];
  private size = 0;
  constructor(private readonly h: Hash) {}
  push(s: string): void {
    this.parts.push(s);
    this.size += s.length;
    if (this.size >= 65536) this.flush();
  }
  flush(): void {
    this.h.update(this.parts.join(''), 'utf8');
    this.parts = [];
    this.size = 0;
  }
}

function canonicalInto(v: unknown, out: ChunkedHash): void {
  if (Array.isArray(v)) {
    out.push('[');
    for (let i = 0; i < v.length; i++) {
      if (i) out.push(',');
      canonicalInto(v[i] === undefined ? null : v[i], out);
    }
    out.push(']');
    return;
  }
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    out.push('{');
    let first = true;
    for (const k of Object.keys(o).sort()) {
      if (o[k] === undefined) continue;
      if (!first) out.push(',');
      first = false;
      out.push(JSON.stringify(k));
      out.push(':');
      canonicalInto(o[k], out);
    }
    out.push('}');
    return;
  }
  out.push(JSON.stringify(v) ?? 'null');
}

/** The bytes GenerateMac and VerifyMac are given: the label, the snapshot id and the manifest's canonical digest, one per line. */
export function manifestMacMessage(snapshotId: string, digest: string): Buffer {
  return Buffer.from(`${DOMAIN}\n${snapshotId}\n${digest}\n`, 'utf8');
}

/** The MAC a manifest carries, undefined when it has none; a member of another shape is reported as such. */
function macOf(m: SnapshotManifest): ManifestMac | undefined | 'malformed' {
  const v = (m as unknown as Record<string, unknown>)[MANIFEST_MAC_FIELD];
  if (v === undefined) return undefined;
  const o = v as Partial<ManifestMac> | null;
  // HMAC_SHA_256: 32 bytes, 44 characters of base64. Anything else is refused here, as corrupt, rather
  // than sent to VerifyMac, whose ValidationException would read as the KMS failing.
  if (typeof o !== 'object' || o === null || typeof o.mac !== 'string' || !/^[A-Za-z0-9+/]{43}=$/.test(o.mac) || typeof o.keyArn !== 'string' || o.keyArn.length > 2048) {
    return 'malformed';
  }
  return { keyArn: o.keyArn, mac: o.mac };
}

/** The manifest without `manifestMac` (a new object when it had one). */
export function withoutMac(m: SnapshotManifest): SnapshotManifest {
  if (!(MANIFEST_MAC_FIELD in m)) return m;
  const { [MANIFEST_MAC_FIELD]: _mac, ...rest } = m as unknown as Record<string, unknown>;
  return rest as unknown as SnapshotManifest;
}

/**
 * Makes and checks manifest MACs with one HMAC KMS key, through the KeyService the daemon's
 * volumes use (the embedded core on a single host, the remote KMS as the host in a fleet).
 * Verified MACs are remembered by (snapshot id, canonical digest, MAC), and verified manifest objects the
 * store hands out again (the directory store's frozen ones) by identity, so a listing calls
 * VerifyMac once per manifest change, not once per manifest per listing; MACs the KMS refused
 * are remembered the same way (a manifest re-written with other content has another digest, and is
 * checked again).
 */
export class ManifestSigner {
  private keys: MacKeyService | undefined;
  private caller: Caller | undefined;
  private keyArnValue: string | undefined;
  /** `${snapshotId}:${digest}:${mac}` of MACs this key made or verified, least recently used first. */
  private readonly verified = new Map<string, true>();
  /** `${snapshotId}:${digest}:${mac}` VerifyMac refused (KMSInvalidMacException), least recently used first: a store of many bad manifests costs one VerifyMac each, not one per listing. */
  private readonly failed = new Map<string, true>();
  /** Frozen manifest objects verified as they are (they cannot change). */
  private readonly verifiedObjects = new WeakSet<object>();

  /** `keyId`: --snapshot-manifest-key as given (key id, ARN, alias name or alias ARN). */
  constructor(readonly keyId: string) {}

  /** The key's ARN, once open() checked it. */
  get keyArn(): string | undefined {
    return this.keyArnValue;
  }

  /**
   * Checks the key (exists, HMAC_256, GENERATE_VERIFY_MAC, enabled) and that `caller` may use it
   * (one GenerateMac), then signs and verifies with it. A refusal (no such key, another spec or
   * usage, disabled, access denied) throws ArgRangeError naming --snapshot-manifest-key and what
   * is wrong; a KMS that did not answer throws ManifestKeyUnavailable (worth trying again,
   * ManifestKeyOpener, manifest-key-opener.ts). Until it has succeeded every manifest read or write through
   * signedManifests fails (nothing is trusted unchecked).
   */
  async open(keys: KeyService, caller: Caller): Promise<void> {
    const flag = '--snapshot-manifest-key';
    const refuse = (why: string, cause?: unknown): never => {
      // The KMS did not answer (unreachable, a timeout, throttled, an internal error, the circuit open): not a "no".
      if (cause !== undefined && kmsDidNotAnswer(cause)) throw new ManifestKeyUnavailable(`${flag} ${JSON.stringify(this.keyId)}: ${why}`, cause);
      const e = new ArgRangeError(flag, `${JSON.stringify(this.keyId)}: ${why}`);
      if (cause !== undefined) (e as { cause?: unknown }).cause = cause;
      throw e;
    };
    const said = (e: unknown): string => {
      const aws = (e as { awsName?: unknown }).awsName;
      return `${typeof aws === 'string' ? `${aws}: ` : ''}${(e as Error).message}`;
    };
    if (!keys.generateMac || !keys.verifyMac) return refuse('this daemon\'s KMS client makes no MACs (GenerateMac, VerifyMac)');
    const macKeys = keys as MacKeyService;
    let meta: Record<string, unknown>;
    try {
      meta = (await keys.describeKey({ KeyId: this.keyId }, caller)).KeyMetadata;
    } catch (e) {
      return refuse(`cannot describe the key as ${caller.arn}: ${said(e)}`, e);
    }
    const arn = meta.Arn as string;
    if (meta.KeySpec !== 'HMAC_256') refuse(`key ${arn} has KeySpec ${String(meta.KeySpec)}; give an HMAC_256 key (create-key --key-spec HMAC_256 --key-usage GENERATE_VERIFY_MAC)`);
    if (meta.KeyUsage !== 'GENERATE_VERIFY_MAC') refuse(`key ${arn} has KeyUsage ${String(meta.KeyUsage)}, not GENERATE_VERIFY_MAC`);
    if (meta.KeyState !== undefined && meta.KeyState !== 'Enabled') refuse(`key ${arn} is ${String(meta.KeyState)}, not Enabled`);
    try {
      await macKeys.generateMac({ KeyId: arn, Message: manifestMacMessage('snap-00000000000000000', '0'.repeat(64)), MacAlgorithm: MANIFEST_MAC_ALGORITHM }, caller);
    } catch (e) {
      refuse(`GenerateMac with key ${arn} as ${caller.arn} failed: ${said(e)}`, e);
    }
    this.keys = macKeys;
    this.caller = caller;
    this.keyArnValue = arn;
  }

  private ready(snapshotId: string): { keys: MacKeyService; caller: Caller; keyArn: string } {
    if (!this.keys || !this.caller || !this.keyArnValue) {
      throw new SnapshotError('SNAPSHOT_STORE', `snapshot manifest ${snapshotId}: its manifest MAC cannot be checked yet: the key of --snapshot-manifest-key is not open (the KMS has not answered since the daemon started)`);
    }
    return { keys: this.keys, caller: this.caller, keyArn: this.keyArnValue };
  }

  /** The manifest with a fresh `manifestMac` (any old one dropped). */
  async sign(m: SnapshotManifest): Promise<SnapshotManifest> {
    const { keys, caller, keyArn } = this.ready(m.snapshotId);
    const bare = withoutMac(m);
    const digest = canonicalDigest(bare);
    let mac: string;
    try {
      const r = await keys.generateMac({ KeyId: keyArn, Message: manifestMacMessage(m.snapshotId, digest), MacAlgorithm: MANIFEST_MAC_ALGORITHM }, caller);
      mac = Buffer.from(r.Mac).toString('base64');
    } catch (e) {
      throw new SnapshotError('SNAPSHOT_STORE', `snapshot manifest ${m.snapshotId}: cannot make its manifest MAC with ${keyArn}: ${(e as Error).message}`, { cause: e });
    }
    this.remember(`${m.snapshotId}:${digest}:${mac}`);
    const macField: ManifestMac = { keyArn, mac };
    return { ...bare, [MANIFEST_MAC_FIELD]: macField } as SnapshotManifest;
  }

  /**
   * Resolves when `m` (as read from the store under `snapshotId`) carries a MAC this key made
   * over exactly its content and id. A missing, malformed or wrong MAC is SNAPSHOT_CORRUPT naming
   * the snapshot and "manifest MAC"; a KMS that cannot answer is SNAPSHOT_STORE (nothing is
   * trusted meanwhile, and nothing is called corrupt for the KMS's outage).
   */
  async verify(snapshotId: string, m: SnapshotManifest): Promise<void> {
    if (this.verifiedObjects.has(m)) return;
    const { keys, caller, keyArn } = this.ready(snapshotId);
    const corrupt = (refusal: ManifestMacRefusal, why: string, cause?: unknown, digest?: string): SnapshotError =>
      new ManifestMacRefused(snapshotId, refusal, `snapshot manifest ${snapshotId}: ${why} (docs/architecture.md §13.5)`, { ...(cause === undefined ? {} : { cause }), ...(digest ? { digest } : {}) });
    const got = macOf(m);
    if (got === undefined) {
      throw corrupt('missing', `it has no manifest MAC, and this daemon (--snapshot-manifest-key ${keyArn}) trusts only signed manifests`);
    }
    if (got === 'malformed') throw corrupt('malformed', `its manifest MAC is not {keyArn, mac (32 bytes of HMAC_SHA_256 in base64)}`);
    let digest: string;
    try {
      digest = canonicalDigest(m);
    } catch (e) {
      // A member nested past what the stack holds: not a manifest ebsd wrote.
      throw corrupt('uncanonical', `its content cannot be put in canonical form for the manifest MAC: ${(e as Error).message}`, e);
    }
    const seen = `${snapshotId}:${digest}:${got.mac}`;
    // The key the manifest names is the manifest's to say (up to its size limit): quoted cut short.
    const other = got.keyArn !== keyArn ? ` (it names key ${quoted(got.keyArn)}; this daemon verifies with ${keyArn})` : '';
    const invalid = `its manifest MAC does not verify: the manifest was changed, moved from another snapshot id, or signed with another key${other}`;
    // The same content with the same MAC failed before: it fails again (HMAC is deterministic), without another KMS call.
    if (this.failed.has(seen)) throw corrupt('invalid', invalid, undefined, digest);
    if (!this.verified.has(seen)) {
      let answer: { MacValid?: unknown };
      try {
        answer = await keys.verifyMac({ KeyId: keyArn, Message: manifestMacMessage(snapshotId, digest), MacAlgorithm: MANIFEST_MAC_ALGORITHM, Mac: Buffer.from(got.mac, 'base64') }, caller);
      } catch (e) {
        const aws = (e as { awsName?: unknown }).awsName;
        if (aws === 'KMSInvalidMacException') {
          this.rememberFailed(seen);
          throw corrupt('invalid', invalid, e, digest);
        }
        throw new SnapshotError('SNAPSHOT_STORE', `snapshot manifest ${snapshotId}: cannot check its manifest MAC with ${keyArn}: ${(e as Error).message}`, { cause: e });
      }
      // VerifyMac answers MacValid true or throws (KMSInvalidMacException for a MAC that does not verify): any other
      // answer is not a verification, and not a verdict on the manifest either. Failed closed as a KMS that cannot be
      // asked (SNAPSHOT_STORE), not as a refused manifest, which is shown in state error and may be deleted.
      if (answer?.MacValid !== true) {
        throw new SnapshotError('SNAPSHOT_STORE', `snapshot manifest ${snapshotId}: cannot check its manifest MAC with ${keyArn}: VerifyMac answered MacValid ${JSON.stringify(answer?.MacValid) ?? 'undefined'}, neither true nor KMSInvalidMacException`);
      }
    }
    this.remember(seen);
    if (Object.isFrozen(m)) this.verifiedObjects.add(m);
  }

  private rememberFailed(k: string): void {
    this.failed.delete(k);
    this.failed.set(k, true);
    if (this.failed.size > FAILED_MAX) this.failed.delete(this.failed.keys().next().value!);
  }

  private remember(k: string): void {
    this.verified.delete(k);
    this.verified.set(k, true);
    if (this.verified.size > VERIFIED_MAX) this.verified.delete(this.verified.keys().next().value!);
  }

  /** True when the manifest carries a MAC of any shape (sign-manifests leaves those alone: a wrong one is what it must not bless). */
  static hasMac(m: SnapshotManifest): boolean {
    return macOf(m) !== undefined;
  }
}

/** open() could not reach an answer from the KMS (not a refusal): the signer stays closed, and opening again may succeed. */
export class ManifestKeyUnavailable extends EbsdError {
  constructor(message: string, cause: unknown) {
    const aws = (cause as { awsName?: unknown }).awsName;
    super('MANIFEST_KEY_UNAVAILABLE', message, { ...(typeof aws === 'string' ? { awsName: aws } : {}), cause });
  }
}

/**
 * Writes a snapshot's `completed` manifest through `o.put` (a create's, a copy's). With
 * --snapshot-manifest-key the write needs the KMS (GenerateMac): a KMS that did not answer (a restart of
 * the KMS host, a network blip) is no reason to end a snapshot whose blocks are all stored as `error`, so
 * the write is tried again with the daemon's back-off for up to COMPLETED_WRITE_KMS_WAIT_MS. Before each
 * retry: `o.pause(ms)` (which throws once the operation is stopped), a new `completionTime`, and
 * `o.recheck` (on a shared store the blocks are asked for again just before the manifest that names them
 * is written; a KMS not answering there is waited for too). A refusal, a store error, a stop or the wait
 * running out throws as the write did.
 */
export async function putCompletedWaitingForKms(m: SnapshotManifest, o: {
  put: (m: SnapshotManifest) => Promise<void>;
  pause: (ms: number) => Promise<void>;
  stopped: () => boolean;
  recheck?: (() => Promise<void>) | undefined;
  log: Logger;
}): Promise<void> {
  const until = performance.now() + COMPLETED_WRITE_KMS_WAIT_MS;
  for (let attempt = 1; ; attempt++) {
    try {
      await o.put(m);
      if (attempt > 1) o.log.info({ snapshotId: m.snapshotId, attempts: attempt }, 'the KMS answers again: the completed manifest is signed and written');
      return;
    } catch (e) {
      const wait = backoffDelayMs(attempt);
      if (!kmsDidNotAnswer(e) || o.stopped() || performance.now() + wait > until) throw e;
      if (attempt === 1) o.log.warn({ snapshotId: m.snapshotId, err: errInfo(e), waitSeconds: COMPLETED_WRITE_KMS_WAIT_MS / 1000 }, 'the KMS did not answer for the completed manifest\'s MAC: every block is stored; trying again with back-off');
      await o.pause(wait);
      m.completionTime = new Date().toISOString();
      try {
        await o.recheck?.();
      } catch (err) {
        // A manifest the recheck reads (a parent's, a source's) could not be verified: the KMS again; the next try asks again.
        if (!kmsDidNotAnswer(err) || performance.now() + backoffDelayMs(attempt + 1) > until) throw err;
      }
    }
  }
}

/** True when `e` (or what caused it) is a KMS call the KMS did not answer with a "no" (key-service.ts, KeyServiceError.authoritative). */
export function kmsDidNotAnswer(e: unknown): boolean {
  for (let x = e as { cause?: unknown } | undefined, depth = 0; x && depth < 8; x = x.cause as typeof x, depth++) {
    if (x instanceof KeyServiceError) return !x.authoritative;
  }
  return false;
}

/** A KeyService that makes and checks MACs. */
type MacKeyService = KeyService & Required<Pick<KeyService, 'generateMac' | 'verifyMac'>>;

type OnCorrupt = ((snapshotId: string, err: SnapshotError) => void) | undefined;

/**
 * The store, its manifests signed on write and verified on read (ManifestSigner); blocks and
 * everything else go to `store` as they are. The listings read each manifest through the
 * verifying getManifest (the store's own listing would read past it), a corrupt one reported
 * or thrown as the store's listing does (readListedManifests, skipCorrupt).
 */
export function signedManifests(store: CollectableStore, signer: ManifestSigner): CollectableStore {
  const getManifest = async (snapshotId: string): Promise<SnapshotManifest | undefined> => {
    const m = await store.getManifest(snapshotId);
    if (m) await signer.verify(snapshotId, m);
    return m;
  };
  const list = async <T>(opts: { onCorrupt?: OnCorrupt } | undefined, keep: (m: SnapshotManifest) => T): Promise<T[]> =>
    readListedManifests(await store.listManifestIds(), LIST_VERIFIERS, getManifest, opts?.onCorrupt, keep);
  const overrides: Partial<CollectableStore> = {
    putManifest: async (m: SnapshotManifest) => store.putManifest(await signer.sign(m)),
    getManifest,
    listManifests: (opts?: { onCorrupt?: OnCorrupt }): Promise<SnapshotManifest[]> => list(opts, (m) => m),
    listManifestSummaries: (opts?: { onCorrupt?: OnCorrupt }): Promise<SnapshotSummary[]> => list(opts, summaryOf),
  };
  return wrapStore(store, overrides);
}

/**
 * The store as a daemon without --snapshot-manifest-key uses it: a manifest is written without
 * `manifestMac`. A manifest made from one read back (a copy, a progress update) would otherwise
 * carry a MAC over other content, which a daemon started with the key later refuses.
 */
export function withoutManifestMacs(store: CollectableStore): CollectableStore {
  return wrapStore(store, { putManifest: (m: SnapshotManifest) => store.putManifest(withoutMac(m)) });
}

/** `store` with `overrides`; every other member (optional ones present or absent as on `store`) is the store's own. */
function wrapStore(store: CollectableStore, overrides: Partial<CollectableStore>): CollectableStore {
  return new Proxy(store, {
    get(target, prop) {
      if (Object.prototype.hasOwnProperty.call(overrides, prop)) return overrides[prop as keyof CollectableStore];
      const v: unknown = Reflect.get(target, prop, target);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}
