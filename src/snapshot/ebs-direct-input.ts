import { validation } from './ebs-direct-errors.js';
import { charCount } from '../util/char-count.js';
import { SNAPSHOT_BLOCK_BYTES } from './types.js';

/**
 * Request members of the EBS direct APIs, checked as the API reference
 * constrains them (types, lengths, patterns, ranges), before anything runs.
 * A refusal is ValidationException with a Reason, naming the member.
 */

/** SnapshotId: 1–64 characters, `^snap-[0-9a-f]+$` (ebsd's ids are `snap-` + 17 hex). */
const SNAP_ID = /^snap-[0-9a-f]+$/;
/** BlockToken, NextToken, Checksum: `^[A-Za-z0-9+/=]+$`. */
const B64ISH = /^[A-Za-z0-9+/=]+$/;
/** KmsKeyArn: 1–2048 characters, `arn:aws[\w-]*:kms:.*`. */
const KMS_ARN = /^arn:aws[\w-]*:kms:.*$/;
/**
 * Tag (EBS direct APIs reference): Key at most 127 characters of any kind (`^[\S\s]+$`, so at
 * least one), Value at most 255 (`^[\S\s]*$`), each member optional in the model. A snapshot is an
 * EC2 resource, so EC2's own rules apply too, as ebsd's CreateTags applies them
 * (src/daemon/ec2-requests.ts `tag`): a Key is required and not empty, `aws:` (in any case) begins
 * only AWS's keys, a Value left out is '', a key appears once per resource, and text is well-formed
 * Unicode. The manifest check refuses an empty Key (manifest-check.ts): one let through here made a
 * completed snapshot that no API could read or describe again.
 */
const TAG_KEY_MAX = 127;
const TAG_VALUE_MAX = 255;

/** VolumeSize is GiB, at most 65536 (64 TiB). */
export const MAX_VOLUME_SIZE_GIB = 65_536;
/** Blocks in one GiB: 1 GiB / 512 KiB. */
export const BLOCKS_PER_GIB = 2048;
/** StartSnapshot Timeout, minutes: 10–4320, default 60. */
export const DEFAULT_TIMEOUT_MIN = 60;
export const MAX_TAGS = 50;

type Body = Readonly<Record<string, unknown>>;

export interface ListSnapshotBlocksInput { SnapshotId: string; MaxResults?: number; NextToken?: string; StartingBlockIndex?: number }
export interface ListChangedBlocksInput { SecondSnapshotId: string; FirstSnapshotId?: string; MaxResults?: number; NextToken?: string; StartingBlockIndex?: number }
export interface GetSnapshotBlockInput { SnapshotId: string; BlockIndex: number; BlockToken: string }
export interface StartSnapshotInput {
  VolumeSize: number; ParentSnapshotId?: string; Tags?: { Key: string; Value: string }[]; Description?: string;
  ClientToken?: string; Encrypted?: boolean; KmsKeyArn?: string; Timeout?: number;
}
export interface PutSnapshotBlockInput {
  SnapshotId: string; BlockIndex: number; BlockData: Uint8Array; DataLength: number; Progress?: number; Checksum: string; ChecksumAlgorithm: 'SHA256';
}
export interface CompleteSnapshotInput {
  SnapshotId: string; ChangedBlocksCount: number; Checksum?: string; ChecksumAlgorithm?: 'SHA256'; ChecksumAggregationMethod?: 'LINEAR';
}

function _members(op: string, b: Body, allowed: readonly string[]): void {
  for (const k of Object.keys(b)) {
    if (!allowed.includes(k)) throw validation('INVALID_PARAMETER_VALUE', `${op} has no member ${JSON.stringify(k.slice(0, 64))}; its members are ${allowed.join(', ')}`);
  }
}

function _snap(b: Body, k: string, required: true): string;
function _snap(b: Body, k: string, required: false): string | undefined;
function _snap(b: Body, k: string, required: boolean): string | undefined {
  const v = b[k];
  if (v === undefined && !required) return undefined;
  if (typeof v !== 'string' || v.length < 1 || v.length > 64 || !SNAP_ID.test(v)) {
    throw validation('INVALID_SNAPSHOT_ID', `${k} must be a snapshot id (snap-…, at most 64 characters), got ${_show(v)}`);
  }
  return v;
}

