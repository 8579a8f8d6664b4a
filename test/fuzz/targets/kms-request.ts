import fc from 'fast-check';
import { decodeKmsRequest } from '../../../src/daemon/aws-json.js';
import { hostileKey, hostileValue, mutatedJson } from '../harness/json-mutate.js';
import { isStrictBase64, ownKeys } from '../harness/oracles.js';
import type { FuzzTarget, Verdict } from '../harness/target.js';
import { auditSize, closeKmsFixture, CONTEXT, fill, isTypedKmsError, openKmsFixture, type KmsFixture } from './kms-common.js';

/**
 * KMS requests as they arrive on the control socket: a JSON body
 * (JSON.parse), decodeKmsRequest (src/daemon/aws-json.ts), then the core's
 * dispatcher KmsService.call as the account root. Templates of real
 * requests for most operations, mutated. Oracles: typed refusals (a
 * KMSInternalException hiding a TypeError counts as untyped); every call
 * leaves one audit event, accepted or not ("every call audited, or no
 * effect"); an accepted request was decoded faithfully (no `__proto__`
 * member turned into a prototype) and its blob members were strict base64.
 */
interface Input { op: string; text: string }

const POLICY = JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: { AWS: 'arn:aws:iam::111122223333:root' }, Action: 'kms:*', Resource: '*' }] });
const EC = CONTEXT;
const TEMPLATES: Record<string, unknown> = {
  Encrypt: { KeyId: 'alias/fuzz', Plaintext: 'aGVsbG8=', EncryptionContext: EC },
  Decrypt: { CiphertextBlob: '$BLOB', EncryptionContext: EC, GrantTokens: ['$GRANT_TOKEN'] },
  ReEncrypt: { CiphertextBlob: '$BLOB', SourceEncryptionContext: EC, DestinationKeyId: 'alias/fuzz', DestinationEncryptionContext: { a: 'b' } },
  GenerateDataKey: { KeyId: 'alias/fuzz', KeySpec: 'AES_256', EncryptionContext: EC },
  GenerateDataKeyWithoutPlaintext: { KeyId: '$KEY_ARN', NumberOfBytes: 64, EncryptionContext: EC },
  GenerateRandom: { NumberOfBytes: 32 },
  CreateGrant: { KeyId: 'alias/fuzz', GranteePrincipal: 'arn:aws:iam::111122223333:root', Operations: ['Decrypt', 'Encrypt'], Constraints: { EncryptionContextSubset: EC }, Name: 'fuzz-grant' },
  ListGrants: { KeyId: '$KEY_ARN', Limit: 10 },
  RetireGrant: { GrantToken: '$GRANT_TOKEN' },
  RevokeGrant: { KeyId: '$KEY_ARN', GrantId: '$GRANT_ID' },
  PutKeyPolicy: { KeyId: '$KEY2', PolicyName: 'default', Policy: POLICY },
  GetKeyPolicy: { KeyId: 'alias/fuzz', PolicyName: 'default' },
  CreateKey: { Description: 'fuzz key', KeyUsage: 'ENCRYPT_DECRYPT', KeySpec: 'SYMMETRIC_DEFAULT', Tags: [{ TagKey: 'a', TagValue: 'b' }], Policy: POLICY },
  DescribeKey: { KeyId: 'alias/fuzz' },
  ListKeys: { Limit: 5 },
  ListAliases: { KeyId: '$KEY_ARN' },
  CreateAlias: { AliasName: 'alias/fuzz-2', TargetKeyId: '$KEY2' },
  TagResource: { KeyId: '$KEY2', Tags: [{ TagKey: 'k', TagValue: 'v' }] },
  UntagResource: { KeyId: '$KEY2', TagKeys: ['k'] },
  DisableKey: { KeyId: '$KEY2' },
  EnableKey: { KeyId: '$KEY2' },
  ScheduleKeyDeletion: { KeyId: '$KEY2', PendingWindowInDays: 7 },
  CancelKeyDeletion: { KeyId: '$KEY2' },
  UpdateKeyDescription: { KeyId: '$KEY2', Description: 'd' },
};
const BLOB_MEMBERS = ['Plaintext', 'CiphertextBlob', 'Message', 'Signature', 'Mac'];
const PATHS = [['__proto__'], ['constructor'], ['EncryptionContext', '__proto__'], ['Constraints', 'EncryptionContextSubset', '__proto__'], ['Plaintext'], ['CiphertextBlob'], ['KeyId'], ['GrantTokens'], ['Operations'], ['Tags'], ['Policy'], ['NumberOfBytes'], ['Limit']];
const BLOBISH = fc.constantFrom('aGVsbG8', 'aGVs bG8=', 'aGVsbG8=\n', '!!!!', 'aGVsbG8=aGVsbG8=', '$BLOB=', '$BLOB$BLOB', 'A', '====');

const target: FuzzTarget<Input, KmsFixture> = {
  name: 'kms-request',
  about: 'JSON.parse -> decodeKmsRequest -> KmsService.call(op) as root, over 24 operations',
  arbitrary: () =>
    fc.oneof(
      { arbitrary: fc.constantFrom(...Object.keys(TEMPLATES)).chain((op) => mutatedJson(fc.constant(TEMPLATES[op]), { paths: PATHS, pathValue: fc.oneof(hostileValue, BLOBISH.map((s) => ({ t: 'raw' as const, text: JSON.stringify(s) }))), text: false }).map((text) => ({ op, text }))), weight: 19 },
      { arbitrary: fc.record({ op: fc.oneof(fc.constantFrom('__proto__', 'constructor', 'toString', 'hasOwnProperty', ''), hostileKey), text: fc.constant('{}') }), weight: 1 },
    ),
  open: openKmsFixture,
  close: closeKmsFixture,
  resetEvery: 1000,
  async run(x, f): Promise<Verdict> {
    let body: unknown;
    try {
      body = JSON.parse(fill(x.text, f.vars));
    } catch {
      return 'refused'; // the control server answers 400 before any parser of ours runs
    }
    if (!body || typeof body !== 'object' || Array.isArray(body)) return 'refused';
    const b = body as Record<string, unknown>;
    const before = auditSize(f);
    let failure: unknown;
    let req: Record<string, unknown> | undefined;
    try {
      req = decodeKmsRequest(b);
      await f.kms.call(x.op, req, f.root);
    } catch (e) {
      failure = e;
    }
    if (req !== undefined && auditSize(f) === before) {
      return { invalid: 'every call is audited (or has no effect)', why: `no audit event for ${x.op}${failure ? ` (failed: ${(failure as Error).name})` : ''}` };
    }
    if (failure !== undefined) throw failure;
    const proto = Object.getPrototypeOf(req) as unknown;
    if ((proto !== Object.prototype && proto !== null) || ownKeys(req!).join() !== ownKeys(b).join()) {
      return { invalid: 'request decoded faithfully (__proto__ member)', why: `members ${JSON.stringify(ownKeys(b))} decoded as ${JSON.stringify(ownKeys(req!))} ${proto === Object.prototype || proto === null ? '' : ' and a replaced prototype'}` };
    }
    const loose = BLOB_MEMBERS.find((k) => typeof b[k] === 'string' && !isStrictBase64(b[k] as string));
    if (loose) return { invalid: 'blob members are strict base64', why: `${x.op} accepted ${loose}=${JSON.stringify(b[loose]).slice(0, 60)}` };
    return 'accepted';
  },
  isTyped: isTypedKmsError,
};
export default target;
