import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Caller } from '../kms/types.js';
import type { XtsEngine } from '../crypto/xts.js';
import type { KeyedMutex } from '../util/lock.js';
import type { Catalog, VolumeRecord } from './catalog.js';
import { AttachLock } from './attach-lock.js';
import { checkImageFile } from './backing-file.js';
import { faultPoint } from '../util/fault-point.js';
import { DEFAULT_KEY_CACHE_TTL_MS, type ImpairedEvent } from './key-cache.js';
import { KeyCheck } from './key-check.js';
import type { Clock } from '../util/clock.js';
import { toKeyServiceError, type KeyService } from './key-service.js';
import { attachGrantName, AttachGrants } from './attach-grants.js';
import { opGrantRetryMs } from './op-grants.js';
import type { BlockDevice } from './types.js';
import type { Attachment } from './attachment.js';
import type { Luks2Volume } from './luks2-json.js';
import { VolumeError, incorrectState, invalidParameter, errInfo } from './errors.js';
import { formatOf } from './image-format.js';

/** The audit events attachments emit; the manager stamps the time (VolumeAuditEvent in volume-manager.ts). */
export interface AttachmentAuditEvent {
  eventName: 'AttachVolume' | 'DetachVolume' | 'VolumeImpaired';
  volumeId: string;
  principal?: string;
  details?: Record<string, unknown>;
}

/** What the attachment orchestration takes from the VolumeManager that owns it (see VolumeManagerOptions for the options). */
export interface AttachmentsDeps {
  /** `<stateDir>/volumes`, where the images live. */
  dir: string;
  catalog: Catalog;
  /** The manager's per-volume mutex: lifecycle and attachment operations on one volume never interleave. */
  mutex: KeyedMutex;
  /** Already guarded: failures arrive as KeyServiceError with the AWS name. */
  ks: KeyService;
  host: Caller;
  /** kms:ViaService for calls made on the caller's behalf (`ec2.<region>.amazonaws.com`). */
  viaService: string;
  instanceId: string;
  xtsEngine: XtsEngine;
  keyCacheTtlMs?: number;
  keyCacheMaxStaleMs?: number;
  clock?: Clock;
  random?: () => number;
  openCount?: (volumeId: string) => number;
  onImpaired?: (ev: ImpairedEvent) => void;
  log: Logger;
  /** The catalog record of a volume id; throws the EC2 errors for a malformed or unknown id. */
  record: (volumeId: string) => VolumeRecord;
  /** Throws OperationNotPermitted unless the manager was opened with allowUnencrypted. */
  checkUnencryptedAllowed: (what: 'attach') => void;
  audit: (ev: AttachmentAuditEvent) => void;
  /** Serve an attached device (the FUSE file); runs inside the volume's mutex. */
  expose?: (dev: BlockDevice) => void;
  /**
   * Stop serving a device: refuse while its file is open unless `force`,
   * then wait for running requests. Runs inside the volume's mutex.
   */
  hide?: (volumeId: string, opts: { force: boolean; shutdown?: boolean }) => Promise<void>;
}


/**
 * Attachment orchestration for the VolumeManager (docs/architecture.md §6). Attach: grant,
 * unwrap, key cache, block device, image lock. Detach: drain, fdatasync, wipe,
 * retire the grant. After a crash or restart: retire the grants a failed
 * detach left behind, and re-attach volumes still recorded `in-use`.
 * Holds the live attachments of this host; the catalog stays the source of truth.
 */
