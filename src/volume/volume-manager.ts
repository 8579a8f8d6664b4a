import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { Caller } from '../kms/types.js';
import type { XtsEngine } from '../crypto/xts.js';
import { xtsKeyHalvesEqual } from '../crypto/xts-check.js';
import { silentLogger } from '../util/logger.js';
import { wipe } from '../util/wipe.js';
import { KeyedMutex } from '../util/lock.js';
import { fsyncDir } from '../util/atomic-write.js';
import { Catalog, type VolumeRecord, type VolumeState } from './catalog.js';
import { DEFAULT_KEY_CACHE_TTL_MS, type ImpairedEvent, type KeyCacheState } from './key-cache.js';
import type { Clock } from '../util/clock.js';
import { toKeyServiceError, type KeyService } from './key-service.js';
import { Attachments } from './attachments.js';
import { grantTokensOf, OpGrants, opGrantRetryMs, withKeyUse } from './op-grants.js';
import { VolumeRecovery } from './volume-recovery.js';
import { loadInstanceId } from './instance-id.js';
import type { BlockDevice } from './types.js';
import type { SnapshotSource } from './write-gate.js';
import { VOLUME_KEY_BYTES } from './luks2-json.js';
import { createLuks2Image, createPlainImage, formatOf } from './image-format.js';
import { VolumeError, incorrectState, invalidParameter, notFound, errInfo } from './errors.js';
import { parseVolumeSize } from './size.js';
import { matchesModificationFilters, matchesVolumeFilters, type VolumeModification } from './volume-filters.js';
import { FilterBudget } from '../util/ec2-filter.js';
import { growImageFile } from './backing-file.js';
import { EbsdError } from '../util/errors.js';
import { faultPoint } from '../util/fault-point.js';

export const DEFAULT_KMS_KEY = 'alias/aws/ebs';
/** What EC2 shows for a gp3 volume created without Iops and Throughput: the baseline, 3000 IOPS and 125 MiB/s. */
const GP3_IOPS = 3000;
const GP3_THROUGHPUT_MIBPS = 125;
const VOLUME_ID = /^vol-[0-9a-f]{17}$/;
/**
 * EC2's limit on ModifyVolume (README, "How often a volume can be modified"): a volume may be modified at
 * most this many times in a rolling window, DEFAULT_MODIFICATION_WINDOW_MS
 * unless the daemon is given another (`--volume-modification-window`).
 */
export const MODIFICATIONS_PER_WINDOW = 4;
export const DEFAULT_MODIFICATION_WINDOW_MS = 24 * 3_600_000;
/** A recorded modification start at most this far ahead of the clock still counts (as made now); further ahead it does not. */
const CLOCK_SKEW_MS = 5 * 60_000;

/** Audit-worthy volume events, for the daemon to append to its audit trail. */
export interface VolumeAuditEvent {
  eventName: 'CreateVolume' | 'DeleteVolume' | 'AttachVolume' | 'DetachVolume' | 'ModifyVolume' | 'VolumeImpaired' | 'VolumeRecovered';
  volumeId: string;
  principal?: string;
  time: string;
  details?: Record<string, unknown>;
}

export interface VolumeManagerOptions {
  /** State directory; images and catalog live in `<stateDir>/volumes` (0700). */
  stateDir: string;
  keyService: KeyService;
  /** The host principal: grantee and retiring principal of attach grants, caller of grant Decrypts. */
  hostPrincipal: Caller;
  xtsEngine: XtsEngine;
  /**
   * Create, restore and copy use a key through short-lived op grants
   * (op-grants.ts). The daemon sets it with a remote KMS only: there the host
   * role's key policy needs no kms:Decrypt. Off (the embedded KMS), each
   * step's Decrypt or ReEncrypt is the caller's own via EC2, judged as such.
   */
  opGrants?: boolean;
  /** Region for kms:ViaService `ec2.<region>.amazonaws.com`; default us-east-1. */
  region?: string;
  /** InstanceId recorded in attachments and named in attach grants; default the one in `<stateDir>/volumes/instance-id`, drawn at random at the first start (instance-id.ts). */
  instanceId?: string;
  availabilityZone?: string;
  /** Key cache TTL (ms); default 300 000; 0 holds the key until detach. */
  keyCacheTtlMs?: number;
  /** Key cache max-stale (ms) while KMS does not answer; default 3 600 000. */
  keyCacheMaxStaleMs?: number;
  /** Time, timers and jitter of the key caches and the shared key check (tests drive them); default the system's. */
  clock?: Clock;
  random?: () => number;
  /**
   * Measurement only: accept CreateVolume with `Cipher: "none"` / `Encrypted: false`
   * and attach such volumes (plaintext passthrough, no KMS key). Off by default;
   * the daemon turns it on only with `--allow-unencrypted`.
   */
  allowUnencrypted?: boolean;
  /** Open FUSE handles on a volume's file; detach refuses while > 0 unless forced. */
  openCount?: (volumeId: string) => number;
  onImpaired?: (ev: ImpairedEvent) => void;
  /**
   * The rolling window of ModifyVolume's limit of MODIFICATIONS_PER_WINDOW per volume;
   * default DEFAULT_MODIFICATION_WINDOW_MS (EC2's 24 hours).
   */
  modificationWindowMs?: number;
  /** ModifyVolume grew a volume (attached or not); an attached device's `size` already reports `size`. */
  onResized?: (ev: { volumeId: string; size: number; originalSize: number; attached: boolean }) => void;
  onAudit?: (ev: VolumeAuditEvent) => void;
  /**
   * Serve an attached volume (the FUSE file). Called inside the volume's
   * mutex, at attach and at resume, so the FUSE table changes in the same
   * critical section as the attachment.
   */
  expose?: (dev: BlockDevice) => void;
  /**
   * Stop serving a volume: refuse while its file is open unless `force`,
   * then drain running requests. Called inside the volume's mutex, at
   * detach and at close, before the device is closed (`shutdown`: at close, the daemon stopping).
   */
  hide?: (volumeId: string, opts: { force: boolean; shutdown?: boolean }) => Promise<void>;
  logger?: Logger;
}

