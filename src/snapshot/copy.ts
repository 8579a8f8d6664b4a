import { createHash, randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { Caller } from '../kms/types.js';
import type { XtsContext, XtsEngine } from '../crypto/xts.js';
import { xtsKeyHalvesEqual } from '../crypto/xts-check.js';
import { silentLogger } from '../util/logger.js';
import { wipe } from '../util/wipe.js';
import { faultPoint } from '../util/fault-point.js';
import type { KeyService } from '../volume/key-service.js';
import { grantTokensOf, withKeyUse, type KeyUse, type OpGrantRequest, type OpGrants } from '../volume/op-grants.js';
import { buildLuks2Json, VOLUME_KEY_BYTES } from '../volume/luks2-json.js';
import { encodeLuks2HeaderArea, parseLuks2Header } from '../volume/luks2-header.js';
import { VolumeError } from '../volume/errors.js';
import { auditCompletion, SnapshotError, snapshotNotFound } from './errors.js';
import { STORE_REQUESTS_IN_FLIGHT, type BlockPin } from './gc.js';
import { recheckMsOf } from './store-settings.js';
import { inParallel } from '../util/in-parallel.js';
import { reencryptBlock } from './reencrypt.js';
import { bytesInside, checkedSnapshot, readSource, unwrapSnapshotKey, type OpenedSnapshot } from './restore.js';
import { pipeBlocks } from './block-pipeline.js';
import { sha256HexOffLoop } from '../util/sha256.js';
import { dataEncryptionKeyId } from './volume-image.js';
import type { BlockHash, SnapshotManifest, SnapshotStore } from './types.js';
import { putUnlessStored } from './block-copier.js';
import { failedManifest, PendingMarkers } from './pending-markers.js';
import type { Clock } from '../util/clock.js';
import { WakeableSleeps } from '../util/wakeable-sleeps.js';
import { putCompletedWaitingForKms } from './manifest-mac.js';

export const DEFAULT_EBS_KEY = 'alias/aws/ebs';
/** Store puts of a re-encrypting copy under way at once (an S3 put is a round trip; a batch put a file write). */
const PUTS_AT_ONCE = 4;

/**
 * Whether a copy is encrypted (Amazon EC2 API Reference, CopySnapshot,
 * `Encrypted` and `KmsKeyId`): the copy of an encrypted snapshot always is;
 * that of an unencrypted one when `Encrypted` is true or EBS encryption by
 * default is enabled (a daemon without --allow-unencrypted), under `KmsKeyId`
 * else `alias/aws/ebs`. Decided here only: the copier makes the copy so, and
 * the authorization judges `ec2:Encrypted` on it (docs/architecture.md §14.2,
 * §14.3), so a policy sees what the copy will be.
 */
export function copyIsEncrypted(sourceEncrypted: boolean, req: Pick<CopySnapshotRequest, 'Encrypted'>, encryptionByDefault: boolean): boolean {
  return sourceEncrypted || req.Encrypted === true || encryptionByDefault;
}

export interface CopySnapshotRequest {
  SourceSnapshotId: string;
  SourceRegion: string;
  Description?: string;
  /** EC2: only `true` (encrypt the copy of an unencrypted snapshot when encryption by default is disabled); a copy of an encrypted snapshot is encrypted anyway. */
  Encrypted?: boolean;
  KmsKeyId?: string;
  TagSpecifications?: { ResourceType: 'snapshot'; Tags: { Key: string; Value: string }[] }[];
}

/** What the copier emits for the audit trail (the daemon stamps time and caller). */
export interface CopyAuditEvent {
  eventName: 'CopySnapshot' | 'SnapshotCompleted' | 'SnapshotFailed';
  snapshotId: string;
  volumeId?: string;
  principal?: string;
  details?: Record<string, unknown>;
}

export interface SnapshotCopierOptions {
  store: SnapshotStore;
  keyService: KeyService;
  /**
   * Short-lived grants for the copy's unwraps and re-wraps (op-grants.ts,
   * VolumeManager.opGrants; a remote KMS only): the host then needs no
   * kms:Decrypt. Without them (the embedded KMS), every call is made on the
   * caller's behalf without a grant, and judged as the caller's.
   */
  opGrants?: OpGrants;
  xtsEngine: XtsEngine;
  /** This region: SourceRegion must name it (a copy between regions needs another region's store). */
  region: string;
  accountId: string;
  /** `<state>/snapshots-local/copies`: a marker per copy under way, so a restart marks it `error`. */
  localDir: string;
  /** Pins blocks against the collector while the copy has not yet named them in a completed manifest. */
  pin: (hashes: Iterable<BlockHash>) => Promise<BlockPin>;
  /** On a shared store, the wait between a same-key copy's touches of the source's objects and its asking again (the store's deleteWindows().recheckMs unless given). */
  foundRecheckMs?: number;
  /**
   * DeleteSnapshot refuses the source while the copy reads it
   * (InvalidSnapshot.InUse); resolves with the release. Taken before the
   * source's manifest is read (SnapshotManager.hold: atomic with a delete).
   */
  hold?: (snapshotId: string) => Promise<() => void>;
  /** Resolves once the event is written; SnapshotCompleted is awaited before the copy shows completed (auditCompletion). */
  onAudit?: (ev: CopyAuditEvent) => void | Promise<void>;
  logger?: Logger;
  /** Blocks read and re-encrypted ahead of the store's puts (docs/architecture.md §14.5); default 16. */
  window?: number;
  /**
   * EBS encryption by default is off (the daemon's --allow-unencrypted): a
   * copy of an unencrypted snapshot stays unencrypted unless Encrypted is
   * true, and KmsKeyId without Encrypted true is refused. Off (the default),
   * every copy is encrypted, under KmsKeyId (accepted alone) or
   * `alias/aws/ebs`, as EC2 copies with encryption by default enabled
   * (copyIsEncrypted).
   */
  allowUnencrypted?: boolean;
  /** Timers of the background settle of markers the store could not answer for (PendingMarkers); default the system clock. */
  clock?: Clock;
  /** First wait before such a marker is tried again (doubled each time, up to 5 minutes); default 5 s. */
  markerRetryMs?: number;
}

const shutDownDuring = (): SnapshotError => new SnapshotError('SNAPSHOT_INCORRECT_STATE', 'the daemon shut down during the copy', { awsName: 'IncorrectState' });

/** The StateMessage of a copy a restart interrupted. */
const COPY_INTERRUPTED = 'The daemon stopped (crash or restart) while the snapshot was being copied.';

/**
 * CopySnapshot (docs/architecture.md §14.2), within this region and store.
 * The new snapshot's manifest is written `pending` before anything else
 * (with a local marker: a restart that finds it marks the copy `error`,
 * never a half copy `completed`), then `completed` once every block it
 * names is durable.
 *
 * - Same KMS key (none given, or the source's): a new manifest naming the
 *   same blocks and header (content addressing: nothing is copied) and the
 *   same wrapped data key; DataEncryptionKeyId is inherited.
 * - Another key (or encrypting an unencrypted snapshot): a new data key under
 *   it with context `{"aws:ebs:id": newSnap}`, as EBS does for copies; every
 *   block decrypted and encrypted again, stored under its new hash; a new
 *   LUKS2 header; a new DataEncryptionKeyId.
 */
export class SnapshotCopier {
  private readonly log: Logger;
  private readonly running = new Set<Promise<void>>();
  /**
   * Each copy under way: the last of its manifests the store has durably (a pending or progress one
   * without its block list, which no reader of a running copy's manifest needs). DescribeSnapshots
   * answers from it (runningManifest), not from a store read queued behind the copy's jobs on libuv's pool.
   */
  private readonly written = new Map<string, SnapshotManifest>();
  private closed = false;
  /** Ends each same-key copy's wait before it asks again on a shared store at once: close(). */
  private readonly recheckWaits = new WakeableSleeps();

  private constructor(private readonly o: SnapshotCopierOptions, private readonly markers: PendingMarkers, log: Logger) {
    this.log = log;
  }

  /** Opens the marker directory and settles the copies a crash interrupted (recover()). */
  static async open(o: SnapshotCopierOptions): Promise<SnapshotCopier> {
    const log = (o.logger ?? silentLogger).child({ component: 'snapshot-copy' });
    const markers = await PendingMarkers.open({
      dir: o.localDir,
      store: o.store,
      why: COPY_INTERRUPTED,
      log,
      onSettled: (m, why) => {
        // A copy that failed and said why was audited SnapshotFailed as it failed; only its `error` manifest waited for the store.
        if (why !== COPY_INTERRUPTED) return log.warn({ snapshotId: m.snapshotId, reason: why }, 'failed snapshot copy marked error once the store answered');
        log.warn({ snapshotId: m.snapshotId }, 'snapshot copy interrupted by a restart: marked error');
        o.onAudit?.({ eventName: 'SnapshotFailed', snapshotId: m.snapshotId, details: { reason: 'restart during copy' } });
      },
      ...(o.clock ? { clock: o.clock } : {}),
      ...(o.markerRetryMs !== undefined ? { retryMs: o.markerRetryMs } : {}),
    });
    const c = new SnapshotCopier(o, markers, log);
    await c.recover();
    return c;
  }

  /**
   * A copy this daemon started and did not finish (crash, a terminal manifest
   * the store refused) left a marker: its manifest, if still `pending`,
   * becomes `error` naming no blocks (what it stored is garbage for the
   * collector), so it never shows as completed. A store that does not answer
   * keeps the marker, settled in the background once it does (PendingMarkers).
   */
  async recover(): Promise<string[]> {
    return this.markers.recover();
  }

  /** Pending markers the store has not yet let this daemon settle (tests). */
  get unsettledMarkers(): string[] {
    return this.markers.waiting;
  }

  /**
   * Shutdown: no more background settles (markers left stay for the next start). A same-key copy
   * waiting to ask again for the source's objects ends now, `error` (its marker settles it at the
   * next start if the store is gone by then), never `completed` during the shutdown; other copies
   * under way are not stopped.
   */
  async close(): Promise<void> {
    this.closed = true;
    this.recheckWaits.wakeAll();
    await this.markers.close();
  }

  /**
   * Accepts the copy: checks the request and the source (EC2's errors), writes
   * the `pending` manifest and answers `{SnapshotId}` at once, as EC2 does;
   * the copy continues in the background. The source is held against
   * DeleteSnapshot before its manifest is read (a delete either refuses,
   * InvalidSnapshot.InUse, or has finished: InvalidSnapshot.NotFound here);
   * `authorize` runs once the source is read and before anything is written,
   * told whether the copy will be encrypted (copyIsEncrypted; a source that
   * does not exist is taken as unencrypted: only the request is known).
   */
  async copySnapshot(
    req: CopySnapshotRequest, caller: Caller,
    authorize?: (source: SnapshotManifest | undefined, copy: { encrypted: boolean }) => Promise<void>,
    /** A dry run: stops (throws) once the request, the source and the target key are checked as the real call checks them, before anything is written. */
    dryRun?: () => Promise<never>,
  ): Promise<{ SnapshotId: string; Tags?: { Key: string; Value: string }[] }> {
    if (req.SourceRegion !== this.o.region) {
      throw new SnapshotError('SNAPSHOT_INVALID_PARAMETER', `SourceRegion '${req.SourceRegion}': this daemon serves ${this.o.region} only; a copy between regions needs the other region's store`, { awsName: 'InvalidParameterValue' });
    }
    if (req.Encrypted === false) throw new SnapshotError('SNAPSHOT_INVALID_PARAMETER', 'Encrypted cannot be set to false: omit it, or set it to true to encrypt the copy of an unencrypted snapshot', { awsName: 'InvalidParameterValue' });
    // On a shared store, a same-key copy's wait before it asks again for the source's objects comes from the store's
    // settings (store-settings.ts): read beside the checks, and checked before the pending manifest, the first write,
    // so settings this daemon cannot follow (or a store that does not answer for them) refuse the copy with nothing
    // written, not after its touches.
    const recheck = recheckMsOf(this.o.store, this.o.foundRecheckMs);
    recheck.catch(() => {}); // awaited below; a check that fails first must not leave it unhandled
    const release = (await this.o.hold?.(req.SourceSnapshotId)) ?? (() => {});
    try {
      // A source whose manifest is refused is authorized on its id alone, then refused (IncorrectState, readSource).
      let refused: unknown;
      const src = await readSource(this.o.store, req.SourceSnapshotId).catch((e: unknown) => {
        if (!(e instanceof SnapshotError) || e.code !== 'SNAPSHOT_INCORRECT_STATE') throw e;
        refused = e;
        return undefined;
      });
      const encrypt = copyIsEncrypted(src?.encrypted === true, req, !this.o.allowUnencrypted);
      await authorize?.(src, { encrypted: encrypt });
      if (refused) throw refused;
      if (!src) throw snapshotNotFound(req.SourceSnapshotId);
      // EC2: "If KmsKeyId is specified, the encrypted state must be true". With encryption by
      // default it is (the copy is encrypted under KmsKeyId); without it, only Encrypted true makes it so.
      if (req.KmsKeyId !== undefined && !encrypt) {
        throw new SnapshotError('SNAPSHOT_INVALID_PARAMETER', 'KmsKeyId needs Encrypted true to encrypt the copy of an unencrypted snapshot (EBS encryption by default is disabled: the daemon runs with --allow-unencrypted)', { awsName: 'InvalidParameterDependency' });
      }
      const snap = await checkedSnapshot(this.o.store, req.SourceSnapshotId, src);
      const via: Caller = { ...caller, viaService: `ec2.${this.o.region}.amazonaws.com` };
      // Same key: the source's (none given, or one resolving to its ARN); else a new data key.
      let targetKey: string | undefined;
      if (src.encrypted) {
        const arn = req.KmsKeyId === undefined ? src.wrappedKey!.keyArn : (await this.o.keyService.describeKey({ KeyId: req.KmsKeyId }, via)).KeyMetadata.Arn;
        if (arn !== src.wrappedKey!.keyArn) targetKey = arn;
      } else if (encrypt) {
        // Resolved to its ARN now, as a restore resolves it (restore.ts): the copy shows its key from the start.
        targetKey = (await this.o.keyService.describeKey({ KeyId: req.KmsKeyId ?? DEFAULT_EBS_KEY }, via)).KeyMetadata.Arn;
      }
      if (dryRun) await dryRun();
      const snapshotId = `snap-${randomBytes(9).toString('hex').slice(0, 17)}`;
      const tags = (req.TagSpecifications ?? []).flatMap((t) => t.Tags);
      const now = new Date().toISOString();
      const m: SnapshotManifest = {
        ...structuredClone(src),
        snapshotId,
        state: 'pending',
        progress: 0,
        startTime: now,
        description: req.Description ?? `Copied for DestinationSnapshot ${snapshotId} from SourceSnapshot ${src.snapshotId}`,
        tags,
        ownerId: this.o.accountId,
        transferType: 'standard',
        blocks: [],
      };
      delete m.completionTime;
      delete m.stateMessage;
      if (targetKey !== undefined) {
        // Another key, or an unencrypted source copied encrypted (an ARN, resolved above): the copy is under it
        // from the start, pending or failed, as EC2 shows it; its data key does not exist yet, so no
        // DataEncryptionKeyId (the source's is not the copy's).
        m.encrypted = true;
        m.kmsKeyId = targetKey;
        delete m.dataEncryptionKeyId;
        delete m.wrappedKey; // the source's data key under the source's key: not this copy's
      }
      // The copy names every block itself: it is incremental to nothing, so it has no parent. Its
      // sourceSnapshotId (the snapshot the source's volume was created from) is kept on purpose: the
      // copy keeps the source's volumeId too, so an unencrypted copy is of its source's volume and
      // that volume's lineage for ListChangedBlocks either way (docs/architecture.md, "Lineage"),
      // and an encrypted copy is compared by its DataEncryptionKeyId alone, never by this link.
      delete m.parentSnapshotId;
      delete m.changedBlocks;
      delete m.header;
      // A same-key copy names the source's objects. On a store other daemons collect, the pending
      // manifest names them from its first write: this daemon's pins and hold keep them from its own
      // collector only, and another host deleting the source meanwhile would free them otherwise.
      const sharedSameKey = targetKey === undefined && !this.o.store.singleWriter;
      const recheckMs = sharedSameKey ? await recheck : 0;
      if (sharedSameKey) {
        if (src.header) m.header = src.header;
        m.blocks = src.blocks.map(([i, h]) => [i, h]);
      }
      // Crash from here on: recover() turns the pending manifest into error.
      await this.markers.putPending(m);
      this.written.set(snapshotId, { ...m, blocks: [] });
      faultPoint('copy.after-pending');
      this.o.onAudit?.({
        eventName: 'CopySnapshot', snapshotId, volumeId: src.volumeId, principal: caller.arn,
        details: { sourceSnapshotId: src.snapshotId, reEncrypted: targetKey !== undefined, ...(targetKey ? { kmsKeyId: targetKey } : {}) },
      });
      // A terminal manifest (`completed` or `error`) durable: only then may the marker go.
      let terminal = false;
      /** Why the copy failed, once it did: the StateMessage the marker's retry writes if the `error` write failed. */
      let failedWhy: string | undefined;
      const job = this.run(snap, m, targetKey, via, recheckMs, () => (terminal = true))
        .catch(async (e) => {
          const why = e instanceof VolumeError || e instanceof SnapshotError || (e as { awsName?: string })?.awsName ? `${(e as { awsName?: string }).awsName ?? (e as { code: string }).code}: ${(e as Error).message}` : 'internal error (see the daemon log)';
          this.log.warn({ snapshotId, sourceSnapshotId: src.snapshotId, err: { message: (e as Error)?.message } }, 'snapshot copy failed');
          failedWhy = why;
          const failed = failedManifest(m, why);
          await this.o.store.putManifest(failed).then(
            () => void ((terminal = true), this.written.set(snapshotId, failed)),
            (err) => this.log.error({ snapshotId, err: { message: (err as Error)?.message } }, 'could not record the failed copy; its marker is kept and it is marked error once the store answers (or at the next start)'),
          );
          this.o.onAudit?.({ eventName: 'SnapshotFailed', snapshotId, details: { reason: why } });
        })
        .finally(async () => {
          release();
          if (terminal) await this.markers.remove(snapshotId).catch(() => {});
          else this.markers.retry(snapshotId, failedWhy);
          this.running.delete(job);
          this.written.delete(snapshotId);
        });
      this.running.add(job);
      return { SnapshotId: snapshotId, ...(tags.length ? { Tags: tags } : {}) };
    } catch (e) {
      release();
      throw e;
    }
  }

  /** The manifest of a copy under way as the store has it durably (see `written`); undefined for any other snapshot. */
  runningManifest(snapshotId: string): SnapshotManifest | undefined {
    return this.written.get(snapshotId);
  }

  /** Resolves when every copy under way has ended (tests, shutdown). */
  async settled(): Promise<void> {
    while (this.running.size) await Promise.allSettled([...this.running]);
  }

  /** `recheckMs`: a same-key copy's wait on a shared store between its touches and its asking again (read at set-up). */
  private async run(snap: OpenedSnapshot, m: SnapshotManifest, targetKey: string | undefined, via: Caller, recheckMs: number, onTerminal: () => void): Promise<void> {
    const pins: BlockPin[] = [];
    // A same-key copy on a shared store: asks again whether the source's objects are there; run again before a retried write.
    let recheck: (() => Promise<void>) | undefined;
    try {
      if (targetKey === undefined) {
        if (snap.manifest.encrypted) await this.checkSameKeyUse(snap, m, via);
        // Same data key: the same objects. Pinned until the completed manifest names them.
        const named = [snap.manifest.header!, ...snap.manifest.blocks.map(([, h]) => h)];
        pins.push(await this.o.pin(named));
        // Pinned, so a delete under way has finished: each is present and stays, or is gone (and the copy fails), as for an incremental's inherited blocks.
        // Several at a time: a store without an in-memory index (S3) answers each in one round trip.
        // A shared store: touched rather than only looked up, so a collector on another host that chose
        // them by an age read before our pending manifest named them finds them young when it looks again.
        const inMemory = this.o.store.hasBlockInMemory?.bind(this.o.store);
        const touch = this.o.store.singleWriter ? undefined : this.o.store.touchBlock?.bind(this.o.store);
        await inParallel([...new Set(named)], STORE_REQUESTS_IN_FLIGHT, async (h) => {
          if (!inMemory?.(h) && !(await (touch ?? this.o.store.hasBlock.bind(this.o.store))(h))) throw new SnapshotError('SNAPSHOT_BLOCK_NOT_FOUND', `block ${h} of the source ${snap.manifest.snapshotId} is missing from ${this.o.store.location}`);
        });
        // A collector on another host may have read an object's age just before our touch and delete it
        // after; its delete lands within its window of that read or never (gc.ts). Past the window, the
        // objects are safe if the source's manifest still exists (a collector frees them only after
        // removing it, and our pending manifest names them since); otherwise each is asked again.
        if (touch) {
          if (!this.closed) await this.recheckWaits.sleep(recheckMs);
          // Shutdown during the wait: the copy ends `error` as a create does, not `completed` during the shutdown.
          if (this.closed) throw shutDownDuring();
          recheck = async (): Promise<void> => {
            if (await this.o.store.getManifest(snap.manifest.snapshotId)) return;
            const gone: BlockHash[] = [];
            await inParallel([...new Set(named)], STORE_REQUESTS_IN_FLIGHT, async (h) => {
              if (!(await this.o.store.hasBlock(h))) gone.push(h);
            });
            if (gone.length) throw new SnapshotError('SNAPSHOT_BLOCK_NOT_FOUND', `block ${gone[0]} of the source ${snap.manifest.snapshotId}, deleted meanwhile, is gone from ${this.o.store.location}${gone.length > 1 ? ` (and ${gone.length - 1} more)` : ''}`);
          };
          await recheck();
        }
        m.header = snap.manifest.header!;
        m.blocks = snap.manifest.blocks.map(([i, h]) => [i, h]);
      } else {
        await this.reencrypt(snap, m, targetKey, via, pins);
      }
      faultPoint('copy.before-complete');
      await auditCompletion(this.o.onAudit, { eventName: 'SnapshotCompleted', snapshotId: m.snapshotId, details: { sourceSnapshotId: snap.manifest.snapshotId, blocks: m.blocks.length } });
      m.state = 'completed';
      m.progress = 100;
      m.changedBlocks = m.blocks.length;
      m.completionTime = new Date().toISOString();
      // A KMS not answering for its MAC is waited for, as a create's (manifest-mac.ts, docs/architecture.md §13.5).
      await putCompletedWaitingForKms(m, {
        put: (x) => this.o.store.putManifest(x), stopped: () => this.closed, recheck, log: this.log,
        pause: async (ms) => { await this.recheckWaits.sleep(ms); if (this.closed) throw shutDownDuring(); },
      });
      this.written.set(m.snapshotId, { ...m });
      onTerminal();
      this.log.info({ snapshotId: m.snapshotId, sourceSnapshotId: snap.manifest.snapshotId, blocks: m.blocks.length, reEncrypted: targetKey !== undefined }, 'snapshot copied');
    } finally {
      for (const p of pins) p.release();
    }
  }

  /**
   * The same-key copy makes no new data key, but the caller must still be
   * allowed to use the snapshot's key through EC2, as EBS requires for any
   * copy of an encrypted snapshot (docs/architecture.md §14.3): a ReEncrypt of
   * the snapshot's wrapped key from and to that key and context, on the
   * caller's behalf via EC2 (kms:ReEncryptFrom and kms:ReEncryptTo, judged by
   * the KMS and audited there, as the same-key restore's ReEncrypt is). The
   * copy keeps the source's wrapped key, which its header area (the same
   * object) carries: the answer is only the proof. A refusal
   * (AccessDeniedException, DisabledException) ends the copy `error`, as the
   * other-key copy's Decrypt does.
   */
  private async checkSameKeyUse(snap: OpenedSnapshot, m: SnapshotManifest, via: Caller): Promise<void> {
    const wk = snap.manifest.wrappedKey!;
    // Through a short-lived [ReEncryptFrom, ReEncryptTo] grant on the source's context (op-grants.ts).
    await this.withGrants(`${m.snapshotId}-rewrap`, [{ keyId: wk.keyArn, operations: ['ReEncryptFrom', 'ReEncryptTo'], context: wk.encryptionContext }], via, (use) =>
      this.o.keyService.reEncrypt(
        {
          CiphertextBlob: Buffer.from(wk.ciphertextBlob, 'base64'),
          SourceKeyId: wk.keyArn,
          SourceEncryptionContext: wk.encryptionContext,
          DestinationKeyId: wk.keyArn,
          DestinationEncryptionContext: wk.encryptionContext,
          ...grantTokensOf(use),
        },
        use.caller,
      ),
    );
  }

  /** `fn` through the step's short-lived grants (op-grants.ts), or on the caller's behalf without them when the copier has none (the embedded KMS). */
  private withGrants<T>(stepId: string, grants: OpGrantRequest[], via: Caller, fn: (use: KeyUse) => Promise<T>): Promise<T> {
    return withKeyUse(this.o.opGrants, stepId, grants, via, fn);
  }

  /** A new data key under `keyId` (context the new snapshot), every block re-encrypted and stored, a new header. */
  private async reencrypt(snap: OpenedSnapshot, m: SnapshotManifest, keyId: string, via: Caller, pins: BlockPin[]): Promise<void> {
    const ks = this.o.keyService;
    const ctx = { 'aws:ebs:id': m.snapshotId };
    let oldKey: Uint8Array | undefined;
    let newKey: Uint8Array | undefined;
    let from: XtsContext | null = null;
    let to: XtsContext | null = null;
    try {
      if (snap.manifest.encrypted) {
        oldKey = await unwrapSnapshotKey(ks, snap, via, this.o.opGrants ? { grants: this.o.opGrants, stepId: `${m.snapshotId}-source-key` } : undefined);
        from = this.o.xtsEngine.createContext(oldKey);
        wipe(oldKey);
      }
      const generate = (id: string) => ks.generateDataKeyWithoutPlaintext({ KeyId: id, NumberOfBytes: VOLUME_KEY_BYTES, EncryptionContext: ctx }, via);
      let gen = await generate(keyId);
      // Unwrapped through a short-lived [Decrypt] grant on the new snapshot's context, on the key KMS answered (CreateGrant takes no alias).
      newKey = await this.withGrants(`${m.snapshotId}-new-key`, [{ keyId: gen.KeyId, operations: ['Decrypt'], context: ctx }], via, async (use) => {
        for (let i = 0; ; i++) {
          if (i > 0) gen = await generate(gen.KeyId);
          const key = (await ks.decrypt({ CiphertextBlob: gen.CiphertextBlob, KeyId: gen.KeyId, EncryptionContext: ctx, ...grantTokensOf(use) }, use.caller)).Plaintext;
          // XTS refuses K1 = K2 (docs/architecture.md §3.5): regenerate. Compared in place: no copy of K1 in Node's Buffer pool.
          if (key.length !== VOLUME_KEY_BYTES || !xtsKeyHalvesEqual(key) || i >= 3) return key;
          wipe(key);
        }
      });
      const blob = gen.CiphertextBlob;
      const keyArn = gen.KeyId;
      if (newKey.length !== VOLUME_KEY_BYTES) throw new SnapshotError('SNAPSHOT_STORE', `KMS returned a ${newKey.length}-byte data key`);
      const json = buildLuks2Json({
        size: snap.size,
        volumeKey: newKey,
        token: { key_arn: keyArn, ciphertext_blob: Buffer.from(blob).toString('base64'), encryption_context: ctx, volume_id: m.volumeId || m.snapshotId },
      });
      to = this.o.xtsEngine.createContext(newKey);
      wipe(newKey);
      const header = encodeLuks2HeaderArea(json, { dataOffset: snap.manifest.dataOffset, label: m.volumeId || m.snapshotId });
      const headerHash = sha256(header);
      pins.push(await this.o.pin([headerHash]));
      await this.o.store.putBlock(headerHash, header);
      const out = await this.storeReencrypted(snap, m, from, to, pins);
      m.blocks = [...out.entries()].sort((a, b) => a[0] - b[0]);
      m.header = headerHash;
      m.encrypted = true;
      m.kmsKeyId = keyArn;
      m.wrappedKey = { ciphertextBlob: Buffer.from(blob).toString('base64'), keyArn, encryptionContext: ctx };
      m.dataEncryptionKeyId = dataEncryptionKeyId(parseLuks2Header(header, 'copy header').volume);
    } finally {
      // Best effort in JS (the GC may have copied them); the contexts wipe their native copies.
      wipe(oldKey, newKey);
      from?.destroy();
      to?.destroy();
    }
  }

  /**
   * The source's blocks through the restore's pipeline (docs/architecture.md
   * §14.5): read and checked by the store, re-encrypted and hashed (SHA-256
   * on the libuv pool) `window` blocks ahead, then pinned and stored, a few
   * puts at once; through one BlockBatch when the store offers it (one wait
   * for the disk, every block durable before the completed manifest names
   * it), else one durable putBlock each. Returns index -> new hash.
   */
  private async storeReencrypted(snap: OpenedSnapshot, m: SnapshotManifest, from: XtsContext | null, to: XtsContext | null, pins: BlockPin[]): Promise<Map<number, BlockHash>> {
    const store = this.o.store;
    const batch = store.openBlockBatch?.();
    const out = new Map<number, BlockHash>();
    const hashes = new Map<number, BlockHash>();
    const total = snap.manifest.blocks.length;
    const puts = new Set<Promise<void>>();
    let failure: unknown;
    let done = 0;
    let shown = 0;
    const putOne = async (index: number, data: Buffer): Promise<void> => {
      const hash = hashes.get(index)!;
      hashes.delete(index);
      pins.push(await this.o.pin([hash]));
      await putUnlessStored(store, batch, hash, data);
      out.set(index, hash);
      done++;
      // Progress in the manifest: every 10 %, not per block (each write is a store round trip).
      const pct = Math.floor((done * 100) / Math.max(1, total));
      if (pct >= shown + 10 && pct < 100) {
        shown = pct;
        await store.putManifest({ ...m, progress: pct });
        this.written.set(m.snapshotId, { ...m, progress: pct, blocks: [] });
      }
    };
    try {
      await pipeBlocks({
        store,
        manifest: snap.manifest,
        window: this.o.window,
        transform: async (index, data) => {
          // A last block past the snapshot's size keeps its zero padding, never encrypted (docs/format.md, "Snapshot blocks").
          await reencryptBlock(from, to, data.subarray(0, bytesInside(snap, index, data)), index);
          hashes.set(index, await sha256HexOffLoop(data));
        },
        sink: {
          put: async (index, data) => {
            if (failure !== undefined) throw failure;
            const p: Promise<void> = putOne(index, data)
              .catch((e) => {
                failure ??= e;
              })
              .finally(() => puts.delete(p));
            puts.add(p);
            while (puts.size >= PUTS_AT_ONCE) await Promise.race(puts);
            if (failure !== undefined) throw failure;
          },
        },
      });
      while (puts.size) await Promise.all(puts);
      if (failure !== undefined) throw failure;
      await batch?.commit();
    } catch (e) {
      while (puts.size) await Promise.allSettled(puts);
      await batch?.abort().catch(() => {});
      throw e;
    }
    return out;
  }
}

function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}