export class Attachments {
  private readonly live = new Map<string, Attachment>();
  /** Attaches under way (grant, unwrap, digest check): DescribeVolumes shows them `attaching`, as EC2 does. */
  private readonly pending = new Map<string, { instanceId: string; device: string; since: string }>();
  /** Detaches under way (drain, fdatasync, grant retirement): DescribeVolumes shows them `detaching`. */
  private readonly leaving = new Set<string>();
  private readonly dir: string;
  private readonly catalog: Catalog;
  private readonly mutex: KeyedMutex;
  private readonly ks: KeyService;
  private readonly host: Caller;
  private readonly viaService: string;
  private readonly instanceId: string;
  private readonly log: Logger;
  private readonly record: (volumeId: string) => VolumeRecord;
  private readonly checkUnencryptedAllowed: (what: 'attach') => void;
  private readonly audit: (ev: AttachmentAuditEvent) => void;
  private openCount: (volumeId: string) => number;
  private readonly expose: (dev: BlockDevice) => void;
  private readonly hide: (volumeId: string, opts: { force: boolean; shutdown?: boolean }) => Promise<void>;
  /** Retirement of the attach grants (attach-grants.ts). */
  readonly grants: AttachGrants;
  /** One key-and-grant check per TTL for every attached volume (key-check.ts); none with TTL 0. */
  readonly keyCheck: KeyCheck | undefined;

  constructor(private readonly o: AttachmentsDeps) {
    this.dir = o.dir;
    this.catalog = o.catalog;
    this.mutex = o.mutex;
    this.ks = o.ks;
    this.host = o.host;
    this.viaService = o.viaService;
    this.instanceId = o.instanceId;
    this.log = o.log;
    this.record = o.record;
    this.checkUnencryptedAllowed = o.checkUnencryptedAllowed;
    this.audit = o.audit;
    this.openCount = o.openCount ?? (() => 0);
    this.expose = o.expose ?? (() => {});
    this.hide = o.hide ?? (async () => {});
    const ttlMs = o.keyCacheTtlMs ?? DEFAULT_KEY_CACHE_TTL_MS;
    this.grants = new AttachGrants(o.ks, o.host, o.instanceId, o.catalog, o.mutex, o.log, { retryMs: opGrantRetryMs(ttlMs), ...(o.clock ? { clock: o.clock } : {}) });
    this.keyCheck = ttlMs > 0 ? new KeyCheck({ ks: o.ks, host: o.host, ttlMs, ...(o.clock ? { clock: o.clock } : {}), ...(o.random ? { random: o.random } : {}), logger: o.log }) : undefined;
  }

  /** The FUSE layer reports open handles through this. */
  setOpenCountProvider(fn: (volumeId: string) => number): void {
    this.openCount = fn;
  }

  /** The live attachment of a volume on this host, or undefined. */
  get(volumeId: string): Attachment | undefined {
    return this.live.get(volumeId);
  }

  /** Every live attachment, in attach order. */
  list(): Attachment[] {
    return [...this.live.values()];
  }

  // ---- AttachVolume ------------------------------------------------------

  /** This host is the one instance ebsd knows: another InstanceId is EC2's InvalidInstanceID.NotFound. */
  checkInstance(instanceId: string | undefined): void {
    if (instanceId === undefined || instanceId === this.instanceId) return;
    throw new VolumeError('VOLUME_INSTANCE_NOT_FOUND', `The instance ID '${instanceId}' does not exist (this host is ${this.instanceId})`, { awsName: 'InvalidInstanceID.NotFound' });
  }