export interface CreateVolumeRequest {
  Size: number | string;
  KmsKeyId?: string;
  /** EC2's flag. `false` asks for a measurement-only plaintext volume (same as `Cipher: "none"`). */
  Encrypted?: boolean;
  /** `aes-xts-plain64` (default) or `none`: measurement-only plaintext passthrough. */
  Cipher?: 'aes-xts-plain64' | 'none';
  /** Shortcut for a `Name` tag. */
  Name?: string;
  TagSpecifications?: { ResourceType?: string; Tags: { Key: string; Value: string }[] }[];
  /** EC2's ClientToken and a digest of the request (parameters and caller), recorded with the volume (VolumeManager.repeatCreate). */
  clientToken?: { token: string; request: string };
}

/** A volume as a snapshot sees it (VolumeManager.withVolumeForSnapshot). */
export interface VolumeForSnapshot {
  volumeId: string;
  /** Data bytes. */
  size: number;
  state: VolumeState;
  encrypted: boolean;
  /** Key ARN; '' for a plaintext volume. */
  kmsKeyId: string;
  tags: { Key: string; Value: string }[];
  imagePath: string;
  /** The snapshot the volume was created from (DescribeVolumes' SnapshotId), if any. */
  snapshotId?: string;
  /** The attached device, when this host serves the volume. */
  device?: BlockDevice;
}

/** What an ImageBuilder is handed: the new volume, where to write its image, and the manager's KMS and XTS engine. */
export interface ImageBuildContext {
  volumeId: string;
  /** Temp path of the image; must not exist yet. The manager renames it into place. */
  path: string;
  /** Data segment size in bytes (the request's Size, parsed). */
  size: number;
  /** The caller, acting via EC2 (kms:ViaService `ec2.<region>.amazonaws.com`): KMS calls on its behalf use this. */
  via: Caller;
  /** Guarded: failures arrive as KeyServiceError with the AWS name. */
  keyService: KeyService;
  xtsEngine: XtsEngine;
  /** Report progress, 0-100 (DescribeVolumes shows it while the volume is `creating`). */
  progress: (percent: number) => void;
}

export interface ImageBuilt {
  /** Key ARN of the volume; '' for a plaintext volume. */
  kmsKeyId: string;
  unencrypted?: true;
  /** Added to the CreateVolume audit event and log line (no secrets: ids only). */
  details?: Record<string, unknown>;
}

/** Writes a new volume's image (CreateVolume; a restore from a snapshot). */
export type ImageBuilder = (o: ImageBuildContext) => Promise<ImageBuilt>;

/** Key-cache state of one attached volume, for `ebsd status`. */
export interface VolumeKeyCacheStatus {
  VolumeId: string;
  Encrypted: boolean;
  /** `unencrypted` for a plaintext volume (it has no key). */
  State: KeyCacheState['state'] | 'unencrypted';
  LastUnwrapTime?: string;
  NextRefreshTime?: string;
  /** Max-stale deadline. */
  ExpiryTime?: string;
  StaleSince?: string;
  LastError?: { AwsName?: string; Message: string };
  Impaired?: { Reason: ImpairedEvent['reason']; AwsName?: string; Message: string; Time: string };
  TtlSeconds?: number;
  MaxStaleSeconds?: number;
}

export interface Filter {
  Name: string;
  Values: string[];
}

/**
 * EC2-shaped volume operations over LUKS2 images (docs/architecture.md §4, §6):
 * CreateVolume, DescribeVolumes, DeleteVolume, AttachVolume, DetachVolume,
 * ModifyVolume. Per-volume operations are serialized; the catalog is the
 * source of truth and every change to it is atomic. The attachment side
 * (attach, detach, re-attach after a restart, grant retirement) lives in
 * attachments.ts; this class keeps the volume lifecycle and the catalog.
 */
export class VolumeManager {
  readonly dir: string;
  private readonly log: Logger;
  private readonly ks: KeyService;
  /** `ec2.<region>.amazonaws.com`: the kms:ViaService of the KMS calls made on a caller's behalf. */
  readonly viaService: string;
  readonly instanceId: string;
  private readonly mutex = new KeyedMutex();
  /** Volumes with a ModifyVolume accepted and not yet answered (a second one is refused, not queued). */
  private readonly modifyAccepted = new Set<string>();
  private readonly attachments: Attachments;
  /** Short-lived grants of create, restore and copy steps (op-grants.ts); undefined when their calls are the caller's own (VolumeManagerOptions.opGrants). */
  readonly opGrants: OpGrants | undefined;
  private readonly recovery: VolumeRecovery;
  /** Volumes whose image a background create is writing, with its progress (0-100). */
  private readonly building = new Map<string, number>();
  private readonly pending = new Set<Promise<void>>();

  private constructor(private readonly o: VolumeManagerOptions, private readonly catalog: Catalog) {
    this.dir = join(o.stateDir, 'volumes');
    this.log = (o.logger ?? silentLogger).child({ component: 'volume' });
    this.ks = guardKeyService(o.keyService);
    this.viaService = `ec2.${o.region ?? 'us-east-1'}.amazonaws.com`;
    this.instanceId = o.instanceId!; // open() fills it in
    this.opGrants = o.opGrants
      ? new OpGrants(this.ks, o.hostPrincipal, this.instanceId, this.log, { retryMs: opGrantRetryMs(o.keyCacheTtlMs ?? DEFAULT_KEY_CACHE_TTL_MS), ...(o.clock ? { clock: o.clock } : {}) })
      : undefined;
    this.attachments = new Attachments({
      dir: this.dir,
      catalog,
      mutex: this.mutex,
      ks: this.ks,
      host: o.hostPrincipal,
      viaService: this.viaService,
      instanceId: this.instanceId,
      xtsEngine: o.xtsEngine,
      keyCacheTtlMs: o.keyCacheTtlMs,
      keyCacheMaxStaleMs: o.keyCacheMaxStaleMs,
      ...(o.clock ? { clock: o.clock } : {}),
      ...(o.random ? { random: o.random } : {}),
      openCount: o.openCount,
      onImpaired: o.onImpaired,
      log: this.log,
      record: (id) => this.record(id),
      checkUnencryptedAllowed: (what) => this.checkUnencryptedAllowed(what),
      audit: (ev) => this.audit(ev),
      ...(o.expose ? { expose: o.expose } : {}),
      ...(o.hide ? { hide: o.hide } : {}),
    });
    this.recovery = new VolumeRecovery({
      dir: this.dir,
      catalog,
      attachments: this.attachments,
      log: this.log,
      audit: (ev) => this.audit(ev),
      removeImage: (rec) => this.removeImage(rec),
    });
  }

