/**
 * The seal high-water mark (docs/kms-format.md §Audit log): the last digest
 * the daemon signed — its sequence, the hash of its last event and the hash
 * of its payload — kept outside the audit directory in `<kms>/audit-mark.json`
 * and signed inside the HSM by the audit key of the sealed domain, like the
 * digests themselves. Deleting digests (and re-chaining an edited log) leaves
 * the directory self-consistent; the mark still names the last digest that
 * was signed, so the daemon at start and `verifyAuditLog` see that digests
 * are missing.
 *
 * Signed rather than encrypted under the domain key: the mark needs
 * integrity, not secrecy, and `audit verify` checks it offline with the
 * public key alone, as it checks the digests.
 */
import { dirname, join, resolve } from 'node:path';
import type { KeyObject } from 'node:crypto';
import type { Hsm } from '../hsm/hsm-client.js';
import { readSignedRecord, writeSignedRecord, type SignedKind } from './signed-record.js';

export const MARK_FILE = 'audit-mark.json';

export interface SealMark {
  markVersion: 1;
  /** Sequence of the last event the last signed digest covers. */
  lastSequence: number;
  lastEventHash: string;
  /** The digest file (`digests/<lastSequence>.json`) and the SHA-256 hex of its payload. */
  digestFile: string;
  digestHash: string;
  publicKeyFingerprint: string;
  signature?: string;
}

/** The mark of an audit directory: beside it, in the kms/ state directory. */
export const markPathOf = (auditDir: string): string => join(dirname(resolve(auditDir)), MARK_FILE);

const MARK: SignedKind<SealMark> = {
  what: 'seal high-water mark',
  prefix: 'ebsd-audit-mark/v1\n', // so a mark can never pass for a digest
  badMember: (m) => m.markVersion !== 1 ? 'markVersion' : !Number.isSafeInteger(m.lastSequence) ? 'lastSequence'
    : typeof m.lastEventHash !== 'string' ? 'lastEventHash' : typeof m.digestHash !== 'string' ? 'digestHash' : undefined,
};

/** Sign `m` in the HSM and replace the mark file (temp file, fsync, rename, fsync dir). */
export async function writeSealMark(path: string, hsm: Hsm, m: Omit<SealMark, 'markVersion' | 'signature'>): Promise<void> {
  await writeSignedRecord(MARK, path, hsm, { markVersion: 1, ...m });
}

/**
 * The mark at `path`: `{}` when there is none, `{ error }` when it is not a
 * mark validly signed by `pub` (fingerprint `fp`).
 */
export function readSealMark(path: string, pub: KeyObject, fp: string): { mark?: SealMark; error?: string } {
  const { record, error } = readSignedRecord(MARK, path, pub, fp);
  return error !== undefined ? { error } : record ? { mark: record } : {};
}
