/**
 * The prune record (docs/kms-format.md §Audit log, Retention): `audit/pruned.json`, written when
 * `ebsd audit prune` removes the oldest sealed log files and the digests that cover only them. It
 * says where the kept log begins, the sequence of the last event removed, that event's line hash
 * and the payload hash of the last digest removed, so that `verifyAuditLog` takes the chain up at
 * the first event kept, and the first digest kept at its link to the removed one, as if nothing
 * before them had ever been written. It is signed inside the HSM by the audit key, like the digests
 * and the seal mark, with a prefix of its own, so a removal nobody signed (files deleted by hand) is
 * still reported as events removed, and a record cannot pass for a digest or a mark.
 */
import type { KeyObject } from 'node:crypto';
import { join } from 'node:path';
import type { Hsm } from '../hsm/hsm-client.js';
import { readSignedRecord, writeSignedRecord, type SignedKind } from './signed-record.js';

export const PRUNE_FILE = 'pruned.json';

export interface PruneRecord {
  pruneVersion: 1;
  /** Sequence of the last event removed; the kept log begins at the next one. */
  prunedThrough: number;
  /** SHA-256 hex of that event's line: the first kept event's previousEventHash. */
  lastEventHash: string;
  /** SHA-256 hex of the payload of the digest that sealed through `prunedThrough`: the first kept digest's previousDigestHash. */
  lastDigestHash: string;
  /** The request: events before this time (ISO 8601) could go. */
  before: string;
  /** When the removal was decided (ISO 8601). */
  time: string;
  publicKeyFingerprint: string;
  signature?: string;
}

const PRUNE: SignedKind<PruneRecord> = {
  what: 'prune record',
  prefix: 'ebsd-audit-prune/v1\n',
  badMember: (r) => r.pruneVersion !== 1 ? 'pruneVersion' : !(Number.isSafeInteger(r.prunedThrough) && (r.prunedThrough as number) >= 0) ? 'prunedThrough'
    : typeof r.lastEventHash !== 'string' ? 'lastEventHash' : typeof r.lastDigestHash !== 'string' ? 'lastDigestHash' : undefined,
};

/** Sign `r` in the HSM and replace `audit/pruned.json` (temp file, fsync, rename, fsync dir). */
export function writePruneRecord(auditDir: string, hsm: Hsm, r: Omit<PruneRecord, 'pruneVersion' | 'signature'>): Promise<PruneRecord> {
  return writeSignedRecord(PRUNE, join(auditDir, PRUNE_FILE), hsm, { pruneVersion: 1, ...r });
}

/**
 * The prune record of `auditDir`: `{}` when there is none, `{ error }` when it is not a record
 * validly signed by `pub` (fingerprint `fp`).
 */
export function readPruneRecord(auditDir: string, pub: KeyObject, fp: string): { record?: PruneRecord; error?: string } {
  return readSignedRecord(PRUNE, join(auditDir, PRUNE_FILE), pub, fp);
}