  /** Load the catalog and clean up after a crash (see recover()). */
  static async open(o: VolumeManagerOptions): Promise<VolumeManager> {
    const dir = join(o.stateDir, 'volumes');
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    const instanceId = o.instanceId ?? (await loadInstanceId(dir));
    const m = new VolumeManager({ ...o, instanceId }, await Catalog.load(dir, (o.logger ?? silentLogger).child({ component: 'volume' })));
    try {
      await m.recover();
      await m.retirePendingGrants();
      await m.attachments.grants.retireOrphans();
    } catch (e) {
      // Nothing half open is left behind: the caller may open again (the daemon's retry while its KMS comes up).
      await m.close().catch((err) => (o.logger ?? silentLogger).error({ err: errInfo(err) }, 'could not close the volume manager after a failed open'));
      throw e;
    }
    return m;
  }

  /** The key service volume operations use (guarded: failures are KeyServiceError with the AWS name); a copy of a snapshot uses it too. */
  get keyService(): KeyService {
    return this.ks;
  }

  /** The FUSE layer reports open handles through this. */
  setOpenCountProvider(fn: (volumeId: string) => number): void {
    this.attachments.setOpenCountProvider(fn);
  }

  /** The attached device for the FUSE layer, or undefined. */
  getBlockDevice(volumeId: string): BlockDevice | undefined {
    return this.attachments.get(volumeId)?.device;
  }

  /** What a snapshot reads and gates on an attached volume (src/volume/write-gate.ts), or undefined when not attached here. */
  snapshotSource(volumeId: string): SnapshotSource | undefined {
    return this.attachments.get(volumeId)?.device;
  }

  attachedVolumeIds(): string[] {
    return this.attachments.list().map((a) => a.volumeId);
  }

  /** Finish what a crash interrupted (VolumeRecovery.recover). */
  recover(): Promise<{ removed: string[]; inUse: string[]; orphans: string[] }> {
    return this.recovery.recover();
  }

  // ---- CreateVolume ------------------------------------------------------

  /**
   * CreateVolume: a new LUKS2 volume under a fresh data key, a
   * measurement-only plaintext volume (`Cipher: "none"`), or, with `build`,
   * an image someone else writes (a restore from a snapshot, src/snapshot/restore.ts).
   */
  async createVolume(req: CreateVolumeRequest, caller: Caller, build?: ImageBuilder, opts: { background?: boolean; snapshotId?: string } = {}): Promise<ReturnType<VolumeManager['describe']>> {
    if (build) return this.create(req, caller, build, opts.background === true, opts.snapshotId);
    if (wantsPlaintext(req)) {
      this.checkUnencryptedAllowed('create');
      if (req.KmsKeyId !== undefined) throw invalidParameter('KmsKeyId cannot be given for an unencrypted volume (Cipher none / Encrypted false): it has no key');
      return this.create(req, caller, async ({ volumeId, path, size }) => {
        await createPlainImage(path, { volumeId, size });
        return { kmsKeyId: '', unencrypted: true };
      });
    }
    const keyId = req.KmsKeyId ?? DEFAULT_KMS_KEY;
    if (typeof keyId !== 'string' || keyId === '') throw invalidParameter('KmsKeyId must be a key id, ARN or alias');
    return this.create(req, caller, async ({ volumeId, path, size, via }) => {
      const { key, blob, keyArn } = await this.newDataKey(keyId, volumeId, via);
      try {
        await createLuks2Image(path, { volumeId, size, key, blob, keyArn });
      } finally {
        wipe(key);
      }
      return { kmsKeyId: keyArn };
    });
  }

  /**
   * docs/architecture.md §6.1: a new volume key, GenerateDataKeyWithoutPlaintext
   * under `keyId` with context `{"aws:ebs:id": volumeId}` on the caller's
   * behalf via EC2, unwrapped once for the LUKS2 digest or a re-encryption:
   * with op grants (a remote KMS), Decrypt as the host through a short-lived
   * `[Decrypt]` grant on the volume's context (op-grants.ts), retired right
   * after; else Decrypt on the caller's behalf too. The caller wipes `key`.
   */
  async newDataKey(keyId: string, volumeId: string, via: Caller): Promise<{ key: Uint8Array; blob: Uint8Array; keyArn: string }> {
    const ctx = { 'aws:ebs:id': volumeId };
    const generate = (id: string) => this.ks.generateDataKeyWithoutPlaintext({ KeyId: id, NumberOfBytes: VOLUME_KEY_BYTES, EncryptionContext: ctx }, via);
    let gen = await generate(keyId);
    // The grant names the key by the ARN KMS answered: CreateGrant takes no alias.
    return withKeyUse(this.opGrants, `${volumeId}-new-key`, [{ keyId: gen.KeyId, operations: ['Decrypt'], context: ctx }], via, async (use) => {
      for (let i = 0; ; i++) {
        if (i > 0) gen = await generate(gen.KeyId); // the key the grant is on
        const key = (await this.ks.decrypt({ CiphertextBlob: gen.CiphertextBlob, KeyId: gen.KeyId, EncryptionContext: ctx, ...grantTokensOf(use) }, use.caller)).Plaintext;
        if (key.length !== VOLUME_KEY_BYTES) {
          wipe(key);
          throw new VolumeError('VOLUME_IO', `KMS returned a ${key.length}-byte data key`);
        }
        // docs/architecture.md §3.5: K1 = K2 is refused by XTS (FIPS); regenerate.
        // Compared in place (xtsKeyHalvesEqual): no copy of K1 in Node's Buffer pool.
        if (!xtsKeyHalvesEqual(key) || i >= 3) return { key, blob: gen.CiphertextBlob, keyArn: gen.KeyId };
        wipe(key);
      }
    });
  }