function _int(b: Body, k: string, min: number, max: number, required: boolean, reason: 'INVALID_PARAMETER_VALUE' | 'INVALID_BLOCK' | 'INVALID_VOLUME_SIZE' = 'INVALID_PARAMETER_VALUE'): number | undefined {
  const v = b[k];
  if (v === undefined && !required) return undefined;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    throw validation(reason, `${k} must be an integer from ${min} to ${max}, got ${_show(v)}`);
  }
  return v;
}

function _str(b: Body, k: string, max: number, pattern?: RegExp, reason: 'INVALID_PARAMETER_VALUE' | 'INVALID_BLOCK_TOKEN' | 'INVALID_PAGE_TOKEN' | 'INVALID_CUSTOMER_KEY' = 'INVALID_PARAMETER_VALUE'): string | undefined {
  const v = b[k];
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || v.length < 1 || v.length > max || (pattern && !pattern.test(v))) {
    throw validation(reason, `${k} must be a string of 1 to ${max} characters${pattern ? ` matching ${pattern.source}` : ''}, got ${_show(v)}`);
  }
  return v;
}

function _required<T>(k: string, v: T | undefined, reason: 'INVALID_PARAMETER_VALUE' | 'INVALID_BLOCK_TOKEN' = 'INVALID_PARAMETER_VALUE'): T {
  if (v === undefined) throw validation(reason, `${k} is required`);
  return v;
}

/**
 * A free-text member (Description: `^[\S\s]+$`, at most `max` characters): counted in Unicode
 * characters as AWS counts them (char-count.ts), as the manifest check counts them, not UTF-16 units;
 * a lone surrogate is refused (it has no UTF-8 form to store).
 */
function _text(b: Body, k: string, max: number): string | undefined {
  const v = b[k];
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || v.length === 0 || charCount(v) > max || !_wellFormed(v)) {
    throw validation('INVALID_PARAMETER_VALUE', `${k} must be a string of 1 to ${max} characters (well-formed Unicode), got ${_show(v)}`);
  }
  return v;
}

/** No lone UTF-16 surrogate: such text has no UTF-8 form to store. */
const _wellFormed = (s: string): boolean => !/\p{Surrogate}/u.test(s);

/** StartSnapshot's Tags (TAG_KEY_MAX above): ValidationException INVALID_TAG naming the tag and what is wrong with it. */
function _tags(v: unknown): { Key: string; Value: string }[] {
  if (!Array.isArray(v) || v.length > MAX_TAGS) throw validation('INVALID_TAG', `Tags must be a list of at most ${MAX_TAGS} {Key, Value}, got ${Array.isArray(v) ? `${v.length} tags` : _show(v)}`);
  const seen = new Set<string>();
  return v.map((t: unknown, i: number) => {
    const bad = (why: string) => validation('INVALID_TAG', `Tags[${i}] ${why}`);
    if (typeof t !== 'object' || t === null || Array.isArray(t)) throw bad(`must be {Key, Value}, got ${_show(t)}`);
    const tag = t as Record<string, unknown>;
    const other = Object.keys(tag).find((k) => k !== 'Key' && k !== 'Value');
    if (other !== undefined) throw bad(`has no member ${JSON.stringify(other.slice(0, 64))}; a tag has Key and Value`);
    const { Key, Value = '' } = tag;
    if (typeof Key !== 'string' || Key.length === 0 || charCount(Key) > TAG_KEY_MAX || !_wellFormed(Key)) {
      throw bad(`Key must be a string of 1 to ${TAG_KEY_MAX} characters (well-formed Unicode), got ${Key === undefined ? 'none' : _show(Key)}`);
    }
    if (Key.toLowerCase().startsWith('aws:')) throw bad(`Key ${_show(Key)} begins with 'aws:', which is reserved for AWS's own tags`);
    if (typeof Value !== 'string' || charCount(Value) > TAG_VALUE_MAX || !_wellFormed(Value)) {
      throw bad(`Value must be a string of at most ${TAG_VALUE_MAX} characters (well-formed Unicode), got ${_show(Value)}`);
    }
    if (seen.has(Key)) throw bad(`Key ${_show(Key)} is given twice: a snapshot has one value per tag key`);
    seen.add(Key);
    return { Key, Value };
  });
}

/** A value named in a refusal: numbers and short strings as they are, anything else by its type (never a 1 MB member). */
function _show(v: unknown): string {
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (typeof v === 'string') return v.length <= 64 ? JSON.stringify(v) : `a string of ${v.length} characters`;
  return v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v;
}

/** MaxResults as the API reference bounds it: 100 to 10000. */
export const MIN_MAX_RESULTS = 100;
export const MAX_MAX_RESULTS = 10_000;

