import { ec2Event, safeDetails } from './audit-events.js';
import type { Caller } from '../kms/types.js';
import type { SnapshotAuditEvent, SnapshotManager } from '../snapshot/snapshot-manager.js';
import type { SnapshotManifest } from '../snapshot/types.js';
import { SNAPSHOT_FILTER_NAMES, page, toEc2Snapshot } from '../snapshot/snapshot-view.js';
import { isRefused, type RefusedSnapshot, type ShownSnapshot } from '../snapshot/refused-snapshot.js';
import type { Ec2Authorizer, UnauthorizedOperation } from './ec2-authz.js';
import {
  Ec2RequestError, TAGS_PER_RESOURCE_MAX, array, dryRun, filterList, invalidValue, object, printable, string, tag, volumeId, type Filter, type Tag,
} from './ec2-requests.js';

/**
 * The EC2 snapshot operations of the control API (docs/architecture.md §12):
 * CreateSnapshot, DescribeSnapshots, DeleteSnapshot. Requests are checked
 * at the edge with EC2's limits and error names (Amazon EC2 API Reference:
 * CreateSnapshot, DescribeSnapshots, DeleteSnapshot): Description at most
 * 255 characters; TagSpecifications ResourceType `snapshot`; SnapshotIds at
 * most 1000 of `snap-` + 17 hex; MaxResults at least 5 ("if MaxResults is given a
 * value larger than 1000, only 1000 results are returned": taken as 1000, not
 * refused), not with SnapshotIds; DryRun; unknown members refused (UnknownParameter).
 */
export const SNAPSHOT_OPS: ReadonlySet<string> = new Set(['CreateSnapshot', 'DescribeSnapshots', 'DeleteSnapshot']);

export const SNAPSHOT_ID_RE = /^snap-[0-9a-f]{17}$/;
const DESCRIPTION_MAX = 255;
const SNAPSHOT_IDS_MAX = 1000;
const MAX_RESULTS_MIN = 5;
const MAX_RESULTS_MAX = 1000;
const NEXT_TOKEN_MAX = 1024;

/** `dryRun`: EC2's DryRun member, when true (checked, authorized, then DryRunOperation; nothing runs). */
export type SnapshotRequest = (
  | { op: 'CreateSnapshot'; input: { VolumeId: string; Description?: string; TagSpecifications?: { ResourceType: 'snapshot'; Tags: Tag[] }[] } }
  | { op: 'DescribeSnapshots'; input: { SnapshotIds?: string[]; Filters?: Filter[]; OwnerIds?: string[]; MaxResults?: number; NextToken?: string } }
  | { op: 'DeleteSnapshot'; input: { SnapshotId: string } }
) & { dryRun?: boolean };

const MEMBERS: Record<SnapshotRequest['op'], readonly string[]> = {
  CreateSnapshot: ['VolumeId', 'Description', 'TagSpecifications', 'DryRun'],
  DescribeSnapshots: ['SnapshotIds', 'Filters', 'OwnerIds', 'MaxResults', 'NextToken', 'DryRun'],
  DeleteSnapshot: ['SnapshotId', 'DryRun'],
};

/** An untrusted body -> a typed snapshot request, or an Ec2RequestError naming the member. */
export function parseSnapshotRequest(op: SnapshotRequest['op'], body: unknown): SnapshotRequest {
  const b = object(body, 'request body', 'EC2_INVALID_PARAMETER');
  const allowed = MEMBERS[op];
  for (const k of Object.keys(b)) {
    if (!allowed.includes(k)) throw new Ec2RequestError('EC2_UNKNOWN_PARAMETER', k, `The parameter ${printable(k)} is not recognized by ${op} (it takes: ${allowed.join(', ')})`);
  }
  const m = (k: string): unknown => (Object.hasOwn(b, k) ? b[k] : undefined);
  const req = parseMembers(op, m);
  return dryRun(m) ? { ...req, dryRun: true } : req;
}