  /**
   * The one create path: a `creating` record first (a crash from then on
   * leaves it, and recover() removes it with its files), the image written
   * by `build` to a temp file, renamed into place, then `available`. On any
   * failure the temp file, image and record go.
   */
  private async create(req: CreateVolumeRequest, caller: Caller, build: ImageBuilder, background = false, snapshotId?: string): Promise<ReturnType<VolumeManager['describe']>> {
    const size = parseVolumeSize(req.Size);
    const tags = [...(req.TagSpecifications ?? []).flatMap((t) => t.Tags)];
    if (req.Name !== undefined) tags.push({ Key: 'Name', Value: req.Name });
    const volumeId = `vol-${randomBytes(9).toString('hex').slice(0, 17)}`;
    const image = `${volumeId}.img`;
    const rec: VolumeRecord = {
      volumeId, size, state: 'creating', kmsKeyId: req.KmsKeyId ?? '', createTime: new Date().toISOString(), tags, image,
      ...(snapshotId !== undefined ? { snapshotId } : {}),
      ...(req.clientToken ? { clientToken: { token: req.clientToken.token, request: req.clientToken.request } } : {}),
    };
    // Postcondition on crash from here on: a `creating` record, which recover() removes with its files.
    await this.catalog.put(rec);
    if (!background) {
      await this.finishCreate(rec, req, caller, build);
      return this.describe(rec);
    }
    // EC2 answers `creating` at once; the image is written behind (a restore), `available` or `error` after.
    this.building.set(volumeId, 0);
    const done = this.finishCreate(rec, req, caller, build)
      .catch(async (e) => {
        rec.state = 'error';
        rec.stateMessage = e instanceof EbsdError ? `${e.awsName ?? e.code}: ${e.message}` : 'internal error (see the daemon log)';
        await this.catalog.put(rec).catch((err) => this.log.warn({ volumeId, err: errInfo(err) }, 'could not record the failed create'));
        this.audit({ eventName: 'CreateVolume', volumeId, principal: caller.arn, details: { size, failed: true, error: e instanceof EbsdError ? (e.awsName ?? e.code) : 'InternalError' } });
      })
      .finally(() => {
        this.building.delete(volumeId);
        this.pending.delete(done);
      });
    this.pending.add(done);
    return this.describe(rec);
  }

  /** Write the image, rename it into place, record `available`; on failure remove files (and, in the foreground, the record) and rethrow. */
  private async finishCreate(rec: VolumeRecord, req: CreateVolumeRequest, caller: Caller, build: ImageBuilder): Promise<void> {
    const { volumeId, image, size } = rec;
    const tmp = join(this.dir, `.${image}.tmp`);
    let built: ImageBuilt;
    try {
      // KMS calls a build makes are on the caller's behalf, via EC2 (kms:ViaService).
      built = await build({
        volumeId, path: tmp, size, via: { ...caller, viaService: this.viaService }, keyService: this.ks, xtsEngine: this.o.xtsEngine,
        progress: (pct) => void (this.building.has(volumeId) && this.building.set(volumeId, pct)),
      });
      if (built.unencrypted) this.checkUnencryptedAllowed('create');
      await fsp.rename(tmp, join(this.dir, image));
      await fsyncDir(this.dir);
      rec.kmsKeyId = built.kmsKeyId;
      if (built.unencrypted) rec.unencrypted = true;
      rec.state = 'available';
      await this.catalog.put(rec);
    } catch (e) {
      await fsp.rm(tmp, { force: true }).catch(() => {});
      await this.removeImage(rec).catch(() => {});
      if (!this.building.has(volumeId)) await this.catalog.remove(volumeId).catch(() => {});
      this.log.warn({ volumeId, keyId: req.KmsKeyId, err: errInfo(e) }, 'CreateVolume failed');
      throw e;
    }
    const details = { size, ...(built.unencrypted ? { encrypted: false, cipher: 'none' } : { kmsKeyId: rec.kmsKeyId }), ...built.details };
    if (built.unencrypted) this.log.warn({ volumeId, size, encrypted: false }, 'UNENCRYPTED volume created: its data is stored in PLAINTEXT (measurement only)');
    else this.log.info({ volumeId, size, keyArn: rec.kmsKeyId, ...built.details }, 'volume created');
    this.audit({ eventName: 'CreateVolume', volumeId, principal: caller.arn, details });
  }

  /**
   * A CreateVolume repeated with a ClientToken already recorded: the volume it
   * created, as it is now (audited as a CreateVolume, `idempotentRepeat`),
   * or IdempotentParameterMismatch when `request` (the digest of its
   * parameters and caller) differs. Undefined when no volume holds the token:
   * a first use, or one whose volume was deleted or whose create failed.
   */
  repeatCreate(token: string, request: string, caller: Caller): ReturnType<VolumeManager['describe']> | undefined {
    const rec = this.catalog.list().find((r) => r.clientToken?.token === token);
    if (!rec) return undefined;
    if (rec.clientToken!.request !== request) {
      throw new VolumeError('VOLUME_IDEMPOTENT_MISMATCH', `The client token '${token}' was already used by a CreateVolume request with different parameters`, { awsName: 'IdempotentParameterMismatch' });
    }
    this.audit({ eventName: 'CreateVolume', volumeId: rec.volumeId, principal: caller.arn, details: { size: rec.size, idempotentRepeat: true, state: rec.state } });
    return this.describe(rec);
  }

  /** Resolves when every create running in the background has ended (tests, shutdown). */
  async settled(): Promise<void> {
    while (this.pending.size) await Promise.allSettled([...this.pending]);
  }

  private checkUnencryptedAllowed(what: 'create' | 'attach'): void {
    if (this.o.allowUnencrypted) return;
    throw new EbsdError(
      'UNENCRYPTED_REFUSED',
      `refusing to ${what} an UNENCRYPTED volume (--cipher none): plaintext volumes exist only to measure encryption overhead; start the daemon with --allow-unencrypted to permit them`,
      { awsName: 'OperationNotPermitted' },
    );
  }

