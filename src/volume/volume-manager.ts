import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { Caller } from '../kms/types.js';
import type { XtsEngine } from '../crypto/xts.js';
import { silentLogger } from '../util/logger.js';
import { wipe } from '../util/wipe.js';
import { KeyedMutex } from '../util/lock.js';
import { fsyncDir } from '../util/atomic-write.js';
import { Catalog, type VolumeRecord, type VolumeState } from './catalog.js';
import { AttachLock } from './attach-lock.js';
import { openBackingFile } from './backing-file.js';
import { EncryptedBlockDevice } from './encrypted-block-device.js';
import { PlainBlockDevice } from './plain-block-device.js';
import { KeyCache, type ImpairedEvent, type KeyCacheState } from './key-cache.js';
import { toKeyServiceError, type KeyService } from './key-service.js';
import type { Attachment } from './attachment.js';
import type { BlockDevice } from './types.js';
import { buildLuks2Json, verifyVolumeKey, LUKS2_DATA_OFFSET, VOLUME_KEY_BYTES, type Luks2Volume } from './luks2-json.js';
import { createLuks2, readLuks2, updateLuks2 } from './luks2-header.js';
import { VolumeError, incorrectState, invalidParameter, notFound, KeyServiceError } from './errors.js';
import { parseVolumeSize } from './size.js';
import { createPlainImage, readPlainImage, resizePlainImage } from './plain-image.js';
import { EbsdError } from '../util/errors.js';

export const DEFAULT_KMS_KEY = 'alias/aws/ebs';
const VOLUME_ID = /^vol-[0-9a-f]{17}$/;

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
  /** Region for kms:ViaService `ec2.<region>.amazonaws.com`; default us-east-1. */
  region?: string;
  /** InstanceId recorded in attachments; default `i-` + 17 hex derived from nothing secret. */
  instanceId?: string;
  availabilityZone?: string;
  /** Key cache TTL (ms); default 300 000; 0 holds the key until detach. */
  keyCacheTtlMs?: number;
  /** Key cache max-stale (ms) while KMS does not answer; default 3 600 000. */
  keyCacheMaxStaleMs?: number;
  /**
   * Measurement only: accept CreateVolume with `Cipher: "none"` / `Encrypted: false`
   * and attach such volumes (plaintext passthrough, no KMS key). Off by default;
   * the daemon turns it on only with `--allow-unencrypted`.
   */
  allowUnencrypted?: boolean;
  /** Open FUSE handles on a volume's file; detach refuses while > 0 unless forced. */
  openCount?: (volumeId: string) => number;
  onImpaired?: (ev: ImpairedEvent) => void;
  /** ModifyVolume grew a volume (attached or not); an attached device's `size` already reports `size`. */
  onResized?: (ev: { volumeId: string; size: number; originalSize: number; attached: boolean }) => void;
  onAudit?: (ev: VolumeAuditEvent) => void;
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
}

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
 * EC2-shaped volume operations over LUKS2 images (DESIGN §4, §6):
 * CreateVolume, DescribeVolumes, DeleteVolume, AttachVolume, DetachVolume,
 * ModifyVolume. Per-volume operations are serialized; the catalog is the
 * source of truth and every change to it is atomic.
 */
export class VolumeManager {
  readonly dir: string;
  private readonly log: Logger;
  private readonly ks: KeyService;
  private readonly host: Caller;
  private readonly viaService: string;
  readonly instanceId: string;
  private readonly mutex = new KeyedMutex();
  private readonly live = new Map<string, Attachment>();
  private openCount: (volumeId: string) => number;

  private constructor(private readonly o: VolumeManagerOptions, private readonly catalog: Catalog) {
    this.dir = join(o.stateDir, 'volumes');
    this.log = (o.logger ?? silentLogger).child({ component: 'volume' });
    this.ks = guardKeyService(o.keyService);
    this.host = o.hostPrincipal;
    this.viaService = `ec2.${o.region ?? 'us-east-1'}.amazonaws.com`;
    this.instanceId = o.instanceId ?? 'i-0ebsd00000000000';
    this.openCount = o.openCount ?? (() => 0);
  }

