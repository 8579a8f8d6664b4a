import type { SnapshotManifest, SnapshotStore, SnapshotSummary } from './types.js';
import { SnapshotError } from './errors.js';
import { isRefused, type ShownSnapshot } from './refused-snapshot.js';
import { filterMatcher, FilterTooCostlyError, type FilterBudget } from '../util/ec2-filter.js';

/**
 * EC2's Snapshot shape (DescribeSnapshots, CreateSnapshot's response) from a
 * manifest, DescribeSnapshots' filters, and its paging (Amazon EC2 API
 * Reference: Snapshot, DescribeSnapshots).
 */
export interface Ec2Snapshot {
  SnapshotId: string;
  VolumeId: string;
  State: SnapshotManifest['state'];
  StateMessage?: string;
  StartTime: string;
  CompletionTime?: string;
  /** `NN%`. */
  Progress: string;
  OwnerId: string;
  Description: string;
  VolumeSize: number;
  Encrypted: boolean;
  KmsKeyId?: string;
  DataEncryptionKeyId?: string;
  Tags: { Key: string; Value: string }[];
  StorageTier: 'standard';
  /** A copy's only (SnapshotManifest.transferType). */
  TransferType?: 'standard';
}

/**
 * The VolumeId EC2 shows for a snapshot made from no volume of this account
 * (EBS direct StartSnapshot) and for a copy (CopySnapshot): the API reference
 * calls it "an arbitrary volume ID that should not be used for any purpose";
 * EC2 answers `vol-ffffffff`. Manifests keep `''` (no volume), so lineage
 * checks never match on it; a copy's manifest keeps its source's volume for
 * lineage (copy.ts), shown as EC2 shows it, so a `volume-id` filter (a script
 * pruning a volume's old snapshots) never finds the copies made of them.
 */
export const NO_VOLUME_ID = 'vol-ffffffff';

/** EC2's Snapshot shape of a RefusedSnapshot: what is known without trusting the manifest, nothing else. */
export type Ec2RefusedSnapshot = Pick<Ec2Snapshot, 'SnapshotId' | 'OwnerId' | 'StorageTier'> & { State: 'error'; StateMessage: string };

export function toEc2Snapshot(m: SnapshotSummary): Ec2Snapshot;
export function toEc2Snapshot(m: ShownSnapshot): Ec2Snapshot | Ec2RefusedSnapshot;
export function toEc2Snapshot(m: ShownSnapshot): Ec2Snapshot | Ec2RefusedSnapshot {
  if (isRefused(m)) return { SnapshotId: m.snapshotId, State: 'error', StateMessage: m.stateMessage, OwnerId: m.ownerId, StorageTier: 'standard' };
  return {
    SnapshotId: m.snapshotId,
    VolumeId: m.transferType !== undefined ? NO_VOLUME_ID : m.volumeId || NO_VOLUME_ID,
    State: m.state,
    ...(m.stateMessage ? { StateMessage: m.stateMessage } : {}),
    StartTime: m.startTime,
    ...(m.completionTime ? { CompletionTime: m.completionTime } : {}),
    Progress: `${m.progress}%`,
    OwnerId: m.ownerId,
    Description: m.description,
    VolumeSize: m.volumeSize,
    Encrypted: m.encrypted,
    // EC2 omits KmsKeyId for an unencrypted snapshot.
    ...(m.encrypted && m.kmsKeyId ? { KmsKeyId: m.kmsKeyId } : {}),
    ...(m.dataEncryptionKeyId ? { DataEncryptionKeyId: m.dataEncryptionKeyId } : {}),
    Tags: m.tags.map((t) => ({ Key: t.Key, Value: t.Value })),
    StorageTier: 'standard',
    ...(m.transferType ? { TransferType: m.transferType } : {}),
  };
}

/**
 * DescribeSnapshots filter names ebsd serves (`tag:<key>` besides): EC2's (Amazon EC2 API
 * Reference, DescribeSnapshots, Filters), and `kms-key-id`, ebsd's own.
 */
export const SNAPSHOT_FILTER_NAMES: ReadonlySet<string> = new Set([
  'description', 'encrypted', 'owner-alias', 'owner-id', 'progress', 'snapshot-id', 'start-time', 'status', 'storage-tier', 'tag-key',
  'transfer-type', 'volume-id', 'volume-size', 'kms-key-id',
]);

export interface SnapshotFilter {
  Name: string;
  Values: string[];
}