  // ---- DescribeVolumes ---------------------------------------------------

  describeVolumes(req: { VolumeIds?: string[]; Filters?: Filter[] } = {}): { Volumes: ReturnType<VolumeManager['describe']>[] } {
    let recs = this.catalog.list();
    if (req.VolumeIds?.length) {
      for (const id of req.VolumeIds) if (!recs.some((r) => r.volumeId === id)) throw notFound(id);
      recs = recs.filter((r) => req.VolumeIds!.includes(r.volumeId));
    }
    const out = recs.map((r) => this.describe(r));
    const budget = new FilterBudget(); // one per request (ec2-filter.ts)
    return { Volumes: req.Filters?.length ? out.filter((v) => matchesVolumeFilters(v, req.Filters!, budget)) : out };
  }

  /** Key-cache state of every attached volume (or one), for `ebsd status`. */
  describeKeyCaches(volumeIds?: string[]): VolumeKeyCacheStatus[] {
    const out: VolumeKeyCacheStatus[] = [];
    for (const att of this.attachments.list()) {
      const id = att.volumeId;
      if (volumeIds && !volumeIds.includes(id)) continue;
      const kc = att.keyCache;
      if (!kc) {
        out.push({ VolumeId: id, Encrypted: false, State: 'unencrypted' });
        continue;
      }
      const st = kc.state();
      out.push({
        VolumeId: id,
        Encrypted: true,
        State: st.state,
        LastUnwrapTime: st.lastUnwrap,
        ...(st.nextRefresh ? { NextRefreshTime: st.nextRefresh } : {}),
        ...(st.expiresAt ? { ExpiryTime: st.expiresAt } : {}),
        ...(st.staleSince ? { StaleSince: st.staleSince } : {}),
        ...(st.lastError ? { LastError: { ...(st.lastError.awsName ? { AwsName: st.lastError.awsName } : {}), Message: st.lastError.message } } : {}),
        ...(st.impaired
          ? { Impaired: { Reason: st.impaired.reason, ...(st.impaired.awsName ? { AwsName: st.impaired.awsName } : {}), Message: st.impaired.message, Time: st.impaired.time } }
          : {}),
        TtlSeconds: st.ttlMs / 1000,
        MaxStaleSeconds: st.maxStaleMs / 1000,
      });
    }
    return out;
  }

  /** DescribeVolumeStatus: `impaired` once the key cache withdrew the key. */
  describeVolumeStatus(volumeId: string): { VolumeId: string; VolumeStatus: { Status: 'ok' | 'impaired'; Details: { Name: string; Status: string }[] }; Reason?: ImpairedEvent } {
    this.record(volumeId);
    const imp = this.attachments.get(volumeId)?.keyCache?.impaired ?? null;
    return {
      VolumeId: volumeId,
      VolumeStatus: { Status: imp ? 'impaired' : 'ok', Details: [{ Name: 'io-enabled', Status: imp ? 'failed' : 'passed' }] },
      ...(imp ? { Reason: imp } : {}),
    };
  }

  // ---- DeleteVolume ------------------------------------------------------

  async deleteVolume(req: { VolumeId: string }, caller: Caller): Promise<void> {
    await this.mutex.run(req.VolumeId, async () => {
      const rec = this.record(req.VolumeId);
      if (rec.state === 'in-use') throw new VolumeError('VOLUME_IN_USE', `Volume ${rec.volumeId} is currently attached to ${rec.attachment?.instanceId}`, { awsName: 'VolumeInUse' });
      if (rec.state !== 'available' && rec.state !== 'error') throw incorrectState(`The volume '${rec.volumeId}' is '${rec.state}'`);
      // Whatever the record says, an image still served is never removed from under its device.
      if (this.attachments.get(rec.volumeId)) throw new VolumeError('VOLUME_IN_USE', `Volume ${rec.volumeId} is still attached on this host`, { awsName: 'VolumeInUse' });
      if (rec.pendingGrantRetirements?.length) await this.attachments.grants.retirePending(rec);
      if (rec.pendingGrantRetirements?.length) {
        // The record goes with the volume: its grants are kept in memory and retired by token once KMS
        // answers, and swept for by name too (AttachGrants.retryLater).
        this.attachments.grants.retryLater(rec.volumeId, { sweep: true, grants: rec.pendingGrantRetirements });
        this.log.warn({ volumeId: rec.volumeId, grantIds: rec.pendingGrantRetirements.map((g) => g.grantId) }, 'deleting a volume whose attach grants could not be retired yet; they are retired by name once KMS answers (or revoke them with RevokeGrant)');
      }
      // Attach grants a crash left without a record would outlive the volume: retire them too.
      await this.attachments.grants.retireOrphans(rec.volumeId);
      rec.state = 'deleting';
      await this.catalog.put(rec); // a crash from here on: recover() finishes the delete
      await this.removeImage(rec);
      await this.catalog.remove(rec.volumeId);
      this.audit({ eventName: 'DeleteVolume', volumeId: rec.volumeId, principal: caller.arn });
    });
  }

  // ---- AttachVolume / DetachVolume (attachments.ts) ----------------------

  /** AttachVolume: grant, unwrap, key check, then serve I/O (Attachments.attachVolume). */
  attachVolume(req: { VolumeId: string; InstanceId?: string; Device?: string }, caller: Caller) {
    return this.attachments.attachVolume(req, caller);
  }

  /** AttachVolume / DetachVolume's InstanceId: this host's, or InvalidInstanceID.NotFound (a dry run checks it too). */
  checkInstance(instanceId: string | undefined): void {
    this.attachments.checkInstance(instanceId);
  }

  /** After a daemon restart: re-attach the volumes recorded `in-use` on this host (Attachments.resumeAttachments). */
  resumeAttachments(only?: ReadonlySet<string>): Promise<{ resumed: string[]; failed: { volumeId: string; error: unknown }[] }> {
    return this.attachments.resumeAttachments(only);
  }

  /** DetachVolume: drain, fdatasync, wipe the key, retire the grant (Attachments.detachVolume). */
  detachVolume(req: { VolumeId: string; Force?: boolean; InstanceId?: string }, caller: Caller) {
    return this.attachments.detachVolume(req, caller);
  }