/**
 * MaxResults: at most 10000; a value from 0 to 99 is taken as 100, not refused: "If you
 * submit a request with a MaxResult parameter value of under 100, and there are more than
 * 100 blocks in the snapshot, then the API will return at least 100 results" (EBS direct
 * APIs FAQ). A negative or fractional value, or one past 10000, is ValidationException.
 */
function _page(b: Body): { MaxResults?: number; NextToken?: string; StartingBlockIndex?: number } {
  const asked = _int(b, 'MaxResults', 0, MAX_MAX_RESULTS, false);
  const MaxResults = asked === undefined ? undefined : Math.max(MIN_MAX_RESULTS, asked);
  const NextToken = _str(b, 'NextToken', 256, B64ISH, 'INVALID_PAGE_TOKEN');
  const StartingBlockIndex = _int(b, 'StartingBlockIndex', 0, Number.MAX_SAFE_INTEGER, false, 'INVALID_BLOCK');
  return { ...(MaxResults !== undefined ? { MaxResults } : {}), ...(NextToken !== undefined ? { NextToken } : {}), ...(StartingBlockIndex !== undefined ? { StartingBlockIndex } : {}) };
}

export function parseListSnapshotBlocks(b: Body): ListSnapshotBlocksInput {
  _members('ListSnapshotBlocks', b, ['SnapshotId', 'MaxResults', 'NextToken', 'StartingBlockIndex']);
  return { SnapshotId: _snap(b, 'SnapshotId', true), ..._page(b) };
}

export function parseListChangedBlocks(b: Body): ListChangedBlocksInput {
  _members('ListChangedBlocks', b, ['FirstSnapshotId', 'SecondSnapshotId', 'MaxResults', 'NextToken', 'StartingBlockIndex']);
  const first = _snap(b, 'FirstSnapshotId', false);
  return { SecondSnapshotId: _snap(b, 'SecondSnapshotId', true), ...(first !== undefined ? { FirstSnapshotId: first } : {}), ..._page(b) };
}

export function parseGetSnapshotBlock(b: Body): GetSnapshotBlockInput {
  _members('GetSnapshotBlock', b, ['SnapshotId', 'BlockIndex', 'BlockToken']);
  return {
    SnapshotId: _snap(b, 'SnapshotId', true),
    BlockIndex: _int(b, 'BlockIndex', 0, Number.MAX_SAFE_INTEGER, true, 'INVALID_BLOCK')!,
    BlockToken: _required('BlockToken', _str(b, 'BlockToken', 256, B64ISH, 'INVALID_BLOCK_TOKEN'), 'INVALID_BLOCK_TOKEN'),
  };
}

export function parseStartSnapshot(b: Body): StartSnapshotInput {
  _members('StartSnapshot', b, ['VolumeSize', 'ParentSnapshotId', 'Tags', 'Description', 'ClientToken', 'Encrypted', 'KmsKeyArn', 'Timeout']);
  const out: StartSnapshotInput = { VolumeSize: _int(b, 'VolumeSize', 1, MAX_VOLUME_SIZE_GIB, true, 'INVALID_VOLUME_SIZE')! };
  const parent = _snap(b, 'ParentSnapshotId', false);
  if (parent !== undefined) out.ParentSnapshotId = parent;
  const description = _text(b, 'Description', 255);
  if (description !== undefined) out.Description = description;
  const token = _str(b, 'ClientToken', 255);
  if (token !== undefined) out.ClientToken = token;
  if (b.Encrypted !== undefined) {
    if (typeof b.Encrypted !== 'boolean') throw validation('INVALID_PARAMETER_VALUE', `Encrypted must be a boolean, got ${_show(b.Encrypted)}`);
    out.Encrypted = b.Encrypted;
  }
  const arn = _str(b, 'KmsKeyArn', 2048, KMS_ARN, 'INVALID_CUSTOMER_KEY');
  if (arn !== undefined) out.KmsKeyArn = arn;
  const timeout = _int(b, 'Timeout', 10, 4320, false);
  if (timeout !== undefined) out.Timeout = timeout;
  if (b.Tags !== undefined) out.Tags = _tags(b.Tags);
  // StartSnapshot: "You can't specify ParentSnapshotId and Encrypted in the same request."
  if (out.ParentSnapshotId !== undefined && out.Encrypted !== undefined) {
    throw validation('INVALID_PARAMETER_VALUE', 'ParentSnapshotId and Encrypted cannot be given together: a snapshot takes its parent\'s encryption');
  }
  // Encryption outcomes for EBS direct APIs: with a parent, encrypted or not, a KmsKeyArn "fails with ValidationException"
  // (the snapshot takes the parent's key: a new key would mean new ciphertext for every inherited block, which StartSnapshot never writes).
  if (out.ParentSnapshotId !== undefined && out.KmsKeyArn !== undefined) {
    throw validation('INVALID_PARAMETER_VALUE', 'ParentSnapshotId and KmsKeyArn cannot be given together: a snapshot is encrypted with its parent\'s KMS key (to change the key, CopySnapshot the parent with --kms-key-id first)');
  }
  // Encryption outcomes, no parent: Encrypted False with a KmsKeyArn "fails with ValidationException", encryption by default
  // enabled or not. KmsKeyArn with Encrypted omitted depends on that setting: src/snapshot/ebs-direct-encryption.ts.
  if (out.KmsKeyArn !== undefined && out.Encrypted === false) {
    throw validation('INVALID_PARAMETER_VALUE', 'KmsKeyArn cannot be given with Encrypted false: a KMS key is for an encrypted snapshot (set Encrypted to true or omit it)');
  }
  return out;
}

