import type { Caller } from '../kms/types.js';
import type { CopySnapshotRequest, SnapshotCopier } from '../snapshot/copy.js';
import type { SnapshotManifest } from '../snapshot/types.js';
import { toEc2Snapshot } from '../snapshot/snapshot-view.js';
import type { Ec2Authorizer, UnauthorizedOperation } from './ec2-authz.js';
import {
  Ec2RequestError, KMS_KEY_ID_MAX, SNAPSHOT_ID_RE, TAGS_PER_RESOURCE_MAX, array, invalidValue, object, printable, string, tag, type Tag,
} from './ec2-requests.js';

/**
 * EC2 CopySnapshot on the control API (docs/architecture.md §14.2), checked at
 * the edge with EC2's limits and names (Amazon EC2 API Reference,
 * CopySnapshot): SourceSnapshotId and SourceRegion required; Description at
 * most 255 characters; Encrypted a boolean; KmsKeyId a key id, ARN or alias;
 * TagSpecifications ResourceType `snapshot`; unknown members refused.
 */
const MEMBERS = ['SourceSnapshotId', 'SourceRegion', 'Description', 'Encrypted', 'KmsKeyId', 'TagSpecifications'];
const DESCRIPTION_MAX = 255;

export function parseCopySnapshotRequest(body: unknown): CopySnapshotRequest {
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
  if (specs !== undefined) out.TagSpecifications = tagSpecifications(specs);
  return out;
}

function tagSpecifications(v: unknown): { ResourceType: 'snapshot'; Tags: Tag[] }[] {
  const seen = new Set<string>();
  let count = 0;
  return array(v, 'TagSpecifications', TAGS_PER_RESOURCE_MAX).map((s, i) => {
    const at = `TagSpecifications[${i}]`;
    const spec = object(s, at, 'EC2_INVALID_PARAMETER_VALUE');
    for (const k of Object.keys(spec)) {
      if (k !== 'ResourceType' && k !== 'Tags') throw new Ec2RequestError('EC2_UNKNOWN_PARAMETER', `${at}.${k}`, `The parameter ${at}.${printable(k)} is not recognized (a TagSpecification takes ResourceType and Tags)`);
    }
    const rt = Object.hasOwn(spec, 'ResourceType') ? spec.ResourceType : undefined;
    if (rt !== 'snapshot') throw invalidValue(`${at}.ResourceType`, `Invalid value ${printable(rt)} for ${at}.ResourceType: CopySnapshot tags only the resource type 'snapshot'`);
    const raw = Object.hasOwn(spec, 'Tags') ? spec.Tags : undefined;
    if (raw === undefined) throw new Ec2RequestError('EC2_MISSING_PARAMETER', `${at}.Tags`, `The request must contain the parameter ${at}.Tags`);
    const tags = array(raw, `${at}.Tags`, Infinity).map((t, j) => {
      const parsed = tag(t, `${at}.Tags[${j}]`);
      if (seen.has(parsed.Key)) throw invalidValue(`${at}.Tags[${j}].Key`, `Duplicate tag key ${printable(parsed.Key)}: a snapshot has one value per tag key`);
      seen.add(parsed.Key);
      if (++count > TAGS_PER_RESOURCE_MAX) throw new Ec2RequestError('EC2_TAG_LIMIT_EXCEEDED', 'TagSpecifications', `The maximum number of tags per resource is ${TAGS_PER_RESOURCE_MAX}`);
      return parsed;
    });
    return { ResourceType: 'snapshot' as const, Tags: tags };
  });
}

/**
 * Runs a CopySnapshot: authorization (ec2:CopySnapshot on the source and on
 * `snapshot/*`, Ec2Authorizer.checkCopySnapshot) once the source manifest is
 * read and before anything is written; a refusal goes to `deny`, which audits it.
 */
export function copySnapshot(
  o: { copier: SnapshotCopier; authz: Ec2Authorizer },
  req: CopySnapshotRequest,
  caller: Caller,
  deny: (refusal: UnauthorizedOperation) => Promise<never>,
): Promise<unknown> {
  const tags = (req.TagSpecifications ?? []).flatMap((s) => s.Tags);
  return o.copier.copySnapshot(req, caller, async (src: SnapshotManifest | undefined) => {
    const encrypted = src?.encrypted === true || req.Encrypted === true;
    const refusal = o.authz.checkCopySnapshot(req.SourceSnapshotId, src ? toEc2Snapshot(src) : undefined, { encrypted, tags }, caller);
    if (refusal) await deny(refusal);
  });
}
