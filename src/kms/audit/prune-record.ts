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
import { verify as edVerify, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { atomicWrite } from '../../util/atomic-write.js';
import type { Hsm } from '../hsm/hsm-client.js';

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

/** The bytes a prune record's signature covers: a fixed prefix and the record without its signature. */
export function prunePayload(r: PruneRecord): string {
  const { signature: _s, ...rest } = r;
  return 'ebsd-audit-prune/v1\n' + JSON.stringify(rest);
}

/** Sign `r` in the HSM and replace `audit/pruned.json` (temp file, fsync, rename, fsync dir). */
export async function writePruneRecord(auditDir: string, hsm: Hsm, r: Omit<PruneRecord, 'pruneVersion' | 'signature'>): Promise<PruneRecord> {
  const record: PruneRecord = { pruneVersion: 1, ...r };
  const { signature } = await hsm.call({ op: 'signAudit', data: Buffer.from(prunePayload(record)) });
  record.signature = Buffer.from(signature).toString('base64');
  await atomicWrite(join(auditDir, PRUNE_FILE), JSON.stringify(record, null, 2) + '\n');
  return record;
}

/**
 * The prune record of `auditDir`: `{}` when there is none, `{ error }` when it is not a record
 * validly signed by `pub` (fingerprint `fp`).
 */
export function readPruneRecord(auditDir: string, pub: KeyObject, fp: string): { record?: PruneRecord; error?: string } {
  const path = join(auditDir, PRUNE_FILE);
  let text: string;
  try { text = readFileSync(path, 'utf8'); } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {};
    return { error: `prune record ${path} is unreadable (${(e as NodeJS.ErrnoException).code})` };
  }
  let r: PruneRecord;
  try { r = JSON.parse(text) as PruneRecord; } catch {
    return { error: `prune record ${path} is not valid JSON` };
  }
  const ok = r !== null && typeof r === 'object' && r.pruneVersion === 1 && Number.isSafeInteger(r.prunedThrough) && r.prunedThrough >= 0 &&
    typeof r.lastEventHash === 'string' && typeof r.lastDigestHash === 'string' && typeof r.signature === 'string' &&
    r.publicKeyFingerprint === fp && edVerify(null, Buffer.from(prunePayload(r)), pub, Buffer.from(r.signature, 'base64'));
  return ok ? { record: r } : { error: `prune record ${path} has an invalid signature` };
}
