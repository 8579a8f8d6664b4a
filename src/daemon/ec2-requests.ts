import { EbsdError } from '../util/errors.js';
import { MODIFICATION_FILTER_NAMES, VOLUME_FILTER_NAMES } from '../volume/volume-filters.js';
import { SIZE_UNIT_HINT } from '../volume/size.js';
import { charCount } from '../util/char-count.js';

/**
 * The EC2 volume requests of the control API, checked at the edge: an
 * untrusted JSON body becomes a typed request, or a typed refusal naming the
 * member, before anything reaches the volume manager (so before any state
 * changes). Limits are EC2's (Amazon EC2 API Reference: CreateVolume, Tag,
 * TagSpecification, Filter, DescribeVolumes; common errors):
 *
 *   tag key 1..128 characters, not starting with `aws:`; value 0..256 (every
 *   length here in Unicode characters, as EC2 counts them, not UTF-16 units);
 *   at most 50 tags per resource, keys unique; TagSpecifications ResourceType
 *   `volume`; Name (ebsd's shortcut for the Name tag) is a tag value;
 *   VolumeId `vol-` + 17 hex; Filters: at most 50, Name 1..255 characters,
 *   Values an array of at most 200 strings of at most 255 characters;
 *   MaxResults at least 5 (DescribeVolumesModifications: 1), over 500 taken as 500; DryRun a boolean; ClientToken 1..64 printable ASCII; unknown members are refused (UnknownParameter), as EC2 does.
 *
 * Errors carry EC2's names: InvalidParameterValue, InvalidParameter,
 * MissingParameter, UnknownParameter, InvalidFilter, TagLimitExceeded,
 * InvalidVolumeID.Malformed, InvalidParameterCombination.
 */

export type Ec2RequestErrorCode =
  | 'EC2_INVALID_PARAMETER_VALUE'
  | 'EC2_INVALID_PARAMETER'
  | 'EC2_MISSING_PARAMETER'
  | 'EC2_UNKNOWN_PARAMETER'
  | 'EC2_INVALID_FILTER'
  | 'EC2_TAG_LIMIT_EXCEEDED'
  | 'EC2_VOLUME_ID_MALFORMED'
  | 'EC2_SNAPSHOT_ID_MALFORMED'
  | 'EC2_INSTANCE_ID_MALFORMED'
  | 'EC2_INVALID_PARAMETER_COMBINATION';

const AWS_NAMES: Record<Ec2RequestErrorCode, string> = {
  EC2_INVALID_PARAMETER_VALUE: 'InvalidParameterValue',
  EC2_INVALID_PARAMETER: 'InvalidParameter',
  EC2_MISSING_PARAMETER: 'MissingParameter',
  EC2_UNKNOWN_PARAMETER: 'UnknownParameter',
  EC2_INVALID_FILTER: 'InvalidFilter',
  EC2_TAG_LIMIT_EXCEEDED: 'TagLimitExceeded',
  EC2_VOLUME_ID_MALFORMED: 'InvalidVolumeID.Malformed',
  EC2_SNAPSHOT_ID_MALFORMED: 'InvalidSnapshotID.Malformed',
  EC2_INSTANCE_ID_MALFORMED: 'InvalidInstanceID.Malformed',
  EC2_INVALID_PARAMETER_COMBINATION: 'InvalidParameterCombination',
};

/** A refused EC2 request; `member` is the request member at fault (`TagSpecifications[0].Tags[3].Key`). */
export class Ec2RequestError extends EbsdError {
  declare readonly code: Ec2RequestErrorCode;
  constructor(code: Ec2RequestErrorCode, readonly member: string, message: string) {
    super(code, message, { awsName: AWS_NAMES[code] });
  }
}

export const TAG_KEY_MAX = 128;
export const TAG_VALUE_MAX = 256;
export const TAGS_PER_RESOURCE_MAX = 50;
export const FILTERS_MAX = 50;
export const FILTER_VALUES_MAX = 200;
export const FILTER_STRING_MAX = 255;
export const VOLUME_IDS_MAX = 500;
export const KMS_KEY_ID_MAX = 2048;
export const DEVICE_MAX = 64;
/** EC2: "Constraints: Maximum 64 ASCII characters" (Ensuring idempotency of Amazon EC2 API requests). */
export const CLIENT_TOKEN_MAX = 64;
const MAX_RESULTS_MIN = 5;
const MAX_RESULTS_MAX = 500;
const NEXT_TOKEN_MAX = 1024;