  /**
   * docs/architecture.md §6.2: CreateGrant on the caller's behalf (grantee and retiring
   * principal: the host; [Decrypt]; EncryptionContextSubset on the volume),
   * Decrypt as the host with the grant token, check the key against the
   * LUKS2 digest, then serve I/O. `Device` is informational.
   */
  async attachVolume(req: { VolumeId: string; InstanceId?: string; Device?: string }, caller: Caller) {
    this.checkInstance(req.InstanceId);
    return this.mutex.run(req.VolumeId, async () => {
      const rec = this.record(req.VolumeId);
      if (this.live.has(rec.volumeId) || rec.state === 'in-use') {
        throw new VolumeError('VOLUME_IN_USE', `${rec.volumeId} is already attached to ${rec.attachment?.instanceId ?? this.instanceId}`, { awsName: 'VolumeInUse' });
      }
      if (rec.state !== 'available') throw incorrectState(`The volume '${rec.volumeId}' is '${rec.state}'`);
      if (formatOf(rec).measurementOnly) this.checkUnencryptedAllowed('attach');
      const device = req.Device ?? `/dev/ebsd/${rec.volumeId}`;
      this.pending.set(rec.volumeId, { instanceId: this.instanceId, device, since: new Date().toISOString() });
      try {
        // Grants an earlier detach could not retire go first (KMS calls: the attach shows `attaching` meanwhile).
        if (rec.pendingGrantRetirements?.length) await this.grants.retirePending(rec);
        return await this.attachRecorded(rec, device, caller);
      } finally {
        this.pending.delete(rec.volumeId);
      }
    });
  }

  /** Is a detach of `volumeId` under way on this host? DescribeVolumes shows it `detaching`. */
  detaching(volumeId: string): boolean {
    return this.leaving.has(volumeId);
  }

  /** The attach under way on this host for `volumeId`, if one is: what DescribeVolumes shows as `attaching`. */
  attaching(volumeId: string): { instanceId: string; device: string; since: string } | undefined {
    return this.pending.get(volumeId);
  }

  /** attachVolume's work once the request is checked; the caller holds the volume's mutex. */
  private async attachRecorded(rec: VolumeRecord, device: string, caller: Caller) {
    const att = await this.bringUp(rec, async (v) => {
      if (!v) return { grantId: '', grantToken: '' }; // plaintext: no key, no grant
      const g = await this.ks.createGrant(
        {
          KeyId: v.token.key_arn,
          GranteePrincipal: this.host.arn,
          RetiringPrincipal: this.host.arn,
          Operations: ['Decrypt'],
          Constraints: { EncryptionContextSubset: { 'aws:ebs:id': rec.volumeId } },
          Name: attachGrantName(this.instanceId, rec.volumeId),
        },
        { ...caller, viaService: this.viaService },
      ).catch((e: unknown) => {
        // No answer is not "no grant": KMS may have made it and the answer been lost. Found by
        // its name and retired once KMS answers (AttachGrants.retryLater), not at the next start.
        if (!toKeyServiceError('CreateGrant', e).authoritative) this.grants.retryLater(rec.volumeId, { sweep: 'lost-create' });
        throw e;
      });
      // A crash from here until the catalog says in-use leaves a live grant with no record:
      // the next start finds it by name and retires it (AttachGrants.retireOrphans).
      faultPoint('attach.after-grant');
      // CreateGrant is idempotent by Name: a grant a failed detach left behind comes back as this one.
      if (rec.pendingGrantRetirements?.some((p) => p.grantId === g.GrantId)) {
        rec.pendingGrantRetirements = rec.pendingGrantRetirements.filter((p) => p.grantId !== g.GrantId);
        if (!rec.pendingGrantRetirements.length) delete rec.pendingGrantRetirements;
      }
      return { grantId: g.GrantId, grantToken: g.GrantToken };
    });
    const attachTime = new Date().toISOString();
    const before = structuredClone(rec);
    rec.state = 'in-use';
    rec.attachment = { instanceId: this.instanceId, device, attachTime, hostPrincipal: this.host.arn, grantId: att.grantId, grantToken: att.grantToken };
    let recorded = false;
    try {
      await this.catalog.put(rec);
      recorded = true;
      this.expose(att.device);
    } catch (e) {
      // Not recorded or not served: take everything back, so no half-attached volume remains.
      this.log.warn({ volumeId: rec.volumeId, err: errInfo(e) }, 'attach could not be completed; rolling back');
      await this.teardown(att).catch(() => {});
      if (att.grantId) {
        const g = { grantId: att.grantId, keyArn: att.keyArn, grantToken: att.grantToken };
        if (!(await this.grants.retireOne(rec.volumeId, g, 'failed attach'))) {
          (before.pendingGrantRetirements ??= []).push({ ...g, since: attachTime });
          this.grants.retryLater(rec.volumeId, { sweep: false });
        }
      }
      if (recorded || before.pendingGrantRetirements?.length) {
        await this.catalog.put(before).catch((err) => this.log.warn({ volumeId: rec.volumeId, err: errInfo(err) }, 'could not record the rolled-back attach'));
      }
      throw e;
    }
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
  }

