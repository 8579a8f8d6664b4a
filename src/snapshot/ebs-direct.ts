import { createHash, randomBytes, randomUUID } from 'node:crypto';
import type { Caller } from '../kms/types.js';
import type { XtsContext, XtsEngine } from '../crypto/xts.js';
import type { KeyService } from '../volume/key-service.js';
import { VOLUME_KEY_BYTES, SECTOR_SIZE, verifyVolumeKey, type Luks2Volume } from '../volume/luks2-json.js';
import { parseLuks2Header } from '../volume/luks2-header.js';
import { parsePlainHeader } from '../volume/plain-image.js';
import { wipe } from '../util/wipe.js';
import { silentLogger, type Logger } from '../util/logger.js';
import { MAX_TIMER_MS } from '../util/clock.js';
import { SNAPSHOT_BLOCK_BYTES, type BlockHash, type SnapshotManifest, type SnapshotStore, type SnapshotSummary } from './types.js';
import { STORE_REQUESTS_IN_FLIGHT, type BlockPin } from './gc.js';
import { recheckMsOf } from './store-settings.js';
import { inParallel } from '../util/in-parallel.js';
import { PendingMarkers } from './pending-markers.js';
import { MANIFEST_MAX_BYTES, isSnapshotId } from './manifest-check.js';
import { concurrentLimit, conflict, fromKmsError, internal, notFound, quotaExceeded, validation } from './ebs-direct-errors.js';
import { encryptedSnapshotHeader, plainSnapshotHeader } from './ebs-direct-header.js';
import { startSnapshotEncryption } from './ebs-direct-encryption.js';
import {
  BLOCKS_PER_GIB, DEFAULT_TIMEOUT_MIN,
  type CompleteSnapshotInput, type GetSnapshotBlockInput, type ListChangedBlocksInput, type ListSnapshotBlocksInput,
  type PutSnapshotBlockInput, type StartSnapshotInput,
} from './ebs-direct-input.js';
import { BLOCK_TOKEN_TTL_MS, PAGE_TOKEN_TTL_MS, TokenSigner } from './ebs-direct-tokens.js';
import { SnapshotKeyCache } from './ebs-direct-key-cache.js';
import { CompletedManifests, type BlockList } from './ebs-direct-manifests.js';
import { refusedSnapshot } from './refused-snapshot.js';
import { WakeableSleeps } from '../util/wakeable-sleeps.js';
import { callerParty } from '../kms/caller-party.js';
import { putCompletedWaitingForKms } from './manifest-mac.js';

/**
 * The EBS direct APIs over a SnapshotStore (docs/architecture.md, "EBS direct APIs"):
 * read any completed snapshot block by block (ListSnapshotBlocks,
 * ListChangedBlocks, GetSnapshotBlock) and write new snapshots from outside
 * (StartSnapshot, PutSnapshotBlock, CompleteSnapshot). Blocks are stored as
 * the manifest model says: an encrypted snapshot's blocks are the ciphertext
 * a volume restored from it would hold (AES-256-XTS, 4 KiB sectors, tweak =
 * 512-byte unit number from the data segment start, docs/format.md), so
 * PutSnapshotBlock encrypts and GetSnapshotBlock decrypts, each with the
 * snapshot's data key unwrapped by KMS on the caller's behalf (the caller
 * must be allowed kms:Decrypt on the key), once per caller and snapshot and
 * kept for a short TTL (ebs-direct-key-cache.ts).
 *
 * Authorization of the ebs:* actions is the transport's (src/daemon/ebs-api.ts);
 * this class trusts that its caller was authorized and acts for it towards KMS.
 */

/** LUKS2 aes-xts-plain64 with 4 KiB sectors: the tweak counts 512-byte units. */
const XTS_OPTS = { unitSize: 4096, tweakStep: 8 } as const;
const SECTORS_PER_BLOCK = SNAPSHOT_BLOCK_BYTES / SECTOR_SIZE;
const ZERO_SECTOR = Buffer.alloc(SECTOR_SIZE);
/** Snapshots begun with StartSnapshot and not yet completed, at once, per daemon (ConcurrentLimitExceededException past it). */
export const MAX_PENDING_SNAPSHOTS = 100;
/**
 * Of those, what one party may hold (src/kms/caller-party.ts: a user, the root, a
 * local uid's principal; a role session counts as the identity that minted it,
 * or minting sessions would multiply the share). The
 * pending slots are the daemon's, not each caller's, and a snapshot may stay
 * pending for three days (Timeout 4320): without a share, one caller allowed
 * ebs:StartSnapshot could take all of them and leave every other caller
 * ConcurrentLimitExceededException until they time out. A quarter: a backup
 * tool's few parallel uploads fit; four callers are needed to fill the daemon.
 */
export const MAX_PENDING_PER_PARTY = 25;
/**
 * StartSnapshot ClientTokens remembered for idempotency. An entry keeps the
 * request's SHA-256 and the answer (up to 50 tags: tens of KB at most), so
 * the map stays within tens of MB; the tokens of pending snapshots are never
 * the ones forgotten.
 */
const MAX_CLIENT_TOKENS = 1_000;
/**
 * Completions remembered for a repeated CompleteSnapshot (completedBy): the snapshot id, its
 * ChangedBlocksCount and the LINEAR checksum of the blocks it sealed, ~150 bytes each.
 */
const MAX_COMPLETIONS = 10_000;

/**
 * Set (true) on the answer of a CompleteSnapshot that sealed nothing: a repeat of a completion (one
 * under way or done; completeSnapshot). A symbol, so it never reaches the wire (JSON leaves it out);
 * the audit records it (`additionalEventData.repeat`, src/daemon/ebs-api.ts), so a repeat is told
 * from the completion it repeats.
 */
export const COMPLETION_REPEAT: unique symbol = Symbol('CompleteSnapshot repeat');

/** `answer` marked as a repeat's (COMPLETION_REPEAT, not enumerable: the answer reads as the first's), a copy: the first completion's own answer stays as it is. */
function asRepeat(answer: Record<string, unknown>): Record<string, unknown> {
  return Object.defineProperty({ ...answer }, COMPLETION_REPEAT, { value: true, enumerable: false });
}
/**
 * What bounds a snapshot's blocks here. EBS bounds them by VolumeSize alone
 * (BlockIndex below VolumeSize x 2048); ebsd also needs the manifest naming
 * them (the parent's and those written) to fit the store's MANIFEST_MAX_BYTES,
 * as every snapshot's does, CreateSnapshot's too. So PutSnapshotBlock of a new
 * index is refused (ServiceQuotaExceededException, docs/architecture.md §15)
 * when the completed manifest would pass that limit, counted exactly: each
 * block's entry by its index's digits (manifestEntryBytes), the rest of the
 * manifest as it is (its tags, description and wrapped key are fixed at
 * StartSnapshot) plus MANIFEST_SLACK_BYTES. A StartSnapshot whose completed
 * manifest would already pass it with the parent's blocks alone (a parent near
 * the limit, a child with a long Description or many Tags) is refused the same
 * way, before anything is written; never a CompleteSnapshot that fails at the
 * end. A child of a parent CreateSnapshot made thus takes new indexes as long
 * as its manifest fits, however many blocks the parent holds.
 *
 * MAX_SNAPSHOT_BLOCKS is the count every snapshot reaches whatever its indexes:
 * 79 bytes a block at worst (`[134217727,"<64 hex>"],`, BlockIndex below
 * 65536 GiB x 2048), 1 MiB left for the rest. 836,206 blocks (~408 GiB
 * written); narrower indexes hold more (77 bytes below 10^7: ~858,000).
 */
export const MAX_SNAPSHOT_BLOCKS = Math.floor((MANIFEST_MAX_BYTES - 1024 * 1024) / 79);
/** Room left in a manifest beyond its measured size (the store's trailing newline, a longer completionTime or stateMessage). */
const MANIFEST_SLACK_BYTES = 1024;

/** Bytes a block's entry takes in a manifest's JSON: `[index,"<64 hex>"],` (the last entry's comma counted too). */
export function manifestEntryBytes(index: number): number {
  return String(index).length + 70;
}
/** KMS default key for EBS, as CreateVolume uses it. */
const DEFAULT_KMS_KEY = 'alias/aws/ebs';
/** Snapshots visited from each side (through parent and source links) looking for a common lineage (ListChangedBlocks). */
const MAX_CHAIN = 10_000;
/** With a store other daemons write (S3), a cached completed manifest is read again this long after (a delete elsewhere shows within it). */
const SHARED_MANIFEST_MAX_AGE_MS = 60_000;
/**
 * A pending snapshot's manifest is rewritten with the blocks written so far
 * at most this long after the first block it does not name yet was put (a
 * timer, not the next put: a put just before a long idle gap is named too),
 * and at completion. The collector of another daemon sharing the store
 * spares blocks younger than its grace period (an hour, src/snapshot/gc.ts)
 * and blocks a manifest names, so a StartSnapshot that stays pending for up
 * to its 72-hour Timeout keeps its blocks.
 */
export const PENDING_MANIFEST_EVERY_MS = 5 * 60_000;

/**
 * Parsed LUKS2 headers kept for the data key's check (_checkKey), by the header object's
 * SHA-256: a header is content-addressed, so what a hash names never changes. A few KB each.
 */
const PARSED_HEADERS_MAX = 64;

/** The Timeout sweep is not run again sooner than this after a sweep that left an overdue snapshot (a put or CompleteSnapshot in flight on it). */
const SWEEP_RETRY_MS = 1_000;