export const VOLUME_ID_RE = /^vol-[0-9a-f]{17}$/;
export const SNAPSHOT_ID_RE = /^snap-[0-9a-f]{17}$/;
/** EC2 instance ids: `i-` and 8 (older) or 17 hex digits. */
export const INSTANCE_ID_RE = /^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$/;


export interface Tag {
  Key: string;
  Value: string;
}

export interface Filter {
  Name: string;
  Values: string[];
}

export interface CreateVolumeInput {
  /** Optional only with SnapshotId (the snapshot's size is taken). */
  Size: number | string | undefined;
  /** Restore from this snapshot (`snap-` + 17 hex). */
  SnapshotId?: string;
  KmsKeyId?: string;
  Encrypted?: boolean;
  Cipher?: 'aes-xts-plain64' | 'none';
  Name?: string;
  TagSpecifications?: { ResourceType: 'volume'; Tags: Tag[] }[];
  /** EC2's idempotency token: 1..64 printable ASCII characters, case-sensitive. */
  ClientToken?: string;
}

export interface DescribeVolumesInput {
  VolumeIds?: string[];
  Filters?: Filter[];
  MaxResults?: number;
  NextToken?: string;
}

/** `dryRun`: EC2's DryRun member, true when set (checked, authorized, then DryRunOperation; nothing runs). */
export type Ec2Request = (
  | { op: 'CreateVolume'; input: CreateVolumeInput }
  | { op: 'DescribeVolumes'; input: DescribeVolumesInput }
  | { op: 'DescribeVolumeStatus'; input: { VolumeIds?: string[] } }
  | { op: 'DeleteVolume'; input: { VolumeId: string } }
  | { op: 'ModifyVolume'; input: { VolumeId: string; Size: number | string } }
  | { op: 'DescribeVolumesModifications'; input: DescribeVolumesInput }
  | { op: 'AttachVolume'; input: { VolumeId: string; InstanceId?: string; Device?: string } }
  | { op: 'DetachVolume'; input: { VolumeId: string; Force: boolean; InstanceId?: string; Device?: string } }
) & { dryRun?: boolean };

export type Ec2Operation = Ec2Request['op'];

/** Members each operation takes; anything else is UnknownParameter. */
const MEMBERS: Record<Ec2Operation, readonly string[]> = {
  CreateVolume: ['Size', 'SnapshotId', 'KmsKeyId', 'Encrypted', 'Cipher', 'Name', 'TagSpecifications', 'ClientToken', 'DryRun'],
  DescribeVolumes: ['VolumeIds', 'Filters', 'MaxResults', 'NextToken', 'DryRun'],
  DescribeVolumeStatus: ['VolumeIds', 'DryRun'],
  DeleteVolume: ['VolumeId', 'DryRun'],
  ModifyVolume: ['VolumeId', 'Size', 'DryRun'],
  DescribeVolumesModifications: ['VolumeIds', 'Filters', 'MaxResults', 'NextToken', 'DryRun'],
  AttachVolume: ['VolumeId', 'InstanceId', 'Device', 'DryRun'],
  DetachVolume: ['VolumeId', 'Force', 'InstanceId', 'Device', 'DryRun'],
};

export function isEc2Operation(op: string): op is Ec2Operation {
  return Object.hasOwn(MEMBERS, op);
}

/**
 * Turn an untrusted request body into a typed EC2 request, or throw an
 * Ec2RequestError naming the member. Pure: reads `body`, never changes it.
 */
export function parseEc2Request(op: Ec2Operation, body: unknown): Ec2Request {
  const b = object(body, 'request body', 'EC2_INVALID_PARAMETER');
  const allowed = MEMBERS[op];
  for (const k of Object.keys(b)) {
    if (!allowed.includes(k)) throw new Ec2RequestError('EC2_UNKNOWN_PARAMETER', k, `The parameter ${printable(k)} is not recognized by ${op} (it takes: ${allowed.join(', ')})`);
  }
  const m = (k: string): unknown => (Object.hasOwn(b, k) ? b[k] : undefined);
  const req = parseMembers(op, m);
  return dryRun(m) ? { ...req, dryRun: true } : req;
}

