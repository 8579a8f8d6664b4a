import { createHash } from 'node:crypto';
import type { Caller } from '../kms/types.js';
import type { StartSnapshotInput } from './ebs-direct-input.js';
import { SNAPSHOT_BLOCK_BYTES, type SnapshotSummary } from './types.js';

/**
 * StartSnapshot's ClientTokens (docs/architecture.md §15, "Pending
 * snapshots"): a retry with the same token and the same request answers the
 * original result; the same token with another request, or from another
 * caller, is ConflictException. A token is kept in memory here and, for
 * the snapshot it began, in that snapshot's manifest (`clientToken`, written
 * with the `pending` manifest and kept in the `completed` or `error` one), so
 * a restarted daemon rebuilds the map from the store (load) and a retry
 * across the restart still gets the first snapshot, never a second one.
 */

/** Tokens remembered. An entry keeps the request's SHA-256 and the answer (up to 50 tags: tens of KB at most), so the map stays within tens of MB. */
export const MAX_CLIENT_TOKENS = 1_000;

/** A token's entry: the digest of the request it came with, its answer (a promise: a retry during the first call gets the same snapshot), the snapshot once begun. */
export interface ClientTokenEntry {
  request: string;
  response: Promise<Record<string, unknown>>;
  snapshotId?: string;
}

/**
 * What a ClientToken stands for: the request as parsed and the caller's ARN,
 * SHA-256, base64. The caller is in it, so another caller's retry of the
 * same token never reaches this caller's snapshot (ConflictException).
 */
export function startSnapshotDigest(i: StartSnapshotInput, caller: Pick<Caller, 'arn'>): string {
  return createHash('sha256').update(JSON.stringify({ ...i, caller: caller.arn })).digest('base64');
}

/**
 * StartSnapshot's answer for the snapshot `m` began, as it was first given:
 * `Status` is `pending`, the status StartSnapshot answers ("the result of the
 * original request is returned", EBS user guide, "Ensure idempotency in
 * StartSnapshot API requests"). Built from the manifest alone, so the same at
 * the start and rebuilt after a restart (an `error` manifest has no parent
 * link: the token's record keeps it).
 */
export function startSnapshotAnswer(m: SnapshotSummary): Record<string, unknown> {
  const parent = m.parentSnapshotId ?? m.clientToken?.parentSnapshotId;
  return {
    SnapshotId: m.snapshotId, OwnerId: m.ownerId, Status: 'pending', StartTime: m.startTime,
    VolumeSize: m.volumeSize, BlockSize: SNAPSHOT_BLOCK_BYTES, Description: m.description, Tags: m.tags,
    ...(parent !== undefined ? { ParentSnapshotId: parent } : {}),
    ...(m.encrypted ? { KmsKeyArn: m.kmsKeyId } : {}),
    SseType: m.encrypted ? 'sse-ebs' : 'none',
  };
}

/**
 * The map, bounded: past `max` the oldest token of a snapshot no longer
 * pending is forgotten first (a retry that late starts a new snapshot); a
 * pending snapshot's token stays, so a retry of a long upload's start never
 * makes a second one.
 */
export class ClientTokens {
  private readonly entries = new Map<string, ClientTokenEntry>();

  constructor(private readonly max: number = MAX_CLIENT_TOKENS) {
    if (!Number.isSafeInteger(max) || max < 1) throw new RangeError(`max: a positive integer, got ${String(max)}`);
  }

  get size(): number {
    return this.entries.size;
  }

  get(token: string): ClientTokenEntry | undefined {
    return this.entries.get(token);
  }

  /** Remember `token`; past the bound the oldest entry whose snapshot is known and not `pending` goes first. */
  add(token: string, entry: ClientTokenEntry, pending: (snapshotId: string) => boolean): void {
    if (this.entries.size >= this.max) {
      for (const [t, e] of this.entries) {
        if (e.snapshotId === undefined || pending(e.snapshotId)) continue;
        this.entries.delete(t);
        break;
      }
    }
    this.entries.set(token, entry);
  }

  /** Forget `token` if it still maps to `entry` (its start failed, its snapshot was deleted). */
  forget(token: string, entry: ClientTokenEntry): void {
    if (this.entries.get(token) === entry) this.entries.delete(token);
  }

  /**
   * The tokens recorded in `manifests` (the store's, at open): every
   * `pending` snapshot's, then the newest others (by startTime) up to the
   * bound. A token already known here keeps its entry; of two manifests
   * naming one token, the newer wins. Entries are added oldest first, so the
   * bound forgets the oldest first. Returns how many were added.
   */
  load(manifests: Iterable<SnapshotSummary>): number {
    const pending: SnapshotSummary[] = [];
    const rest: SnapshotSummary[] = [];
    for (const m of manifests) if (m.clientToken) (m.state === 'pending' ? pending : rest).push(m);
    const newestFirst = (a: SnapshotSummary, b: SnapshotSummary): number => Date.parse(b.startTime) - Date.parse(a.startTime);
    rest.sort(newestFirst);
    const room = Math.max(0, this.max - this.entries.size - pending.length);
    const chosen = [...pending, ...rest.slice(0, room)].sort(newestFirst);
    const seen = new Set<string>();
    const add: SnapshotSummary[] = [];
    for (const m of chosen) {
      const token = m.clientToken!.token;
      if (seen.has(token) || this.entries.has(token)) continue;
      seen.add(token);
      add.push(m);
    }
    for (const m of add.reverse()) {
      this.entries.set(m.clientToken!.token, { request: m.clientToken!.request, response: Promise.resolve(startSnapshotAnswer(m)), snapshotId: m.snapshotId });
    }
    return add.length;
  }
}