  /** Retire the attach grants a failed detach left behind; returns the grant ids still pending (AttachGrants.retirePendingGrants). */
  retirePendingGrants(): Promise<string[]> {
    return this.attachments.grants.retirePendingGrants();
  }

  // ---- Snapshots (src/snapshot) -----------------------------------------

  /**
   * Runs `fn` holding the volume's mutex, with what a snapshot reads of the
   * volume: its record's view, the image path, and the attached device (if
   * any). Attach, detach, modify and delete of this volume wait until `fn`
   * settles. A snapshot holds it for its set-up only (header, pending
   * manifest, point in time), not for its copy, which reads through its own
   * handle on the image (docs/architecture.md §12.1).
   */
  withVolumeForSnapshot<T>(volumeId: string, fn: (v: VolumeForSnapshot) => Promise<T>): Promise<T> {
    return this.mutex.run(volumeId, async () => {
      const rec = this.record(volumeId);
      const device = this.attachments.get(rec.volumeId)?.device;
      return fn({
        volumeId: rec.volumeId,
        size: rec.size,
        state: rec.state,
        encrypted: !rec.unencrypted,
        kmsKeyId: rec.kmsKeyId,
        tags: rec.tags.map((t) => ({ ...t })),
        imagePath: join(this.dir, rec.image),
        ...(rec.snapshotId ? { snapshotId: rec.snapshotId } : {}),
        ...(device ? { device } : {}),
      });
    });
  }

  // ---- ModifyVolume ------------------------------------------------------

  /**
   * Grow only. Everything is checked before anything changes (state, no
   * modification under way, size, EC2's limit of modifications in a rolling
   * window, the image is a regular file, its header's size); then an intent
   * record (with this modification's start, counted from then on), the
   * sparse file grown (never shrunk), the header, and the catalog. A crash
   * anywhere in between is settled at the next start from the header
   * (settleModify), so header, file and catalog agree again.
   */
  async modifyVolume(req: { VolumeId: string; Size: number | string }, caller: Caller) {
    const startTime = new Date().toISOString(); // EC2's StartTime: when the call came in
    // A modify arriving while another one of the volume is under way is refused, as EC2
    // does, not queued behind it: "under way" from its acceptance here, not only once its
    // intent is recorded (it may wait for the volume's lock first).
    this.refuseModifyUnderWay(req.VolumeId);
    this.modifyAccepted.add(req.VolumeId);
    return this.mutex.run(req.VolumeId, async () => {
      const rec = this.record(req.VolumeId);
      // The window ends now, not at the arrival: a start may have left it while this call waited for the lock.
      const { size, starts } = this.refuseModify(rec, req.Size);
      const path = join(this.dir, rec.image);
      const h = await this.recovery.imageSize(rec);
      // Precondition: never below what the header says, whatever the catalog says.
      if (size <= h.size) throw invalidParameter(`New size ${size} must be larger than the size ${h.size} the image header of ${rec.volumeId} records; volumes only grow.`);
      const original = rec.size;
      rec.modifying = { originalSize: original, targetSize: size, since: startTime };
      rec.modificationStarts = [...starts, startTime].slice(-MODIFICATIONS_PER_WINDOW);
      await this.catalog.put(rec);
      faultPoint('modify.after-intent');
      try {
        await growImageFile(path, h.dataOffset + size); // the header never claims more than the file holds
        await formatOf(rec).resize(path, size);
      } catch (e) {
        this.log.warn({ volumeId: rec.volumeId, err: errInfo(e) }, 'ModifyVolume failed; settling from the image header');
        const settled = await this.recovery.settleModify(rec, `failed and rolled back: ${errInfo(e).message ?? String(e)}`).then(
          () => true,
          (err) => (this.log.error({ volumeId: rec.volumeId, err: errInfo(err) }, 'could not settle the failed modify; the next start retries'), false),
        );
        // The header reached the new size before the error (the update failed after its
        // second copy was durable): the catalog rolled forward, so the modify happened.
        // Answer so, and grow the attached device, or the caller, DescribeVolumes and the
        // device would tell three different sizes.
        if (!settled || rec.size !== size) throw e;
        this.log.warn({ volumeId: rec.volumeId, size, err: errInfo(e) }, 'ModifyVolume: the image header records the new size despite the error; the modify completed');
      }
      faultPoint('modify.after-header');
      rec.size = size;
      delete rec.modifying;
      rec.lastModification = { originalSize: original, targetSize: size, startTime, endTime: new Date().toISOString(), state: 'completed' };
      await this.catalog.put(rec);
      const dev = this.attachments.get(rec.volumeId)?.device;
      dev?.resize(size);
      try {
        this.o.onResized?.({ volumeId: rec.volumeId, size, originalSize: original, attached: !!dev });
      } catch (e) {
        this.log.warn({ volumeId: rec.volumeId, err: errInfo(e) }, 'onResized callback threw');
      }
      this.audit({ eventName: 'ModifyVolume', volumeId: rec.volumeId, principal: caller.arn, details: { originalSize: original, targetSize: size } });
      return { VolumeModification: this.modificationOf(rec)! };
    }).finally(() => this.modifyAccepted.delete(req.VolumeId));
  }

  /**
   * What ModifyVolume would refuse before it changes anything, as it words it: a DryRun's
   * answer (no lock taken, nothing changed). A modify already accepted counts as under way.
   */
  checkModify(req: { VolumeId: string; Size: number | string }): void {
    this.refuseModifyUnderWay(req.VolumeId);
    this.refuseModify(this.record(req.VolumeId), req.Size);
  }

  /** A modify of the volume under way: its intent recorded, or accepted and waiting for the volume's lock. */
  private refuseModifyUnderWay(volumeId: string): void {
    refuseWhileModifying(this.record(volumeId));
    if (this.modifyAccepted.has(volumeId)) throw modificationUnderWay(volumeId);
  }