/** EC2's DryRun member: a boolean; true asks whether the request would be allowed, and nothing runs. */
export function dryRun(m: (k: string) => unknown): boolean {
  const d = m('DryRun');
  if (d !== undefined && typeof d !== 'boolean') throw invalidValue('DryRun', `DryRun must be true or false, got ${kind(d)}`);
  return d === true;
}

function parseMembers(op: Ec2Operation, m: (k: string) => unknown): Ec2Request {
  switch (op) {
    case 'CreateVolume':
      return { op, input: createVolume(m) };
    case 'DescribeVolumes':
      return { op, input: describeVolumes(m) };
    case 'DescribeVolumeStatus': {
      const ids = m('VolumeIds');
      return { op, input: ids === undefined ? {} : { VolumeIds: volumeIds(ids, 'VolumeIds') } };
    }
    case 'DeleteVolume':
      return { op, input: { VolumeId: volumeId(m('VolumeId'), 'VolumeId') } };
    case 'ModifyVolume':
      return { op, input: { VolumeId: volumeId(m('VolumeId'), 'VolumeId'), Size: size(m('Size')) } };
    case 'DescribeVolumesModifications':
      return { op, input: describeVolumes(m, MODIFICATION_FILTER_NAMES, MODIFICATIONS_PAGING) };
    case 'AttachVolume':
      return { op, input: { VolumeId: volumeId(m('VolumeId'), 'VolumeId'), ...instanceAndDevice(m) } };
    case 'DetachVolume': {
      const f = m('Force');
      if (f !== undefined && typeof f !== 'boolean') throw invalidValue('Force', `Force must be true or false, got ${kind(f)}`);
      return { op, input: { VolumeId: volumeId(m('VolumeId'), 'VolumeId'), Force: f === true, ...instanceAndDevice(m) } };
    }
  }
}

/** AttachVolume's and DetachVolume's InstanceId and Device (EC2 requires both at attach; ebsd takes them optionally). */
function instanceAndDevice(m: (k: string) => unknown): { InstanceId?: string; Device?: string } {
  const out: { InstanceId?: string; Device?: string } = {};
  const inst = m('InstanceId');
  if (inst !== undefined) {
    if (typeof inst !== 'string' || !INSTANCE_ID_RE.test(inst)) {
      throw new Ec2RequestError('EC2_INSTANCE_ID_MALFORMED', 'InstanceId', `Invalid id: ${printable(inst)} (InstanceId: expecting "i-" followed by 8 or 17 hex digits)`);
    }
    out.InstanceId = inst;
  }
  const dev = m('Device');
  if (dev !== undefined) out.Device = string(dev, 'Device', 1, DEVICE_MAX);
  return out;
}