  /** Load the catalog and clean up after a crash (see recover()). */
  static async open(o: VolumeManagerOptions): Promise<VolumeManager> {
    const dir = join(o.stateDir, 'volumes');
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    const m = new VolumeManager(o, await Catalog.load(dir));
    await m.recover();
    await m.retirePendingGrants();
    return m;
  }

  /** The FUSE layer reports open handles through this. */
  setOpenCountProvider(fn: (volumeId: string) => number): void {
    this.openCount = fn;
  }

  /** The attached device for the FUSE layer, or undefined. */
  getBlockDevice(volumeId: string): BlockDevice | undefined {
    return this.live.get(volumeId)?.device;
  }

  attachedVolumeIds(): string[] {
    return [...this.live.keys()];
  }

  /**
   * Finish what a crash interrupted: `creating` and `deleting` records lose
   * their image and their record; temp files go. Records still `in-use` are
   * returned for resumeAttachments(). Images with no record are reported,
   * never deleted (a lost catalog must not cost data).
   */
  async recover(): Promise<{ removed: string[]; inUse: string[]; orphans: string[] }> {
    const removed: string[] = [];
    for (const r of this.catalog.list()) {
      if (r.state === 'creating' || r.state === 'deleting') {
        await this.removeImage(r);
        await this.catalog.remove(r.volumeId);
        removed.push(r.volumeId);
        this.audit({ eventName: 'VolumeRecovered', volumeId: r.volumeId, details: { was: r.state, action: 'removed' } });
      }
    }
    const known = new Set(this.catalog.list().map((r) => r.image));
    const orphans: string[] = [];
    for (const f of await fsp.readdir(this.dir)) {
      if (/^\.vol-[0-9a-f]{17}\.img\.tmp$/.test(f)) await fsp.rm(join(this.dir, f), { force: true });
      else if (/^vol-[0-9a-f]{17}\.img$/.test(f) && !known.has(f)) orphans.push(f);
    }
    if (removed.length || orphans.length) this.log.warn({ removed, orphans }, 'recovered volume catalog after an interrupted operation');
    const inUse = this.catalog.list().filter((r) => r.state === 'in-use').map((r) => r.volumeId);
    return { removed, inUse, orphans };
  }

  // ---- CreateVolume ------------------------------------------------------

  async createVolume(req: CreateVolumeRequest, caller: Caller): Promise<ReturnType<VolumeManager['describe']>> {
    if (wantsPlaintext(req)) return this.createPlainVolume(req, caller);
    const size = parseVolumeSize(req.Size);
    const keyId = req.KmsKeyId ?? DEFAULT_KMS_KEY;
    if (typeof keyId !== 'string' || keyId === '') throw invalidParameter('KmsKeyId must be a key id, ARN or alias');
    const tags = [...(req.TagSpecifications ?? []).flatMap((t) => t.Tags)];
    if (req.Name !== undefined) tags.push({ Key: 'Name', Value: req.Name });
    const volumeId = `vol-${randomBytes(9).toString('hex').slice(0, 17)}`;
    const image = `${volumeId}.img`;
    const rec: VolumeRecord = { volumeId, size, state: 'creating', kmsKeyId: keyId, createTime: new Date().toISOString(), tags, image };
    // Postcondition on crash from here on: a `creating` record, which recover() removes with its files.
    await this.catalog.put(rec);
    const ctx = { 'aws:ebs:id': volumeId };
    const tmp = join(this.dir, `.${image}.tmp`);
    let key: Uint8Array | undefined;
    try {
      // DESIGN §6: GenerateDataKeyWithoutPlaintext on the caller's behalf, via EC2.
      const via: Caller = { ...caller, viaService: this.viaService };
      let gen: { CiphertextBlob: Uint8Array; KeyId: string };
      for (let i = 0; ; i++) {
        gen = await this.ks.generateDataKeyWithoutPlaintext({ KeyId: keyId, NumberOfBytes: VOLUME_KEY_BYTES, EncryptionContext: ctx }, via);
        // The LUKS2 digest needs the key once; unwrap it, on the caller's behalf too, and wipe it.
        key = (await this.ks.decrypt({ CiphertextBlob: gen.CiphertextBlob, KeyId: gen.KeyId, EncryptionContext: ctx }, via)).Plaintext;
        if (key.length !== VOLUME_KEY_BYTES) throw new VolumeError('VOLUME_IO', `KMS returned a ${key.length}-byte data key`);
        // DESIGN §3: K1 = K2 is refused by XTS (FIPS); regenerate.
        if (!Buffer.from(key.subarray(0, 32)).equals(key.subarray(32)) || i >= 3) break;
        wipe(key);
      }
      rec.kmsKeyId = gen.KeyId;
      const json = buildLuks2Json({
        size,
        volumeKey: key,
        token: { key_arn: gen.KeyId, ciphertext_blob: Buffer.from(gen.CiphertextBlob).toString('base64'), encryption_context: ctx, volume_id: volumeId },
      });
      wipe(key);
      await createLuks2(tmp, { json, size, dataOffset: LUKS2_DATA_OFFSET, label: volumeId });
      await fsp.rename(tmp, join(this.dir, image));
      await fsyncDir(this.dir);
      rec.state = 'available';
      await this.catalog.put(rec);
    } catch (e) {
      wipe(key);
      await fsp.rm(tmp, { force: true }).catch(() => {});
      await this.removeImage(rec).catch(() => {});
      await this.catalog.remove(volumeId).catch(() => {});
      this.log.warn({ volumeId, keyId, err: errInfo(e) }, 'CreateVolume failed');
      throw e;
    }
    this.log.info({ volumeId, size, keyArn: rec.kmsKeyId }, 'volume created');
    this.audit({ eventName: 'CreateVolume', volumeId, principal: caller.arn, details: { size, kmsKeyId: rec.kmsKeyId } });
    return this.describe(rec);
  }

