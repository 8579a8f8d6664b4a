import { createHash } from 'node:crypto';
import { ManifestMacRefused, SnapshotError } from './errors.js';
import type { SnapshotSummary } from './types.js';

/**
 * A snapshot whose manifest the store holds but this daemon refuses to trust (SNAPSHOT_CORRUPT: a
 * manifest MAC that is missing, malformed or does not verify, docs/architecture.md §13.5; a
 * manifest that is not valid JSON, too large or out of range, §13): shown as EC2 shows a snapshot
 * that cannot be used, in state `error`. Nothing is taken from the manifest but its id (the name it
 * is stored under); the owner is this account, whose store it is.
 */
export interface RefusedSnapshot {
  snapshotId: string;
  ownerId: string;
  state: 'error';
  stateMessage: string;
  refused: true;
}

/** What DescribeSnapshots lists: a manifest's summary, or a snapshot whose manifest is refused. */
export type ShownSnapshot = SnapshotSummary | RefusedSnapshot;

export function isRefused(m: ShownSnapshot): m is RefusedSnapshot {
  return (m as Partial<RefusedSnapshot>).refused === true;
}

/**
 * The StateMessage of a refused manifest: which check failed, in words of ours (the error's own
 * message may quote the manifest, the key it names, which is not shown as the snapshot's).
 */
function refusedStateMessage(err: SnapshotError): string {
  const head = 'The snapshot\'s manifest failed verification';
  const tail = 'nothing in it is trusted, so the snapshot cannot be used; delete it (docs/architecture.md §13.5)';
  if (err instanceof ManifestMacRefused) {
    switch (err.refusal) {
      case 'missing': return `${head}: it has no manifest MAC, and this daemon trusts only signed manifests; ${tail}`;
      case 'malformed': return `${head}: its manifest MAC is malformed; ${tail}`;
      case 'invalid': return `${head}: its manifest MAC does not verify (the manifest was changed, moved from another snapshot id, or signed with another key); ${tail}`;
      case 'uncanonical': return `${head}: its content cannot be put in canonical form for the manifest MAC; ${tail}`;
    }
  }
  return `The snapshot's manifest cannot be read (not valid JSON, too large, or a field out of range; the daemon log names it): nothing in it is trusted, so the snapshot cannot be used; delete it (docs/architecture.md §13)`;
}

/** `err`, met reading `snapshotId`'s manifest, as the snapshot it leaves: a RefusedSnapshot for SNAPSHOT_CORRUPT, undefined for any other error (a store or KMS that failed). */
export function refusedSnapshot(snapshotId: string, err: unknown, ownerId: string): RefusedSnapshot | undefined {
  if (!(err instanceof SnapshotError) || err.code !== 'SNAPSHOT_CORRUPT') return undefined;
  return { snapshotId, ownerId, state: 'error', stateMessage: refusedStateMessage(err), refused: true };
}

/**
 * What CreateVolume and CopySnapshot answer for a refused source: EC2's IncorrectState (a client
 * error, 400: the SDKs do not retry it), as for any snapshot not `completed` (restore.ts).
 */
export function refusedSourceError(r: RefusedSnapshot, cause: unknown): SnapshotError {
  return new SnapshotError('SNAPSHOT_INCORRECT_STATE', `Snapshot '${r.snapshotId}' is in state 'error'; only a completed snapshot can be restored or copied: ${r.stateMessage}`, { awsName: 'IncorrectState', cause });
}

/** (snapshot, content or error) pairs a daemon remembers having warned of: a store with more bad manifests warns again for the oldest. */
export const REFUSED_WARNINGS_MAX = 4096;

/**
 * The warning for a refused manifest, given once per daemon life for each (snapshot id, what was
 * refused: the content's digest when the MAC check got that far, the error otherwise), not once per
 * DescribeSnapshots that lists it: a listing polled every few seconds would otherwise repeat it for
 * ever. A manifest rewritten with other bad content, or refused for another reason, is warned of
 * again. Bounded (REFUSED_WARNINGS_MAX, the oldest forgotten first); each pair is kept as a hash.
 */
export class RefusedManifestWarnings {
  private readonly seen = new Set<string>();

  constructor(private readonly warn: (snapshotId: string, err: SnapshotError) => void, private readonly max = REFUSED_WARNINGS_MAX) {}

  report(snapshotId: string, err: SnapshotError): void {
    const what = err instanceof ManifestMacRefused && err.digest ? `digest\0${err.digest}` : `error\0${err.code}\0${err.message}`;
    const k = createHash('sha256').update(`${snapshotId}\0${what}`).digest('base64');
    if (this.seen.has(k)) return;
    this.seen.add(k);
    if (this.seen.size > this.max) this.seen.delete(this.seen.values().next().value!);
    this.warn(snapshotId, err);
  }
}