function createVolume(m: (k: string) => unknown): CreateVolumeInput {
  const snap = m('SnapshotId');
  const out: CreateVolumeInput = { Size: snap !== undefined && m('Size') === undefined ? undefined : size(m('Size')) };
  if (snap !== undefined) {
    if (typeof snap !== 'string' || !SNAPSHOT_ID_RE.test(snap)) {
      throw new Ec2RequestError('EC2_SNAPSHOT_ID_MALFORMED', 'SnapshotId', `Invalid id: ${printable(snap)} (SnapshotId: expecting "snap-" followed by 17 hex digits)`);
    }
    out.SnapshotId = snap;
  }
  const keyId = m('KmsKeyId');
  if (keyId !== undefined) out.KmsKeyId = string(keyId, 'KmsKeyId', 1, KMS_KEY_ID_MAX);
  const enc = m('Encrypted');
  if (enc !== undefined) {
    if (typeof enc !== 'boolean') throw invalidValue('Encrypted', `Encrypted must be true or false, got ${kind(enc)}`);
    out.Encrypted = enc;
  }
  const cipher = m('Cipher');
  if (cipher !== undefined) {
    if (cipher !== 'aes-xts-plain64' && cipher !== 'none') throw invalidValue('Cipher', `Invalid value ${printable(cipher)} for Cipher: aes-xts-plain64 or none`);
    out.Cipher = cipher;
  }
  const tags: { tag: Tag; member: string }[] = [];
  const name = m('Name');
  if (name !== undefined) {
    out.Name = string(name, 'Name', 0, TAG_VALUE_MAX);
    tags.push({ tag: { Key: 'Name', Value: out.Name }, member: 'Name' });
  }
  const specs = m('TagSpecifications');
  if (specs !== undefined) {
    const list = array(specs, 'TagSpecifications', TAGS_PER_RESOURCE_MAX);
    out.TagSpecifications = list.map((s, i) => {
      const at = `TagSpecifications[${i}]`;
      const spec = object(s, at, 'EC2_INVALID_PARAMETER_VALUE');
      for (const k of Object.keys(spec)) {
        if (k !== 'ResourceType' && k !== 'Tags') throw new Ec2RequestError('EC2_UNKNOWN_PARAMETER', `${at}.${k}`, `The parameter ${at}.${printable(k)} is not recognized (a TagSpecification takes ResourceType and Tags)`);
      }
      const rt = Object.hasOwn(spec, 'ResourceType') ? spec.ResourceType : undefined;
      if (rt === undefined) throw new Ec2RequestError('EC2_MISSING_PARAMETER', `${at}.ResourceType`, `The request must contain the parameter ${at}.ResourceType`);
      if (rt !== 'volume') throw invalidValue(`${at}.ResourceType`, `Invalid value ${printable(rt)} for ${at}.ResourceType: CreateVolume tags only the resource type 'volume'`);
      const raw = Object.hasOwn(spec, 'Tags') ? spec.Tags : undefined;
      if (raw === undefined) throw new Ec2RequestError('EC2_MISSING_PARAMETER', `${at}.Tags`, `The request must contain the parameter ${at}.Tags`);
      const list2 = array(raw, `${at}.Tags`, Infinity);
      const parsed = list2.map((t, j) => tag(t, `${at}.Tags[${j}]`));
      parsed.forEach((t, j) => tags.push({ tag: t, member: `${at}.Tags[${j}]` }));
      return { ResourceType: 'volume' as const, Tags: parsed };
    });
  }
  const token = m('ClientToken');
  if (token !== undefined) {
    out.ClientToken = string(token, 'ClientToken', 1, CLIENT_TOKEN_MAX);
    if (!/^[\x20-\x7e]+$/.test(out.ClientToken)) throw invalidValue('ClientToken', `Invalid value ${printable(out.ClientToken)} for ClientToken: printable ASCII characters only`);
  }
  if (tags.length > TAGS_PER_RESOURCE_MAX) {
    throw new Ec2RequestError('EC2_TAG_LIMIT_EXCEEDED', 'TagSpecifications', `The maximum number of tags per resource is ${TAGS_PER_RESOURCE_MAX}; this request has ${tags.length}`);
  }
  const seen = new Set<string>();
  for (const { tag: t, member } of tags) {
    if (seen.has(t.Key)) throw invalidValue(`${member}.Key`, `Duplicate tag key ${printable(t.Key)} (${member}.Key): a volume has one value per tag key`);
    seen.add(t.Key);
  }
  return out;
}

export function tag(v: unknown, at: string): Tag {
  const t = object(v, at, 'EC2_INVALID_PARAMETER_VALUE');
  for (const k of Object.keys(t)) {
    if (k !== 'Key' && k !== 'Value') throw new Ec2RequestError('EC2_UNKNOWN_PARAMETER', `${at}.${k}`, `The parameter ${at}.${printable(k)} is not recognized (a Tag takes Key and Value)`);
  }
  const rawKey = Object.hasOwn(t, 'Key') ? t.Key : undefined;
  if (rawKey === undefined) throw new Ec2RequestError('EC2_MISSING_PARAMETER', `${at}.Key`, `The request must contain the parameter ${at}.Key`);
  const key = string(rawKey, `${at}.Key`, 1, TAG_KEY_MAX);
  if (key.toLowerCase().startsWith('aws:')) throw invalidValue(`${at}.Key`, `Invalid value ${printable(key)} for ${at}.Key: tag keys starting with 'aws:' are reserved for AWS use`);
  const rawValue = Object.hasOwn(t, 'Value') ? t.Value : '';
  const value = string(rawValue, `${at}.Value`, 0, TAG_VALUE_MAX);
  return { Key: key, Value: value };
}

/**
 * How a Describe pages (README, the `ebsd volume ls|…` row): DescribeVolumes'
 * MaxResults is 5..500 and not with VolumeIds. EC2 states for
 * DescribeVolumesModifications only "up to a limit of 500", with no minimum
 * and no rule against VolumeIds: any whole number from 1, over 500 taken as
 * 500, and VolumeIds page like the rest.
 */
