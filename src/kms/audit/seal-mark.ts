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
import { verify as edVerify, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { atomicWrite } from '../../util/atomic-write.js';
import type { Hsm } from '../hsm/hsm-client.js';

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

/** The bytes a mark signature covers: a fixed prefix (so a mark can never pass for a digest) and the mark without its signature. */
export function markPayload(m: SealMark): string {
  const { signature: _s, ...rest } = m;
  return 'ebsd-audit-mark/v1\n' + JSON.stringify(rest);
}

/** Sign `m` in the HSM and replace the mark file (temp file, fsync, rename, fsync dir). */
export async function writeSealMark(path: string, hsm: Hsm, m: Omit<SealMark, 'markVersion' | 'signature'>): Promise<void> {
  const mark: SealMark = { markVersion: 1, ...m };
  const { signature } = await hsm.call({ op: 'signAudit', data: Buffer.from(markPayload(mark)) });
  mark.signature = Buffer.from(signature).toString('base64');
  await atomicWrite(path, JSON.stringify(mark, null, 2) + '\n');
}

/**
 * The mark at `path`: `{}` when there is none, `{ error }` when it is not a
 * mark validly signed by `pub` (fingerprint `fp`).
 */
export function readSealMark(path: string, pub: KeyObject, fp: string): { mark?: SealMark; error?: string } {
  let text: string;
  try { text = readFileSync(path, 'utf8'); } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {};
    return { error: `seal high-water mark ${path} is unreadable (${(e as NodeJS.ErrnoException).code})` };
  }
  let m: SealMark;
  try { m = JSON.parse(text) as SealMark; } catch {
    return { error: `seal high-water mark ${path} is not valid JSON` };
  }
  const ok = m !== null && typeof m === 'object' && m.markVersion === 1 && Number.isSafeInteger(m.lastSequence) &&
    typeof m.lastEventHash === 'string' && typeof m.digestHash === 'string' && typeof m.signature === 'string' &&
    m.publicKeyFingerprint === fp && edVerify(null, Buffer.from(markPayload(m)), pub, Buffer.from(m.signature, 'base64'));
  return ok ? { mark: m } : { error: `seal high-water mark ${path} has an invalid signature` };
}
