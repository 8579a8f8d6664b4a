import type { Caller } from '../kms/types.js';
import type { PolicyEvaluator } from '../kms/authz/index.js';
import type { ContextValue } from '../kms/authz/conditions.js';
import { parseVolumeSize } from '../volume/size.js';
import { EbsdError } from '../util/errors.js';

/**
 * EC2 authorization of the volume operations, through the same policy
 * evaluator as KMS (identity policies; the account root may do everything).
 * Actions, resource ARNs and condition keys are EC2's (Service Authorization
 * Reference, "Actions, resources, and condition keys for Amazon EC2"); the
 * README's "Security model" lists the ones ebsd provides. This file only
 * builds the request (action, resource, context) from the control-API body
 * and the catalog's view of the volume; the evaluator decides.
 */

const GiB = 1024 ** 3;
const VOLUME_ID = /^vol-[0-9a-f]{17}$/;

/** Control-API operation -> IAM action. */
export const EC2_ACTIONS: ReadonlyMap<string, string> = new Map([
  ['CreateVolume', 'ec2:CreateVolume'],
  ['DescribeVolumes', 'ec2:DescribeVolumes'],
  ['DescribeVolumeStatus', 'ec2:DescribeVolumeStatus'],
  ['ModifyVolume', 'ec2:ModifyVolume'],
  ['DescribeVolumesModifications', 'ec2:DescribeVolumesModifications'],
  ['DeleteVolume', 'ec2:DeleteVolume'],
  ['AttachVolume', 'ec2:AttachVolume'],
  ['DetachVolume', 'ec2:DetachVolume'],
  // Snapshots: judged by checkCreateSnapshot / checkSnapshot, which need the volume or manifest.
  ['CreateSnapshot', 'ec2:CreateSnapshot'],
  ['DescribeSnapshots', 'ec2:DescribeSnapshots'],
  ['DeleteSnapshot', 'ec2:DeleteSnapshot'],
  // Restore and copy: judged by checkSourceSnapshot / checkCopySnapshot, which need the source manifest.
  ['CopySnapshot', 'ec2:CopySnapshot'],
]);

/** What authorization needs to know of an existing snapshot (DescribeSnapshots' shape). */
export interface SnapshotView {
  SnapshotId: string;
  VolumeId: string;
  VolumeSize: number;
  Encrypted: boolean;
  KmsKeyId?: string;
  StartTime: string;
  OwnerId: string;
  Tags: readonly { Key: string; Value: string }[];
}

/** What authorization needs to know of an existing volume (DescribeVolumes' shape). */
export interface VolumeView {
  VolumeId: string;
  SizeBytes: number;
  Encrypted: boolean;
  KmsKeyId?: string;
  VolumeType?: string;
  Tags: readonly { Key: string; Value: string }[];
}

/** EC2's refusal: HTTP 403, `UnauthorizedOperation`, the message naming caller, action and resource. */
export class UnauthorizedOperation extends EbsdError {
  readonly httpStatus = 403;
  /** CloudTrail's errorCode for an EC2 refusal. */
  readonly auditErrorCode = 'Client.UnauthorizedOperation';
  constructor(message: string) {
    super('EC2_UNAUTHORIZED', `You are not authorized to perform this operation. ${message}`, { awsName: 'UnauthorizedOperation' });
  }
}

/**
 * EC2's answer to an authorized request with `DryRun` set: HTTP 412, `DryRunOperation`, with
 * EC2's message; nothing ran. Audited as CloudTrail records it (errorCode `Client.DryRunOperation`).
 */
export class DryRunOperation extends EbsdError {
  readonly httpStatus = 412;
  readonly auditErrorCode = 'Client.DryRunOperation';
  constructor() {
    super('EC2_DRY_RUN', 'Request would have succeeded, but DryRun flag is set.', { awsName: 'DryRunOperation' });
  }
}

export interface Ec2AuthorizerOptions {
  evaluator: PolicyEvaluator;
  accountId: string;
  region: string;
  /** The instance this host's attachments name (AttachVolume/DetachVolume also authorize on it). */
  instanceId: string;
  /** The catalog's view of a volume, or undefined if there is none. */
  volume: (volumeId: string) => VolumeView | undefined;
}

export class Ec2Authorizer {
  constructor(private readonly o: Ec2AuthorizerOptions) {}