interface Paging {
  min: number;
  withIds: boolean;
}
const VOLUMES_PAGING: Paging = { min: MAX_RESULTS_MIN, withIds: false };
const MODIFICATIONS_PAGING: Paging = { min: 1, withIds: true };

/** DescribeVolumes' members, and DescribeVolumesModifications' (the same, with its own filter names and paging). */
function describeVolumes(m: (k: string) => unknown, filterNames: ReadonlySet<string> = VOLUME_FILTER_NAMES, paging: Paging = VOLUMES_PAGING): DescribeVolumesInput {
  const out: DescribeVolumesInput = {};
  const ids = m('VolumeIds');
  if (ids !== undefined) out.VolumeIds = volumeIds(ids, 'VolumeIds');
  const filters = m('Filters');
  if (filters !== undefined) out.Filters = filterList(filters, filterNames);
  const max = m('MaxResults');
  if (max !== undefined) {
    if (typeof max !== 'number' || !Number.isSafeInteger(max) || max < paging.min) {
      throw invalidValue('MaxResults', `Invalid value ${printable(max)} for MaxResults: an integer of at least ${paging.min} (values over ${MAX_RESULTS_MAX} return ${MAX_RESULTS_MAX} items)`);
    }
    // EC2: "If this parameter is set to a value larger than 500, only 500 items are returned."
    out.MaxResults = Math.min(max, MAX_RESULTS_MAX);
  }
  const token = m('NextToken');
  if (token !== undefined) out.NextToken = string(token, 'NextToken', 1, NEXT_TOKEN_MAX);
  if (!paging.withIds && out.VolumeIds?.length && (out.MaxResults !== undefined || out.NextToken !== undefined)) {
    throw new Ec2RequestError('EC2_INVALID_PARAMETER_COMBINATION', 'MaxResults', 'The parameters VolumeIds and MaxResults/NextToken cannot be used together');
  }
  return out;
}

/**
 * Filters of a Describe request; `names` are the filter names the operation
 * serves (`tag:<key>` besides), `unserved` documented names it refuses, with why.
 */
export function filterList(v: unknown, names: ReadonlySet<string> = VOLUME_FILTER_NAMES, unserved: ReadonlyMap<string, string> = new Map()): Filter[] {
  if (!Array.isArray(v)) throw new Ec2RequestError('EC2_INVALID_FILTER', 'Filters', `Filters must be an array of {Name, Values}, got ${kind(v)}`);
  if (v.length > FILTERS_MAX) throw new Ec2RequestError('EC2_INVALID_FILTER', 'Filters', `At most ${FILTERS_MAX} filters, got ${v.length}`);
  return v.map((f, i) => {
    const at = `Filters[${i}]`;
    if (!isPlainObject(f)) throw new Ec2RequestError('EC2_INVALID_FILTER', at, `${at} must be an object {Name, Values}, got ${kind(f)}`);
    for (const k of Object.keys(f)) {
      if (k !== 'Name' && k !== 'Values') throw new Ec2RequestError('EC2_INVALID_FILTER', `${at}.${k}`, `${at} has an unknown member ${printable(k)} (a filter takes Name and Values)`);
    }
    const name = Object.hasOwn(f, 'Name') ? f.Name : undefined;
    if (typeof name !== 'string' || name.length === 0 || name.length > FILTER_STRING_MAX) {
      throw new Ec2RequestError('EC2_INVALID_FILTER', `${at}.Name`, `${at}.Name must be a string of 1 to ${FILTER_STRING_MAX} characters, got ${kind(name)}`);
    }
    // An unknown name is EC2's InvalidParameterValue "The filter 'x' is invalid"; InvalidFilter is for a malformed filter.
    const why = unserved.get(name);
    if (why !== undefined) throw new Ec2RequestError('EC2_INVALID_PARAMETER_VALUE', `${at}.Name`, why);
    if (!names.has(name) && !(name.startsWith('tag:') && name.length > 4)) {
      throw new Ec2RequestError('EC2_INVALID_PARAMETER_VALUE', `${at}.Name`, `The filter ${printable(name)} is invalid (${at}.Name: one of ${[...names].join(', ')}, tag:<key>)`);
    }
    const values = Object.hasOwn(f, 'Values') ? f.Values : undefined;
    if (!Array.isArray(values)) throw new Ec2RequestError('EC2_INVALID_FILTER', `${at}.Values`, `${at}.Values must be an array of strings, got ${kind(values)}`);
    if (values.length > FILTER_VALUES_MAX) throw new Ec2RequestError('EC2_INVALID_FILTER', `${at}.Values`, `${at}.Values has ${values.length} values; at most ${FILTER_VALUES_MAX}`);
    values.forEach((x, j) => {
      if (typeof x !== 'string' || x.length > FILTER_STRING_MAX || !wellFormed(x)) {
        throw new Ec2RequestError('EC2_INVALID_FILTER', `${at}.Values[${j}]`, `${at}.Values[${j}] must be a string of at most ${FILTER_STRING_MAX} characters, got ${kind(x)}`);
      }
    });
    return { Name: name, Values: [...(values as string[])] };
  });
}

