/**
 * The shape of a KMS request, checked before any handler runs (so before any
 * effect): members the KMS API defines have their API types and length caps,
 * and the whole request is bounded in nesting and size. Handlers still check
 * their own members' values (enums, ranges, ARNs); this is the floor under
 * them, so that nothing a handler ignores can make the call unauditable after
 * it took effect (a member nested 5,000 deep overflows every recursive
 * serializer).
 *
 * Member types by name follow the KMS API reference: one name has one type in
 * every operation that takes it.
 */
import { ValidationException } from './errors.js';
import type { KmsRequest } from './types.js';

/** Deepest nesting below the request object (Tags[0].TagKey and Constraints.EncryptionContextEquals.k are 3). */
export const MAX_REQUEST_DEPTH = 8;
/** Most values (objects, arrays, scalars) in one request; a context of 8 KiB has at most ~4,100 pairs. */
export const MAX_REQUEST_VALUES = 10_000;

type MemberType = 'string' | 'integer' | 'boolean' | 'blob' | 'stringMap' | 'stringList' | 'tags' | 'constraints';

/** Length caps above the default (KMS API reference: Policy 131,072 characters, Description and GrantToken 8,192). */
const STRING_MAX: ReadonlyMap<string, number> = new Map([['Policy', 131_072], ['Description', 8192], ['GrantToken', 8192]]);
const DEFAULT_STRING_MAX = 2048;

const _types = (t: MemberType, names: string): [string, MemberType][] => names.split(' ').map((n) => [n, t]);
const MEMBER_TYPES: ReadonlyMap<string, MemberType> = new Map([
  ..._types('string', 'KeyId KeySpec EncryptionAlgorithm SigningAlgorithm MacAlgorithm MessageType KeyUsage Description AliasName '
    + 'TargetKeyId Marker DestinationKeyId SourceKeyId SourceEncryptionAlgorithm DestinationEncryptionAlgorithm KeyPairSpec Origin '
    + 'GranteePrincipal RetiringPrincipal GrantId GrantToken Name PolicyName KeyMaterialId IncludeKeyMaterial Policy '
    + 'CustomKeyStoreId CustomKeyStoreName CustomerMasterKeySpec XksKeyId KeyAgreementAlgorithm GranteeServicePrincipal RetiringServicePrincipal'),
  ..._types('integer', 'NumberOfBytes PendingWindowInDays RotationPeriodInDays Limit'),
  ..._types('boolean', 'MultiRegion BypassPolicyLockoutSafetyCheck DryRun'),
  ..._types('blob', 'Plaintext CiphertextBlob Message Signature Mac'),
  ..._types('stringMap', 'EncryptionContext SourceEncryptionContext DestinationEncryptionContext'),
  ..._types('stringList', 'TagKeys Operations GrantTokens DryRunModifiers'),
  ..._types('tags', 'Tags'),
  ..._types('constraints', 'Constraints'),
]);

const lc = (s: string): string => (s.length ? s[0]!.toLowerCase() + s.slice(1) : s);
const fail = (member: string, c: string): ValidationException =>
  new ValidationException(`1 validation error detected: Value at '${lc(member)}' failed to satisfy constraint: ${c}`);

const _isPlainObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);

/**
 * Check `request` and return the object handlers read. A request whose
 * prototype is not `Object.prototype` (an assignment `out["__proto__"] = v`
 * upstream replaced it) is rebuilt without a prototype, with `__proto__` as
 * an ordinary member: inherited members never reach a handler.
 */
export function checkRequestShape(request: unknown): KmsRequest {
  if (request === undefined || request === null) return {};
  if (!_isPlainObject(request)) throw new ValidationException('The request must be a JSON object');
  let req = request as KmsRequest;
  const proto = Object.getPrototypeOf(request) as unknown;
  if (proto !== Object.prototype && proto !== null) {
    const own = Object.create(null) as KmsRequest;
    for (const k of Object.keys(request)) own[k] = (request as KmsRequest)[k];
    own['__proto__'] = proto; // no prototype, so this stores a member
    req = own;
  }
  _checkBounds(req);
  for (const name of Object.keys(req)) {
    const t = MEMBER_TYPES.get(name);
    const v = req[name];
    if (t === undefined || v === undefined || v === null) continue;
    _checkMember(name, t, v);
  }
  return req;
}

/** Nesting depth and value count, walked without recursion (the thing being bounded is the stack). */
function _checkBounds(req: KmsRequest): void {
  let count = 0;
  const stack: { v: unknown; depth: number; member: string }[] = [];
  for (const k of Object.keys(req)) stack.push({ v: req[k], depth: 1, member: k });
  while (stack.length) {
    const { v, depth, member } = stack.pop()!;
    if (++count > MAX_REQUEST_VALUES) throw new ValidationException(`The request holds more than ${MAX_REQUEST_VALUES} values`);
    if (depth > MAX_REQUEST_DEPTH) throw fail(member, `Member must be nested at most ${MAX_REQUEST_DEPTH} levels deep`);
    const t = typeof v;
    if (t === 'function' || t === 'symbol' || t === 'bigint') throw fail(member, 'Member must be a JSON value');
    if (t !== 'object' || v === null || v instanceof Uint8Array) continue;
    if (Array.isArray(v)) {
      for (const x of v) stack.push({ v: x, depth: depth + 1, member });
    } else {
      for (const k of Object.keys(v as object)) stack.push({ v: (v as Record<string, unknown>)[k], depth: depth + 1, member });
    }
  }
}

function _checkString(name: string, v: unknown, max = STRING_MAX.get(name) ?? DEFAULT_STRING_MAX): void {
  if (typeof v !== 'string') throw fail(name, 'Member must be a string');
  if (v.length > max) throw fail(name, `Member must have length less than or equal to ${max}`);
}

function _checkStringMap(name: string, v: unknown): void {
  if (!_isPlainObject(v)) throw fail(name, 'Member must be a map of strings');
  for (const k of Object.keys(v)) if (typeof v[k] !== 'string') throw fail(name, 'Member must be a map of strings');
}

function _checkMember(name: string, t: MemberType, v: unknown): void {
  switch (t) {
    case 'string': return _checkString(name, v);
    case 'integer':
      if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw fail(name, 'Member must be an integer');
      return;
    case 'boolean':
      if (typeof v !== 'boolean') throw fail(name, 'Member must be a boolean');
      return;
    case 'blob':
      if (!(v instanceof Uint8Array)) throw fail(name, 'Member must be a blob');
      return;
    case 'stringMap': return _checkStringMap(name, v);
    case 'stringList':
      if (!Array.isArray(v) || v.some((x) => typeof x !== 'string' || x.length > 8192)) throw fail(name, 'Member must be a list of strings');
      return;
    case 'tags':
      if (!Array.isArray(v)) throw fail(name, 'Member must be a list of tags');
      // TagKey / TagValue themselves: parseTags (TagException, as AWS answers).
      for (const x of v) if (!_isPlainObject(x)) throw fail(name, 'Member must be a list of {TagKey, TagValue} objects');
      return;
    case 'constraints':
      if (!_isPlainObject(v)) throw fail(name, 'Member must be an object');
      // GrantConstraints: two string maps, and SourceArn, a string.
      for (const k of Object.keys(v)) {
        if (v[k] === undefined || v[k] === null) continue;
        if (k === 'SourceArn') _checkString(`${name}.${k}`, v[k]);
        else _checkStringMap(`${name}.${k}`, v[k]);
      }
      return;
  }
}