  /**
   * After a daemon restart: bring back volumes recorded `in-use` on this
   * host through the stored grant (Decrypt as the host, digest check). A
   * volume that fails stays `in-use` and unattached; its error is returned
   * (the daemon retries those the KMS did not answer, resume-retry.ts).
   * `only`: these volumes alone.
   */
  async resumeAttachments(only?: ReadonlySet<string>): Promise<{ resumed: string[]; failed: { volumeId: string; error: unknown }[] }> {
    const resumed: string[] = [];
    const failed: { volumeId: string; error: unknown }[] = [];
    for (const r of this.catalog.list()) {
      if (only && !only.has(r.volumeId)) continue;
      if (r.state !== 'in-use' || this.live.has(r.volumeId) || !r.attachment || r.detaching) continue;
      try {
        if (formatOf(r).measurementOnly) this.checkUnencryptedAllowed('attach');
        const up = await this.mutex.run(r.volumeId, async () => {
          // The check above read a copy taken before the lock: a detach or delete may have
          // run meanwhile (the retry runs in the background, resume-retry.ts). Read again here.
          const cur = this.catalog.get(r.volumeId);
          if (!cur || cur.state !== 'in-use' || this.live.has(cur.volumeId) || !cur.attachment || cur.detaching) return false;
          const a = cur.attachment;
          const att = await this.bringUp(cur, async () => ({ grantId: a.grantId, grantToken: a.grantToken }), true);
          try {
            this.expose(att.device);
          } catch (e) {
            await this.teardown(att).catch(() => {});
            throw e;
          }
          return true;
        });
        if (!up) continue;
        resumed.push(r.volumeId);
        if (r.unencrypted) this.log.warn({ volumeId: r.volumeId, encrypted: false }, 'UNENCRYPTED volume re-attached: I/O is plaintext passthrough (measurement only)');
      } catch (e) {
        // At start, each failure once at error; a background retry's (`only`) at debug: resume-retry.ts
        // logs when the kind of failure changes, not every 1-30 s for as long as the KMS or the disk is out.
        this.log[only ? 'debug' : 'error']({ volumeId: r.volumeId, err: errInfo(e) }, 'could not resume attachment');
        failed.push({ volumeId: r.volumeId, error: e });
      }
    }
    return { resumed, failed };
  }

  // ---- DetachVolume ------------------------------------------------------

