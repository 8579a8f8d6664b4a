/**
 * A small JSON record signed inside the HSM by the audit key (the seal mark, seal-mark.ts; the prune
 * record, prune-record.ts): the signature covers a prefix of the record's own kind and the JSON
 * without `signature`, so one kind can never pass for another or for a digest; `audit verify`
 * checks it offline with the public key alone, as it checks the digests.
 */
import { verify as edVerify, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { atomicWrite } from '../../util/atomic-write.js';
import type { Hsm } from '../hsm/hsm-client.js';

export interface SignedKind<T extends { signature?: string; publicKeyFingerprint: string }> {
  /** What the record is called in messages ("seal high-water mark"). */
  what: string;
  /** The signed bytes' prefix ("ebsd-audit-mark/v1\n"). */
  prefix: string;
  /** The first member of `r` (parsed JSON) that is missing or not of its type, or undefined when its shape is right. */
  badMember: (r: Record<string, unknown>) => string | undefined;
  /** For the type only. */
  readonly _t?: T;
}

/** The bytes a record's signature covers: its kind's prefix and the record without its signature. */
export function signedPayload<T extends { signature?: string; publicKeyFingerprint: string }>(kind: SignedKind<T>, r: T): string {
  const { signature: _s, ...rest } = r;
  return kind.prefix + JSON.stringify(rest);
}

/** Sign `r` in the HSM and replace the file at `path` (temp file, fsync, rename, fsync dir). */
export async function writeSignedRecord<T extends { signature?: string; publicKeyFingerprint: string }>(kind: SignedKind<T>, path: string, hsm: Hsm, r: T): Promise<T> {
  const { signature } = await hsm.call({ op: 'signAudit', data: Buffer.from(signedPayload(kind, r)) });
  r.signature = Buffer.from(signature).toString('base64');
  await atomicWrite(path, JSON.stringify(r, null, 2) + '\n');
  return r;
}

/**
 * The record at `path`: `{}` when there is none, `{ error }` naming what is wrong when it is not
 * a record of this kind (unreadable, not JSON, a member missing or of the wrong type) or not signed
 * by `pub` (fingerprint `fp`).
 */
export function readSignedRecord<T extends { signature?: string; publicKeyFingerprint: string }>(kind: SignedKind<T>, path: string, pub: KeyObject, fp: string): { record?: T; error?: string } {
  let text: string;
  try { text = readFileSync(path, 'utf8'); } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {};
    return { error: `${kind.what} ${path} is unreadable (${(e as NodeJS.ErrnoException).code})` };
  }
  let r: unknown;
  try { r = JSON.parse(text); } catch {
    return { error: `${kind.what} ${path} is not valid JSON` };
  }
  if (r === null || typeof r !== 'object' || Array.isArray(r)) return { error: `${kind.what} ${path} is not a JSON object` };
  const bad = typeof (r as { signature?: unknown }).signature !== 'string' ? 'signature' : kind.badMember(r as Record<string, unknown>);
  if (bad !== undefined) return { error: `${kind.what} ${path} has no valid ${bad}` };
  const rec = r as T;
  if (rec.publicKeyFingerprint !== fp) return { error: `${kind.what} ${path} was signed by another key (publicKeyFingerprint)` };
  const ok = edVerify(null, Buffer.from(signedPayload(kind, rec)), pub, Buffer.from(rec.signature!, 'base64'));
  return ok ? { record: rec } : { error: `${kind.what} ${path} has an invalid signature` };
}