function volumeIds(v: unknown, at: string): string[] {
  return array(v, at, VOLUME_IDS_MAX).map((x, i) => volumeId(x, `${at}[${i}]`));
}

export function volumeId(v: unknown, at: string): string {
  if (v === undefined) throw new Ec2RequestError('EC2_MISSING_PARAMETER', at, `The request must contain the parameter ${at}`);
  if (typeof v !== 'string' || !VOLUME_ID_RE.test(v)) {
    throw new Ec2RequestError('EC2_VOLUME_ID_MALFORMED', at, `Invalid id: ${printable(v)} (${at}: expecting "vol-" followed by 17 hex digits)`);
  }
  return v;
}

/** Bytes (number) or a suffixed string; its range is the volume layer's (src/volume/size.ts). */
function size(v: unknown): number | string {
  if (v === undefined) throw new Ec2RequestError('EC2_MISSING_PARAMETER', 'Size', 'The request must contain the parameter Size');
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v) || v <= 0) throw invalidValue('Size', `Invalid value ${printable(v)} for Size: a positive whole number of bytes. ${SIZE_UNIT_HINT}`);
    return v;
  }
  if (typeof v === 'string' && v.length <= 32) return v;
  throw invalidValue('Size', `Invalid value ${printable(v)} for Size: ${SIZE_UNIT_HINT}`);
}

export function string(v: unknown, at: string, min: number, max: number): string {
  if (typeof v !== 'string') throw invalidValue(at, `${at} must be a string, got ${kind(v)}`);
  const n = charCount(v);
  if (n < min || n > max) {
    throw invalidValue(at, `${at} must be ${min === max ? `${min}` : `${min} to ${max}`} characters long, got ${n}`);
  }
  if (!wellFormed(v)) throw invalidValue(at, `${at} is not valid Unicode (it holds a lone surrogate)`);
  return v;
}

export function array(v: unknown, at: string, max: number): unknown[] {
  if (!Array.isArray(v)) throw invalidValue(at, `${at} must be an array, got ${kind(v)}`);
  if (v.length > max) {
    const code = at === 'TagSpecifications' ? 'EC2_TAG_LIMIT_EXCEEDED' : 'EC2_INVALID_PARAMETER_VALUE';
    throw new Ec2RequestError(code, at, `${at} has ${v.length} entries; at most ${max}`);
  }
  return v;
}

export function object(v: unknown, at: string, code: Ec2RequestErrorCode): Record<string, unknown> {
  if (!isPlainObject(v)) throw new Ec2RequestError(code, at, `${at} must be an object, got ${kind(v)}`);
  return v;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

export function invalidValue(member: string, message: string): Ec2RequestError {
  return new Ec2RequestError('EC2_INVALID_PARAMETER_VALUE', member, message);
}

function wellFormed(s: string): boolean {
  // No lone UTF-16 surrogates: such a string cannot be stored as UTF-8 faithfully.
  return !/\p{Surrogate}/u.test(s);
}

/** What a refusal may show of a value: its type, or a short quoted prefix. */
export function kind(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return `the string ${printable(v)}`;
  if (typeof v === 'object') return 'an object';
  return `${typeof v} ${printable(v)}`;
}

export function printable(v: unknown): string {
  const s = typeof v === 'string' ? v : typeof v === 'object' && v !== null ? (Array.isArray(v) ? 'an array' : 'an object') : String(v);
  const cut = s.length > 64 ? `${s.slice(0, 64)}…(${s.length} characters)` : s;
  return `'${cut.replace(/[\u0000-\u001f\u007f]/g, '?')}'`;
}