  /**
   * Refuse while open unless Force; stop serving the file, drain, fdatasync,
   * wipe the key, then retire the grant and record `available`. The whole
   * sequence holds the volume's mutex, the FUSE file included, so a
   * concurrent attach or detach of the same volume sees before or after,
   * never the middle. From the moment the file is hidden the detach goes
   * through to the end (a closed device is never served again); a crash
   * after the device is closed leaves a `detaching` intent that the next
   * start finishes (finishDetach).
   */
  async detachVolume(req: { VolumeId: string; Force?: boolean; InstanceId?: string }, caller: Caller) {
    this.checkInstance(req.InstanceId);
    return this.mutex.run(req.VolumeId, async () => {
      const rec = this.record(req.VolumeId);
      if (rec.state !== 'in-use' || !rec.attachment) {
        throw new VolumeError('VOLUME_NOT_ATTACHED', `Volume '${rec.volumeId}' is in the '${rec.state}' state.`, { awsName: 'IncorrectState' });
      }
      const att = this.live.get(rec.volumeId);
      // Counted while the file is still in the mount: what a forced detach cuts off.
      const open = att ? this.openCount(rec.volumeId) : 0;
      if (open > 0 && !req.Force) {
        throw new VolumeError('VOLUME_OPEN', `Volume ${rec.volumeId} is open (${open} handle(s)); close it (losetup -d, umount) or detach with Force (--force)`, { awsName: 'VolumeInUse' });
      }
      let closeError: unknown;
      this.leaving.add(rec.volumeId);
      let finished: Awaited<ReturnType<Attachments['finishDetach']>>;
      try {
        if (att) {
          await this.hide(rec.volumeId, { force: !!req.Force });
          closeError = await this.teardown(att);
        }
        rec.detaching = { since: new Date().toISOString() };
        await this.catalog.put(rec);
        finished = await this.finishDetach(rec);
      } finally {
        this.leaving.delete(rec.volumeId);
      }
      const { grantRetired, attachment: a } = finished;
      this.log.info({ volumeId: rec.volumeId, forced: !!req.Force, openHandles: open, grantRetired }, 'volume detached');
      this.audit({
        eventName: 'DetachVolume', volumeId: rec.volumeId, principal: caller.arn,
        details: { force: !!req.Force, openHandles: open, grantId: a.grantId, grantRetired, ...(closeError ? { flushFailed: true } : {}) },
      });
      if (closeError) {
        throw new VolumeError('VOLUME_IO', `Volume ${rec.volumeId} is detached, but its last flush failed: writes since the last fsync may be lost`, { cause: closeError });
      }
      return { VolumeId: rec.volumeId, InstanceId: a.instanceId, Device: a.device, State: 'detached' as const, AttachTime: a.attachTime };
    });
  }

  /**
   * The second half of a detach, also run at start for a `detaching` record
   * a crash left behind: retire the grant (kept as pending if KMS does not
   * answer), then record `available`. The caller holds the volume's mutex
   * and has stopped the device.
   */
  async finishDetach(rec: VolumeRecord): Promise<{ grantRetired: boolean; attachment: NonNullable<VolumeRecord['attachment']> }> {
    const a = rec.attachment!;
    let grantRetired = a.grantId === '';
    if (!grantRetired) {
      const g = { grantId: a.grantId, keyArn: rec.kmsKeyId, ...(a.grantToken ? { grantToken: a.grantToken } : {}) };
      grantRetired = await this.grants.retireOne(rec.volumeId, g, 'detach');
      // The key is already wiped; a grant left behind only lets this host decrypt again.
      // Kept, and tried again until KMS answers (never forget a live grant).
      if (!grantRetired) {
        (rec.pendingGrantRetirements ??= []).push({ ...g, since: new Date().toISOString() });
        this.grants.retryLater(rec.volumeId, { sweep: false });
      }
    }
    faultPoint('detach.after-retire');
    delete rec.attachment;
    delete rec.detaching;
    rec.state = 'available';
    await this.catalog.put(rec);
    return { grantRetired, attachment: a };
  }

  /** Shutdown: stop every attachment (drain, fdatasync, wipe) but keep catalog `in-use`, so a restart resumes them. */
  async close(): Promise<void> {
    await this.grants.close();
    await this.keyCheck?.stop();
    for (const [id, att] of this.live) {
      await this.mutex.run(id, async () => {
        await this.hide(id, { force: true, shutdown: true }).then(
          () => this.log.debug({ volumeId: id }, 'volume file hidden for shutdown'),
          (err) => this.log.warn({ volumeId: id, err: errInfo(err) }, 'could not hide the volume file'),
        );
        const err = await this.teardown(att);
        if (err) this.log.error({ volumeId: id, err: errInfo(err) }, 'flush at shutdown failed');
      });
    }
  }