  volumeArn(volumeId: string): string {
    return `arn:aws:ec2:${this.o.region}:${this.o.accountId}:volume/${volumeId}`;
  }

  instanceArn(instanceId: string): string {
    return `arn:aws:ec2:${this.o.region}:${this.o.accountId}:instance/${instanceId}`;
  }

  /**
   * Authorize one control-API volume request before anything runs. Returns
   * the refusal to raise, or undefined. A request naming no well-formed
   * volume id is left to the operation, which refuses it without effect.
   * DescribeVolumes / DescribeVolumeStatus without ids are not refused: their
   * answer is filtered per volume (`mayDescribe`).
   */
  check(op: string, body: Readonly<Record<string, unknown>>, caller: Caller): UnauthorizedOperation | undefined {
    const action = EC2_ACTIONS.get(op);
    if (!action) return undefined;
    switch (op) {
      case 'CreateSnapshot':
      case 'DescribeSnapshots':
      case 'DeleteSnapshot':
        return undefined; // checkCreateSnapshot / checkSnapshot, by the snapshot API
      case 'CreateVolume':
        return this._checkCreate(body, caller);
      case 'DescribeVolumes':
      case 'DescribeVolumeStatus': {
        const ids = Array.isArray(body.VolumeIds) ? body.VolumeIds : [];
        for (const id of ids) {
          const refusal = typeof id === 'string' ? this._checkVolume(action, id, caller) : undefined;
          if (refusal) return refusal;
        }
        return undefined;
      }
      case 'DescribeVolumesModifications':
        // No resource types in the Service Authorization Reference: only a statement on "*" allows it, as in EC2.
        return this._decide(action, '*', caller, this._common(new Map()));
      case 'AttachVolume':
      case 'DetachVolume': {
        const id = body.VolumeId;
        if (typeof id !== 'string') return undefined;
        // EC2 authorizes attach and detach on the volume and on the instance.
        const ctx = new Map<string, ContextValue>([['ec2:InstanceID', this.o.instanceId]]);
        return this._checkVolume(action, id, caller, ctx) ?? this._decide(action, this.instanceArn(this.o.instanceId), caller, this._common(ctx));
      }
      case 'ModifyVolume': {
        const id = body.VolumeId;
        if (typeof id !== 'string') return undefined;
        // The Service Authorization Reference lists ec2:VolumeSize for ModifyVolume on the `volume`
        // resource: the volume as it is, so on AWS a size condition judges the current size and
        // caps nothing (a 1 GiB volume allowed by `ec2:VolumeSize <= 1` grows to any size). ebsd
        // judges the request twice, on the volume as it is (as AWS) and with ec2:VolumeSize set to
        // the requested size; both must be allowed (README "Security model").
        const refusal = this._checkVolume(action, id, caller);
        const target = _gib(body.Size);
        if (refusal || target === undefined) return refusal; // a size the operation refuses: it answers, without effect
        return this._checkVolume(action, id, caller, new Map([['ec2:VolumeSize', target]]));
      }
      default: {
        const id = body.VolumeId;
        return typeof id === 'string' ? this._checkVolume(action, id, caller) : undefined;
      }
    }
  }

  /**
   * A DryRun of a listing without ids (DescribeVolumes, DescribeVolumeStatus, DescribeSnapshots): the
   * real call refuses nothing and filters its answer per item, but a dry run must say whether the
   * caller may make the call at all (EC2: UnauthorizedOperation otherwise). Allowed when a statement
   * allows the action on every resource of the type (`wildcardArn`, no resource context), or on at
   * least one item the caller would be shown (`anyShown`, asked only then).
   */
  async checkListingDryRun(op: 'DescribeVolumes' | 'DescribeVolumeStatus' | 'DescribeSnapshots', caller: Caller, anyShown: () => boolean | Promise<boolean>): Promise<UnauthorizedOperation | undefined> {
    if (caller.type === 'Root') return undefined;
    const wildcard = op === 'DescribeSnapshots' ? this.snapshotArn('*') : this.volumeArn('*');
    const onAll = this._decide(EC2_ACTIONS.get(op)!, wildcard, caller, this._common(new Map()));
    return onAll && !(await anyShown()) ? onAll : undefined;
  }