  /** ModifyVolume's refusals of the volume as it is now; the new size and the starts in the window. */
  private refuseModify(rec: VolumeRecord, requested: number | string): { size: number; starts: string[] } {
    if (rec.state !== 'available' && rec.state !== 'in-use') throw incorrectState(`The volume '${rec.volumeId}' is '${rec.state}'`);
    // An intent left by a modify that could not be settled (the next start retries it).
    refuseWhileModifying(rec);
    const size = parseVolumeSize(requested);
    if (size <= rec.size) throw invalidParameter(`New size ${size} must be larger than the current size ${rec.size}; volumes only grow.`);
    return { size, starts: this.modificationStartsWithin(rec, Date.now()) };
  }

  /**
   * The volume's recorded modification starts (oldest first, at most
   * MODIFICATIONS_PER_WINDOW); VolumeModificationRateExceeded when all of them
   * fall in the rolling window that ends `now`, naming when the oldest leaves it.
   */
  private modificationStartsWithin(rec: VolumeRecord, now: number): string[] {
    const window = this.o.modificationWindowMs ?? DEFAULT_MODIFICATION_WINDOW_MS;
    // A record from before the limit existed has only its last modification: that one counts.
    const recorded = Array.isArray(rec.modificationStarts) ? rec.modificationStarts : rec.lastModification ? [rec.lastModification.startTime] : [];
    const starts = recorded
      .filter((t): t is string => typeof t === 'string' && Number.isFinite(Date.parse(t)))
      .slice(-MODIFICATIONS_PER_WINDOW);
    if (window === 0) return starts; // --volume-modification-window 0: no limit
    // A start later than now: the clock was set back. Within CLOCK_SKEW_MS it counts as made now (a
    // small step back does not lose a modification); further ahead it cannot be placed and is not
    // counted, so a clock set back by days does not lock the volume out until it catches up.
    const recent = starts
      .map((t) => Date.parse(t))
      .filter((t) => t <= now + CLOCK_SKEW_MS)
      .map((t) => Math.min(t, now))
      .filter((t) => t > now - window);
    if (recent.length >= MODIFICATIONS_PER_WINDOW) {
      const again = new Date(Math.min(...recent) + window).toISOString();
      throw new VolumeError(
        'VOLUME_MODIFICATION_RATE_EXCEEDED',
        `You've reached the maximum modification rate per volume limit: volume '${rec.volumeId}' was modified ${MODIFICATIONS_PER_WINDOW} times ` +
          `in a rolling ${windowText(window)} period. You can modify it again after ${again}.`,
        { awsName: 'VolumeModificationRateExceeded' },
      );
    }
    return starts;
  }

  // ---- DescribeVolumesModifications --------------------------------------

  /**
   * EC2's DescribeVolumesModifications: the most recent modification of each
   * volume (the one under way, else the last that ended). With `VolumeIds`,
   * an unknown volume is InvalidVolumeID.NotFound and one never modified is
   * InvalidVolumeModification.NotFound, as EC2 answers; without, volumes never
   * modified are left out. `Filters` are EC2's (volume-filters.ts).
   */
  describeVolumesModifications(req: { VolumeIds?: string[]; Filters?: Filter[] } = {}): { VolumesModifications: VolumeModification[] } {
    // A volume named twice is listed once, as DescribeVolumes and DescribeSnapshots list it.
    const recs = req.VolumeIds?.length ? [...new Set(req.VolumeIds)].map((id) => this.record(id)) : this.catalog.list();
    const out: VolumeModification[] = [];
    for (const r of recs) {
      const m = this.modificationOf(r);
      if (m) out.push(m);
      else if (req.VolumeIds?.length) throw new VolumeError('VOLUME_MODIFICATION_NOT_FOUND', `Modification for volume '${r.volumeId}' does not exist.`, { awsName: 'InvalidVolumeModification.NotFound' });
    }
    const budget = new FilterBudget();
    return { VolumesModifications: req.Filters?.length ? out.filter((m) => matchesModificationFilters(m, req.Filters!, budget)) : out };
  }

  /** The volume's most recent modification in EC2's VolumeModification shape; undefined when it was never modified. */
  private modificationOf(r: VolumeRecord): VolumeModification | undefined {
    const now = r.modifying;
    const last = now ? undefined : r.lastModification;
    if (!now && !last) return undefined;
    const originalSize = now?.originalSize ?? last!.originalSize;
    const targetSize = now?.targetSize ?? last!.targetSize;
    // gp3 before and after: ebsd changes the size only (README, "Volumes").
    const fixed = { Iops: GP3_IOPS, VolumeType: 'gp3' as const, Throughput: GP3_THROUGHPUT_MIBPS, MultiAttachEnabled: false };
    return {
      VolumeId: r.volumeId,
      ModificationState: now ? 'modifying' : last!.state,
      ...(last?.statusMessage ? { StatusMessage: last.statusMessage } : {}),
      // EC2 reports GiB, rounded up as DescribeVolumes' Size; ebsd volumes may be smaller, so the *Bytes are exact.
      TargetSize: gib(targetSize),
      TargetIops: fixed.Iops,
      TargetVolumeType: fixed.VolumeType,
      TargetThroughput: fixed.Throughput,
      TargetMultiAttachEnabled: fixed.MultiAttachEnabled,
      OriginalSize: gib(originalSize),
      OriginalIops: fixed.Iops,
      OriginalVolumeType: fixed.VolumeType,
      OriginalThroughput: fixed.Throughput,
      OriginalMultiAttachEnabled: fixed.MultiAttachEnabled,
      OriginalSizeBytes: originalSize,
      TargetSizeBytes: targetSize,
      Progress: now ? 0 : 100,
      StartTime: now?.since ?? last!.startTime,
      ...(last ? { EndTime: last.endTime } : {}),
    };
  }

  /** Shutdown: stop every attachment (drain, fdatasync, wipe) but keep catalog `in-use`, so a restart resumes them. */
  async close(): Promise<void> {
    await this.opGrants?.close();
    await this.attachments.close();
  }

  // ---- internals ---------------------------------------------------------

  private record(id: string): VolumeRecord {
    if (typeof id !== 'string' || !VOLUME_ID.test(id)) throw new VolumeError('VOLUME_NOT_FOUND', `Invalid id: "${String(id)}"`, { awsName: 'InvalidVolumeID.Malformed' });
    const r = this.catalog.get(id);
    if (!r) throw notFound(id);
    return r;
  }