/** A scheduled call, cancellable. */
export interface ScheduledCall {
  cancel(): void;
}
/** Runs `fn` once in `ms` milliseconds unless cancelled; the default is an unref'd setTimeout (tests inject a timer they fire). */
export type Scheduler = (fn: () => Promise<void>, ms: number) => ScheduledCall;

const unrefTimer: Scheduler = (fn, ms) => {
  const t = setTimeout(() => void fn(), ms);
  t.unref();
  return { cancel: () => clearTimeout(t) };
};

export interface EbsDirectOptions {
  store: SnapshotStore;
  /** KMS, called on the caller's behalf (via EC2, as CreateVolume calls it). */
  keys: KeyService;
  xts: XtsEngine;
  accountId: string;
  region: string;
  log?: Logger;
  /** Injected clock (ms since the epoch); Date.now by default. */
  now?: () => number;
  /** Token HMAC key, tests only. */
  tokenKey?: Uint8Array;
  maxPending?: number;
  /** Pending snapshots one party may hold: an identity with the sessions it minted (caller-party.ts; MAX_PENDING_PER_PARTY; at most `maxPending`). */
  maxPendingPerParty?: number;
  /** ClientTokens remembered (MAX_CLIENT_TOKENS); tests set fewer. */
  maxClientTokens?: number;
  /**
   * This daemon's own directory (in its state dir) where a marker file per
   * snapshot it began and has not finished is kept, so that after a restart
   * it marks only its own pending snapshots `error`, never those another
   * daemon sharing the store is writing.
   */
  pendingDir: string;
  /** The collector's pin (SnapshotGc.pin): blocks written to a pending snapshot stay pinned until its manifest names them. */
  pin?: (hashes: Iterable<BlockHash>) => Promise<BlockPin>;
  /** Timer of the pending manifest's save; tests inject one driven by their clock. */
  schedule?: Scheduler;
  /** Timer of the StartSnapshot Timeout's sweep (at the earliest deadline); tests inject one driven by their clock. */
  sweepSchedule?: Scheduler;
  /** How long a data key unwrapped for a caller is kept (DEFAULT_SNAPSHOT_KEY_TTL_MS); 0 keeps none. */
  keyTtlMs?: number;
  /** Blocks a snapshot may hold, counted (tests); by default only its manifest's size bounds them (MAX_SNAPSHOT_BLOCKS). */
  maxSnapshotBlocks?: number;
  /** The largest manifest a snapshot begun here may reach (MANIFEST_MAX_BYTES); tests set less. */
  maxManifestBytes?: number;
  /** Blocks of completed manifests kept in memory (MANIFEST_CACHE_BLOCKS); tests set fewer. */
  manifestCacheBlocks?: number;
  /** On a shared store, the wait between the last put and CompleteSnapshot's check of the blocks (the store's deleteWindows().recheckMs unless given). */
  foundRecheckMs?: number;
  /**
   * EBS encryption by default is disabled: StartSnapshot makes an unencrypted snapshot when
   * Encrypted is not true and the parent (if any) is unencrypted. Off by default, so every
   * snapshot begun here is encrypted (`alias/aws/ebs` unless KmsKeyArn says otherwise) and an
   * unencrypted parent is refused (ebs-direct-encryption.ts); the daemon turns it on only
   * with `--allow-unencrypted`, as it does for plaintext volumes.
   */
  allowUnencrypted?: boolean;
}

/**
 * What a CompleteSnapshot that sealed a snapshot asked for, as a repeat of it is judged
 * (completeSnapshot): ChangedBlocksCount, and the LINEAR checksum of the blocks it sealed
 * (computed whether or not the call gave a Checksum, so a repeat that gives one is checked).
 */
interface Completion {
  changedBlocksCount: number;
  checksum: string;
  /** The party that began the snapshot (Pending.owner): only its Checksum is compared (checksumOracle). */
  owner: string;
}

/** A completed snapshot as the read APIs serve it (ebs-direct-manifests.ts). */
interface Completed {
  summary: SnapshotSummary;
  blocks: BlockList;
}

/** A snapshot between StartSnapshot and CompleteSnapshot: held here, its manifest in the store says `pending`. */
interface Pending {
  manifest: SnapshotManifest;
  /** Whose StartSnapshot began it (the caller's party, callerParty): its slot counts against that party's share. */
  owner: string;
  /** Every block of the snapshot: the parent's, overlaid by those written. */
  blocks: Map<number, BlockHash>;
  /** Bytes the entries of `blocks` take in the manifest (manifestEntryBytes each). */
  blockBytes: number;
  /** Bytes the entries may take: the manifest limit less the rest of the completed manifest (MAX_SNAPSHOT_BLOCKS). */
  blockBudget: number;
  /** Blocks written to this snapshot: index -> SHA-256 of the plaintext (the caller's Checksum). */
  written: Map<number, Buffer>;
  inflight: Set<number>;
  /** StartSnapshot's Timeout, in ms: the snapshot becomes `error` this long after its start or its last block put without CompleteSnapshot. */
  timeoutMs: number;
  /** When the Timeout runs out: its start, then every block put, moves it on. */
  deadline: number;
  /** Pin on the header, released when the snapshot completes or fails. */
  headerPin?: BlockPin;
  /** Pin on each index's block written here: one per index, the old one released when the index is written again. */
  pins: Map<number, BlockPin>;
  /** Blocks were put since the pending manifest was last written. */
  dirty: boolean;
  /** The scheduled save of the pending manifest, while dirty. */
  saveTimer?: ScheduledCall;
  /** The last pending-manifest write: CompleteSnapshot waits for it, so `pending` never overwrites `completed`. */
  saving: Promise<void>;
  /** CompleteSnapshot is writing the manifest: puts are refused, the snapshot is not swept. */
  completing: boolean;
  /** While `completing`: what that CompleteSnapshot asked for (checked) and its answer, which a repeat of it shares. */
  completion?: { asked: Completion; answer: Promise<Record<string, unknown>> };
  /** performance.now() after the last put (the header's, then each block's): CompleteSnapshot on a shared store asks again only recheckMs after it. */
  lastPutMs: number;
  /** On a shared store, the store's recheckMs (store-settings.ts), read at StartSnapshot; 0 on a store only this daemon writes. */
  recheckMs: number;
}

/**
 * A CompleteSnapshot's Checksum is compared only for the party that began the snapshot (StartSnapshot's caller,
 * callerParty), which wrote its blocks and knows their plaintext. The checksum is a digest of the blocks' plaintext
 * digests: compared for anyone allowed ebs:CompleteSnapshot, every refusal and every `completed` would answer a
 * guess at an encrypted snapshot's content for a caller who may not decrypt it (no kms:Decrypt), as often as asked.
 * Another party's Checksum is refused unread, the same answer whatever it holds.
 */
function refuseChecksumOfOthers(i: CompleteSnapshotInput, owner: string, party: string): void {
  if (party === owner) return;
  throw validation('INVALID_PARAMETER_VALUE', `${i.SnapshotId} was begun by another identity: a CompleteSnapshot's Checksum is compared only for the identity that called StartSnapshot (its sessions included), and was not read; complete it without Checksum`);
}

export class EbsDirect {
  private readonly pending = new Map<string, Pending>();
  private markers: Promise<PendingMarkers> | undefined;
  /**
   * StartSnapshot idempotency: ClientToken -> the request it came with and
   * its answer (a promise: a retry during the first call gets the same
   * snapshot). Kept after the snapshot completes or fails, as AWS answers a
   * retry "after it has completed successfully" with the original result
   * (docs/architecture.md §15); forgotten when the start fails, and past
   * MAX_CLIENT_TOKENS the oldest of a snapshot no longer pending first.
   */
  private readonly clientTokens = new Map<string, { request: string; response: Promise<Record<string, unknown>>; snapshotId?: string }>();
  /**
   * Snapshots this daemon completed, with what their CompleteSnapshot asked for (MAX_COMPLETIONS,
   * oldest out): a repeat asking the same is answered as the first was (completeSnapshot).
   */
  private readonly completedBy = new Map<string, Completion>();
  /** StartSnapshot calls past the limit check and not yet in `pending`: they hold a slot. */
  private starting = 0;
  /** `starting`, per party (callerParty). */
  private readonly startingBy = new Map<string, number>();
  private readonly schedule: Scheduler;
  private readonly sweepSchedule: Scheduler;
  /** The sweep armed for the earliest Timeout deadline (`at`, ms since the epoch), while any snapshot is pending. */
  private sweepTimer: { at: number; call: ScheduledCall } | undefined;
  private closed = false;
  /** Ends each CompleteSnapshot's wait before its shared-store check (_pastOtherCollectors) at once: close(). */
  private readonly recheckWaits = new WakeableSleeps();
  private readonly tokens: TokenSigner;
  private readonly now: () => number;
  private readonly viaService: string;
  /** Data keys unwrapped for GetSnapshotBlock / PutSnapshotBlock, per caller and snapshot. */
  private readonly dataKeys: SnapshotKeyCache;
  /** Completed manifests, parsed once and indexed (ebs-direct-manifests.ts). */
  private readonly manifests: CompletedManifests;
  /**
   * Snapshot headers checked against their manifests, by kind and hash (`luks2:<hash>`: the parsed LUKS2
   * header; `plain:<hash>`: null, a plaintext-image marker), parsed once (PARSED_HEADERS_MAX, least recently used out).
   */
  private readonly parsedHeaders = new Map<string, Promise<Luks2Volume | null>>();