function parseMembers(op: SnapshotRequest['op'], m: (k: string) => unknown): SnapshotRequest {
  switch (op) {
    case 'CreateSnapshot': {
      const input: Extract<SnapshotRequest, { op: 'CreateSnapshot' }>['input'] = { VolumeId: volumeId(m('VolumeId'), 'VolumeId') };
      const d = m('Description');
      if (d !== undefined) input.Description = string(d, 'Description', 0, DESCRIPTION_MAX);
      const specs = m('TagSpecifications');
      if (specs !== undefined) input.TagSpecifications = snapshotTagSpecifications(specs, 'CreateSnapshot');
      return { op, input };
    }
    case 'DescribeSnapshots': {
      const input: Extract<SnapshotRequest, { op: 'DescribeSnapshots' }>['input'] = {};
      const ids = m('SnapshotIds');
      if (ids !== undefined) input.SnapshotIds = array(ids, 'SnapshotIds', SNAPSHOT_IDS_MAX).map((x, i) => snapshotId(x, `SnapshotIds[${i}]`));
      const f = m('Filters');
      if (f !== undefined) input.Filters = filterList(f, SNAPSHOT_FILTER_NAMES);
      const owners = m('OwnerIds');
      if (owners !== undefined) input.OwnerIds = array(owners, 'OwnerIds', SNAPSHOT_IDS_MAX).map((x, i) => string(x, `OwnerIds[${i}]`, 1, 64));
      const max = m('MaxResults');
      if (max !== undefined) {
        if (typeof max !== 'number' || !Number.isSafeInteger(max) || max < MAX_RESULTS_MIN) {
          throw invalidValue('MaxResults', `Invalid value ${printable(max)} for MaxResults: an integer of at least ${MAX_RESULTS_MIN} (values over ${MAX_RESULTS_MAX} return ${MAX_RESULTS_MAX} items)`);
        }
        input.MaxResults = Math.min(max, MAX_RESULTS_MAX);
      }
      const token = m('NextToken');
      if (token !== undefined) {
        input.NextToken = string(token, 'NextToken', 1, NEXT_TOKEN_MAX);
        if (!SNAPSHOT_ID_RE.test(input.NextToken)) throw invalidValue('NextToken', 'Invalid value for NextToken: pass the NextToken of the previous page unchanged');
      }
      if (input.SnapshotIds?.length && (input.MaxResults !== undefined || input.NextToken !== undefined)) {
        throw new Ec2RequestError('EC2_INVALID_PARAMETER_COMBINATION', 'MaxResults', 'The parameters SnapshotIds and MaxResults/NextToken cannot be used together');
      }
      return { op, input };
    }
    case 'DeleteSnapshot':
      return { op, input: { SnapshotId: snapshotId(m('SnapshotId'), 'SnapshotId') } };
  }
}

function snapshotId(v: unknown, at: string): string {
  if (v === undefined) throw new Ec2RequestError('EC2_MISSING_PARAMETER', at, `The request must contain the parameter ${at}`);
  if (typeof v !== 'string' || !SNAPSHOT_ID_RE.test(v)) {
    throw new SnapshotIdMalformed(at, `Invalid id: ${printable(v)} (${at}: expecting "snap-" followed by 17 hex digits)`);
  }
  return v;
}

/** EC2's InvalidSnapshotID.Malformed. */
export class SnapshotIdMalformed extends Ec2RequestError {
  constructor(member: string, message: string) {
    super('EC2_INVALID_PARAMETER_VALUE', member, message);
    Object.defineProperty(this, 'awsName', { value: 'InvalidSnapshotID.Malformed' });
  }
}