  /** May `caller` see this volume in a DescribeVolumes / DescribeVolumeStatus / `ebsd status` answer? */
  mayDescribe(op: 'DescribeVolumes' | 'DescribeVolumeStatus', caller: Caller, v: VolumeView): boolean {
    if (caller.type === 'Root') return true;
    return this._decide(EC2_ACTIONS.get(op)!, this.volumeArn(v.VolumeId), caller, this._volumeContext(v)) === undefined;
  }

  /** EC2's snapshot ARN: no account in it (`arn:aws:ec2:REGION::snapshot/snap-…`). */
  snapshotArn(snapshotId: string): string {
    return `arn:aws:ec2:${this.o.region}::snapshot/${snapshotId}`;
  }

  /**
   * CreateSnapshot is authorized on the volume (its tags, id, size,
   * encryption) and on `snapshot/*` (aws:RequestTag/*, ec2:ParentVolume,
   * ec2:Encrypted, ec2:VolumeSize); tags given at create also need
   * ec2:CreateTags with ec2:CreateAction = CreateSnapshot.
   */
  checkCreateSnapshot(volumeId: string, tags: readonly { Key: string; Value: string }[], caller: Caller): UnauthorizedOperation | undefined {
    const onVolume = this._checkVolume('ec2:CreateSnapshot', volumeId, caller);
    if (onVolume) return onVolume;
    const v = this.o.volume(volumeId);
    const ctx = this._common(_tagContext(tags));
    ctx.set('ec2:ParentVolume', this.volumeArn(volumeId));
    if (v) {
      ctx.set('ec2:Encrypted', v.Encrypted ? 'true' : 'false');
      ctx.set('ec2:VolumeSize', String(Math.ceil(v.SizeBytes / GiB)));
    }
    const resource = this.snapshotArn('*');
    const refusal = this._decide('ec2:CreateSnapshot', resource, caller, ctx);
    if (refusal || tags.length === 0) return refusal;
    const tagCtx = this._common(_tagContext(tags));
    tagCtx.set('ec2:CreateAction', 'CreateSnapshot');
    return this._decide('ec2:CreateTags', resource, caller, tagCtx);
  }

  /** DeleteSnapshot / DescribeSnapshots (per snapshot) on the snapshot's ARN, with its tags, id, size, encryption, parent volume. */
  checkSnapshot(op: 'DeleteSnapshot' | 'DescribeSnapshots', s: SnapshotView, caller: Caller): UnauthorizedOperation | undefined {
    if (caller.type === 'Root') return undefined;
    return this._decide(EC2_ACTIONS.get(op)!, this.snapshotArn(s.SnapshotId), caller, this._snapshotContext(s));
  }

  /**
   * CopySnapshot on the source snapshot's ARN (as above) and on the new
   * `snapshot/*` (aws:RequestTag/*, ec2:Encrypted of the copy); tags given at
   * the copy also need ec2:CreateTags with ec2:CreateAction = CopySnapshot.
   */
  checkCopySnapshot(sourceId: string, s: SnapshotView | undefined, req: { encrypted: boolean; tags: readonly { Key: string; Value: string }[] }, caller: Caller): UnauthorizedOperation | undefined {
    if (caller.type === 'Root') return undefined;
    const onSource = this.checkSourceSnapshot('ec2:CopySnapshot', s ?? sourceId, caller);
    if (onSource) return onSource;
    const resource = this.snapshotArn('*');
    const ctx = this._common(_tagContext(req.tags));
    ctx.set('ec2:Encrypted', req.encrypted ? 'true' : 'false');
    if (s) ctx.set('ec2:VolumeSize', String(s.VolumeSize));
    const refusal = this._decide('ec2:CopySnapshot', resource, caller, ctx);
    if (refusal || req.tags.length === 0) return refusal;
    const tagCtx = this._common(_tagContext(req.tags));
    tagCtx.set('ec2:CreateAction', 'CopySnapshot');
    return this._decide('ec2:CreateTags', resource, caller, tagCtx);
  }