  /**
   * Stop a live attachment: no more refreshes, drain, fdatasync, wipe the
   * key, close the fd, release the image lock. Runs every step; returns the
   * device's close error (a failed last flush) instead of throwing, so the
   * attachment is gone either way.
   */
  private async teardown(att: Attachment): Promise<unknown> {
    let error: unknown;
    await att.keyCache?.stop();
    try {
      await att.device.close();
    } catch (e) {
      error = e;
    }
    this.live.delete(att.volumeId);
    await att.lock.release().catch((e) => this.log.warn({ volumeId: att.volumeId, err: errInfo(e) }, 'could not release the image lock'));
    return error;
  }

  // ---- internals ---------------------------------------------------------

  private async bringUp(
    rec: VolumeRecord,
    /** Called with the validated header of a format that has a key; a plaintext volume has no grant. */
    grant: (v: Luks2Volume | undefined) => Promise<{ grantId: string; grantToken: string }>,
    resuming = false,
  ): Promise<Attachment & { grantToken: string }> {
    const path = join(this.dir, rec.image);
    await checkImageFile(path); // never a symlink to another volume's image
    const lock = await AttachLock.acquire(path, rec.volumeId);
    let grantInfo: { grantId: string; grantToken: string } | null = null;
    try {
      const fmt = formatOf(rec);
      const opened = await fmt.open({
        path,
        volumeId: rec.volumeId,
        size: rec.size,
        grant: async (v) => (grantInfo = await grant(v)),
        keyService: this.ks,
        host: this.host,
        xtsEngine: this.o.xtsEngine,
        ...(this.o.keyCacheTtlMs !== undefined ? { keyCacheTtlMs: this.o.keyCacheTtlMs } : {}),
        ...(this.o.keyCacheMaxStaleMs !== undefined ? { keyCacheMaxStaleMs: this.o.keyCacheMaxStaleMs } : {}),
        keyCacheExtras: (keyArn, grantId) => ({
          // A resumed grant names the principal recorded at attach; a new one, this host.
          ...(this.keyCheck ? { check: this.keyCheck.membership(keyArn, grantId, resuming ? rec.attachment?.hostPrincipal : this.host.arn) } : {}),
          ...(this.o.clock ? { clock: this.o.clock } : {}),
          ...(this.o.random ? { random: this.o.random } : {}),
        }),
        onImpaired: (ev) => {
          this.audit({ eventName: 'VolumeImpaired', volumeId: ev.volumeId, principal: this.host.arn, details: { reason: ev.reason, awsName: ev.awsName } });
          this.o.onImpaired?.(ev);
        },
        log: this.log,
      });
      if (!grantInfo) grantInfo = await grant(undefined); // a format without a key: no grant
      const gi: { grantId: string; grantToken: string } = grantInfo;
      const att: Attachment = { volumeId: rec.volumeId, device: opened.device, keyCache: opened.keyCache, lock, keyArn: opened.keyArn, grantId: gi.grantId };
      this.live.set(rec.volumeId, att);
      return { ...att, grantToken: gi.grantToken };
    } catch (e) {
      const gi = grantInfo as { grantId: string; grantToken: string } | null;
      if (gi && gi.grantId && !resuming) {
        const g = { grantId: gi.grantId, keyArn: rec.kmsKeyId, grantToken: gi.grantToken };
        if (!(await this.grants.retireOne(rec.volumeId, g, 'failed attach'))) {
          (rec.pendingGrantRetirements ??= []).push({ ...g, since: new Date().toISOString() });
          await this.catalog.put(rec).catch((err) => this.log.warn({ volumeId: rec.volumeId, err: errInfo(err) }, 'could not record a pending grant retirement'));
          this.grants.retryLater(rec.volumeId, { sweep: false });
        }
      }
      await lock.release();
      this.log.warn({ volumeId: rec.volumeId, err: errInfo(e) }, 'attach failed');
      throw e;
    }
  }

}