export function parsePutSnapshotBlock(b: Body): PutSnapshotBlockInput {
  _members('PutSnapshotBlock', b, ['SnapshotId', 'BlockIndex', 'BlockData', 'DataLength', 'Progress', 'Checksum', 'ChecksumAlgorithm']);
  const SnapshotId = _snap(b, 'SnapshotId', true);
  const BlockIndex = _int(b, 'BlockIndex', 0, Number.MAX_SAFE_INTEGER, true, 'INVALID_BLOCK')!;
  // DataLength: "Currently, the only supported size is 524288 bytes."
  const DataLength = _int(b, 'DataLength', SNAPSHOT_BLOCK_BYTES, SNAPSHOT_BLOCK_BYTES, true)!;
  if (!(b.BlockData instanceof Uint8Array)) throw validation('INVALID_PARAMETER_VALUE', 'BlockData is required (base64 on the wire)');
  if (b.BlockData.length !== DataLength) {
    throw validation('INVALID_PARAMETER_VALUE', `BlockData is ${b.BlockData.length} bytes, but DataLength says ${DataLength}`);
  }
  const Checksum = _required('Checksum', _str(b, 'Checksum', 64, B64ISH));
  if (b.ChecksumAlgorithm !== 'SHA256') throw validation('INVALID_PARAMETER_VALUE', `ChecksumAlgorithm must be SHA256, got ${_show(b.ChecksumAlgorithm)}`);
  const Progress = _int(b, 'Progress', 0, 100, false);
  return { SnapshotId, BlockIndex, BlockData: b.BlockData, DataLength, Checksum, ChecksumAlgorithm: 'SHA256', ...(Progress !== undefined ? { Progress } : {}) };
}

export function parseCompleteSnapshot(b: Body): CompleteSnapshotInput {
  _members('CompleteSnapshot', b, ['SnapshotId', 'ChangedBlocksCount', 'Checksum', 'ChecksumAlgorithm', 'ChecksumAggregationMethod']);
  const out: CompleteSnapshotInput = {
    SnapshotId: _snap(b, 'SnapshotId', true),
    ChangedBlocksCount: _int(b, 'ChangedBlocksCount', 0, Number.MAX_SAFE_INTEGER, true)!,
  };
  const checksum = _str(b, 'Checksum', 64, B64ISH);
  if (checksum !== undefined) out.Checksum = checksum;
  if (b.ChecksumAlgorithm !== undefined) {
    if (b.ChecksumAlgorithm !== 'SHA256') throw validation('INVALID_PARAMETER_VALUE', `ChecksumAlgorithm must be SHA256, got ${_show(b.ChecksumAlgorithm)}`);
    out.ChecksumAlgorithm = 'SHA256';
  }
  if (b.ChecksumAggregationMethod !== undefined) {
    if (b.ChecksumAggregationMethod !== 'LINEAR') throw validation('INVALID_PARAMETER_VALUE', `ChecksumAggregationMethod must be LINEAR, got ${_show(b.ChecksumAggregationMethod)}`);
    out.ChecksumAggregationMethod = 'LINEAR';
  }
  if (out.Checksum !== undefined && (out.ChecksumAlgorithm === undefined || out.ChecksumAggregationMethod === undefined)) {
    throw validation('INVALID_PARAMETER_VALUE', 'Checksum needs ChecksumAlgorithm SHA256 and ChecksumAggregationMethod LINEAR');
  }
  return out;
}