  private async removeImage(rec: VolumeRecord): Promise<void> {
    for (const f of [rec.image, `.${rec.image}.tmp`, `${rec.image}.lock`]) await fsp.rm(join(this.dir, f), { force: true });
    await fsyncDir(this.dir);
  }

  private describe(r: VolumeRecord) {
    // EC2's attachment states: `attaching` while the grant, unwrap and digest check run (the
    // volume is then `in-use`, as in EC2), `detaching` while a detach retires the grant.
    const attaching = r.attachment ? undefined : this.attachments.attaching(r.volumeId);
    const attachments = r.attachment
      ? [{ VolumeId: r.volumeId, InstanceId: r.attachment.instanceId, Device: r.attachment.device, State: r.detaching || this.attachments.detaching(r.volumeId) ? 'detaching' as const : 'attached' as const, AttachTime: r.attachment.attachTime, DeleteOnTermination: false }]
      : attaching
        ? [{ VolumeId: r.volumeId, InstanceId: attaching.instanceId, Device: attaching.device, State: 'attaching' as const, AttachTime: attaching.since, DeleteOnTermination: false }]
        : [];
    return {
      VolumeId: r.volumeId,
      /** EC2 reports GiB; ebsd volumes may be smaller, so SizeBytes is exact. */
      Size: gib(r.size),
      SizeBytes: r.size,
      State: (attaching ? 'in-use' : r.state) as VolumeState,
      // ebsd's own: how far a restore from a snapshot has come, while `creating`.
      ...(this.building.has(r.volumeId) ? { Progress: `${this.building.get(r.volumeId)}%` } : {}),
      ...(r.state === 'error' && r.stateMessage ? { StateMessage: r.stateMessage } : {}),
      CreateTime: r.createTime,
      // EC2 answers "" for a volume not created from a snapshot.
      SnapshotId: r.snapshotId ?? '',
      Encrypted: !r.unencrypted,
      // EC2 omits KmsKeyId for an unencrypted volume.
      ...(r.unencrypted ? {} : { KmsKeyId: r.kmsKeyId }),
      VolumeType: 'gp3',
      // gp3's baseline, which ebsd does not enforce (the volume runs as fast as the disk and the cipher allow).
      Iops: GP3_IOPS,
      Throughput: GP3_THROUGHPUT_MIBPS,
      MultiAttachEnabled: false,
      AvailabilityZone: this.o.availabilityZone ?? `${this.o.region ?? 'us-east-1'}a`,
      Attachments: attachments,
      Tags: r.tags,
    };
  }

  private audit(ev: Omit<VolumeAuditEvent, 'time'>): void {
    try {
      this.o.onAudit?.({ ...ev, time: new Date().toISOString() });
    } catch (e) {
      this.log.warn({ err: errInfo(e) }, 'audit callback threw');
    }
  }
}

/** Bytes as EC2's GiB sizes show them: rounded up, so a volume smaller than 1 GiB is 1. */
function gib(bytes: number): number {
  return Math.ceil(bytes / 1024 ** 3);
}

/** Whatever KeyService is plugged in, its failures reach callers as KeyServiceError with the AWS name. */
function guardKeyService(ks: KeyService): KeyService {
  const wrap =
    <A extends unknown[], R>(op: string, f: (...a: A) => Promise<R>) =>
    async (...a: A): Promise<R> => {
      try {
        return await f.apply(ks, a);
      } catch (e) {
        throw toKeyServiceError(op, e);
      }
    };
  return {
    generateDataKeyWithoutPlaintext: wrap('GenerateDataKeyWithoutPlaintext', ks.generateDataKeyWithoutPlaintext),
    ...(ks.listRetirableGrants ? { listRetirableGrants: wrap('ListRetirableGrants', ks.listRetirableGrants) } : {}),
    createGrant: wrap('CreateGrant', ks.createGrant),
    decrypt: wrap('Decrypt', ks.decrypt),
    reEncrypt: wrap('ReEncrypt', ks.reEncrypt),
    retireGrant: wrap('RetireGrant', ks.retireGrant),
    describeKey: wrap('DescribeKey', ks.describeKey),
    ...(ks.generateMac ? { generateMac: wrap('GenerateMac', ks.generateMac) } : {}),
    ...(ks.verifyMac ? { verifyMac: wrap('VerifyMac', ks.verifyMac) } : {}),
  };
}

/** CreateVolume asks for a measurement-only plaintext volume; a contradiction is refused. */
function wantsPlaintext(req: CreateVolumeRequest): boolean {
  const c = req.Cipher;
  if (c !== undefined && c !== 'aes-xts-plain64' && c !== 'none') throw invalidParameter(`Invalid value '${String(c)}' for Cipher: aes-xts-plain64 or none`);
  if (req.Encrypted !== undefined && typeof req.Encrypted !== 'boolean') throw invalidParameter('Encrypted must be true or false');
  if (c === 'none' && req.Encrypted === true) throw invalidParameter('Cipher none contradicts Encrypted true');
  if (c === 'aes-xts-plain64' && req.Encrypted === false) throw invalidParameter('Cipher aes-xts-plain64 contradicts Encrypted false');
  return c === 'none' || req.Encrypted === false;
}

/** IncorrectModificationState while a modification of the volume is under way (its intent is recorded), as EC2 answers. */
function refuseWhileModifying(rec: VolumeRecord): void {
  if (rec.modifying) throw modificationUnderWay(rec.volumeId);
}

function modificationUnderWay(volumeId: string): VolumeError {
  return new VolumeError('VOLUME_MODIFICATION_IN_PROGRESS', `Volume ${volumeId} cannot be modified in modification state MODIFYING`, { awsName: 'IncorrectModificationState' });
}

/** 86400000 -> `24-hour`, 90000 -> `90-second`, 2500 -> `2500-millisecond`: the window as a refusal names it. */
function windowText(ms: number): string {
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}-hour`;
  if (ms % 60_000 === 0) return `${ms / 60_000}-minute`;
  if (ms % 1000 === 0) return `${ms / 1000}-second`;
  return `${ms}-millisecond`;
}