  /**
   * Measurement-only plaintext volume: no KMS call, no key, no grant; an
   * image with the plaintext marker header (plain-image.ts). Refused unless
   * the manager was opened with allowUnencrypted.
   */
  private async createPlainVolume(req: CreateVolumeRequest, caller: Caller): Promise<ReturnType<VolumeManager['describe']>> {
    this.checkUnencryptedAllowed('create');
    const size = parseVolumeSize(req.Size);
    if (req.KmsKeyId !== undefined) throw invalidParameter('KmsKeyId cannot be given for an unencrypted volume (Cipher none / Encrypted false): it has no key');
    const tags = [...(req.TagSpecifications ?? []).flatMap((t) => t.Tags)];
    if (req.Name !== undefined) tags.push({ Key: 'Name', Value: req.Name });
    const volumeId = `vol-${randomBytes(9).toString('hex').slice(0, 17)}`;
    const image = `${volumeId}.img`;
    const rec: VolumeRecord = { volumeId, size, state: 'creating', kmsKeyId: '', unencrypted: true, createTime: new Date().toISOString(), tags, image };
    await this.catalog.put(rec);
    const tmp = join(this.dir, `.${image}.tmp`);
    try {
      await createPlainImage(tmp, { volumeId, size });
      await fsp.rename(tmp, join(this.dir, image));
      await fsyncDir(this.dir);
      rec.state = 'available';
      await this.catalog.put(rec);
    } catch (e) {
      await fsp.rm(tmp, { force: true }).catch(() => {});
      await this.removeImage(rec).catch(() => {});
      await this.catalog.remove(volumeId).catch(() => {});
      this.log.warn({ volumeId, err: errInfo(e) }, 'CreateVolume failed');
      throw e;
    }
    this.log.warn({ volumeId, size, encrypted: false }, 'UNENCRYPTED volume created: its data is stored in PLAINTEXT (measurement only)');
    this.audit({ eventName: 'CreateVolume', volumeId, principal: caller.arn, details: { size, encrypted: false, cipher: 'none' } });
    return this.describe(rec);
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
    for (const f of req.Filters ?? []) {
      const match = (r: VolumeRecord): boolean => {
        if (f.Name === 'volume-id') return f.Values.includes(r.volumeId);
        if (f.Name === 'status') return f.Values.includes(r.state);
        if (f.Name.startsWith('tag:')) return r.tags.some((t) => t.Key === f.Name.slice(4) && f.Values.includes(t.Value));
        if (f.Name === 'attachment.instance-id') return !!r.attachment && f.Values.includes(r.attachment.instanceId);
        if (f.Name === 'kms-key-id') return f.Values.includes(r.kmsKeyId);
        throw invalidParameter(`The filter '${f.Name}' is invalid`);
      };
      recs = recs.filter(match);
    }
    return { Volumes: recs.map((r) => this.describe(r)) };
  }