  /**
   * DeleteSnapshot of a snapshot whose manifest is refused (docs/architecture.md §13.5): the account root only.
   * Nothing in the manifest is trusted, its tags neither, so a policy conditioned on them (a Deny on
   * `ec2:ResourceTag/LegalHold`) cannot be judged; and a manifest is refused for this host's own reasons too (not
   * yet signed when --snapshot-manifest-key was turned on, another key named): judged on its id alone, a delete
   * that policy would have denied could go through, and it cannot be undone.
   */
  checkRefusedSnapshotDelete(snapshotId: string, caller: Caller): UnauthorizedOperation | undefined {
    if (caller.type === 'Root') return undefined;
    return new UnauthorizedOperation(`User: ${caller.arn} is not authorized to perform: ec2:DeleteSnapshot on resource: ${this.snapshotArn(snapshotId)}: its manifest is refused (not signed, or its MAC does not verify), so its tags and any policy conditioned on them cannot be read; only the account root may delete it`);
  }

  /** A snapshot id that does not exist is judged on its id alone: refused callers learn nothing of it. */
  checkSnapshotId(op: 'DeleteSnapshot' | 'DescribeSnapshots', snapshotId: string, caller: Caller): UnauthorizedOperation | undefined {
    if (caller.type === 'Root') return undefined;
    return this._decide(EC2_ACTIONS.get(op)!, this.snapshotArn(snapshotId), caller, this._common(new Map([['ec2:SnapshotID', snapshotId]])));
  }

  /**
   * The source snapshot of CreateVolume (with SnapshotId) or CopySnapshot: EC2
   * authorizes the action on the snapshot's ARN too, with its tags, id, size,
   * encryption, owner, time and parent volume (Service Authorization Reference,
   * CreateVolume and CopySnapshot: resource `snapshot`). A snapshot that does not
   * exist, or cannot be read, is judged on its id alone.
   */
  checkSourceSnapshot(action: 'ec2:CreateVolume' | 'ec2:CopySnapshot', s: SnapshotView | string, caller: Caller): UnauthorizedOperation | undefined {
    if (caller.type === 'Root') return undefined;
    const id = typeof s === 'string' ? s : s.SnapshotId;
    const ctx = typeof s === 'string' ? this._common(new Map([['ec2:SnapshotID', s]])) : this._snapshotContext(s);
    return this._decide(action, this.snapshotArn(id), caller, ctx);
  }

  private _snapshotContext(s: SnapshotView): Map<string, ContextValue> {
    const ctx = this._common(new Map());
    for (const t of s.Tags) {
      ctx.set(`ec2:ResourceTag/${t.Key}`, t.Value);
      ctx.set(`aws:ResourceTag/${t.Key}`, t.Value);
    }
    ctx.set('ec2:SnapshotID', s.SnapshotId);
    ctx.set('ec2:VolumeSize', String(s.VolumeSize));
    ctx.set('ec2:Encrypted', s.Encrypted ? 'true' : 'false');
    ctx.set('ec2:Owner', s.OwnerId);
    ctx.set('ec2:SnapshotTime', s.StartTime);
    if (s.VolumeId) ctx.set('ec2:ParentVolume', this.volumeArn(s.VolumeId));
    return ctx;
  }

  private _checkVolume(action: string, volumeId: string, caller: Caller, extra?: Map<string, ContextValue>): UnauthorizedOperation | undefined {
    if (!VOLUME_ID.test(volumeId)) return undefined; // InvalidVolumeID.Malformed from the operation, with no effect
    const v = this.o.volume(volumeId);
    // A volume that does not exist is judged on its id alone: refused callers learn nothing of it.
    const ctx = v ? this._volumeContext(v) : this._common(new Map([['ec2:VolumeID', volumeId]]));
    for (const [k, val] of extra ?? []) ctx.set(k, val);
    return this._decide(action, this.volumeArn(volumeId), caller, ctx);
  }

