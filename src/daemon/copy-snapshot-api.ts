import type { Caller } from '../kms/types.js';
import type { CopySnapshotRequest, SnapshotCopier } from '../snapshot/copy.js';
import type { SnapshotManifest } from '../snapshot/types.js';
import { toEc2Snapshot } from '../snapshot/snapshot-view.js';
import { snapshotTagSpecifications } from './snapshot-api.js';
import type { Ec2Authorizer, UnauthorizedOperation } from './ec2-authz.js';
import {
  Ec2RequestError, KMS_KEY_ID_MAX, SNAPSHOT_ID_RE, dryRun, invalidValue, object, printable, string,
} from './ec2-requests.js';

/**
 * EC2 CopySnapshot on the control API (docs/architecture.md §14.2), checked at
 * the edge with EC2's limits and names (Amazon EC2 API Reference,
 * CopySnapshot): SourceSnapshotId and SourceRegion required; Description at
 * most 255 characters; Encrypted a boolean; KmsKeyId a key id, ARN or alias;
 * TagSpecifications ResourceType `snapshot`; unknown members refused.
 */
const MEMBERS = ['SourceSnapshotId', 'SourceRegion', 'Description', 'Encrypted', 'KmsKeyId', 'TagSpecifications', 'DryRun'];
const DESCRIPTION_MAX = 255;

/** `DryRun`: EC2's member, when true (checked, authorized, then DryRunOperation; nothing is copied). */
export function parseCopySnapshotRequest(body: unknown): CopySnapshotRequest & { DryRun?: true } {
  const b = object(body, 'request body', 'EC2_INVALID_PARAMETER');
  for (const k of Object.keys(b)) {
    if (!MEMBERS.includes(k)) throw new Ec2RequestError('EC2_UNKNOWN_PARAMETER', k, `The parameter ${printable(k)} is not recognized by CopySnapshot (it takes: ${MEMBERS.join(', ')})`);
  }
  const m = (k: string): unknown => (Object.hasOwn(b, k) ? b[k] : undefined);
  const src = m('SourceSnapshotId');
  if (src === undefined) throw new Ec2RequestError('EC2_MISSING_PARAMETER', 'SourceSnapshotId', 'The request must contain the parameter SourceSnapshotId');
  if (typeof src !== 'string' || !SNAPSHOT_ID_RE.test(src)) {
    throw new Ec2RequestError('EC2_SNAPSHOT_ID_MALFORMED', 'SourceSnapshotId', `Invalid id: ${printable(src)} (SourceSnapshotId: expecting "snap-" followed by 17 hex digits)`);
  }
  const region = m('SourceRegion');
  if (region === undefined) throw new Ec2RequestError('EC2_MISSING_PARAMETER', 'SourceRegion', 'The request must contain the parameter SourceRegion');
  const out: CopySnapshotRequest = { SourceSnapshotId: src, SourceRegion: string(region, 'SourceRegion', 1, 64) };
  const d = m('Description');
  if (d !== undefined) out.Description = string(d, 'Description', 0, DESCRIPTION_MAX);
  const enc = m('Encrypted');
  if (enc !== undefined) {
    if (typeof enc !== 'boolean') throw invalidValue('Encrypted', `Encrypted must be true or false, got ${printable(enc)}`);
    out.Encrypted = enc;
  }
  const key = m('KmsKeyId');
  if (key !== undefined) out.KmsKeyId = string(key, 'KmsKeyId', 1, KMS_KEY_ID_MAX);
  const specs = m('TagSpecifications');
  if (specs !== undefined) out.TagSpecifications = snapshotTagSpecifications(specs, 'CopySnapshot');
  return dryRun(m) ? { ...out, DryRun: true } : out;
}


/**
 * Runs a CopySnapshot: authorization (ec2:CopySnapshot on the source and on
 * `snapshot/*`, Ec2Authorizer.checkCopySnapshot, with `ec2:Encrypted` the
 * copy's as the copier decides it) once the source manifest is read and before
 * anything is written; a refusal goes to `deny`, which audits it.
 */
export function copySnapshot(
  o: { copier: SnapshotCopier; authz: Ec2Authorizer },
  req: CopySnapshotRequest,
  caller: Caller,
  deny: (refusal: UnauthorizedOperation) => Promise<never>,
  dry?: () => Promise<never>,
): Promise<unknown> {
  const tags = (req.TagSpecifications ?? []).flatMap((s) => s.Tags);
  const { DryRun: _d, ...copy } = req as CopySnapshotRequest & { DryRun?: true };
  return o.copier.copySnapshot(copy, caller, async (src: SnapshotManifest | undefined, target: { encrypted: boolean }) => {
    // ec2:Encrypted is the copy's, as the copier decides it (copyIsEncrypted: with EBS encryption by default, encrypted even without Encrypted).
    const refusal = o.authz.checkCopySnapshot(req.SourceSnapshotId, src ? toEc2Snapshot(src) : undefined, { encrypted: target.encrypted, tags }, caller);
    if (refusal) await deny(refusal);
  // Authorized, and the source and target key checked as the real call checks them (a source that does
  // not exist is InvalidSnapshot.NotFound, not DryRunOperation): a dry run ends there, before anything is written.
  }, dry);
}