  /** Key-cache state of every attached volume (or one), for `ebsd status`. */
  describeKeyCaches(volumeIds?: string[]): VolumeKeyCacheStatus[] {
    const out: VolumeKeyCacheStatus[] = [];
    for (const [id, att] of this.live) {
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
    const imp = this.live.get(volumeId)?.keyCache?.impaired ?? null;
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
      if (rec.pendingGrantRetirements?.length) await this.retirePending(rec);
      if (rec.pendingGrantRetirements?.length) {
        this.log.warn({ volumeId: rec.volumeId, grantIds: rec.pendingGrantRetirements.map((g) => g.grantId) }, 'deleting a volume whose attach grants could not be retired; revoke them with RevokeGrant');
      }
      rec.state = 'deleting';
      await this.catalog.put(rec); // a crash from here on: recover() finishes the delete
      await this.removeImage(rec);
      await this.catalog.remove(rec.volumeId);
      this.audit({ eventName: 'DeleteVolume', volumeId: rec.volumeId, principal: caller.arn });
    });
  }

  // ---- AttachVolume ------------------------------------------------------

  /**
   * DESIGN §6: CreateGrant on the caller's behalf (grantee and retiring
   * principal: the host; [Decrypt]; EncryptionContextSubset on the volume),
   * Decrypt as the host with the grant token, check the key against the
   * LUKS2 digest, then serve I/O. `Device` is informational.
   */
  async attachVolume(req: { VolumeId: string; InstanceId?: string; Device?: string }, caller: Caller) {
    return this.mutex.run(req.VolumeId, async () => {
      const rec = this.record(req.VolumeId);
      if (this.live.has(rec.volumeId) || rec.state === 'in-use') {
        throw new VolumeError('VOLUME_IN_USE', `vol ${rec.volumeId} is already attached to ${rec.attachment?.instanceId ?? this.instanceId}`, { awsName: 'VolumeInUse' });
      }
      if (rec.state !== 'available') throw incorrectState(`The volume '${rec.volumeId}' is '${rec.state}'`);
      if (req.InstanceId !== undefined && req.InstanceId !== this.instanceId) throw invalidParameter(`This host is ${this.instanceId}`);
      if (rec.pendingGrantRetirements?.length) await this.retirePending(rec);
      if (rec.unencrypted) this.checkUnencryptedAllowed('attach');
      const device = req.Device ?? `/dev/ebsd/${rec.volumeId}`;
      const att = await this.bringUp(rec, async (v) => {
        if (!v) return { grantId: '', grantToken: '' }; // plaintext: no key, no grant
        const g = await this.ks.createGrant(
          {
            KeyId: v.token.key_arn,
            GranteePrincipal: this.host.arn,
            RetiringPrincipal: this.host.arn,
            Operations: ['Decrypt'],
            Constraints: { EncryptionContextSubset: { 'aws:ebs:id': rec.volumeId } },
            Name: `ebsd-attach-${rec.volumeId}`,
          },
          { ...caller, viaService: this.viaService },
        );
        // CreateGrant is idempotent by Name: a grant a failed detach left behind comes back as this one.
        if (rec.pendingGrantRetirements?.some((p) => p.grantId === g.GrantId)) {
          rec.pendingGrantRetirements = rec.pendingGrantRetirements.filter((p) => p.grantId !== g.GrantId);
          if (!rec.pendingGrantRetirements.length) delete rec.pendingGrantRetirements;
        }
        return { grantId: g.GrantId, grantToken: g.GrantToken };
      });
      const attachTime = new Date().toISOString();
      rec.state = 'in-use';
      rec.attachment = { instanceId: this.instanceId, device, attachTime, hostPrincipal: this.host.arn, grantId: att.grantId, grantToken: att.grantToken };
      await this.catalog.put(rec);
      if (rec.unencrypted) {
        this.log.warn({ volumeId: rec.volumeId, encrypted: false }, 'UNENCRYPTED volume attached: I/O is plaintext passthrough (measurement only)');
      } else {
        this.log.info({ volumeId: rec.volumeId, keyArn: att.keyArn, grantId: att.grantId }, 'volume attached');
      }
      this.audit({
        eventName: 'AttachVolume', volumeId: rec.volumeId, principal: caller.arn,
        details: rec.unencrypted ? { instanceId: this.instanceId, encrypted: false, cipher: 'none' } : { instanceId: this.instanceId, grantId: att.grantId },
      });
      return { VolumeId: rec.volumeId, InstanceId: this.instanceId, Device: device, State: 'attached' as const, AttachTime: attachTime };
    });
  }

  /**
   * After a daemon restart: bring back volumes recorded `in-use` on this
   * host through the stored grant (Decrypt as the host, digest check). A
   * volume that fails stays `in-use` and unattached; its error is returned.
   */
  async resumeAttachments(): Promise<{ resumed: string[]; failed: { volumeId: string; error: unknown }[] }> {
    const resumed: string[] = [];
    const failed: { volumeId: string; error: unknown }[] = [];
    for (const r of this.catalog.list()) {
      if (r.state !== 'in-use' || this.live.has(r.volumeId) || !r.attachment) continue;
      try {
        if (r.unencrypted) this.checkUnencryptedAllowed('attach');
        await this.mutex.run(r.volumeId, () => this.bringUp(r, async () => ({ grantId: r.attachment!.grantId, grantToken: r.attachment!.grantToken }), true));
        resumed.push(r.volumeId);
        if (r.unencrypted) this.log.warn({ volumeId: r.volumeId, encrypted: false }, 'UNENCRYPTED volume re-attached: I/O is plaintext passthrough (measurement only)');
      } catch (e) {
        this.log.error({ volumeId: r.volumeId, err: errInfo(e) }, 'could not resume attachment');
        failed.push({ volumeId: r.volumeId, error: e });
      }
    }
    return { resumed, failed };
  }

  // ---- DetachVolume ------------------------------------------------------

  /** Refuse while open unless Force; drain, fdatasync, wipe the key, retire the grant, catalog, audit. */
  async detachVolume(req: { VolumeId: string; Force?: boolean }, caller: Caller) {
    return this.mutex.run(req.VolumeId, async () => {
      const rec = this.record(req.VolumeId);
      if (rec.state !== 'in-use' || !rec.attachment) {
        throw new VolumeError('VOLUME_NOT_ATTACHED', `Volume '${rec.volumeId}' is in the '${rec.state}' state.`, { awsName: 'IncorrectState' });
      }
      const att = this.live.get(rec.volumeId);
      const open = att ? this.openCount(rec.volumeId) : 0;
      if (open > 0 && !req.Force) {
        throw new VolumeError('VOLUME_OPEN', `Volume ${rec.volumeId} is open (${open} handle(s)); close it or detach with Force`, { awsName: 'VolumeInUse' });
      }
      if (att) {
        await att.keyCache?.stop();
        await att.device.close(); // drain, fdatasync, wipe key, close fd
        this.live.delete(rec.volumeId);
        await att.lock.release();
      }
      let grantRetired = rec.attachment.grantId === '';
      if (!grantRetired) {
        const g = { grantId: rec.attachment.grantId, keyArn: att?.keyArn ?? rec.kmsKeyId, ...(rec.attachment.grantToken ? { grantToken: rec.attachment.grantToken } : {}) };
        grantRetired = await this.retireOne(rec.volumeId, g, 'detach');
        // The key is already wiped; a grant left behind only lets this host decrypt again.
        // Keep it so the next start or attach retires it (never forget a live grant).
        if (!grantRetired) (rec.pendingGrantRetirements ??= []).push({ ...g, since: new Date().toISOString() });
      }
      const a = rec.attachment;
      delete rec.attachment;
      rec.state = 'available';
      await this.catalog.put(rec);
      this.log.info({ volumeId: rec.volumeId, forced: !!req.Force, openHandles: open, grantRetired }, 'volume detached');
      this.audit({ eventName: 'DetachVolume', volumeId: rec.volumeId, principal: caller.arn, details: { force: !!req.Force, openHandles: open, grantId: a.grantId, grantRetired } });
      return { VolumeId: rec.volumeId, InstanceId: a.instanceId, Device: a.device, State: 'detached' as const, AttachTime: a.attachTime };
    });
  }

  // ---- ModifyVolume ------------------------------------------------------

  /** Grow only: grow the sparse file, then the LUKS2 segment size, then the catalog and live device. */
  async modifyVolume(req: { VolumeId: string; Size: number | string }, caller: Caller) {
    return this.mutex.run(req.VolumeId, async () => {
      const rec = this.record(req.VolumeId);
      if (rec.state !== 'available' && rec.state !== 'in-use') throw incorrectState(`The volume '${rec.volumeId}' is '${rec.state}'`);
      const size = parseVolumeSize(req.Size);
      if (size <= rec.size) throw invalidParameter(`New size ${size} must be larger than the current size ${rec.size}; volumes only grow.`);
      const path = join(this.dir, rec.image);
      if (rec.unencrypted) {
        const cur = await readPlainImage(path);
        await fsp.truncate(path, cur.dataOffset + size); // header never claims more than the file holds
        await resizePlainImage(path, size);
      } else {
        const cur = await readLuks2(path);
        await fsp.truncate(path, cur.volume.dataOffset + size);
        await updateLuks2(path, (j) => {
          for (const s of Object.values(j.segments)) s.size = String(size);
        });
      }
      const original = rec.size;
      rec.size = size;
      await this.catalog.put(rec);
      const dev = this.live.get(rec.volumeId)?.device;
      dev?.resize(size);
      try {
        this.o.onResized?.({ volumeId: rec.volumeId, size, originalSize: original, attached: !!dev });
      } catch (e) {
        this.log.warn({ volumeId: rec.volumeId, err: errInfo(e) }, 'onResized callback threw');
      }
      this.audit({ eventName: 'ModifyVolume', volumeId: rec.volumeId, principal: caller.arn, details: { originalSize: original, targetSize: size } });
      return {
        VolumeModification: { VolumeId: rec.volumeId, ModificationState: 'completed' as const, OriginalSize: original, TargetSize: size, StartTime: new Date().toISOString(), Progress: 100 },
      };
    });
  }

  /** Shutdown: stop every attachment (drain, fdatasync, wipe) but keep catalog `in-use`, so a restart resumes them. */
  async close(): Promise<void> {
    for (const [id, att] of this.live) {
      await this.mutex.run(id, async () => {
        await att.keyCache?.stop();
        await att.device.close();
        await att.lock.release();
        this.live.delete(id);
      });
    }
  }

  // ---- internals ---------------------------------------------------------

  private async bringUp(
    rec: VolumeRecord,
    /** `v` is undefined for a plaintext volume (no LUKS2 header, no grant). */
    grant: (v: Luks2Volume | undefined) => Promise<{ grantId: string; grantToken: string }>,
    resuming = false,
  ): Promise<Attachment & { grantToken: string }> {
    const path = join(this.dir, rec.image);
    const lock = await AttachLock.acquire(path, rec.volumeId);
    let grantInfo: { grantId: string; grantToken: string } | null = null;
    let key: Uint8Array | undefined;
    try {
      if (rec.unencrypted) {
        // Measurement only (plain-image.ts): no key, no grant, no key cache.
        const p = await readPlainImage(path);
        if (p.volumeId !== rec.volumeId || p.size < rec.size) throw new VolumeError('VOLUME_TOKEN_MISMATCH', `plaintext image of ${rec.volumeId} names ${p.volumeId}`);
        grantInfo = await grant(undefined);
        const backing = await openBackingFile(path);
        const device = new PlainBlockDevice({ volumeId: rec.volumeId, size: p.size, dataOffset: p.dataOffset, backing, logger: this.log });
        const att: Attachment = { volumeId: rec.volumeId, device, keyCache: null, lock, keyArn: '', grantId: '' };
        this.live.set(rec.volumeId, att);
        return { ...att, grantToken: '' };
      }
      const h = await readLuks2(path);
      const v = h.volume;
      const ctx = { 'aws:ebs:id': rec.volumeId };
      // Precondition: the token names this volume and binds the blob to it.
      if (v.token.volume_id !== rec.volumeId || !sameContext(v.token.encryption_context, ctx) || v.size < rec.size) {
        throw new VolumeError('VOLUME_TOKEN_MISMATCH', `image of ${rec.volumeId} carries the token of ${v.token.volume_id}`);
      }
      grantInfo = await grant(v);
      let device: EncryptedBlockDevice;
      let keyCache: KeyCache;
      const backing = await openBackingFile(path);
      {
        const blob = Buffer.from(v.token.ciphertext_blob, 'base64');
        const gt = grantInfo.grantToken;
        const unwrap = async () =>
          (await this.ks.decrypt({ CiphertextBlob: blob, KeyId: v.token.key_arn, EncryptionContext: ctx, GrantTokens: [gt] }, this.host)).Plaintext;
        try {
          key = await unwrap();
          verifyVolumeKey(v, key); // Precondition of any I/O: the key matches the LUKS2 digest.
          device = new EncryptedBlockDevice({ volumeId: rec.volumeId, size: v.size, dataOffset: v.dataOffset, backing, logger: this.log, xts: this.o.xtsEngine.createContext(key) });
        } catch (e) {
          await backing.close().catch(() => {});
          throw e;
        } finally {
          wipe(key);
        }
        const dev = device;
        keyCache = new KeyCache(dev, {
          volumeId: rec.volumeId,
          ...(this.o.keyCacheTtlMs !== undefined ? { ttlMs: this.o.keyCacheTtlMs } : {}),
          ...(this.o.keyCacheMaxStaleMs !== undefined ? { maxStaleMs: this.o.keyCacheMaxStaleMs } : {}),
          refresh: unwrap,
          verify: (k) => verifyVolumeKey(v, k),
          logger: this.log,
          onImpaired: (ev) => {
            this.audit({ eventName: 'VolumeImpaired', volumeId: ev.volumeId, principal: this.host.arn, details: { reason: ev.reason, awsName: ev.awsName } });
            this.o.onImpaired?.(ev);
          },
        });
        keyCache.start();
      }
      const att: Attachment = { volumeId: rec.volumeId, device, keyCache, lock, keyArn: v.token.key_arn, grantId: grantInfo.grantId };
      this.live.set(rec.volumeId, att);
      return { ...att, grantToken: grantInfo.grantToken };
    } catch (e) {
      if (grantInfo && grantInfo.grantId && !resuming) {
        const g = { grantId: grantInfo.grantId, keyArn: rec.kmsKeyId, grantToken: grantInfo.grantToken };
        if (!(await this.retireOne(rec.volumeId, g, 'failed attach'))) {
          (rec.pendingGrantRetirements ??= []).push({ ...g, since: new Date().toISOString() });
          await this.catalog.put(rec).catch((err) => this.log.warn({ volumeId: rec.volumeId, err: errInfo(err) }, 'could not record a pending grant retirement'));
        }
      }
      await lock.release();
      this.log.warn({ volumeId: rec.volumeId, err: errInfo(e) }, 'attach failed');
      throw e;
    }
  }

  private record(id: string): VolumeRecord {
    if (typeof id !== 'string' || !VOLUME_ID.test(id)) throw new VolumeError('VOLUME_NOT_FOUND', `Invalid id: "${String(id)}"`, { awsName: 'InvalidVolumeID.Malformed' });
    const r = this.catalog.get(id);
    if (!r) throw notFound(id);
    return r;
  }

  /**
   * RetireGrant as the host (the grant's retiring principal), by grant token
   * when we have it: the token names the grant without a key lookup, so a
   * grant that is already gone answers NotFoundException (by KeyId+GrantId
   * the core authorizes first, and the host, allowed only by the grant
   * itself, gets AccessDeniedException once the grant is revoked).
   *
   * True when retrying is pointless: retired now, or KMS answered with an
   * authoritative refusal (grant revoked or already retired, key deleted,
   * denied). False only when KMS did not answer, so the grant may still be
   * live and a later retry can succeed.
   */
  private async retireOne(volumeId: string, g: { grantId: string; keyArn: string; grantToken?: string }, when: string): Promise<boolean> {
    try {
      await this.ks.retireGrant(g.grantToken ? { GrantToken: g.grantToken } : { KeyId: g.keyArn, GrantId: g.grantId }, this.host);
      return true;
    } catch (e) {
      const err = toKeyServiceError('RetireGrant', e);
      if (err.authoritative) {
        const gone = err.awsName === 'NotFoundException' || err.awsName === 'InvalidGrantIdException' || err.awsName === 'InvalidGrantTokenException';
        this.log[gone ? 'info' : 'warn']({ volumeId, grantId: g.grantId, when, awsName: err.awsName }, gone ? 'attach grant already gone' : 'KMS refused RetireGrant; not retrying (revoke the grant as the account if it still exists)');
        return true;
      }
      this.log.warn({ volumeId, grantId: g.grantId, when, err: errInfo(err) }, 'RetireGrant failed; grant kept for a later retry');
      return false;
    }
  }

  /** Retry the grant retirements a failed detach left on `rec`; updates the catalog. Never throws for KMS errors. */
  private async retirePending(rec: VolumeRecord): Promise<void> {
    const before = rec.pendingGrantRetirements ?? [];
    const left: NonNullable<VolumeRecord['pendingGrantRetirements']> = [];
    for (const g of before) if (!(await this.retireOne(rec.volumeId, g, 'retry'))) left.push(g);
    if (left.length === before.length) return;
    if (left.length) rec.pendingGrantRetirements = left;
    else delete rec.pendingGrantRetirements;
    await this.catalog.put(rec);
  }

  /**
   * Retire every attach grant a failed detach left behind (runs at open, and
   * per volume before its next attach). Returns the grant ids still pending.
   */
  async retirePendingGrants(): Promise<string[]> {
    const still: string[] = [];
    for (const r of this.catalog.list()) {
      if (!r.pendingGrantRetirements?.length) continue;
      await this.mutex.run(r.volumeId, async () => {
        const rec = this.catalog.get(r.volumeId);
        if (!rec) return;
        await this.retirePending(rec);
        still.push(...(rec.pendingGrantRetirements ?? []).map((g) => g.grantId));
      });
    }
    return still;
  }

  private async removeImage(rec: VolumeRecord): Promise<void> {
    for (const f of [rec.image, `.${rec.image}.tmp`, `${rec.image}.lock`]) await fsp.rm(join(this.dir, f), { force: true });
    await fsyncDir(this.dir);
  }

  private describe(r: VolumeRecord) {
    return {
      VolumeId: r.volumeId,
      /** EC2 reports GiB; ebsd volumes may be smaller, so SizeBytes is exact. */
      Size: Math.ceil(r.size / 1024 ** 3),
      SizeBytes: r.size,
      State: r.state as VolumeState,
      CreateTime: r.createTime,
      Encrypted: !r.unencrypted,
      // EC2 omits KmsKeyId for an unencrypted volume.
      ...(r.unencrypted ? {} : { KmsKeyId: r.kmsKeyId }),
      VolumeType: 'gp3',
      AvailabilityZone: this.o.availabilityZone ?? `${this.o.region ?? 'us-east-1'}a`,
      Attachments: r.attachment
        ? [{ VolumeId: r.volumeId, InstanceId: r.attachment.instanceId, Device: r.attachment.device, State: 'attached', AttachTime: r.attachment.attachTime, DeleteOnTermination: false }]
        : [],
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
    createGrant: wrap('CreateGrant', ks.createGrant),
    decrypt: wrap('Decrypt', ks.decrypt),
    retireGrant: wrap('RetireGrant', ks.retireGrant),
    describeKey: wrap('DescribeKey', ks.describeKey),
  };
}

function sameContext(a: Record<string, string>, b: Record<string, string>): boolean {
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && a[k] === b[k]);
}

/** What may be logged about an error: its class, code and AWS name, never payloads. */
function errInfo(e: unknown): Record<string, unknown> {
  if (e instanceof KeyServiceError || e instanceof VolumeError || (e instanceof Error && 'code' in e)) {
    const x = e as Error & { code?: unknown; awsName?: unknown };
    return { type: x.name, code: x.code, awsName: x.awsName, message: x.message };
  }
  return { type: (e as Error)?.name ?? typeof e, message: (e as Error)?.message };
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
