/**
 * `ebsd snapshot sign-manifests` (docs/architecture.md §13.5): the survey of a store's manifests
 * without a MAC, the plan digest root confirms, and the signing of exactly what was surveyed.
 */
import { createHash } from 'node:crypto';
import { SnapshotError } from './errors.js';
import type { CollectableStore } from './gc.js';
import { canonicalDigest, ManifestSigner } from './manifest-mac.js';
import type { SnapshotManifest } from './types.js';

/** One manifest without a MAC as the survey read it: what --confirm signs, exactly as it was listed. */
export interface UnsignedManifest {
  snapshotId: string;
  /** canonicalDigest of the manifest as read. */
  digest: string;
  volumeId: string;
  startTime: string;
  blockCount: number;
  /** The manifest as read, kept only for signing (a dry run keeps none: a block list may be 64 MiB). */
  manifest?: SnapshotManifest;
}

/** What the survey found: the unsigned manifests (by id), how many verify, and which are refused. */
export interface ManifestMacSurvey {
  unsigned: UnsignedManifest[];
  alreadySigned: number;
  refused: { snapshotId: string; message: string }[];
  /** planDigest(unsigned): what `--confirm` must name. */
  planDigest: string;
}

/**
 * The digest of a sign-manifests plan: SHA-256 (hex) over the `snapshotId:digest` lines of the
 * unsigned manifests, sorted, each ended by a newline. Root reviews the dry run's list and
 * confirms it by this digest; any manifest added, removed or changed since makes another one.
 */
export function planDigest(unsigned: readonly { snapshotId: string; digest: string }[]): string {
  const h = createHash('sha256');
  for (const line of unsigned.map((u) => `${u.snapshotId}:${u.digest}`).sort()) h.update(`${line}\n`, 'utf8');
  return h.digest('hex');
}

/**
 * `ebsd snapshot sign-manifests`, first half: which manifests in the store have no MAC (what
 * signing would trust: whatever they hold, whoever wrote them, docs/architecture.md §13.5), each
 * with its canonical digest; how many carry a MAC that verifies; and which are refused:
 * unreadable, or carrying a MAC that does not verify, which is exactly what signing must not
 * bless. A dry run shows this; `--confirm` repeats it and signs only if the plan digest is the
 * one root reviewed.
 */
export async function surveyManifestMacs(store: CollectableStore, signer: ManifestSigner, o: { keepManifests: boolean } = { keepManifests: true }): Promise<ManifestMacSurvey> {
  const unsigned: UnsignedManifest[] = [];
  const refused: { snapshotId: string; message: string }[] = [];
  let alreadySigned = 0;
  for (const id of await store.listManifestIds()) {
    try {
      const m = await store.getManifest(id);
      if (!m) continue;
      if (!ManifestSigner.hasMac(m)) {
        unsigned.push({
          snapshotId: id, digest: digestOrCorrupt(id, m), volumeId: m.volumeId, startTime: m.startTime,
          blockCount: Array.isArray(m.blocks) ? m.blocks.length : 0, ...(o.keepManifests ? { manifest: m } : {}),
        });
        continue;
      }
      await signer.verify(id, m);
      alreadySigned++;
    } catch (e) {
      if (!(e instanceof SnapshotError) || e.code !== 'SNAPSHOT_CORRUPT') throw e;
      refused.push({ snapshotId: id, message: e.message });
    }
  }
  return { unsigned, alreadySigned, refused, planDigest: planDigest(unsigned) };
}

function digestOrCorrupt(snapshotId: string, m: SnapshotManifest): string {
  try {
    return canonicalDigest(m);
  } catch (e) {
    throw new SnapshotError('SNAPSHOT_CORRUPT', `snapshot manifest ${snapshotId}: its content cannot be put in canonical form for the manifest MAC: ${(e as Error).message} (docs/architecture.md §13.5)`, { cause: e });
  }
}

/** What signManifest did with one surveyed manifest. */
export type SignOutcome = 'signed' | 'gone' | 'signed-meanwhile' | 'changed';

/**
 * Second half: signs `u.manifest`, the object the survey read (never a later read), provided a
 * read just before writing finds the same content (the same canonical digest) still unsigned.
 * A manifest deleted, signed or changed since the survey is left as it is, and the outcome says which.
 */
export async function signManifest(store: CollectableStore, signer: ManifestSigner, u: UnsignedManifest): Promise<SignOutcome> {
  if (!u.manifest) throw new TypeError(`snapshot manifest ${u.snapshotId}: the survey kept no manifest to sign (a dry run's survey signs nothing)`);
  const now = await store.getManifest(u.snapshotId);
  if (!now) return 'gone';
  if (ManifestSigner.hasMac(now)) return 'signed-meanwhile';
  if (digestOrCorrupt(u.snapshotId, now) !== u.digest) return 'changed';
  await store.putManifest(await signer.sign(u.manifest));
  return 'signed';
}