  constructor(private readonly o: EbsDirectOptions) {
    this.tokens = new TokenSigner(o.tokenKey);
    this.now = o.now ?? Date.now;
    this.viaService = `ec2.${o.region}.amazonaws.com`;
    this.schedule = o.schedule ?? unrefTimer;
    this.sweepSchedule = o.sweepSchedule ?? unrefTimer;
    this.dataKeys = new SnapshotKeyCache({ xts: o.xts, ...(o.keyTtlMs !== undefined ? { ttlMs: o.keyTtlMs } : {}) });
    this.manifests = new CompletedManifests({
      load: (id) => o.store.getManifest(id), now: this.now,
      maxAgeMs: o.store.singleWriter ? Infinity : SHARED_MANIFEST_MAX_AGE_MS,
      ...(o.manifestCacheBlocks !== undefined ? { maxBlocks: o.manifestCacheBlocks } : {}),
    });
  }

  /**
   * After a restart: a snapshot begun with StartSnapshot that was still
   * pending cannot be finished (what was written lived in the old process),
   * so it becomes `error`, never `completed`. Returns the ids marked.
   */
  async recover(): Promise<string[]> {
    // At start, before any StartSnapshot: every marker is a snapshot a previous run left pending. A store that
    // does not answer (an S3 outage) keeps its marker, retried in the background, and does not stop the start.
    return (await this._markers()).recover();
  }

  /** The markers of this daemon's pending snapshots (pending-markers.ts), opened on first use. */
  private _markers(): Promise<PendingMarkers> {
    this.markers ??= PendingMarkers.open({ dir: this.o.pendingDir, store: this.o.store, why: 'the daemon restarted before CompleteSnapshot', log: this.o.log ?? silentLogger });
    return this.markers;
  }

  /** Postcondition of a terminal manifest durably written. */
  private async _unmark(id: string): Promise<void> {
    await (await this._markers()).remove(id);
  }

  /** The manifest of a snapshot this daemon is writing (StartSnapshot, not completed), without a store read. */
  pendingManifest(id: string): SnapshotManifest | undefined {
    return this.pending.get(id)?.manifest;
  }

  /**
   * A snapshot's manifest without its blocks, for the authorization's tag
   * read: this daemon's pending one, else the cached or stored one;
   * undefined when there is none (or the id is not one of ebsd's). A store
   * failure throws.
   */
  async snapshotSummary(id: string): Promise<SnapshotSummary | undefined> {
    const p = this.pending.get(id);
    if (p) return p.manifest;
    if (!isSnapshotId(id)) return undefined;
    return (await this.manifests.get(id))?.summary;
  }

  /** The snapshot was deleted (DeleteSnapshot): its cached manifest goes, so the read APIs answer ResourceNotFoundException. */
  forgetSnapshot(id: string): void {
    this.manifests.forget(id);
    this.completedBy.delete(id);
  }

