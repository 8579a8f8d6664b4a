import { filterMatcher, FilterTooCostlyError, type FilterBudget } from '../util/ec2-filter.js';
import { invalidParameter } from './errors.js';

/**
 * DescribeVolumes' filters, EC2's names (README, the DescribeVolumes filters
 * paragraph), matched against the volume as DescribeVolumes shows it, so a
 * filter and the field it names always agree: `size` is the GiB `Size`,
 * `attachment.*` match when the volume's attachment does (a detached volume
 * matches none). Values take EC2's wildcards (src/util/ec2-filter.ts).
 * `kms-key-id` is ebsd's own (EC2's DescribeVolumes has none); it matches no
 * unencrypted volume. `snapshot-id` is refused: ebsd's catalog does not
 * record the snapshot a volume was created from.
 */

/** The fields of a described volume the filters read. */
export interface FilterableVolume {
  VolumeId: string;
  Size: number;
  State: string;
  CreateTime: string;
  SnapshotId: string;
  Encrypted: boolean;
  KmsKeyId?: string;
  VolumeType: string;
  AvailabilityZone: string;
  Attachments: { InstanceId: string; Device: string; State: string; AttachTime: string; DeleteOnTermination: boolean }[];
  Tags: { Key: string; Value: string }[];
}

/** The filter names DescribeVolumes serves (`tag:<key>` besides). */
export const VOLUME_FILTER_NAMES: ReadonlySet<string> = new Set([
  'attachment.attach-time', 'attachment.delete-on-termination', 'attachment.device', 'attachment.instance-id', 'attachment.status',
  'availability-zone', 'create-time', 'encrypted', 'fast-restored', 'kms-key-id', 'multi-attach-enabled', 'size', 'status',
  'snapshot-id', 'tag-key', 'volume-id', 'volume-type',
]);

/** True when `v` passes every filter (filters AND, the values of one filter OR, as EC2). */
export function matchesVolumeFilters(v: FilterableVolume, filters: readonly { Name: string; Values: string[] }[], budget?: FilterBudget): boolean {
  try {
    return filters.every((f) => matchesOne(v, f, budget));
  } catch (e) {
    if (e instanceof FilterTooCostlyError) throw invalidParameter(e.message);
    throw e;
  }
}

function matchesOne(v: FilterableVolume, f: { Name: string; Values: string[] }, budget: FilterBudget | undefined): boolean {
  const ok = filterMatcher(f.Values, budget);
  const att = v.Attachments;
  switch (f.Name) {
    case 'attachment.attach-time': return att.some((a) => ok(a.AttachTime));
    case 'attachment.delete-on-termination': return att.some((a) => ok(String(a.DeleteOnTermination)));
    case 'attachment.device': return att.some((a) => ok(a.Device));
    case 'attachment.instance-id': return att.some((a) => ok(a.InstanceId));
    case 'attachment.status': return att.some((a) => ok(a.State));
    case 'availability-zone': return ok(v.AvailabilityZone);
    case 'create-time': return ok(v.CreateTime);
    case 'encrypted': return ok(String(v.Encrypted));
    case 'fast-restored': return ok('false');
    case 'kms-key-id': return v.KmsKeyId !== undefined && ok(v.KmsKeyId);
    case 'multi-attach-enabled': return ok('false');
    case 'size': return ok(String(v.Size));
    case 'snapshot-id': return ok(v.SnapshotId);
    case 'status': return ok(v.State);
    case 'tag-key': return v.Tags.some((t) => ok(t.Key));
    case 'volume-id': return ok(v.VolumeId);
    case 'volume-type': return ok(v.VolumeType);
    default:
      if (f.Name.startsWith('tag:') && f.Name.length > 4) return v.Tags.some((t) => t.Key === f.Name.slice(4) && ok(t.Value));
      throw invalidParameter(`The filter '${f.Name}' is invalid`);
  }
}

/** EC2's VolumeModification (ModifyVolume, DescribeVolumesModifications), with ebsd's exact sizes in bytes besides the GiB. */
export interface VolumeModification {
  VolumeId: string;
  ModificationState: 'modifying' | 'optimizing' | 'completed' | 'failed';
  StatusMessage?: string;
  TargetSize: number;
  TargetIops: number;
  TargetVolumeType: 'gp3';
  TargetThroughput: number;
  TargetMultiAttachEnabled: boolean;
  OriginalSize: number;
  OriginalIops: number;
  OriginalVolumeType: 'gp3';
  OriginalThroughput: number;
  OriginalMultiAttachEnabled: boolean;
  OriginalSizeBytes: number;
  TargetSizeBytes: number;
  Progress: number;
  StartTime: string;
  EndTime?: string;
}

/** DescribeVolumesModifications' filter names (EC2's; note the two camel-case ones, as EC2 spells them). */
export const MODIFICATION_FILTER_NAMES: ReadonlySet<string> = new Set([
  'modification-state', 'original-iops', 'original-size', 'original-volume-type', 'originalMultiAttachEnabled', 'start-time',
  'target-iops', 'target-size', 'target-volume-type', 'targetMultiAttachEnabled', 'volume-id',
]);

/** True when `m` passes every filter (filters AND, the values of one filter OR, as EC2). */
export function matchesModificationFilters(m: VolumeModification, filters: readonly { Name: string; Values: string[] }[], budget?: FilterBudget): boolean {
  const field: Record<string, string> = {
    'modification-state': m.ModificationState, 'original-iops': String(m.OriginalIops), 'original-size': String(m.OriginalSize),
    'original-volume-type': m.OriginalVolumeType, originalMultiAttachEnabled: String(m.OriginalMultiAttachEnabled), 'start-time': m.StartTime,
    'target-iops': String(m.TargetIops), 'target-size': String(m.TargetSize), 'target-volume-type': m.TargetVolumeType,
    targetMultiAttachEnabled: String(m.TargetMultiAttachEnabled), 'volume-id': m.VolumeId,
  };
  try {
    return filters.every((f) => {
      if (!Object.hasOwn(field, f.Name)) throw invalidParameter(`The filter '${f.Name}' is invalid`);
      return filterMatcher(f.Values, budget)(field[f.Name]!);
    });
  } catch (e) {
    if (e instanceof FilterTooCostlyError) throw invalidParameter(e.message);
    throw e;
  }
}