/** A snapshot's TagSpecifications (CreateSnapshot, CopySnapshot): ResourceType 'snapshot', one value per key, at most 50 tags. */
export function snapshotTagSpecifications(v: unknown, op: 'CreateSnapshot' | 'CopySnapshot'): { ResourceType: 'snapshot'; Tags: Tag[] }[] {
  const list = array(v, 'TagSpecifications', TAGS_PER_RESOURCE_MAX);
  const seen = new Set<string>();
  let count = 0;
  return list.map((s, i) => {
    const at = `TagSpecifications[${i}]`;
    const spec = object(s, at, 'EC2_INVALID_PARAMETER_VALUE');
    for (const k of Object.keys(spec)) {
      if (k !== 'ResourceType' && k !== 'Tags') throw new Ec2RequestError('EC2_UNKNOWN_PARAMETER', `${at}.${k}`, `The parameter ${at}.${printable(k)} is not recognized (a TagSpecification takes ResourceType and Tags)`);
    }
    const rt = Object.hasOwn(spec, 'ResourceType') ? spec.ResourceType : undefined;
    if (rt === undefined) throw new Ec2RequestError('EC2_MISSING_PARAMETER', `${at}.ResourceType`, `The request must contain the parameter ${at}.ResourceType`);
    if (rt !== 'snapshot') throw invalidValue(`${at}.ResourceType`, `Invalid value ${printable(rt)} for ${at}.ResourceType: ${op} tags only the resource type 'snapshot'`);
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

export interface SnapshotApiOptions {
  snapshots: SnapshotManager;
  authz: Ec2Authorizer;
}

/** Audits a refusal and throws it (the daemon's deny()); `volumeId` when the request names a volume. */
export type Deny = (refusal: UnauthorizedOperation, volumeId: string | undefined) => Promise<never>;
/** Audits a dry run that would have been allowed and throws DryRunOperation (the daemon's dryRun()). */
export type DryRun = (volumeId: string | undefined) => Promise<never>;

/** Runs a parsed snapshot request: authorization first (per snapshot where EC2 has a resource), then the manager. */
export class SnapshotApi {
  constructor(private readonly o: SnapshotApiOptions) {}

  async run(req: SnapshotRequest, caller: Caller, deny: Deny, dry: DryRun): Promise<unknown> {
    const { snapshots, authz } = this.o;
    switch (req.op) {
      case 'CreateSnapshot': {
        const tags = (req.input.TagSpecifications ?? []).flatMap((s) => s.Tags);
        const refusal = authz.checkCreateSnapshot(req.input.VolumeId, tags, caller);
        if (refusal) await deny(refusal, req.input.VolumeId);
        if (req.dryRun) await dry(req.input.VolumeId);
        return snapshots.createSnapshot(req.input, caller);
      }
      case 'DescribeSnapshots': {
        const { MaxResults, NextToken, ...query } = req.input;
        // Each named manifest is read once, for the check and the answer: a poll of a snapshot under way
        // reads it while the copy keeps libuv's pool busy, and every read waits behind the copy's.
        const named = new Map<string, SnapshotManifest | RefusedSnapshot | undefined>();
        for (const id of new Set(query.SnapshotIds)) {
          const m = await snapshots.getShown(id);
          named.set(id, m);
          const refusal = m ? judge(authz, 'DescribeSnapshots', m, caller) : authz.checkSnapshotId('DescribeSnapshots', id, caller);
          if (refusal) await deny(refusal, undefined);
        }
        if (req.dryRun) {
          if (!query.SnapshotIds?.length) {
            const refusal = await authz.checkListingDryRun('DescribeSnapshots', caller, async () => (await snapshots.describeSnapshots(query)).some((m) => judge(authz, 'DescribeSnapshots', m, caller) === undefined));
            if (refusal) await deny(refusal, undefined);
          }
          await dry(undefined);
        }
        // Only the snapshots the caller may describe (ec2:DescribeSnapshots, per snapshot).
        const all = (await snapshots.describeSnapshots(query, named)).filter((m) => judge(authz, 'DescribeSnapshots', m, caller) === undefined).map((m) => toEc2Snapshot(m));
        return page(all, MaxResults, NextToken);
      }
      case 'DeleteSnapshot': {
        const id = req.input.SnapshotId;
        const m = await snapshots.getShown(id);
        const refusal = !m ? authz.checkSnapshotId('DeleteSnapshot', id, caller)
          : isRefused(m) ? authz.checkSnapshotId('DeleteSnapshot', id, caller) ?? authz.checkRefusedSnapshotDelete(id, caller)
            : judge(authz, 'DeleteSnapshot', m, caller);
        if (refusal) await deny(refusal, undefined);
        if (req.dryRun) await dry(undefined);
        await snapshots.deleteSnapshot(id, caller);
        return { Return: true };
      }
    }
  }
}

/**
 * ec2:DescribeSnapshots / ec2:DeleteSnapshot on one snapshot: with its tags, size, encryption and
 * volume, or, for a snapshot whose manifest is refused (nothing in it trusted), on its id alone, as a
 * snapshot that cannot be read is judged (Ec2Authorizer.checkSnapshotId).
 */
function judge(authz: Ec2Authorizer, op: 'DescribeSnapshots' | 'DeleteSnapshot', m: ShownSnapshot, caller: Caller): UnauthorizedOperation | undefined {
  return isRefused(m) ? authz.checkSnapshotId(op, m.snapshotId, caller) : authz.checkSnapshot(op, toEc2Snapshot(m), caller);
}

/** A CloudTrail-shaped event for a snapshot operation or state change (eventSource ec2.amazonaws.com). */
export function snapshotEvent(ev: SnapshotAuditEvent & { time: string }, o: { accountId: string; region: string; caller?: Caller; requestId?: string }): Record<string, unknown> {
  const e = ec2Event(ev.eventName, ev.time, ev.eventName === 'SnapshotCompleted' || ev.eventName === 'SnapshotFailed', o);
  e.requestParameters = { snapshotId: ev.snapshotId, ...(ev.volumeId ? { volumeId: ev.volumeId } : {}) };
  if (ev.details) e.additionalEventData = safeDetails(ev.details);
  e.resources = [
    { accountId: o.accountId, type: 'AWS::EC2::Snapshot', ARN: `arn:aws:ec2:${o.region}::snapshot/${ev.snapshotId}` },
    ...(ev.volumeId ? [{ accountId: o.accountId, type: 'AWS::EC2::Volume', ARN: `arn:aws:ec2:${o.region}:${o.accountId}:volume/${ev.volumeId}` }] : []),
  ];
  return e;
}