  /** CreateVolume on `volume/*` (a source snapshot: checkSourceSnapshot); tags given at create also need ec2:CreateTags with ec2:CreateAction = CreateVolume. */
  private _checkCreate(body: Readonly<Record<string, unknown>>, caller: Caller): UnauthorizedOperation | undefined {
    const resource = this.volumeArn('*');
    const tags = _requestTags(body);
    const ctx = this._common(_tagContext(tags));
    const plain = body.Cipher === 'none' || body.Encrypted === false;
    ctx.set('ec2:Encrypted', plain ? 'false' : 'true');
    ctx.set('ec2:VolumeType', 'gp3');
    const gib = _gib(body.Size);
    if (gib !== undefined) ctx.set('ec2:VolumeSize', gib);
    // As given (key id, ARN or alias); absent for the default key.
    if (!plain && typeof body.KmsKeyId === 'string') ctx.set('ec2:KmsKeyId', body.KmsKeyId);
    // A volume from a snapshot (the snapshot itself is judged by checkSourceSnapshot, restore-authz.ts).
    if (typeof body.SnapshotId === 'string') {
      ctx.set('ec2:SnapshotID', body.SnapshotId);
      ctx.set('ec2:ParentSnapshot', this.snapshotArn(body.SnapshotId));
    }
    const refusal = this._decide('ec2:CreateVolume', resource, caller, ctx);
    if (refusal || tags.length === 0) return refusal;
    const tagCtx = this._common(_tagContext(tags));
    tagCtx.set('ec2:CreateAction', 'CreateVolume');
    return this._decide('ec2:CreateTags', resource, caller, tagCtx);
  }

  /** ec2:ResourceTag/<k> and aws:ResourceTag/<k>, size, encryption, key and id of an existing volume. */
  private _volumeContext(v: VolumeView): Map<string, ContextValue> {
    const ctx = this._common(new Map());
    for (const t of v.Tags) {
      if (typeof t?.Key !== 'string' || typeof t.Value !== 'string') continue;
      ctx.set(`ec2:ResourceTag/${t.Key}`, t.Value);
      ctx.set(`aws:ResourceTag/${t.Key}`, t.Value);
    }
    ctx.set('ec2:VolumeID', v.VolumeId);
    ctx.set('ec2:VolumeSize', String(Math.ceil(v.SizeBytes / GiB)));
    ctx.set('ec2:Encrypted', v.Encrypted ? 'true' : 'false');
    if (v.KmsKeyId) ctx.set('ec2:KmsKeyId', v.KmsKeyId);
    ctx.set('ec2:VolumeType', v.VolumeType ?? 'gp3');
    return ctx;
  }

  private _common(ctx: Map<string, ContextValue>): Map<string, ContextValue> {
    ctx.set('aws:RequestedRegion', this.o.region);
    ctx.set('ec2:Region', this.o.region);
    ctx.set('aws:ResourceAccount', this.o.accountId);
    return ctx;
  }

  private _decide(action: string, resource: string, caller: Caller, context: Map<string, ContextValue>): UnauthorizedOperation | undefined {
    const d = this.o.evaluator.evaluate({ action, caller, resource, context });
    return d.allowed ? undefined : new UnauthorizedOperation(d.message);
  }
}

/** Well-formed tags of a CreateVolume request (TagSpecifications for `volume`, and the Name shortcut); shape errors are the operation's to refuse. */
function _requestTags(body: Readonly<Record<string, unknown>>): { Key: string; Value: string }[] {
  const out: { Key: string; Value: string }[] = [];
  const specs = Array.isArray(body.TagSpecifications) ? body.TagSpecifications : [];
  for (const s of specs) {
    if (s === null || typeof s !== 'object') continue;
    const spec = s as { ResourceType?: unknown; Tags?: unknown };
    if (spec.ResourceType !== undefined && spec.ResourceType !== 'volume') continue;
    for (const t of Array.isArray(spec.Tags) ? spec.Tags : []) {
      const tag = t as { Key?: unknown; Value?: unknown } | null;
      if (tag && typeof tag.Key === 'string' && typeof tag.Value === 'string') out.push({ Key: tag.Key, Value: tag.Value });
    }
  }
  if (typeof body.Name === 'string') out.push({ Key: 'Name', Value: body.Name });
  return out;
}

/** aws:RequestTag/<k> and aws:TagKeys (IAM User Guide, "Controlling access during AWS requests"). */
function _tagContext(tags: readonly { Key: string; Value: string }[]): Map<string, ContextValue> {
  const ctx = new Map<string, ContextValue>();
  for (const t of tags) ctx.set(`aws:RequestTag/${t.Key}`, t.Value);
  if (tags.length) ctx.set('aws:TagKeys', tags.map((t) => t.Key));
  return ctx;
}

/** ec2:VolumeSize is in GiB; a size the operation will refuse gives no value (a condition on it then fails). */
function _gib(size: unknown): string | undefined {
  try {
    return String(Math.ceil(parseVolumeSize(size) / GiB));
  } catch {
    return undefined;
  }
}