  /**
   * The first step of the daemon's stop, before its listeners close: every
   * CompleteSnapshot waiting (for the KMS to answer for the completed
   * manifest's MAC, or before its shared-store check) ends now, failed, the
   * snapshot left pending (recover() marks it at the next start), and none
   * waits from here on. Resolves once every completion under way has settled,
   * so each has its answer while its caller's connection is still open: none
   * completes after its client was cut off, and none holds the control
   * server's drain. Keys stay until close(), which the stop calls after.
   * `boundMs`: the longest it waits for them (a store write that hangs), as
   * long as the control server waits for its requests.
   */
  async stopWaits(boundMs = 10_000): Promise<void> {
    this.closed = true;
    this.recheckWaits.wakeAll();
    const answers = [...this.pending.values()].flatMap((p) => (p.completion ? [p.completion.answer] : []));
    if (!answers.length) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.allSettled(answers), new Promise<void>((r) => { timer = setTimeout(r, boundMs).unref(); })]);
    clearTimeout(timer);
  }

  /**
   * Wipe the token key and the cached data keys, cancel the scheduled
   * manifest saves; pending snapshots are left for recover() to mark.
   * Resolves once the markers' background retries have stopped (the store
   * may be closed after).
   */
  async close(): Promise<void> {
    this.closed = true;
    this.recheckWaits.wakeAll();
    this.sweepTimer?.call.cancel();
    this.sweepTimer = undefined;
    for (const p of this.pending.values()) this._cancelSave(p);
    this.tokens.destroy();
    this.dataKeys.close();
    await (await this.markers?.catch(() => undefined))?.close();
  }

  // ---- reading -------------------------------------------------------------

  async listSnapshotBlocks(i: ListSnapshotBlocksInput): Promise<Record<string, unknown>> {
    const { summary: m, blocks } = await this._completed(i.SnapshotId);
    const scope = `ListSnapshotBlocks\0${m.snapshotId}`;
    const start = this._start(i, scope);
    const now = this.now();
    const expires = now + BLOCK_TOKEN_TTL_MS;
    const max = i.MaxResults ?? 10_000;
    const from = blocks.lowerBound(start);
    const end = Math.min(from + max, blocks.length);
    const page: { BlockIndex: number; BlockToken: string }[] = [];
    for (let at = from; at < end; at++) {
      const BlockIndex = blocks.indexAt(at);
      page.push({ BlockIndex, BlockToken: this.tokens.block(m.snapshotId, BlockIndex, blocks.hashAt(at), expires) });
    }
    return {
      Blocks: page,
      ExpiryTime: new Date(expires).toISOString(),
      VolumeSize: m.volumeSize,
      BlockSize: SNAPSHOT_BLOCK_BYTES,
      ...(end < blocks.length ? { NextToken: this.tokens.page(scope, blocks.indexAt(end), now + PAGE_TOKEN_TTL_MS) } : {}),
    };
  }

  /**
   * Blocks that differ between two snapshots of one lineage (same data key,
   * or a common ancestor through ParentSnapshotId): an index whose stored
   * block differs, or is present in only one. Without FirstSnapshotId, every
   * block of the second. A page walks both sorted block lists from the
   * starting index until it has MaxResults changes and one more.
   */
  async listChangedBlocks(i: ListChangedBlocksInput): Promise<Record<string, unknown>> {
    const second = await this._completed(i.SecondSnapshotId);
    const first = i.FirstSnapshotId !== undefined ? await this._completed(i.FirstSnapshotId) : undefined;
    if (first && !(await this._sameLineage(first.summary, second.summary))) {
      throw validation('UNRELATED_SNAPSHOTS', `${first.summary.snapshotId} and ${second.summary.snapshotId} are not of one lineage (different data keys, volumes and parent chains)`);
    }
    const firstId = first?.summary.snapshotId ?? '';
    const secondId = second.summary.snapshotId;
    const scope = `ListChangedBlocks\0${firstId}\0${secondId}`;
    const start = this._start(i, scope);
    const now = this.now();
    const expires = now + BLOCK_TOKEN_TTL_MS;
    const max = i.MaxResults ?? 10_000;
    const a = first?.blocks;
    const b = second.blocks;
    let ia = a ? a.lowerBound(start) : 0;
    let ib = b.lowerBound(start);
    const changed: Record<string, unknown>[] = [];
    let next: number | undefined;
    while ((a !== undefined && ia < a.length) || ib < b.length) {
      const xa = a !== undefined && ia < a.length ? a.indexAt(ia) : Infinity;
      const xb = ib < b.length ? b.indexAt(ib) : Infinity;
      const x = Math.min(xa, xb);
      const pa = xa === x ? ia++ : -1;
      const pb = xb === x ? ib++ : -1;
      if (pa >= 0 && pb >= 0 && a!.sameHash(pa, b, pb)) continue;
      if (changed.length === max) {
        next = x;
        break;
      }
      changed.push({
        BlockIndex: x,
        ...(pa >= 0 ? { FirstBlockToken: this.tokens.block(firstId, x, a!.hashAt(pa), expires) } : {}),
        ...(pb >= 0 ? { SecondBlockToken: this.tokens.block(secondId, x, b.hashAt(pb), expires) } : {}),
      });
    }
    return {
      ChangedBlocks: changed,
      ExpiryTime: new Date(expires).toISOString(),
      VolumeSize: second.summary.volumeSize,
      BlockSize: SNAPSHOT_BLOCK_BYTES,
      ...(next !== undefined ? { NextToken: this.tokens.page(scope, next, now + PAGE_TOKEN_TTL_MS) } : {}),
    };
  }

  /** The block's plaintext with its SHA-256; the token must be this daemon's, unexpired, for this snapshot, index and content. */
  async getSnapshotBlock(i: GetSnapshotBlockInput, caller: Caller): Promise<Record<string, unknown>> {
    const { summary: m, blocks } = await this._completed(i.SnapshotId);
    const hash = blocks.find(i.BlockIndex);
    if (hash === undefined || !this.tokens.verifyBlock(i.BlockToken, m.snapshotId, i.BlockIndex, hash, this.now())) {
      throw validation('INVALID_BLOCK_TOKEN', `BlockToken is not a valid, unexpired token for block ${i.BlockIndex} of ${m.snapshotId}: list the snapshot's blocks again`);
    }
    const stored = await this.o.store.getBlock(hash);
    if (sha256(stored).toString('hex') !== hash) throw internal(`block ${i.BlockIndex} of ${m.snapshotId} does not match its content hash in ${this.o.store.location}`);
    if (stored.length > SNAPSHOT_BLOCK_BYTES || stored.length % SECTOR_SIZE !== 0) throw internal(`block ${i.BlockIndex} of ${m.snapshotId} is ${stored.length} bytes`);
    // A short last block (a volume not a multiple of 512 KiB) reads as zeros past its end.
    const data = Buffer.alloc(SNAPSHOT_BLOCK_BYTES);
    stored.copy(data);
    if (m.encrypted) await this._withKey(m, caller, 'GetSnapshotBlock', (x) => decryptBlock(x, data, i.BlockIndex));
    else await this._checkPlain(m, 'GetSnapshotBlock');
    return { BlockData: data, DataLength: SNAPSHOT_BLOCK_BYTES, Checksum: sha256(data).toString('base64'), ChecksumAlgorithm: 'SHA256' };
  }

  // ---- writing -------------------------------------------------------------

  async startSnapshot(i: StartSnapshotInput, caller: Caller): Promise<Record<string, unknown>> {
    await this._sweep();
    // From here to the first await, synchronous: the token and the slot are taken before any other start runs.
    const token = i.ClientToken;
    const request = createHash('sha256').update(JSON.stringify({ ...i, caller: caller.arn })).digest('base64');
    if (token !== undefined) {
      const seen = this.clientTokens.get(token);
      if (seen) {
        if (seen.request !== request) throw conflict(`ClientToken ${token} was used for a different StartSnapshot request`);
        return seen.response;
      }
    }
    const max = this.o.maxPending ?? MAX_PENDING_SNAPSHOTS;
    if (this.pending.size + this.starting >= max) {
      throw concurrentLimit(`${this.pending.size + this.starting} snapshots are already pending (at most ${max}): complete one first`);
    }
    const owner = callerParty(caller);
    const share = Math.min(max, this.o.maxPendingPerParty ?? MAX_PENDING_PER_PARTY);
    let mine = this.startingBy.get(owner) ?? 0;
    for (const p of this.pending.values()) if (p.owner === owner) mine++;
    if (mine >= share) {
      throw concurrentLimit(`${owner === caller.arn ? owner : `${caller.arn} (with the other sessions minted by the same identity)`} already has ${mine} snapshots pending (at most ${share} per identity, its sessions included, of ${max} in all): complete one first`);
    }
    this.starting++;
    this.startingBy.set(owner, (this.startingBy.get(owner) ?? 0) + 1);
    let held = true;
    const release = (): void => {
      if (held) {
        this.starting--;
        const n = (this.startingBy.get(owner) ?? 1) - 1;
        if (n > 0) this.startingBy.set(owner, n); else this.startingBy.delete(owner);
      }
      held = false;
    };
    const started = this._begin(i, caller, release).finally(release);
    if (token !== undefined) {
      // Bounded: the oldest token of a snapshot no longer pending is forgotten first (a retry that late starts a new
      // snapshot); a pending snapshot's token stays, so a retry of a long upload's start never makes a second one.
      if (this.clientTokens.size >= (this.o.maxClientTokens ?? MAX_CLIENT_TOKENS)) {
        for (const [t, e] of this.clientTokens) {
          if (e.snapshotId === undefined || this.pending.has(e.snapshotId)) continue;
          this.clientTokens.delete(t);
          break;
        }
      }
      const entry: { request: string; response: Promise<Record<string, unknown>>; snapshotId?: string } = { request, response: started };
      this.clientTokens.set(token, entry);
      started.then((r) => { entry.snapshotId = r.SnapshotId as string; }, () => { if (this.clientTokens.get(token) === entry) this.clientTokens.delete(token); });
    }
    return started;
  }

  /** StartSnapshot past the limit: `releaseSlot` is called as the snapshot takes its place in `pending` (or on failure, by the caller). */
  private async _begin(i: StartSnapshotInput, caller: Caller, releaseSlot: () => void): Promise<Record<string, unknown>> {
    // The parent's blocks are pinned until the pending manifest names them, then read again: a DeleteSnapshot of the
    // parent in between either finished (not found now) or leaves them to this snapshot, never a child naming freed blocks.
    let parentPin: BlockPin | undefined;
    let parent: SnapshotManifest | undefined;
    if (i.ParentSnapshotId !== undefined) {
      const first = await this._completedInStore(i.ParentSnapshotId);
      if (this.o.pin) {
        parentPin = await this.o.pin(first.blocks.map(([, h]) => h));
        try {
          parent = await this._completedInStore(i.ParentSnapshotId);
        } catch (e) {
          parentPin.release();
          throw e;
        }
      } else {
        parent = first;
      }
    }
    try {
      return await this._beginWith(i, parent, caller, releaseSlot);
    } finally {
      parentPin?.release();
    }
  }

  private async _beginWith(i: StartSnapshotInput, parent: SnapshotManifest | undefined, caller: Caller, releaseSlot: () => void): Promise<Record<string, unknown>> {
    if (parent && i.VolumeSize < parent.volumeSize) {
      throw validation('INVALID_VOLUME_SIZE', `VolumeSize ${i.VolumeSize} is smaller than the parent ${parent.snapshotId}'s ${parent.volumeSize} GiB`);
    }
    const outcome = startSnapshotEncryption(i, {
      ...(parent ? { parent: { snapshotId: parent.snapshotId, encrypted: parent.encrypted } } : {}),
      byDefault: this.o.allowUnencrypted !== true, defaultKey: DEFAULT_KMS_KEY,
    });
    const encrypted = outcome.encrypted;
    // On a shared store, CompleteSnapshot's wait before it asks again for the blocks comes from the store's settings
    // (store-settings.ts): read before the data key is made, so settings this daemon cannot follow (or a store that
    // does not answer for them) refuse the start with nothing written and no KMS call, not the completion after every
    // block was put. The store reads them once (a failed read is tried again by the next start).
    const recheckMs = await recheckMsOf(this.o.store, this.o.foundRecheckMs);
    const snapshotId = `snap-${randomBytes(9).toString('hex').slice(0, 17)}`;
    const sizeBytes = i.VolumeSize * 1024 ** 3;
    const manifest: SnapshotManifest = {
      formatVersion: 1, snapshotId, volumeId: '', volumeSize: i.VolumeSize, state: 'pending', progress: 0,
      startTime: new Date(this.now()).toISOString(), description: i.Description ?? '', tags: i.Tags ?? [], ownerId: this.o.accountId,
      encrypted, kmsKeyId: '', dataOffset: 0, blocks: [],
      ...(parent ? { parentSnapshotId: parent.snapshotId } : {}),
    };
    let header: { bytes: Buffer; dataOffset: number };
    if (outcome.encrypted) {
      header = await this._newKey(manifest, parent, 'keyId' in outcome ? outcome.keyId : undefined, sizeBytes, caller);
    } else {
      header = plainSnapshotHeader(snapshotId, sizeBytes);
    }
    const headerHash = sha256(header.bytes).toString('hex');
    // PutSnapshotBlock checks the caller's key against this header (_checkKey): parsed here, not read back.
    if (outcome.encrypted) this._rememberHeader(`luks2:${headerHash}`, Promise.resolve(parseLuks2Header(header.bytes, `snapshot ${snapshotId} header`).volume));
    // The completed manifest but its blocks: everything else in it is fixed from here (MAX_SNAPSHOT_BLOCKS).
    const rest = Buffer.byteLength(JSON.stringify({
      ...manifest, header: headerHash, dataOffset: header.dataOffset,
      state: 'completed', progress: 100, completionTime: manifest.startTime, changedBlocks: Number.MAX_SAFE_INTEGER, blocks: [],
    }), 'utf8');
    const limit = this.o.maxManifestBytes ?? MANIFEST_MAX_BYTES;
    let blockBytes = 0;
    for (const [x] of parent?.blocks ?? []) blockBytes += manifestEntryBytes(x);
    // Precondition: the completed manifest naming the parent's blocks fits the store (entries less the last comma, the
    // store's newline), else the child is refused here, before anything is written, never at CompleteSnapshot with
    // an InternalServerException the SDKs retry. The pending manifest is smaller (no completionTime nor changedBlocks).
    const completedBytes = rest + blockBytes - (parent?.blocks.length ? 1 : 0) + 1;
    if (completedBytes > limit) {
      const what = parent ? `a child of ${parent.snapshotId} would have a manifest of ${completedBytes} bytes (the parent's ${parent.blocks.length} block(s), ` : `the snapshot would have a manifest of ${completedBytes} bytes (`;
      throw quotaExceeded(`${what}its description, tags and key), over the snapshot store's ${limit}-byte limit, so it is not started (a shorter Description or fewer Tags may fit)`);
    }
    const headerPin = this.o.pin ? await this.o.pin([headerHash]) : undefined;
    try {
      // Put even when present: a new age keeps another host's collector off it until our manifest names it.
      await this.o.store.putBlock(headerHash, header.bytes);
    } catch (e) {
      headerPin?.release();
      throw e;
    }
    manifest.header = headerHash;
    manifest.dataOffset = header.dataOffset;
    manifest.blocks = parent ? parent.blocks.map(([x, h]) => [x, h] as [number, BlockHash]) : [];
    try {
      await (await this._markers()).putPending(manifest);
    } catch (e) {
      headerPin?.release();
      throw e;
    }
    releaseSlot();
    const timeoutMs = (i.Timeout ?? DEFAULT_TIMEOUT_MIN) * 60_000;
    this.pending.set(snapshotId, {
      manifest, owner: callerParty(caller), blocks: new Map(manifest.blocks), blockBytes, blockBudget: limit - rest - MANIFEST_SLACK_BYTES,
      written: new Map(), inflight: new Set(),
      timeoutMs, deadline: this.now() + timeoutMs, headerPin, pins: new Map(),
      dirty: false, saving: Promise.resolve(), completing: false, lastPutMs: performance.now(), recheckMs,
    });
    this._armSweep();
    const response = {
      SnapshotId: snapshotId, OwnerId: this.o.accountId, Status: 'pending', StartTime: manifest.startTime,
      VolumeSize: i.VolumeSize, BlockSize: SNAPSHOT_BLOCK_BYTES, Description: manifest.description, Tags: manifest.tags,
      ...(parent ? { ParentSnapshotId: parent.snapshotId } : {}),
      ...(encrypted ? { KmsKeyArn: manifest.kmsKeyId } : {}),
      SseType: encrypted ? 'sse-ebs' : 'none',
    };
    this.o.log?.info({ snapshotId, encrypted, parentSnapshotId: parent?.snapshotId, volumeSize: i.VolumeSize, keyArn: manifest.kmsKeyId || undefined }, 'StartSnapshot: snapshot pending');
    return response;
  }

  async putSnapshotBlock(i: PutSnapshotBlockInput, caller: Caller): Promise<Record<string, unknown>> {
    const p = await this._pending(i.SnapshotId);
    const limit = p.manifest.volumeSize * BLOCKS_PER_GIB;
    if (i.BlockIndex >= limit) throw validation('INVALID_BLOCK', `BlockIndex ${i.BlockIndex} is past the end of a ${p.manifest.volumeSize} GiB snapshot (at most ${limit - 1})`);
    const digest = sha256(i.BlockData);
    if (digest.toString('base64') !== i.Checksum) {
      throw validation('INVALID_PARAMETER_VALUE', `Checksum does not match BlockData (SHA256, base64) for block ${i.BlockIndex} of ${i.SnapshotId}; nothing was written`);
    }
    if (p.inflight.has(i.BlockIndex)) throw validation('CONFLICTING_BLOCK_UPDATE', `block ${i.BlockIndex} of ${i.SnapshotId} is being written by another request`);
    if (!p.blocks.has(i.BlockIndex)) {
      // A new index: counted with the new indexes still being put, so concurrent puts cannot pass the limit together.
      let adding = 1;
      let bytes = manifestEntryBytes(i.BlockIndex);
      for (const x of p.inflight) {
        if (p.blocks.has(x)) continue;
        adding++;
        bytes += manifestEntryBytes(x);
      }
      const cap = this.o.maxSnapshotBlocks;
      if (cap !== undefined && p.blocks.size + adding > cap) {
        throw quotaExceeded(`${i.SnapshotId} holds ${p.blocks.size} block(s) (its parent's and those written); a snapshot holds at most ${cap}, so block ${i.BlockIndex} is not written (blocks already held may be written again)`);
      }
      if (p.blockBytes + bytes > p.blockBudget) {
        throw quotaExceeded(`${i.SnapshotId} holds ${p.blocks.size} block(s) (its parent's and those written), and its manifest would pass the snapshot store's ${this.o.maxManifestBytes ?? MANIFEST_MAX_BYTES}-byte limit with one more, so block ${i.BlockIndex} is not written (blocks already held may be written again; at least ${MAX_SNAPSHOT_BLOCKS} blocks always fit)`);
      }
    }
    // Synchronously after _pending's check: CompleteSnapshot sees this put in flight and refuses until it ends.
    p.inflight.add(i.BlockIndex);
    let pin: BlockPin | undefined;
    // Our own copy, encrypted in place: while it holds the plaintext (the key refused, the KMS not answering), a failure wipes it.
    const data = Buffer.from(i.BlockData);
    let sealed = !p.manifest.encrypted;
    try {
      if (p.manifest.encrypted) {
        await this._withKey(p.manifest, caller, 'PutSnapshotBlock', (x) => x.encrypt(data, i.BlockIndex * SECTORS_PER_BLOCK * 8, XTS_OPTS));
        sealed = true;
      }
      const hash = sha256(data).toString('hex');
      // Pinned before it is put: a sweep deleting an equal block finishes first, then ours is written.
      if (this.o.pin) pin = await this.o.pin([hash]);
      // Put even when present: a new age keeps another host's collector off it until our manifest names it.
      await this.o.store.putBlock(hash, data);
      if (!p.blocks.has(i.BlockIndex)) p.blockBytes += manifestEntryBytes(i.BlockIndex);
      p.blocks.set(i.BlockIndex, hash);
      p.written.set(i.BlockIndex, digest);
      p.lastPutMs = performance.now();
      // One pin per index: the block this index held before is no longer this snapshot's.
      p.pins.get(i.BlockIndex)?.release();
      if (pin) p.pins.set(i.BlockIndex, pin);
      pin = undefined;
      if (i.Progress !== undefined) p.manifest.progress = i.Progress;
      // StartSnapshot's Timeout counts from the last block written, not from the start.
      p.deadline = this.now() + p.timeoutMs;
      this._scheduleSave(p);
    } finally {
      if (!sealed) data.fill(0);
      pin?.release(); // not put: not ours to hold
      p.inflight.delete(i.BlockIndex);
    }
    return { Checksum: i.Checksum, ChecksumAlgorithm: 'SHA256' };
  }

  /**
   * Seal the snapshot: ChangedBlocksCount must be the number of blocks
   * written, and a Checksum (LINEAR: SHA-256 of the written blocks' SHA-256
   * digests concatenated in block-index order) must match. A refusal
   * changes nothing: the snapshot stays pending and can be completed right.
   *
   * From the checks on, the snapshot is `completing`: PutSnapshotBlock is
   * refused (the snapshot is no longer open for writing), so no block is
   * acknowledged that the completed manifest leaves out. Before `completed`
   * is written, every block written here and the header must be in the
   * store: one missing (freed by a collector that did not see it named) is
   * InternalServerException naming the indexes, and the snapshot stays
   * pending, so the caller can put those blocks again and complete; it is
   * not made `error`, since what is missing is known and can be rewritten.
   * A failed manifest write also leaves it pending; one the KMS did not
   * answer (its MAC, --snapshot-manifest-key) is tried again for a while first,
   * as a create's and a copy's (putCompletedWaitingForKms, manifest-mac.ts).
   *
   * A repeat of a CompleteSnapshot (the SDKs retry one whose answer was lost,
   * a timeout or a 5xx) that asks for the same thing gets the same answer:
   * while the first is still completing, its answer; once the snapshot is
   * completed, `completed`. One that asks for something else is refused,
   * naming what differs (docs/architecture.md §15, "Repeated CompleteSnapshot").
   */
  async completeSnapshot(i: CompleteSnapshotInput, caller: Caller): Promise<Record<string, unknown>> {
    await this._sweep();
    const party = callerParty(caller);
    const p = this.pending.get(i.SnapshotId);
    if (p?.completion) return this._repeatWhileCompleting(p.completion, i, party);
    if (!p) return this._repeatOfCompleted(i, party);
    // From here to `completing`, synchronous: no put or other completion runs between the checks and the seal.
    if (p.inflight.size > 0) throw validation('CONFLICTING_BLOCK_UPDATE', `${p.inflight.size} block(s) of ${i.SnapshotId} are still being written`);
    if (i.ChangedBlocksCount !== p.written.size) {
      throw validation('INVALID_PARAMETER_VALUE', `ChangedBlocksCount is ${i.ChangedBlocksCount}, but ${p.written.size} block(s) were written to ${i.SnapshotId}; the snapshot stays pending`);
    }
    const order = [...p.written.keys()].sort((x, y) => x - y);
    const agg = createHash('sha256');
    for (const x of order) agg.update(p.written.get(x)!);
    const checksum = agg.digest('base64');
    if (i.Checksum !== undefined) refuseChecksumOfOthers(i, p.owner, party);
    if (i.Checksum !== undefined && checksum !== i.Checksum) {
      throw validation('INVALID_PARAMETER_VALUE', `Checksum (SHA256, LINEAR over ${order.length} block checksums in index order) does not match what was written to ${i.SnapshotId}; the snapshot stays pending`);
    }
    const asked: Completion = { changedBlocksCount: p.written.size, checksum, owner: p.owner };
    p.completing = true;
    this._cancelSave(p);
    const answer = this._seal(p, asked);
    p.completion = { asked, answer };
    return answer;
  }

  /** CompleteSnapshot past its checks: the completed manifest written, the snapshot no longer pending; on a failure it stays pending. */
  private async _seal(p: Pending, asked: Completion): Promise<Record<string, unknown>> {
    const id = p.manifest.snapshotId;
    const m: SnapshotManifest = {
      ...p.manifest, state: 'completed', progress: 100, completionTime: new Date(this.now()).toISOString(),
      blocks: [...p.blocks].sort((x, y) => x[0] - y[0]), changedBlocks: p.written.size,
    };
    try {
      await p.saving; // a pending save in progress lands first, never after `completed`
      await this._checkPresent(p, await this._pastOtherCollectors(p));
      // Completed after the wait and check on a shared store, not when CompleteSnapshot arrived (as snapshot-manager.ts).
      m.completionTime = new Date(this.now()).toISOString();
      // Every block is stored: a KMS that does not answer for the manifest's MAC is waited for, as for a create or a copy
      // (docs/architecture.md §13.5); a refusal, a store error or shutdown fails at once and the snapshot stays pending.
      await putCompletedWaitingForKms(m, {
        put: (x) => this.o.store.putManifest(x),
        pause: async (ms) => {
          await this.recheckWaits.sleep(ms);
          if (this.closed) throw internal(`the daemon shut down while CompleteSnapshot of ${id} waited for the KMS; the snapshot stays pending`);
        },
        stopped: () => this.closed,
        // On a shared store the blocks are asked for again just before each retried write (§13.1).
        recheck: this.o.store.singleWriter ? undefined : async () => this._checkPresent(p, await this._inheritedIfParentGone(p)),
        log: this.o.log ?? silentLogger,
      });
    } catch (e) {
      p.completing = false;
      p.completion = undefined;
      // Its Timeout counts again, from now: a completion begun just before the deadline that failed after it (a KMS
      // wait lasts up to 2 minutes) leaves the snapshot pending, as documented, for the caller to retry; the sweep
      // would otherwise end it at once, as one abandoned.
      p.deadline = Math.max(p.deadline, this.now() + p.timeoutMs);
      if (p.dirty && !this.closed) this._scheduleSave(p);
      this._armSweep();
      throw e;
    }
    this.pending.delete(id);
    this._forget(p);
    this._rememberCompletion(id, asked);
    this.o.log?.info({ snapshotId: id, blocks: m.blocks.length, changedBlocks: p.written.size }, 'CompleteSnapshot: snapshot completed');
    await this._unmark(id);
    return { Status: 'completed' };
  }

  private _rememberCompletion(id: string, asked: Completion): void {
    this.completedBy.delete(id);
    this.completedBy.set(id, asked);
    while (this.completedBy.size > MAX_COMPLETIONS) this.completedBy.delete(this.completedBy.keys().next().value!);
  }

  /**
   * How a CompleteSnapshot differs from the completion `done`, one phrase per member; empty when it asks the same.
   * ChecksumAlgorithm and ChecksumAggregationMethod have one value each (SHA256, LINEAR: ebs-direct-input.ts refuses
   * any other), the ones every completion's checksum is made with, so a repeat that gives them always agrees.
   */
  private _differences(i: CompleteSnapshotInput, done: Completion, party: string): string[] {
    if (i.Checksum !== undefined) refuseChecksumOfOthers(i, done.owner, party);
    const d: string[] = [];
    if (i.ChangedBlocksCount !== done.changedBlocksCount) d.push(`ChangedBlocksCount is ${i.ChangedBlocksCount}, not ${done.changedBlocksCount}`);
    if (i.Checksum !== undefined && i.Checksum !== done.checksum) d.push(`Checksum is not the LINEAR checksum of the ${done.changedBlocksCount} block(s) it sealed`);
    return d;
  }

  /** A CompleteSnapshot while another is completing the snapshot: the same request shares that one's answer. */
  private _repeatWhileCompleting(c: NonNullable<Pending['completion']>, i: CompleteSnapshotInput, party: string): Promise<Record<string, unknown>> {
    const d = this._differences(i, c.asked, party);
    if (d.length) {
      throw validation('INVALID_PARAMETER_VALUE', `${i.SnapshotId} is being completed by a CompleteSnapshot with ChangedBlocksCount ${c.asked.changedBlocksCount}; this one asks for something else (${d.join('; ')}), so it is refused`);
    }
    return c.answer.then(asRepeat);
  }

  /**
   * A CompleteSnapshot of a snapshot not pending here. A repeat of the completion this daemon made: `completed`
   * if it asks the same (_differences), refused naming what differs otherwise. A snapshot begun with StartSnapshot
   * and completed with no completion remembered here (this daemon restarted since, or another daemon sharing the
   * store completed it): ChangedBlocksCount is judged by the manifest's `changedBlocks`; a Checksum cannot be (the
   * blocks' plaintext digests are kept in memory only, never in the store), so a repeat with one is refused, saying
   * so. Anything else is refused as not pending, as before.
   */
  private async _repeatOfCompleted(i: CompleteSnapshotInput, party: string): Promise<Record<string, unknown>> {
    const id = i.SnapshotId;
    const m = await this._manifest(id);
    const done = this.completedBy.get(id);
    // Begun with StartSnapshot: no source volume, and not a copy (types.ts).
    const begunHere = m.volumeId === '' && m.transferType === undefined && m.changedBlocks !== undefined;
    if (m.state === 'completed' && done) {
      const d = this._differences(i, done, party);
      if (d.length) throw validation('INVALID_PARAMETER_VALUE', `${id} is already completed, by a CompleteSnapshot with ChangedBlocksCount ${done.changedBlocksCount}; this one asks for something else (${d.join('; ')}), so it is refused`);
      return asRepeat({ Status: 'completed' });
    }
    if (m.state === 'completed' && begunHere) {
      if (i.ChangedBlocksCount !== m.changedBlocks) {
        throw validation('INVALID_PARAMETER_VALUE', `${id} is already completed, with ${m.changedBlocks} block(s) written; this CompleteSnapshot asks for something else (ChangedBlocksCount is ${i.ChangedBlocksCount}, not ${m.changedBlocks}), so it is refused`);
      }
      if (i.Checksum !== undefined) {
        throw validation('INVALID_PARAMETER_VALUE', `${id} is already completed, with ${m.changedBlocks} block(s) written, but this daemon holds no record of its completion's checksum (restarted since, or another daemon completed it), so the Checksum given cannot be checked: repeat without Checksum, or read the blocks back (ListSnapshotBlocks, GetSnapshotBlock)`);
      }
      return asRepeat({ Status: 'completed' });
    }
    // Why it is no longer pending, when the manifest says (a Timeout passed, the daemon restarted): the caller starts again.
    const why = m.state === 'error' && m.stateMessage ? `: ${m.stateMessage}` : '';
    throw validation('INVALID_SNAPSHOT_ID', `${id} is ${m.state}${m.volumeId ? ` (a snapshot of ${m.volumeId})` : ''}${why}; only a snapshot begun with StartSnapshot and still pending takes blocks (PutSnapshotBlock) or CompleteSnapshot`);
  }

  /**
   * On a store other hosts collect: a block this snapshot put may have been an orphan whose age another host's
   * collector read just before our put, its delete landing just after; that delete lands within the collector's
   * window of its read or never (gc.ts). So the check waits until the store's recheckMs (store-settings.ts, read at StartSnapshot) after our last put. The parent's
   * blocks are safe while its manifest exists (a collector frees them only after removing it, and our pending
   * manifest names them since StartSnapshot); a parent deleted meanwhile has them touched now and asked again
   * after the wait too (docs/architecture.md §13.3, rule 5). Returns those inherited indexes to check, by hash.
   */
  private async _pastOtherCollectors(p: Pending): Promise<Map<BlockHash, number[]>> {
    if (this.o.store.singleWriter) return new Map();
    const inherited = await this._inheritedIfParentGone(p);
    if (inherited.size) {
      const touch = this.o.store.touchBlock?.bind(this.o.store);
      // A block gone already fails the check below; one present is young from here on.
      if (touch) await inParallel([...inherited.keys()], STORE_REQUESTS_IN_FLIGHT, async (h) => void (await touch(h)));
      p.lastPutMs = performance.now();
    }
    const wait = p.lastPutMs + p.recheckMs - performance.now();
    if (wait > 0 && !this.closed) await this.recheckWaits.sleep(wait);
    // Shut down meanwhile: nothing more is written; the snapshot stays pending (recover() marks it at the next start).
    if (this.closed) throw internal(`the daemon shut down before CompleteSnapshot of ${p.manifest.snapshotId} could check its blocks; the snapshot stays pending`);
    return inherited;
  }

  /** The blocks `p` took from its parent (by hash: their indexes) when the parent's manifest is gone from the store; none while it is there. */
  private async _inheritedIfParentGone(p: Pending): Promise<Map<BlockHash, number[]>> {
    const inherited = new Map<BlockHash, number[]>();
    const parentId = p.manifest.parentSnapshotId;
    if (parentId && !(await this.o.store.getManifest(parentId))) {
      for (const [x, h] of p.blocks) if (!p.written.has(x)) inherited.set(h, [...(inherited.get(h) ?? []), x]);
    }
    return inherited;
  }

  /** Every block written to `p` (and `inherited`) and its header are in the store; InternalServerException naming the missing ones otherwise. */
  private async _checkPresent(p: Pending, inherited: Map<BlockHash, number[]> = new Map()): Promise<void> {
    const want = new Map<BlockHash, number[]>(inherited);
    for (const x of p.written.keys()) {
      const h = p.blocks.get(x)!;
      want.set(h, [...(want.get(h) ?? []), x]);
    }
    const missing: number[] = [];
    let header = true;
    await inParallel([...want.keys()], STORE_REQUESTS_IN_FLIGHT, async (h) => {
      if (!(await this.o.store.hasBlock(h))) missing.push(...want.get(h)!);
    });
    if (p.manifest.header) header = await this.o.store.hasBlock(p.manifest.header);
    if (missing.length === 0 && header) return;
    missing.sort((x, y) => x - y);
    const shown = missing.slice(0, 20).join(', ') + (missing.length > 20 ? `, … (${missing.length} in all)` : '');
    const what = [...(missing.length ? [`block(s) ${shown}`] : []), ...(header ? [] : ['its header'])].join(' and ');
    throw internal(`${p.manifest.snapshotId} cannot be completed: ${what} ${missing.length + (header ? 0 : 1) > 1 ? 'are' : 'is'} no longer in ${this.o.store.location}; ${header ? 'put those blocks again and complete' : 'start the snapshot again'} (the snapshot stays pending)`);
  }

  /** A save of the pending manifest within PENDING_MANIFEST_EVERY_MS, unless one is scheduled. */
  private _scheduleSave(p: Pending): void {
    p.dirty = true;
    if (p.saveTimer || p.completing) return;
    p.saveTimer = this.schedule(async () => {
      p.saveTimer = undefined;
      const run = p.saving.then(() => this._savePending(p));
      p.saving = run;
      await run;
    }, PENDING_MANIFEST_EVERY_MS);
  }

  private _cancelSave(p: Pending): void {
    p.saveTimer?.cancel();
    p.saveTimer = undefined;
  }

  /** Write the pending manifest naming the blocks put so far; a failure is logged and retried at the next interval. */
  private async _savePending(p: Pending): Promise<void> {
    if (p.completing || this.pending.get(p.manifest.snapshotId) !== p || !p.dirty) return;
    p.dirty = false;
    try {
      await this.o.store.putManifest({ ...p.manifest, blocks: [...p.blocks].sort((x, y) => x[0] - y[0]) });
    } catch (e) {
      this.o.log?.warn({ snapshotId: p.manifest.snapshotId, err: (e as Error).message }, 'pending manifest not saved; retrying at the next interval');
      if (this.pending.get(p.manifest.snapshotId) === p) this._scheduleSave(p);
    }
  }

  /** `p` left `pending` (completed or error): its timer and pins go (its ClientToken stays: a retry gets the original answer). */
  private _forget(p: Pending): void {
    this._cancelSave(p);
    p.headerPin?.release();
    for (const pin of p.pins.values()) pin.release();
    p.pins.clear();
  }

  // ---- helpers -------------------------------------------------------------

  /** A new data key under `keyId` for an unparented encrypted snapshot, or the parent's; the header for it. Fills kmsKeyId, wrappedKey, dataEncryptionKeyId. */
  private async _newKey(m: SnapshotManifest, parent: SnapshotManifest | undefined, keyId: string | undefined, sizeBytes: number, caller: Caller): Promise<{ bytes: Buffer; dataOffset: number }> {
    const via: Caller = { ...caller, viaService: this.viaService };
    let wrapped: { ciphertextBlob: string; keyArn: string; encryptionContext: Record<string, string> };
    if (parent) {
      if (!parent.wrappedKey) throw internal(`the encrypted parent ${parent.snapshotId} has no wrapped data key`);
      wrapped = parent.wrappedKey;
      m.dataEncryptionKeyId = parent.dataEncryptionKeyId ?? randomUUID();
    } else {
      if (keyId === undefined) throw internal(`no KMS key chosen for the encrypted snapshot ${m.snapshotId}`);
      const ctx = { 'aws:ebs:id': m.snapshotId };
      let gen: { CiphertextBlob: Uint8Array; KeyId: string };
      try {
        gen = await this.o.keys.generateDataKeyWithoutPlaintext({ KeyId: keyId, NumberOfBytes: VOLUME_KEY_BYTES, EncryptionContext: ctx }, via);
      } catch (e) {
        throw fromKmsError('GenerateDataKeyWithoutPlaintext', e);
      }
      wrapped = { ciphertextBlob: Buffer.from(gen.CiphertextBlob).toString('base64'), keyArn: gen.KeyId, encryptionContext: ctx };
      m.dataEncryptionKeyId = randomUUID();
    }
    m.wrappedKey = wrapped;
    m.kmsKeyId = wrapped.keyArn;
    // The LUKS2 digest needs the key once; unwrapping it also proves the caller may use it.
    let key: Uint8Array | undefined;
    try {
      key = await this._unwrap(m, via, 'StartSnapshot');
      // The child's blocks start as the parent's ciphertext: its key must be the one the parent's header names.
      if (parent) await this._checkKey(parent, key, 'StartSnapshot');
      return encryptedSnapshotHeader({
        snapshotId: m.snapshotId, sizeBytes, dataKey: key, keyArn: wrapped.keyArn,
        ciphertextBlob: Buffer.from(wrapped.ciphertextBlob, 'base64'), encryptionContext: wrapped.encryptionContext,
      });
    } finally {
      wipe(key); // best effort: the GC may have copied it
    }
  }

  private async _unwrap(m: SnapshotSummary, via: Caller, op: string): Promise<Uint8Array> {
    const w = m.wrappedKey;
    if (!w) throw internal(`${op}: the encrypted snapshot ${m.snapshotId} has no wrapped data key`);
    let key: Uint8Array;
    try {
      key = (await this.o.keys.decrypt({ CiphertextBlob: Buffer.from(w.ciphertextBlob, 'base64'), KeyId: w.keyArn, EncryptionContext: w.encryptionContext }, via)).Plaintext;
    } catch (e) {
      throw fromKmsError(`${op}: Decrypt of the data key of ${m.snapshotId}`, e);
    }
    if (key.length !== VOLUME_KEY_BYTES) {
      wipe(key);
      throw internal(`${op}: KMS returned a ${key.length}-byte data key for ${m.snapshotId}`);
    }
    return key;
  }

  /**
   * Run `fn` with the snapshot's XTS context, the key unwrapped for `caller`
   * by KMS once per caller and snapshot and kept for the key cache's TTL
   * (ebs-direct-key-cache.ts): every call is still authorized for `ebs:*`
   * by the transport; KMS is asked again after the TTL.
   */
  private async _withKey(m: SnapshotSummary, caller: Caller, op: string, fn: (x: XtsContext) => Promise<void> | void): Promise<void> {
    const w = m.wrappedKey;
    // Everything a key policy or grant may judge the caller on is in the id: another principal, access key, uid, address or
    // transport (aws:SecureTransport) unwraps for itself.
    const id = JSON.stringify([caller.arn, caller.principalId, caller.accessKeyId, caller.uid, caller.sourceIp, caller.secureTransport, m.snapshotId, w?.keyArn, w?.ciphertextBlob, m.header]);
    await this.dataKeys.use(id, async () => {
      const key = await this._unwrap(m, { ...caller, viaService: this.viaService }, op);
      try {
        await this._checkKey(m, key, op);
      } catch (e) {
        wipe(key); // refused: nobody else holds it (best effort, as every wipe in JS)
        throw e;
      }
      return key;
    }, fn);
  }

  /**
   * Precondition of any block read or written with `key`: it is the key the snapshot's LUKS2 header
   * digest names, as restore and attach require (restore.ts unwrapSnapshotKey, image-format.ts). The
   * manifest's wrapped key and header come from the store; one altered there (another snapshot's
   * wrapped key, another header) would otherwise decrypt blocks to wrong bytes that GetSnapshotBlock
   * hands out with a matching Checksum, or encrypt a child's blocks under a key its parent's are not in.
   */
  private async _checkKey(m: SnapshotSummary, key: Uint8Array, op: string): Promise<void> {
    const where = `${m.snapshotId} in ${this.o.store.location}`;
    if (!m.header) throw internal(`${op}: the encrypted snapshot ${where} names no header, so its data key cannot be checked; no block is read or written with it`);
    let v: Luks2Volume;
    try {
      const h = await this._header(m);
      if (!h) throw new Error('it is not a LUKS2 header');
      v = h;
    } catch (e) {
      throw internal(`${op}: the header of ${where} cannot be read to check its data key: ${(e as Error)?.message ?? String(e)}`, e);
    }
    try {
      verifyVolumeKey(v, key);
    } catch (e) {
      throw internal(`${op}: the data key KMS unwrapped for ${where} does not match the LUKS2 digest of its header: the manifest's wrapped key or header is not the snapshot's (altered in the store); no block is read or written with it`, e);
    }
  }

  /**
   * The snapshot's header as its manifest says it is (store-checked against its hash): an encrypted
   * snapshot's parsed LUKS2 header, or null for an unencrypted one's plaintext-image marker, as a restore
   * requires them (restore.ts checkedSnapshot). Kept by kind and hash; a failed read or parse is not kept.
   */
  private _header(m: SnapshotSummary): Promise<Luks2Volume | null> {
    const hash = m.header!;
    const id = `${m.encrypted ? 'luks2' : 'plain'}:${hash}`;
    const kept = this.parsedHeaders.get(id);
    if (kept) {
      this.parsedHeaders.delete(id); // re-inserted: most recently used last
      this.parsedHeaders.set(id, kept);
      return kept;
    }
    const loading = (async () => {
      // Read only if no larger than the manifest says (the store refuses a larger object unread), hashed by the store.
      const bytes = await this.o.store.getBlock(hash, m.dataOffset);
      if (bytes.length !== m.dataOffset) throw new Error(`its header is ${bytes.length} bytes, the manifest says the data starts at ${m.dataOffset}`);
      if (!m.encrypted) {
        parsePlainHeader(bytes, `snapshot ${m.snapshotId} header`);
        return null;
      }
      const v = parseLuks2Header(bytes, `snapshot ${m.snapshotId} header`).volume;
      if (v.dataOffset !== m.dataOffset) throw new Error(`its LUKS2 data offset ${v.dataOffset} is not the manifest's ${m.dataOffset}`);
      return v;
    })();
    this._rememberHeader(id, loading);
    // A failed read is not kept: the next call reads again.
    loading.catch(() => { if (this.parsedHeaders.get(id) === loading) this.parsedHeaders.delete(id); });
    return loading;
  }

  /**
   * Precondition of serving an unencrypted snapshot's blocks as they are stored: its header is the
   * plaintext-image marker, as a restore requires. A manifest altered in the store to say `encrypted:
   * false` of a snapshot whose header is LUKS2 would otherwise have GetSnapshotBlock hand out its
   * ciphertext as the block's data.
   */
  private async _checkPlain(m: SnapshotSummary, op: string): Promise<void> {
    const where = `${m.snapshotId} in ${this.o.store.location}`;
    if (!m.header) throw internal(`${op}: the unencrypted snapshot ${where} names no header; no block is read`);
    try {
      await this._header(m);
    } catch (e) {
      throw internal(`${op}: the manifest of ${where} says it is unencrypted, but its header is not an unencrypted snapshot's (${(e as Error)?.message ?? String(e)}); no block is read`, e);
    }
  }

  private _rememberHeader(id: string, v: Promise<Luks2Volume | null>): void {
    this.parsedHeaders.delete(id);
    this.parsedHeaders.set(id, v);
    while (this.parsedHeaders.size > PARSED_HEADERS_MAX) this.parsedHeaders.delete(this.parsedHeaders.keys().next().value!);
  }

  private async _manifest(id: string): Promise<SnapshotManifest> {
    // The API takes any `snap-<hex>` up to 64 characters; ebsd's ids are `snap-` + 17 hex, so another is no snapshot here.
    if (!isSnapshotId(id)) throw notFound(id);
    const m = await refusedAsError(id, () => this.o.store.getManifest(id));
    if (!m) throw notFound(id);
    return m;
  }

  /** A snapshot the read APIs may serve: "accessed only if it has a completed status" (EBS direct APIs FAQ); from the manifest cache. */
  private async _completed(id: string): Promise<Completed> {
    await this._sweep();
    if (!isSnapshotId(id)) throw notFound(id);
    const s = await refusedAsError(id, () => this.manifests.get(id));
    if (!s) throw notFound(id);
    if (!s.blocks) throw validation('INVALID_SNAPSHOT_ID', `${id} is ${s.summary.state}; only a completed snapshot can be read`);
    return { summary: s.summary, blocks: s.blocks };
  }

  /** A completed snapshot's whole manifest read from the store, not the cache (StartSnapshot's parent, read again after its pin). */
  private async _completedInStore(id: string): Promise<SnapshotManifest> {
    await this._sweep();
    const m = await this._manifest(id);
    if (m.state !== 'completed') throw validation('INVALID_SNAPSHOT_ID', `${id} is ${m.state}; only a completed snapshot can be read`);
    return m;
  }

  private async _pending(id: string): Promise<Pending> {
    await this._sweep();
    const p = this.pending.get(id);
    if (p && !p.completing) return p;
    if (p) throw validation('INVALID_SNAPSHOT_ID', `${id} is being completed (CompleteSnapshot in progress): it takes no more blocks`);
    const m = await this._manifest(id);
    // Why it is no longer pending, when the manifest says (a Timeout passed, the daemon restarted): the caller starts again.
    const why = m.state === 'error' && m.stateMessage ? `: ${m.stateMessage}` : '';
    throw validation('INVALID_SNAPSHOT_ID', `${id} is ${m.state}${m.volumeId ? ` (a snapshot of ${m.volumeId})` : ''}${why}; only a snapshot begun with StartSnapshot and still pending takes blocks (PutSnapshotBlock) or CompleteSnapshot`);
  }

  /**
   * A timer for the earliest Timeout deadline, so an abandoned upload becomes
   * `error` (and lets go of its blocks) without waiting for another EBS call.
   * Armed at StartSnapshot and again after each sweep it runs; a put moves a
   * deadline later only, so the armed timer may fire early and re-arms.
   */
  private _armSweep(): void {
    if (this.closed) return;
    let earliest = Infinity;
    for (const p of this.pending.values()) if (!p.completing && p.deadline < earliest) earliest = p.deadline;
    if (earliest === Infinity || (this.sweepTimer && this.sweepTimer.at <= earliest)) return;
    this.sweepTimer?.call.cancel();
    const armed: { at: number; call: ScheduledCall } = {
      at: earliest,
      call: this.sweepSchedule(async () => {
        if (this.sweepTimer === armed) this.sweepTimer = undefined;
        try {
          await this._sweep();
        } catch (e) {
          this.o.log?.warn({ err: (e as Error).message }, 'StartSnapshot Timeout sweep failed; retried at the next deadline');
        }
        this._armSweep();
      }, Math.min(MAX_TIMER_MS, Math.max(SWEEP_RETRY_MS, earliest - this.now()))),
    };
    this.sweepTimer = armed;
  }

  /** Pending snapshots past their Timeout become `error` (StartSnapshot, Timeout). */
  private async _sweep(): Promise<void> {
    const now = this.now();
    for (const [id, p] of this.pending) {
      if (now < p.deadline || p.inflight.size > 0 || p.completing) continue;
      this.pending.delete(id);
      this._forget(p); // its blocks are orphans now, for the collector
      await p.saving; // a pending save in progress lands before `error`
      try {
        await this.o.store.putManifest({ ...p.manifest, state: 'error', stateMessage: 'CompleteSnapshot did not come within the StartSnapshot Timeout' });
      } catch (e) {
        // The marker stays: the snapshot is written `error` by the markers' retries (or the next start).
        this.o.log?.warn({ snapshotId: id, err: (e as Error).message }, 'snapshot timed out before CompleteSnapshot; its error manifest could not be written yet');
        (await this._markers()).retry(id);
        continue;
      }
      await this._unmark(id);
      this.o.log?.warn({ snapshotId: id }, 'snapshot timed out before CompleteSnapshot: now error');
    }
  }

  private _start(i: { NextToken?: string; StartingBlockIndex?: number }, scope: string): number {
    // "If you specify NextToken, then StartingBlockIndex is ignored."
    if (i.NextToken === undefined) return i.StartingBlockIndex ?? 0;
    const next = this.tokens.openPage(i.NextToken, scope, this.now());
    if (next === undefined) throw validation('INVALID_PAGE_TOKEN', 'NextToken is not a valid, unexpired token of this listing: start the listing again');
    return next;
  }

  /**
   * Same data key (encrypted), or for unencrypted snapshots the same volume
   * or a common ancestor within MAX_CHAIN lineage links (one the other's
   * ancestor, or siblings of one parent): "snapshots of the same
   * volume/snapshot lineage" (EBS API reference, ListChangedBlocks). A
   * snapshot's links are its parent and the snapshot its volume was restored
   * from (lineageLinks), both walked breadth-first, so a restored volume's
   * snapshots are of its source's lineage even after the snapshot between
   * them is deleted. Links and answers are kept (ebs-direct-manifests.ts): a
   * completed snapshot's links never change.
   */
  private async _sameLineage(a: SnapshotSummary, b: SnapshotSummary): Promise<boolean> {
    if (a.encrypted !== b.encrypted) return false;
    if (a.encrypted) return a.dataEncryptionKeyId !== undefined && a.dataEncryptionKeyId === b.dataEncryptionKeyId;
    if (a.volumeId !== '' && a.volumeId === b.volumeId) return true;
    return this.manifests.related(a.snapshotId, b.snapshotId, async () => {
      // A snapshot named but since deleted still joins those naming it: the walk reaches its id and stops there.
      const ancestors = new Set<string>();
      const pair = [a.snapshotId, b.snapshotId] as const;
      await this._walkLineage(a.snapshotId, ancestors, () => false, pair);
      return this._walkLineage(b.snapshotId, new Set<string>(), (id) => ancestors.has(id), pair);
    });
  }

  /**
   * Breadth-first up the lineage links from `start`, each snapshot once and at most MAX_CHAIN in `seen`; true as soon as `found` says so.
   * A snapshot on the way whose manifest is refused (state error) ends the walk as a named one does (refusedAsError): ValidationException
   * INVALID_SNAPSHOT_ID, naming it, the two `compared`, and why, rather than an InternalServerException a client would retry.
   */
  private async _walkLineage(start: string, seen: Set<string>, found: (id: string) => boolean, compared: readonly [string, string]): Promise<boolean> {
    const queue = [start];
    seen.add(start);
    for (let at = 0; at < queue.length; at++) {
      const id = queue[at]!;
      if (found(id)) return true;
      let links: readonly string[] | undefined;
      try {
        links = await this.manifests.linksOf(id);
      } catch (e) {
        const r = refusedSnapshot(id, e, '');
        if (!r) throw e;
        throw validation('INVALID_SNAPSHOT_ID', `${compared[0]} and ${compared[1]} cannot be compared: ${id}, in the lineage between them, is in state error and cannot be read: ${r.stateMessage}`);
      }
      for (const next of links ?? []) {
        if (seen.has(next) || seen.size >= MAX_CHAIN) continue;
        seen.add(next);
        queue.push(next);
      }
    }
    return false;
  }
}