/** True when `m` passes every filter (filters AND, values of one filter OR, as EC2). */
export function matchesFilters(m: ShownSnapshot, filters: readonly SnapshotFilter[], budget?: FilterBudget): boolean {
  try {
    return matchesAll(m, filters, budget);
  } catch (e) {
    if (e instanceof FilterTooCostlyError) throw new SnapshotError('SNAPSHOT_INVALID_PARAMETER', e.message, { awsName: 'InvalidParameterValue' });
    throw e;
  }
}

function matchesAll(m: ShownSnapshot, filters: readonly SnapshotFilter[], budget: FilterBudget | undefined): boolean {
  // A refused snapshot has only its id, state, owner and tier: a filter on anything else matches no value of it.
  const s: Partial<Ec2Snapshot> = toEc2Snapshot(m);
  return filters.every((f) => {
    const match = filterMatcher(f.Values, budget);
    const ok = (v: string | undefined): boolean => v !== undefined && match(v);
    switch (f.Name) {
      case 'description': return ok(s.Description);
      case 'encrypted': return s.Encrypted !== undefined && ok(String(s.Encrypted));
      // An alias from Amazon's list (`amazon`) for snapshots Amazon owns: an ebsd snapshot has none, so it matches nothing.
      case 'owner-alias': return false;
      case 'owner-id': return ok(s.OwnerId);
      case 'progress': return ok(s.Progress);
      case 'snapshot-id': return ok(s.SnapshotId);
      case 'start-time': return ok(s.StartTime);
      case 'status': return ok(s.State);
      case 'storage-tier': return ok(s.StorageTier);
      case 'tag-key': return (s.Tags ?? []).some((t) => ok(t.Key));
      // TransferType, which EC2 shows on copies only: a snapshot without it matches no value, as owner-alias.
      case 'transfer-type': return s.TransferType !== undefined && ok(s.TransferType);
      case 'volume-id': return ok(s.VolumeId);
      case 'volume-size': return s.VolumeSize !== undefined && ok(String(s.VolumeSize));
      case 'kms-key-id': return s.Encrypted !== undefined && ok(s.KmsKeyId ?? '');
      default:
        if (f.Name.startsWith('tag:')) return (s.Tags ?? []).some((t) => t.Key === f.Name.slice(4) && ok(t.Value));
        throw new SnapshotError('SNAPSHOT_INVALID_PARAMETER', `The filter '${f.Name}' is invalid`, { awsName: 'InvalidParameterValue' });
    }
  });
}

/** One page, ordered by SnapshotId; NextToken is the last id returned. */
export function page<T extends { SnapshotId: string }>(all: T[], maxResults: number | undefined, nextToken: string | undefined): { Snapshots: T[]; NextToken?: string } {
  if (maxResults === undefined && nextToken === undefined) return { Snapshots: all };
  const sorted = [...all].sort((x, y) => (x.SnapshotId < y.SnapshotId ? -1 : x.SnapshotId > y.SnapshotId ? 1 : 0));
  const from = nextToken === undefined ? 0 : sorted.findIndex((v) => v.SnapshotId > nextToken);
  const out = from < 0 ? [] : sorted.slice(from, from + (maxResults ?? 1000));
  const more = from >= 0 && from + out.length < sorted.length;
  return { Snapshots: out, ...(more ? { NextToken: out[out.length - 1]!.SnapshotId } : {}) };
}

/**
 * The store as DescribeSnapshots lists it: a manifest that cannot be read (a
 * shared store holds what any writer put there) is reported to `onCorrupt`
 * (the daemon logs it) and to the caller's own `onCorrupt`, if it gave one
 * (SnapshotManager shows it as a RefusedSnapshot), and left out of the
 * manifests, so one bad object does not fail every caller's listing.
 * Everything else is the store's; the collector keeps the store itself,
 * whose listing throws on such a manifest (no sweep on a partial mark).
 */
export function describingStore(store: SnapshotStore, onCorrupt: (snapshotId: string, err: SnapshotError) => void): SnapshotStore {
  type Opts = { onCorrupt?: (snapshotId: string, err: SnapshotError) => void } | undefined;
  const both = (opts: Opts) => ({
    onCorrupt: (id: string, err: SnapshotError) => {
      onCorrupt(id, err);
      opts?.onCorrupt?.(id, err);
    },
  });
  return new Proxy(store, {
    get(target, prop) {
      if (prop === 'listManifests') return (opts: Opts) => target.listManifests(both(opts));
      if (prop === 'listManifestSummaries') return (opts: Opts) => target.listManifestSummaries(both(opts));
      const v: unknown = Reflect.get(target, prop, target);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}