function sha256(b: Uint8Array): Buffer {
  return createHash('sha256').update(b).digest();
}

/** Decrypt a block in place; an all-zero ciphertext sector is a hole and reads as zeros (docs/format.md). */
async function decryptBlock(x: XtsContext, data: Buffer, blockIndex: number): Promise<void> {
  const first = blockIndex * SECTORS_PER_BLOCK;
  let run = -1;
  for (let s = 0; s <= SECTORS_PER_BLOCK; s++) {
    const hole = s < SECTORS_PER_BLOCK && data.subarray(s * SECTOR_SIZE, (s + 1) * SECTOR_SIZE).equals(ZERO_SECTOR);
    if (s < SECTORS_PER_BLOCK && !hole) {
      if (run < 0) run = s;
      continue;
    }
    if (run >= 0) await x.decrypt(data.subarray(run * SECTOR_SIZE, s * SECTOR_SIZE), (first + run) * 8, XTS_OPTS);
    run = -1;
  }
}

/**
 * A read of `id`'s manifest; one this daemon refuses to trust (refused-snapshot.ts) is a snapshot in
 * state `error`, answered as any snapshot the call cannot use (ValidationException INVALID_SNAPSHOT_ID,
 * 400), not as a failure of ours (InternalServerException, which the SDKs retry).
 */
async function refusedAsError<T>(id: string, read: () => Promise<T>): Promise<T> {
  try {
    return await read();
  } catch (e) {
    const r = refusedSnapshot(id, e, '');
    if (!r) throw e;
    throw validation('INVALID_SNAPSHOT_ID', `${id} is in state error and cannot be used: ${r.stateMessage}`);
  }
}
